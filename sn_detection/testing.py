"""Helpers for the tests and benchmarks of sn_detection (as ``detectron2/utils/testing.py``).

Nothing in the library imports this module. It holds

- ``switch_norm_reference``: a plainly written SN with the official semantics, the oracle of the
  layer tests and the "official-style" row of the benchmarks;
- ``random_sn``, ``forward_backward``, ``reference_step``, ``gradcheck_layer``: one step of an SN
  layer through its kernels and through the reference, and gradcheck of a layer;
- ``sparsemax_reference``, ``sparsestmax_reference``: the SSN paper's weights, plainly written;
- ``run_distributed`` and ``count_collectives``: several CPU processes on gloo, and counting the
  torch.distributed collectives a block makes;
- ``REPO``, ``CONFIGS``, ``load_config``: the repository's config files (source checkouts only);
- ``copypaste_metrics``: the metrics in a log of detectron2's evaluation;
- ``OfficialResNet``, ``save_official``: the released ImageNet SN and SSN classifiers rebuilt from
  their key list (``OfficialSN``, ``OfficialSSN``), saved as the official code saves them;
  ``RunsCode``: a pickle that runs code;
- ``detection_fields``, ``assert_same_detections``: exported against eager detections.
- ``sparse_sn_model``: sparse SN layers with some weight vectors fixed (``SPARSE_SN_LAYERS``).
"""

import importlib.util
import math
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# -- the reference layer -------------------------------------------------------------------------


def switch_norm_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    training: bool = True,
    momentum: float = 0.01,
    eps: float = 1e-5,
) -> Tensor:
    """SN of a 4-D ``x`` written as the original implementation writes it, line by line
    (full-size intermediate tensors, autograd through every op); the BN branch is used when
    running statistics are given.

    ``momentum`` is PyTorch's (share of the batch statistic); in training the running statistics
    are updated in place, as in the official code. It has the original's defects: NaN for
    H*W = 1 and for empty batches, and E[x^2] - E[x]^2 cancellation (use it in float64).
    """
    n, c, h, w = x.shape
    x = x.view(n, c, -1)
    mean_in = x.mean(-1, keepdim=True)
    var_in = x.var(-1, keepdim=True)  # unbiased, as the official code

    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in**2
    var_ln = temp.mean(1, keepdim=True) - mean_ln**2

    using_bn = running_mean is not None
    if using_bn:
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                keep = 1.0 - momentum
                running_mean.mul_(keep).add_(momentum * mean_bn.view(c))
                running_var.mul_(keep).add_(momentum * var_bn.view(c))
        else:
            mean_bn = running_mean.view(1, c, 1)
            var_bn = running_var.view(1, c, 1)

    softmax = torch.nn.Softmax(0)
    mw = softmax(mean_weight)
    vw = softmax(var_weight)
    if using_bn:
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
    else:
        mean = mw[0] * mean_in + mw[1] * mean_ln
        var = vw[0] * var_in + vw[1] * var_ln

    x = (x - mean) / (var + eps).sqrt()
    x = x.view(n, c, h, w)
    return x * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


# -- sparse SN ---------------------------------------------------------------------------------


def sparsemax_reference(z: List[float]) -> List[float]:
    """Sparsemax of a list of floats, by the textbook algorithm."""
    s = sorted(z, reverse=True)
    k = max(j for j in range(1, len(z) + 1) if 1 + j * s[j - 1] > sum(s[:j]))
    tau = (sum(s[:k]) - 1) / k
    return [max(v - tau, 0.0) for v in z]


def sparsestmax_reference(z: List[float], r: float) -> List[float]:
    """SparsestMax as the SSN paper describes it, for a list of 2 or 3 floats."""
    w = sparsemax_reference(z)
    n = len(z)
    u = 1.0 / n
    d = math.sqrt(sum((v - u) ** 2 for v in w))
    if d >= r or d < 1e-9:
        return w
    p = [u + r * (v - u) / d for v in w]
    if min(p) >= 0:
        return p
    if n == 2:
        return [1.0 if v > 0.5 else 0.0 for v in p]
    # the edge (1/2 + t, 1/2 - t, 0) at distance r from u, t from the paper's formula
    t = math.sqrt(2) * r * math.sin(math.acos(min(1.0, 1 / (math.sqrt(6) * r)))) / 2
    t = min(t, 0.5)
    order = sorted(range(3), key=lambda i: -p[i])
    out = [0.0] * 3
    out[order[0]], out[order[1]] = 0.5 + t, 0.5 - t
    return out


# -- one step of a layer -------------------------------------------------------------------------

PARAMETER_NAMES = ("weight", "bias", "mean_weight", "var_weight")


def random_sn(channels=6, using_bn=True, dtype=torch.float64, seed=0):
    """A SwitchNorm2d (momentum 0.1) with random parameters and running statistics."""
    from sn_detection.layers import SwitchNorm2d

    torch.manual_seed(seed)
    m = SwitchNorm2d(channels, using_bn=using_bn, momentum=0.1).to(dtype)
    with torch.no_grad():
        for p in (m.weight, m.bias, m.mean_weight, m.var_weight):
            p.normal_()
        if using_bn:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return m


def randomize_sn_state(model: torch.nn.Module, affine: bool = False) -> torch.nn.Module:
    """Random running statistics and logits (with ``affine``, also weight and bias) for every SN
    layer of a whole model, trainable, synchronized or frozen (in place), so that a model with
    random weights tests more than SN's initial state; the statistics stay near what conv
    features of the initial weights give."""
    from sn_detection.layers import named_switch_norms

    with torch.no_grad():
        for _, m in named_switch_norms(model):
            if m.using_bn:
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            m.mean_weight.normal_()
            m.var_weight.normal_()
            if affine:
                m.weight.normal_()
                m.bias.normal_()
    return model


def forward_backward(m, x, dy, fast: bool):
    """Output, gradients (x and parameters) and running statistics of one step of ``m``, on the
    fast kernels (``fast``) or the plain ones."""
    from sn_detection.layers import kernels

    x = x.detach().clone().requires_grad_()
    with kernels.fast_kernels(fast):
        y = m(x)
        grads = torch.autograd.grad(y, [x, m.weight, m.bias, m.mean_weight, m.var_weight], dy)
    stats = [m.running_mean.clone(), m.running_var.clone()] if m.using_bn else []
    return [y.detach(), *grads, *stats]


def reference_step(m, x, dy, training):
    """The same as ``forward_backward`` through ``switch_norm_reference``."""
    x = x.detach().clone().requires_grad_()
    params = [
        p.detach().clone().requires_grad_() for p in (m.weight, m.bias, m.mean_weight, m.var_weight)
    ]
    rm = m.running_mean.clone() if m.using_bn else None
    rv = m.running_var.clone() if m.using_bn else None
    y = switch_norm_reference(x, *params, rm, rv, training=training, momentum=m.momentum, eps=m.eps)
    grads = torch.autograd.grad(y, [x, *params], dy)
    return [y.detach(), *grads, *([rm, rv] if m.using_bn else [])]


def gradcheck_layer(m, x, **gradcheck_options):
    """``torch.autograd.gradcheck`` of ``m`` with respect to ``x`` and its four parameters."""

    def fn(x, *params):
        return torch.func.functional_call(m, dict(zip(PARAMETER_NAMES, params)), (x,))

    params = tuple(getattr(m, name).detach().clone().requires_grad_() for name in PARAMETER_NAMES)
    return torch.autograd.gradcheck(fn, (x, *params), **gradcheck_options)


# -- several processes ---------------------------------------------------------------------------


def _worker(rank: int, world_size: int, tmp: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)  # one core per process
    store = os.path.join(tmp, "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(tmp, f"result{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 40.0) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned CPU processes of one gloo
    group (``fn`` must be importable by the children: a module-level function).

    Returns each rank's return value (saved with ``torch.save``). A process that raises fails
    the caller with its traceback; processes still running after ``timeout`` seconds (a hang in
    a collective) are killed and TimeoutError is raised.
    """
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(
            _worker,
            args=(world_size, tmp, fn, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{getattr(fn, '__name__', fn)} did not finish in {timeout:.0f} s "
                        "(a hang in a collective?)"
                    )
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        return [
            torch.load(os.path.join(tmp, f"result{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]


COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "all_to_all",
)


@contextmanager
def count_collectives() -> Iterator[Dict[str, int]]:
    """Count the calls of torch.distributed's collectives (by name) made inside the block.

    Wraps the functions of the ``torch.distributed`` module for the duration of the block, so it
    sees calls made as ``dist.all_reduce(...)`` (as fvcore and detectron2 make them), in this
    process only.
    """
    counts: Dict[str, int] = {}
    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def counting(name: str, original: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(*args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(dist, name, counting(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


# -- configs -------------------------------------------------------------------------------------


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository that is not in a package (``tools/train_net.py``, ...) as a
    module, e.g. to call its ``main`` in the test's process."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_with_file_size_limit(
    relative_path: str, args: List[str], limit: int, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a script of the repository in a child process whose files cannot grow past ``limit``
    bytes (RLIMIT_FSIZE; SIGXFSZ ignored, so that such a write fails with EFBIG instead of
    killing the process): a full disk, reproducibly. Returns the finished process (text output).
    """

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, str(REPO / relative_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit_file_size,
    )


def load_config(path, *opts):
    """A mutable cfg from a config file with MODEL.SN added, on the CPU, with KEY VALUE
    overrides."""
    from detectron2.config import get_cfg

    from sn_detection import add_sn_config

    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def copypaste_metrics(log: str) -> Dict[str, Dict[str, float]]:
    """{task: {metric: value}} from the 'copypaste' lines detectron2's evaluation logs."""
    metrics: Dict[str, Dict[str, float]] = {}
    task, names = None, None
    for line in log.splitlines():
        m = re.search(r"copypaste: (.*)$", line)
        if not m:
            continue
        text = m.group(1)
        if text.startswith("Task: "):
            task, names = text[len("Task: ") :], None
        elif names is None:
            names = text.split(",")
        else:
            metrics[task] = dict(zip(names, map(float, text.split(","))))
    return metrics


# -- smoke training ------------------------------------------------------------------------------


def train_and_evaluate(cfg, output_dir: str, max_eval_images: int = 4) -> tuple:
    """Train ``cfg.SOLVER.MAX_ITER`` iterations (our SN-aware optimizer, detectron2's
    SimpleTrainer, which fails on a non-finite loss), then evaluate the first ``max_eval_images``
    images of ``cfg.DATASETS.TEST[0]``. Returns ``(model, results)``, results as detectron2's
    ``inference_on_dataset``."""
    from detectron2.data import (
        DatasetCatalog,
        DatasetMapper,
        build_detection_test_loader,
        build_detection_train_loader,
    )
    from detectron2.engine import SimpleTrainer
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from sn_detection import build_sn_optimizer
    from sn_detection.evaluation import build_sn_evaluator

    model = build_model(cfg)
    optimizer = build_sn_optimizer(cfg, model)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    trainer.train(0, cfg.SOLVER.MAX_ITER)
    name = cfg.DATASETS.TEST[0]
    loader = build_detection_test_loader(
        dataset=DatasetCatalog.get(name)[:max_eval_images], mapper=DatasetMapper(cfg, False)
    )
    # output_dir holds the COCO json the evaluator converts, remembered in the dataset's metadata
    # for the process: one directory per process
    evaluator = build_sn_evaluator(name, output_dir, kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS)
    results = inference_on_dataset(model, loader, evaluator)
    return model, results


# -- checkpoints in the official ImageNet SN layout ----------------------------------------------

OFFICIAL_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class OfficialSN(nn.Module):
    """SN with the official tensor shapes ((1,C,1,1) weight/bias, (1,C,1) running statistics),
    random values, and the reference semantics."""

    def __init__(self, c: int, using_bn: bool):
        super().__init__()
        self.using_bn = using_bn
        self.weight = nn.Parameter(1 + 0.2 * torch.randn(1, c, 1, 1))
        self.bias = nn.Parameter(0.2 * torch.randn(1, c, 1, 1))
        self.mean_weight = nn.Parameter(torch.randn(3 if using_bn else 2))
        self.var_weight = nn.Parameter(torch.randn(3 if using_bn else 2))
        if using_bn:
            self.register_buffer("running_mean", 0.1 * torch.randn(1, c, 1))
            self.register_buffer("running_var", 0.5 + torch.rand(1, c, 1))

    def softmax_logits(self, dtype: torch.dtype) -> List[Tensor]:
        """The (mean, var) logits whose softmax is the mix weights: the layer's own."""
        return [self.mean_weight, self.var_weight]

    def forward(self, x: Tensor) -> Tensor:
        stats = {}
        if self.using_bn:
            stats = {
                "running_mean": self.running_mean.view(-1),
                "running_var": self.running_var.view(-1),
            }
        w, b = self.weight.view(-1), self.bias.view(-1)
        p, q = self.softmax_logits(x.dtype)
        return switch_norm_reference(x, w, b, p, q, training=self.training, **stats)


class OfficialSSN(OfficialSN):
    """The official ``SSN2d`` state: :class:`OfficialSN`'s tensors and shapes plus the buffers
    ``mean_fixed``, ``var_fixed`` (long, [1]) and ``radius`` ((1,) float). A fixed weight vector
    holds the logits the official code writes when fixing it: 1 for a random choice, 0 for the
    other branches. Its mix weights (:meth:`mix_weights`, from ``sparsestmax_reference``): the
    one-hot of the largest logit where fixed, else sparsestmax of the logits at the radius."""

    def __init__(self, c: int, using_bn: bool, radius: float = 1.0, fixed=(True, True)):
        super().__init__(c, using_bn)
        self.register_buffer("mean_fixed", torch.tensor([int(fixed[0])], dtype=torch.long))
        self.register_buffer("var_fixed", torch.tensor([int(fixed[1])], dtype=torch.long))
        self.register_buffer("radius", torch.full((1,), float(radius)))
        with torch.no_grad():
            for logits, is_fixed in zip((self.mean_weight, self.var_weight), fixed):
                if is_fixed:
                    choice = int(torch.randint(logits.numel(), ()))
                    logits.copy_((torch.arange(logits.numel()) == choice).to(logits.dtype))

    def mix_weights(self) -> List[Tensor]:
        """The (mean, var) mix weights this state stands for, computed plainly."""
        out = []
        for logits, fixed in (
            (self.mean_weight, self.mean_fixed),
            (self.var_weight, self.var_fixed),
        ):
            z = logits.detach().double().tolist()
            if int(fixed):
                out.append(torch.tensor([float(v == max(z)) for v in z], dtype=torch.float64))
            else:
                out.append(
                    torch.tensor(sparsestmax_reference(z, float(self.radius)), dtype=torch.float64)
                )
        return out

    def softmax_logits(self, dtype: torch.dtype) -> List[Tensor]:
        """log of :meth:`mix_weights` (a weight of 0: a logit of -inf, a share of exactly 0)."""
        return [torch.log(w).to(dtype) for w in self.mix_weights()]


def _official_norm(sparse: bool, radius: float) -> Callable[[int, bool], nn.Module]:
    """The norm of an official ResNet: OfficialSN, or OfficialSSN at ``radius`` with each weight
    vector fixed with probability 3/4."""
    if not sparse:
        return OfficialSN

    def norm(c: int, using_bn: bool) -> nn.Module:
        fixed = tuple(bool(f) for f in (torch.rand(2) < 0.75).tolist())
        return OfficialSSN(c, using_bn, radius, fixed)

    return norm


class _V1Block(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, using_bn: bool, norm=OfficialSN):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.sn1 = norm(planes, using_bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.sn2 = norm(planes, using_bn)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.sn3 = norm(planes * 4, using_bn)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            conv = nn.Conv2d(cin, planes * 4, 1, stride, bias=False)
            self.downsample = nn.Sequential(conv, norm(planes * 4, using_bn))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.sn1(self.conv1(x)))
        out = F.relu(self.sn2(self.conv2(out)))
        out = self.sn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _V2Block(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, using_bn: bool, norm=OfficialSN):
        super().__init__()
        self.sn1 = norm(cin, using_bn)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.sn2 = norm(planes, using_bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.sn3 = norm(planes, using_bn)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Conv2d(cin, planes * 4, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        preact = F.relu(self.sn1(x))
        out = self.conv1(preact)
        out = self.conv2(F.relu(self.sn2(out)))
        out = self.conv3(F.relu(self.sn3(out)))
        return out + (x if self.downsample is None else self.downsample(preact))


class OfficialResNet(nn.Module):
    """ResNet v1/v2 + SN with the official module names, random weights and narrow widths (stem
    ``stem`` channels, res2 bottleneck ``planes``); ``features`` gives what our backbone must
    return: v1 stage outputs; v2 each stage output through the next pre-activation.
    ``sparse``: the official ``resnet_v1_ssn`` instead, its norms :class:`OfficialSSN` at
    ``radius``, each weight vector fixed with probability 3/4 (``arch`` names the model)."""

    def __init__(
        self,
        version: str = "v1",
        depth: int = 50,
        using_bn: bool = True,
        stem: int = 16,
        planes: int = 16,
        sparse: bool = False,
        radius: float = 1.0,
    ):
        super().__init__()
        self.version = version
        self.arch = f"resnet{version}{'ssn' if sparse else 'sn'}{depth}"
        block = _V1Block if version == "v1" else _V2Block
        norm = _official_norm(sparse, radius)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.sn1 = norm(stem, using_bn)
        cin = stem
        for k, n in enumerate(OFFICIAL_BLOCKS[depth], start=1):
            p = planes * 2 ** (k - 1)
            layer = [block(cin, p, 2 if k > 1 else 1, using_bn, norm)]
            layer += [block(p * 4, p, 1, using_bn, norm) for _ in range(n - 1)]
            setattr(self, f"layer{k}", nn.Sequential(*layer))
            cin = p * 4
        if version == "v2":
            self.sn_out = norm(cin, using_bn)
        self.fc = nn.Linear(cin, 10)

    def features(self, x: Tensor) -> Dict[str, Tensor]:
        x = F.max_pool2d(F.relu(self.sn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for k in (1, 2, 3, 4):
            x = getattr(self, f"layer{k}")(x)
            outs.append(x)
        if self.version == "v1":
            return {f"res{k + 2}": o for k, o in enumerate(outs)}
        nxt = [self.layer2[0].sn1, self.layer3[0].sn1, self.layer4[0].sn1, self.sn_out]
        return {f"res{k + 2}": F.relu(norm(o)) for k, (o, norm) in enumerate(zip(outs, nxt))}


def save_official(model: nn.Module, path, legacy: bool = False) -> None:
    """Save ``model`` as the official training script does: epoch, arch, best_prec1, optimizer,
    and for SN DataParallel ("module.") keys; for SSN (whose script trains the bare model) bare
    keys and its step-LR scheduler's state. ``legacy``: a numpy best_prec1 and the pre-1.6
    format."""
    arch = getattr(model, "arch", "resnetv1sn50")
    sparse = "ssn" in arch
    state = {("" if sparse else "module.") + k: v for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    best = np.float64(76.92) if legacy else 76.92
    ckpt = {"epoch": 100, "model": arch, "state_dict": state, "best_prec1": best}
    ckpt["optimizer"] = optimizer.state_dict()
    if sparse:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [30, 60, 90])
        ckpt["lr_scheduler"] = scheduler.state_dict()
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)


class RunsCode:
    """Unpickling this object runs a shell command that creates ``marker``: the payload of a
    malicious weights file (a reader must refuse the global ``posix.system``)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- exported against eager detections -----------------------------------------------------------


def detection_fields(instances) -> Dict[str, Tensor]:
    """The fields of detectron2 ``Instances`` that exports return, as tensors."""
    return {
        "pred_boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "pred_classes": instances.pred_classes,
        "pred_masks": instances.pred_masks,
    }


def assert_same_detections(got: Mapping[str, Any], want: Mapping[str, Tensor]) -> None:
    """``got`` (tensors or arrays, e.g. from onnxruntime) has ``want``'s detections, up to the
    float rounding by which the exported SN statistics differ from eager ones."""
    assert len(want["scores"]) > 0, "no detection to compare"
    got = {name: torch.as_tensor(got[name]) for name in want}
    torch.testing.assert_close(got["pred_boxes"], want["pred_boxes"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-4)
    assert torch.equal(got["pred_classes"], want["pred_classes"])
    torch.testing.assert_close(got["pred_masks"], want["pred_masks"], rtol=1e-4, atol=1e-4)


# (name, mean logits, var logits, radius) of the layers of sparse_sn_model, and what a training
# forward makes of them: res3.0.conv1 fixes both (IN for the mean, BN for the variance),
# res3.0.conv2 fixes its mean (LN) only, the FPN layer neither
SPARSE_SN_LAYERS = [
    ("backbone.bottom_up.res3.0.conv1.norm", [3.0, 0.0, 0.0], [0.0, 0.0, 3.0], 1.0),
    ("backbone.bottom_up.res3.0.conv2.norm", [0.0, 2.0, 0.0], [0.5, 0.3, 0.2], 0.4),
    ("backbone.fpn_lateral3.norm", [0.2, 0.1, 0.0], [0.0, 0.1, 0.3], 0.2),
]


def sparse_sn_model() -> nn.Module:
    """A model of three SparseSwitchNorm2d(4) layers (``SPARSE_SN_LAYERS``), each after one
    training forward at its radius, so that some of their weight vectors are fixed."""
    from sn_detection.layers import SparseSwitchNorm2d, set_ssn_radius

    model = nn.Module()
    torch.manual_seed(0)
    for name, mean, var, radius in SPARSE_SN_LAYERS:
        layer = SparseSwitchNorm2d(4)
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor(mean))
            layer.var_weight.copy_(torch.tensor(var))
        set_ssn_radius(layer, radius)
        layer.train()(torch.randn(2, 4, 3, 3))
        parent = model
        for component in name.split(".")[:-1]:
            if not hasattr(parent, component):
                parent.add_module(component, nn.Module())
            parent = getattr(parent, component)
        parent.add_module(name.split(".")[-1], layer)
    return model.eval()
