import itertools

import pytest
import torch

from sn_detection.layers.sparsestmax import is_one_hot, sparsemax, sparsestmax
from sn_detection.testing import sparsemax_reference as reference_sparsemax
from sn_detection.testing import sparsestmax_reference as reference_sparsestmax


def _close(actual, expected, tol=1e-9):
    assert actual.tolist() == pytest.approx(expected, abs=tol)


CASES = [
    [0.3, -1.2, 0.8],
    [2.0, 0.0, -2.0],
    [0.1, 0.1, 0.0],  # a tie of the two largest
    [1.0, 1.0, 1.0],  # equal logits
    [0.05, 0.0, -0.05],  # close to u
    [5.0, 0.0, 0.0],  # sparsemax is already a vertex
    [0.4, 0.35, -3.0],  # sparsemax already on an edge
]


@pytest.mark.parametrize("z", CASES)
def test_sparsemax_matches_the_textbook_algorithm_and_sums_to_one(z):
    w = sparsemax(torch.tensor(z, dtype=torch.float64))
    _close(w, reference_sparsemax(z))
    assert w.sum().item() == pytest.approx(1.0) and w.min().item() >= 0


@pytest.mark.parametrize(
    "z,r", list(itertools.product(CASES, [0.0, 0.1, 0.3, 0.45, 0.6, 0.8, 1.0]))
)
def test_sparsestmax_matches_the_reference(z, r):
    _close(
        sparsestmax(torch.tensor(z, dtype=torch.float64), torch.tensor(r, dtype=torch.float64)),
        reference_sparsestmax(z, r),
    )


@pytest.mark.parametrize(
    "z,r", list(itertools.product([[0.3, -0.2], [1.0, 1.0], [0.0, 4.0]], [0.0, 0.3, 1.0]))
)
def test_sparsestmax_of_two_statistics_matches_the_reference(z, r):
    _close(sparsestmax(torch.tensor(z, dtype=torch.float64), r), reference_sparsestmax(z, r))


def test_radius_zero_is_sparsemax():
    z = torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(sparsestmax(z, torch.tensor(0.0)), sparsemax(z))


def test_radius_one_is_one_hot_at_the_largest_logit():
    z = torch.randn(50, 3, dtype=torch.float64)
    w = sparsestmax(z, torch.tensor(1.0))
    assert bool(is_one_hot(w).all())
    assert torch.equal(w.argmax(-1), z.argmax(-1))


def test_equal_logits_stay_uniform_with_a_finite_gradient():
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    w = sparsestmax(z, torch.tensor(0.5))
    _close(w, [1 / 3] * 3)
    (w * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_points_outside_the_circle_are_kept():
    z = torch.tensor([3.0, 0.0, -1.0], dtype=torch.float64)  # sparsemax: a vertex
    torch.testing.assert_close(sparsestmax(z, torch.tensor(0.5)), sparsemax(z))


def test_pushed_points_lie_on_the_circle_or_the_edge_and_on_the_simplex():
    torch.manual_seed(0)
    z = torch.randn(200, 3, dtype=torch.float64) * 0.3
    for r in (0.2, 0.5, 0.7):
        w = sparsestmax(z, torch.tensor(r, dtype=torch.float64))
        assert torch.allclose(w.sum(-1), torch.ones(200, dtype=torch.float64))
        assert bool((w >= 0).all())
        distance = torch.linalg.vector_norm(w - 1 / 3, dim=-1)
        assert bool((distance >= r - 1e-9).all())


def test_a_radius_per_row_broadcasts():
    z = torch.tensor([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]], dtype=torch.float64)
    w = sparsestmax(z, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(w[0], sparsemax(z[0]))
    assert w[1].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("r", [0.0, 0.2, 0.5, 0.7])
def test_gradcheck_in_float64(r):
    # points away from the kinks (ties, the circle, the simplex's faces)
    z = torch.tensor([[0.31, 0.02, -0.4], [0.2, -0.05, 0.1], [1.3, 0.9, -2.0]], dtype=torch.float64)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: sparsestmax(t, torch.tensor(r, dtype=torch.float64)), (z,)
    )


def test_four_statistics_are_refused():
    with pytest.raises(ValueError, match="2 or 3"):
        sparsestmax(torch.zeros(4), torch.tensor(0.5))


def test_no_host_sync_in_sparsestmax(monkeypatch):
    # reading a tensor's value on the host (item, bool, tolist) would sync a GPU: none is called
    calls = []
    for name in ("item", "tolist", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    sparsestmax(torch.randn(2, 3), torch.tensor(0.4))
    monkeypatch.undo()
    assert calls == []
