"""Losses: reference values from POT, gradients, dtype/device, bad input, seeded draws."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from patchlab import losses as L


def clouds(n=37, m=23, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype) * 1.5 + 0.4)


@pytest.mark.parametrize("n,m", [(40, 40), (37, 23), (5, 64)])
def test_sliced_wasserstein_matches_pot_squared_on_the_same_projections(n, m):
    x, y = clouds(n, m)
    proj = L.random_projections(8, 500, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = float(L.sliced_wasserstein(x, y, projections=proj))
    ref = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=proj.numpy(), p=2) ** 2
    assert ours == pytest.approx(ref, abs=1e-5)
    assert ours > 0.05  # the clouds differ: a zero would also "match" a broken reference


def test_sliced_wasserstein_float32_matches_pot_to_1e_5():
    x, y = clouds(64, 48, 16, dtype=torch.float32)
    proj = L.random_projections(16, 500, generator=torch.Generator().manual_seed(1))
    ours = float(L.sliced_wasserstein(x, y, projections=proj))
    ref = ot.sliced_wasserstein_distance(x.double().numpy(), y.double().numpy(), projections=proj.double().numpy()) ** 2
    assert abs(ours - ref) < 1e-5


@pytest.mark.parametrize("n,m", [(40, 40), (37, 23)])
def test_projection_bank_is_pots_sliced_distance_on_the_drawn_directions(n, m):
    """The bank's distance equals POT's sliced W2 on the directions it drew; its gradient reaches x;
    the same seed rebuilds the same bank (a resumed run); draws are distinct and from the generator."""
    x, y = clouds(n, m)
    bank = L.ProjectionBank(y, 2000, seed=7)
    assert bank.size == 2000 and torch.equal(bank.directions, L.ProjectionBank(y, 2000, seed=7).directions)
    assert not torch.equal(bank.directions, L.ProjectionBank(y, 2000, seed=8).directions)
    xg = x.clone().requires_grad_(True)
    ours = bank.distance(xg, 500, generator=torch.Generator().manual_seed(4))
    idx = bank.draw(500, torch.Generator().manual_seed(4))
    assert idx.unique().numel() == 500
    proj = bank.directions[idx].T
    ref = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=proj.numpy(), p=2) ** 2
    assert float(ours) == pytest.approx(ref, abs=1e-6) and float(ours) > 0.05
    (g,) = torch.autograd.grad(ours, xg)
    (g_ref,) = torch.autograd.grad(L.sliced_wasserstein(xg, y, projections=proj), xg)
    assert torch.allclose(g, g_ref, atol=1e-10) and float(g.abs().sum()) > 0
    with pytest.raises(ValueError, match="bank"):
        bank.distance(x, 2001)


def test_wasserstein2_matches_pot_emd2():
    x, y = clouds(12, 9, 5)
    ref = ot.emd2(ot.unif(12), ot.unif(9), ot.dist(x.numpy(), y.numpy()))
    assert float(L.wasserstein2(x, y)) == pytest.approx(ref, rel=1e-10)


def test_wasserstein_1d_with_unequal_sizes_is_exact():
    # one point against two: W2^2 = mean squared distance to each half
    u = torch.tensor([[0.0]], dtype=torch.float64)
    v = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    assert float(L.wasserstein_1d(u, v)) == pytest.approx((1 + 9) / 2)
    # and sliced along the only axis equals exact W2 in 1-D
    x, y = clouds(7, 5, 1)
    assert float(L.quantile_matching(x, y)) == pytest.approx(float(L.wasserstein2(x, y)), rel=1e-9)


def test_quantile_matching_is_sliced_wasserstein_on_the_axes():
    x, y = clouds()
    eye = torch.eye(8, dtype=torch.float64)
    assert float(L.quantile_matching(x, y)) == pytest.approx(float(L.sliced_wasserstein(x, y, projections=eye)))


def test_feature_l2_and_ce_reference_values():
    x, y = clouds(4, 6, 3)
    ref = ((x - y.mean(0)) ** 2).sum(1).mean()
    assert float(L.feature_l2(x, y)) == pytest.approx(float(ref))
    logits = torch.randn(5, 10)
    assert float(L.targeted_cross_entropy(logits, 3)) == pytest.approx(
        float(F.cross_entropy(logits, torch.full((5,), 3)))
    )


def test_total_variation_and_nps_reference_values():
    p = torch.zeros(3, 4, 4, dtype=torch.float64)
    assert float(L.total_variation(p)) == 0.0
    p[:, :, 2:] = 1.0  # one vertical edge of height 4 in 3 channels
    assert float(L.total_variation(p)) == pytest.approx(12 / (3 * 4 * 3 * 2))
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert float(L.non_printability(p, palette)) == pytest.approx(0.0, abs=1e-5)
    grey = torch.full((3, 2, 2), 0.5, dtype=torch.float64)
    assert float(L.non_printability(grey, palette)) == pytest.approx(np.sqrt(3 * 0.25), rel=1e-6)


@pytest.mark.parametrize("fn", ["sw", "w2", "quantile", "l2"])
def test_distribution_losses_gradcheck(fn):
    x, y = clouds(9, 7, 4)
    x.requires_grad_(True)
    y.requires_grad_(True)
    if fn == "sw":
        proj = L.random_projections(4, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        f = lambda a, b: L.sliced_wasserstein(a, b, projections=proj)  # noqa: E731
    else:
        f = L.DISTRIBUTION_LOSSES[fn]
    assert torch.autograd.gradcheck(f, (x, y))


def test_regularisers_gradcheck():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pal = torch.rand(6, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(L.total_variation, (p,))
    assert torch.autograd.gradcheck(lambda q: L.non_printability(q, pal), (p,))


def test_dtype_follows_input_and_modules_move_buffers():
    x, y = clouds(dtype=torch.float64)
    assert L.sliced_wasserstein(x, y, 16).dtype == torch.float64
    assert L.wasserstein2(x, y).dtype == torch.float64
    assert L.sliced_wasserstein(x.float(), y.float(), 16).dtype == torch.float32
    m = L.NonPrintability(torch.rand(4, 3)).to(torch.float64)
    assert m.palette.dtype == torch.float64
    assert m(torch.rand(3, 2, 2, dtype=torch.float64)).dtype == torch.float64
    assert "n_proj=7" in repr(L.SlicedWasserstein(7))


def test_fresh_projections_come_from_the_generator():
    x, y = clouds()
    a = L.sliced_wasserstein(x, y, 50, generator=torch.Generator().manual_seed(5))
    b = L.sliced_wasserstein(x, y, 50, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    c1, c2 = L.sliced_wasserstein(x, y, 50, generator=g), L.sliced_wasserstein(x, y, 50, generator=g)
    assert float(a) == float(b) == float(c1)
    assert float(c1) != float(c2)  # the next call draws new directions
    d = L.random_projections(8, 100, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(d.norm(dim=0), torch.ones(100), atol=1e-6)


def test_bad_input_is_a_clear_error():
    x, y = clouds(5, 5, 3)
    with pytest.raises(ValueError, match="differ in dimension"):
        L.sliced_wasserstein(x, torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        L.wasserstein2(torch.randn(2, 3, 4), y)
    with pytest.raises(ValueError, match="projections of shape"):
        L.sliced_wasserstein(x, y, projections=torch.randn(4, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(3, h, w\)"):
        L.total_variation(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="palette"):
        L.non_printability(torch.rand(3, 4, 4), torch.rand(4, 4))
