// CPU kernels for the four full-size passes of Switchable Normalization.
//
// Each kernel makes one pass over contiguous (N, C, H, W) float32/float64 tensors, in parallel
// over the N*C planes with at::parallel_for (torch's intra-op thread pool, so it follows
// torch.set_num_threads). Per-plane scalars (scale, shift, ...) are (N, C) tensors in the input's
// dtype. Reductions accumulate in the input's dtype within chunks of kChunk elements, in four
// independent 16-byte SIMD accumulators per sum (GCC/Clang vector extensions: SSE2, so the build
// needs no -march flag), and add the chunk sums in double. The moments are taken about the
// plane's first element, so that a mean much larger than the spread (x = 1000 + N(0, 1)) does not
// cancel.
//
// Semantics: sn_detection/layers/switch_norm_function.py (SNKernels).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/python.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

namespace {

constexpr int64_t kChunk = 4096;  // elements summed in working precision before going to double
constexpr int64_t kGrain = 32768;  // elements per task below which a pass is not split

// planes per task: at least kGrain elements, so small tensors are not split at all
inline int64_t plane_grain(int64_t plane_size) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(plane_size, 1));
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.dim() == 4, name, " must be 4-D (N, C, H, W), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous (NCHW)");
  TORCH_CHECK(
      x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
      " must be float32 or float64, got ", x.scalar_type());
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  check_input(t, name);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " has shape ", t.sizes(), ", expected ", x.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(),
              ", expected ", x.scalar_type());
}

// an (N, C) per-plane parameter as a contiguous tensor of x's dtype
at::Tensor plane_param(const at::Tensor& p, const at::Tensor& x, const char* name) {
  const int64_t n = x.size(0), c = x.size(1);
  TORCH_CHECK(p.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(p.dim() <= 2, name, " must be (N, C), got shape ", p.sizes());
  return p.to(x.scalar_type()).expand({n, c}).contiguous();
}

// A 16-byte SIMD vector of T (GCC/Clang vector extension: SSE2 on any x86-64, NEON on arm64).
template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(16)));
  static constexpr int kWidth = 16 / sizeof(T);
};

template <typename V>
inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));  // an unaligned load
  return v;
}

template <typename T, typename V>
inline T lane_sum(V v) {
  T s = 0;
  for (int j = 0; j < Simd<T>::kWidth; ++j) s += v[j];
  return s;
}

// s += sum(p[i] - shift), ss += sum((p[i] - shift)^2) over i < n
template <typename T>
inline void shifted_sums(const T* __restrict p, int64_t n, T shift, double& s, double& ss) {
  using V = typename Simd<T>::vec;
  constexpr int64_t W = Simd<T>::kWidth;
  const V sh = V{} + shift;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = std::min(n, start + kChunk);
    V a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    int64_t i = start;
    for (; i + 4 * W <= end; i += 4 * W) {
      const V d0 = load<V>(p + i) - sh, d1 = load<V>(p + i + W) - sh;
      const V d2 = load<V>(p + i + 2 * W) - sh, d3 = load<V>(p + i + 3 * W) - sh;
      a0 += d0, a1 += d1, a2 += d2, a3 += d3;
      b0 += d0 * d0, b1 += d1 * d1, b2 += d2 * d2, b3 += d3 * d3;
    }
    T ta = lane_sum<T>((a0 + a1) + (a2 + a3)), tb = lane_sum<T>((b0 + b1) + (b2 + b3));
    for (; i < end; ++i) {
      const T d = p[i] - shift;
      ta += d;
      tb += d * d;
    }
    s += ta;
    ss += tb;
  }
}

// uv += sum(u[i] * v[i]), su += sum(u[i]) over i < n
template <typename T>
inline void dot_sums(const T* __restrict u, const T* __restrict v, int64_t n, double& uv,
                     double& su) {
  using V = typename Simd<T>::vec;
  constexpr int64_t W = Simd<T>::kWidth;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = std::min(n, start + kChunk);
    V a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    int64_t i = start;
    for (; i + 4 * W <= end; i += 4 * W) {
      const V u0 = load<V>(u + i), u1 = load<V>(u + i + W);
      const V u2 = load<V>(u + i + 2 * W), u3 = load<V>(u + i + 3 * W);
      a0 += u0 * load<V>(v + i), a1 += u1 * load<V>(v + i + W);
      a2 += u2 * load<V>(v + i + 2 * W), a3 += u3 * load<V>(v + i + 3 * W);
      b0 += u0, b1 += u1, b2 += u2, b3 += u3;
    }
    T ta = lane_sum<T>((a0 + a1) + (a2 + a3)), tb = lane_sum<T>((b0 + b1) + (b2 + b3));
    for (; i < end; ++i) {
      ta += u[i] * v[i];
      tb += u[i];
    }
    uv += ta;
    su += tb;
  }
}

// per-(n, c) mean and unbiased variance (0 for a single element)
std::tuple<at::Tensor, at::Tensor> moments(const at::Tensor& x) {
  check_input(x, "x");
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  at::Tensor mean = at::empty({x.size(0), x.size(1)}, x.options());
  at::Tensor var = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_moments", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* vp = var.data_ptr<scalar_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        if (hw == 0) {
          mp[k] = vp[k] = std::numeric_limits<scalar_t>::quiet_NaN();
          continue;
        }
        const scalar_t* p = xp + k * hw;
        const scalar_t shift = p[0];
        double s = 0, ss = 0;
        shifted_sums(p, hw, shift, s, ss);
        const double m = s / hw;  // mean of the shifted values
        mp[k] = static_cast<scalar_t>(shift + m);
        vp[k] = hw > 1 ? static_cast<scalar_t>(std::max(0.0, (ss - s * m) / (hw - 1))) : 0;
      }
    });
  });
  return {mean, var};
}

// y = x * scale + shift
at::Tensor apply(const at::Tensor& x, const at::Tensor& scale_, const at::Tensor& shift_) {
  check_input(x, "x");
  const at::Tensor scale = plane_param(scale_, x, "scale");
  const at::Tensor shift = plane_param(shift_, x, "shift");
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_apply", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* sp = scale.data_ptr<scalar_t>();
    const scalar_t* tp = shift.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const scalar_t s = sp[k], t = tp[k];
        const scalar_t* __restrict in = xp + k * hw;
        scalar_t* __restrict out = yp + k * hw;
        for (int64_t i = 0; i < hw; ++i) {
          out[i] = in[i] * s + t;
        }
      }
    });
  });
  return y;
}

// per-(n, c) sum(dy * x) and sum(dy)
std::tuple<at::Tensor, at::Tensor> backward_reduce(const at::Tensor& dy, const at::Tensor& x) {
  check_input(x, "x");
  check_like(dy, x, "dy");
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  at::Tensor sum_dy_x = at::empty({x.size(0), x.size(1)}, x.options());
  at::Tensor sum_dy = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_backward_reduce", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* sxp = sum_dy_x.data_ptr<scalar_t>();
    scalar_t* sp = sum_dy.data_ptr<scalar_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        double uv = 0, su = 0;
        dot_sums(dyp + k * hw, xp + k * hw, hw, uv, su);
        sxp[k] = static_cast<scalar_t>(uv);
        sp[k] = static_cast<scalar_t>(su);
      }
    });
  });
  return {sum_dy_x, sum_dy};
}

// dx = dy * a + x * b + c
at::Tensor backward_apply(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& a_,
                          const at::Tensor& b_, const at::Tensor& c_) {
  check_input(x, "x");
  check_like(dy, x, "dy");
  const at::Tensor a = plane_param(a_, x, "a");
  const at::Tensor b = plane_param(b_, x, "b");
  const at::Tensor c = plane_param(c_, x, "c");
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sn_backward_apply", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const scalar_t* cp = c.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, planes, plane_grain(hw), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const scalar_t ak = ap[k], bk = bp[k], ck = cp[k];
        const scalar_t* __restrict g = dyp + k * hw;
        const scalar_t* __restrict in = xp + k * hw;
        scalar_t* __restrict out = dxp + k * hw;
        for (int64_t i = 0; i < hw; ++i) {
          out[i] = (in[i] * bk + ck) + g[i] * ak;
        }
      }
    });
  });
  return dx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Switchable Normalization CPU kernels (float32/float64, contiguous NCHW)";
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("moments", &moments, "per-(n, c) mean and unbiased variance", py::arg("x"), nogil);
  m.def("apply", &apply, "x * scale + shift", py::arg("x"), py::arg("scale"), py::arg("shift"),
        nogil);
  m.def("backward_reduce", &backward_reduce, "per-(n, c) sum(dy * x) and sum(dy)", py::arg("dy"),
        py::arg("x"), nogil);
  m.def("backward_apply", &backward_apply, "dy * a + x * b + c", py::arg("dy"), py::arg("x"),
        py::arg("a"), py::arg("b"), py::arg("c"), nogil);
}
