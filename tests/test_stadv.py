"""stAdv (Xiao et al. 2018): warp, flow loss, margin, per-image L-BFGS and the attack on a real model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from patchlab.attacks import ATTACKS, AttackResult
from patchlab.attacks.stadv import (
    adversarial_margin,
    flow_loss,
    flow_warp,
    lbfgs_coroutine,
    run_lbfgs_batched,
    smooth_margin,
    stadv,
)
from patchlab.errors import ConfigError
from patchlab.models import ModelInfo, Preprocess, WrappedModel


# -- eq. 1 -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7), (28, 28), (32, 32), (33, 31), (64, 48), (224, 227)])
def test_zero_flow_is_the_identity_bit_for_bit(dtype, hw):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *hw, generator=g, dtype=dtype)
    x[0, 0, 0, 0] = 0.0  # a black pixel beside bright ones must stay exactly 0
    out = flow_warp(x, torch.zeros(2, 2, *hw, dtype=dtype))
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, x)


def _warp_numpy(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Eq. 1 transcribed: out(p) = sum over the 4 pixels q around p + f(p) of
    x(q) (1 - |u_q - u|)(1 - |v_q - v|), with coordinates clamped to the image."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            u = min(max(j + flow[0, i, j], 0.0), w - 1.0)
            v = min(max(i + flow[1, i, j], 0.0), h - 1.0)
            j0, i0 = int(math.floor(u)), int(math.floor(v))
            for qi in (i0, i0 + 1):
                for qj in (j0, j0 + 1):
                    wt = max(0.0, 1 - abs(qj - u)) * max(0.0, 1 - abs(qi - v))
                    if wt > 0:
                        out[:, i, j] += wt * img[:, min(qi, h - 1), min(qj, w - 1)]
    return out


def test_warp_matches_eq1_transcription_and_moves_the_right_way():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 9, 12, generator=g, dtype=torch.float64)
    f = torch.randn(2, 2, 9, 12, generator=g, dtype=torch.float64) * 2.5
    out = flow_warp(x, f)
    for k in range(2):
        ref = _warp_numpy(x[k].numpy(), f[k].numpy())
        np.testing.assert_allclose(out[k].numpy(), ref, atol=1e-12)
    # a flow of +1 in x reads the right-hand neighbour; +1 in y the one below
    one = torch.zeros(2, 2, 9, 12, dtype=torch.float64)
    one[:, 0] = 1.0
    assert torch.allclose(flow_warp(x, one)[..., :-1], x[..., 1:])
    one = torch.zeros(2, 2, 9, 12, dtype=torch.float64)
    one[:, 1] = 1.0
    assert torch.allclose(flow_warp(x, one)[..., :-1, :], x[..., 1:, :])


def test_warp_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"flow \(N, 2, H, W\)"):
        flow_warp(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 7))


# -- eq. 4 -----------------------------------------------------------------
def test_flow_loss_hand_computed_3x3():
    # u (x-flow) has a single 1 in the centre, v is 0 everywhere; eps = 0.
    flow = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    flow[0, 0, 1, 1] = 1.0
    # 4-neighbourhood: the centre differs from its 4 neighbours by 1 (4 terms of 1), and
    # each of the 4 edge-middle pixels has the centre as one neighbour (4 terms of 1);
    # every other pair (incl. the replicated border) is 0: total 8.
    assert flow_loss(flow, eps=0.0).item() == pytest.approx(8.0, abs=1e-12)
    # diagonal neighbourhood (reference TF code): centre vs 4 corners, corners vs centre: 8
    assert flow_loss(flow, neighbourhood="diagonal", eps=0.0).item() == pytest.approx(8.0, abs=1e-12)
    assert flow_loss(flow, neighbourhood="8", eps=0.0).item() == pytest.approx(16.0, abs=1e-12)
    # a second example with both components and the square root at work:
    # u = [[0,0,0],[0,0,0],[3,3,3]], v = [[0,0,0],[0,0,0],[0,0,4]].
    flow = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    flow[0, 0, 2, :] = 3.0
    flow[0, 1, 2, 2] = 4.0
    # vertical pairs rows 1-2 (counted from both ends): columns 0,1: |(3,0)| = 3, column 2: |(3,4)| = 5
    #   -> 2 * (3 + 3 + 5) = 22;  horizontal pair (2,1)-(2,2): |(0,4)| = 4 -> 2 * 4 = 8.
    assert flow_loss(flow, eps=0.0).item() == pytest.approx(30.0, abs=1e-12)
    # eps: the 9 pixels x 4 neighbours each get sqrt(d^2 + eps)
    eps = 1e-2
    want = 2 * (2 * math.sqrt(9 + eps) + math.sqrt(25 + eps)) + 2 * math.sqrt(16 + eps) + (36 - 8) * math.sqrt(eps)
    assert flow_loss(flow, eps=eps).item() == pytest.approx(want, abs=1e-12)
    # zero flow: H * W * |N| * sqrt(eps)
    assert flow_loss(torch.zeros(2, 2, 5, 7)).tolist() == pytest.approx([5 * 7 * 4 * 1e-4] * 2, rel=1e-5)


@pytest.mark.parametrize("neighbourhood", ["4", "diagonal", "8"])
def test_flow_loss_gradcheck(neighbourhood):
    g = torch.Generator().manual_seed(2)
    flow = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: flow_loss(f, neighbourhood=neighbourhood), (flow,))
    assert torch.autograd.gradcheck(lambda f: flow_loss(f, neighbourhood=neighbourhood, eps=1e-2), (flow,))


def test_flow_loss_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        flow_loss(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ConfigError, match="neighbourhood"):
        flow_loss(torch.zeros(1, 2, 4, 4), neighbourhood="6")


# -- eq. 3 -----------------------------------------------------------------
def test_margin_on_logits_with_the_papers_sign_of_kappa():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    t = torch.tensor([2, 0])
    # targeted: max_{i != t} Z_i - Z_t, floored at -kappa
    assert adversarial_margin(z, t, targeted=True).tolist() == [1.0, 0.0]
    assert adversarial_margin(z, t, targeted=True, kappa=10.0).tolist() == [1.0, -4.0]
    # untargeted: Z_y - max_{i != y} Z_i
    assert adversarial_margin(z, t, targeted=False, kappa=10.0).tolist() == [-1.0, 4.0]


def test_smooth_margin_bounds_eq3_and_is_smooth_at_ties():
    z = torch.tensor([[1.0, 3.0, 3.0], [0.0, 0.0, 9.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 2])
    sm = smooth_margin(z, t, targeted=True)
    hard = adversarial_margin(z, t, targeted=True, kappa=math.inf)
    assert (sm >= hard).all()  # negative smooth margin => adversarial
    assert sm[0].item() == pytest.approx(math.log(2 * math.exp(3.0)) - 1.0)
    (g,) = torch.autograd.grad(sm[0], z)
    assert g[0].tolist() == pytest.approx([-1.0, 0.5, 0.5])  # both tied classes get a share
    assert (smooth_margin(z, t, targeted=False) <= -hard).all()


# -- per-image L-BFGS ------------------------------------------------------
def _rosenbrock(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Row-wise scaled Rosenbrock: one differently shaped problem per row."""
    a = a.unsqueeze(-1) if a.ndim else a
    return (a * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


def test_lbfgs_coroutine_follows_torch_lbfgs_per_problem():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    a = torch.tensor([1.0, 10.0, 100.0, 3.0], dtype=torch.float64)

    def evaluate(idx, X):
        X = X.detach().requires_grad_(True)
        loss = _rosenbrock(X, a[idx])
        (grad,) = torch.autograd.grad(loss.sum(), X)
        return loss.detach(), grad

    final, evals = run_lbfgs_batched(x0, evaluate, max_iter=30, history_size=10)
    for i in range(4):
        p = x0[i].clone().requires_grad_(True)
        opt = torch.optim.LBFGS([p], max_iter=30, history_size=10, line_search_fn="strong_wolfe")
        calls = []

        def closure():
            opt.zero_grad()
            loss = _rosenbrock(p, a[i])
            loss.backward()
            calls.append(1)
            return loss

        opt.step(closure)
        # the same algorithm gives the same point and the same number of evaluations,
        # whatever the other problems in the batch do
        assert torch.allclose(final[i], p.detach(), atol=1e-9), (i, final[i], p)
        assert int(evals[i]) == len(calls)


def test_lbfgs_coroutine_stops_at_a_stationary_start():
    co = lbfgs_coroutine(torch.ones(3))
    x = next(co)
    with pytest.raises(StopIteration) as stop:
        co.send((0.0, torch.zeros(3)))
    assert torch.equal(stop.value.value, x)


def test_budget_is_a_hard_cap_and_restarts_use_it():
    a = torch.tensor([1.0, 100.0], dtype=torch.float64)

    def evaluate(idx, X):
        X = X.detach().requires_grad_(True)
        loss = _rosenbrock(X, a[idx])
        (grad,) = torch.autograd.grad(loss.sum(), X)
        return loss.detach(), grad

    x0 = torch.full((2, 4), -1.0, dtype=torch.float64)
    _, evals = run_lbfgs_batched(x0, evaluate, budget=[7, 0], max_iter=100)
    assert evals.tolist() == [7, 0]
    # a run that stops early (max_iter 2) is restarted until the budget is spent
    _, evals = run_lbfgs_batched(x0, evaluate, budget=25, max_iter=2, restart=lambda i: i == 0)
    assert int(evals[0]) == 25 and int(evals[1]) < 25
    _, evals = run_lbfgs_batched(x0, evaluate, budget=25, stop=lambda i: True)
    assert evals.tolist() == [1, 1]


# -- the attack ------------------------------------------------------------
class _Stubborn(nn.Module):
    """Logits that ignore the input: class 0 always wins, no attack can succeed."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        z = torch.zeros(x.shape[0], 3, dtype=x.dtype) + self.w * x.mean()
        z[:, 0] = 5.0
        return z


def _wrap(net):
    return WrappedModel(
        net,
        labels=["a", "b", "c"],
        preprocess=Preprocess((3, 8, 8), (0.0,) * 3, (1.0,) * 3),
        info=ModelInfo(name="stub", ref="stub", framework="test", arch="stub"),
    )


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_failed_image_comes_back_unchanged(optimizer):
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    r = stadv(_wrap(_Stubborn()), x, 2, steps=5, optimizer=optimizer)
    assert r.n == 3 and not r.success.any()
    assert torch.equal(r.adversarial, x)
    assert torch.equal(r.extras["flow"], torch.zeros(3, 2, 8, 8))
    assert r.extras["displacement_max"].tolist() == [0.0] * 3
    assert r.l2.tolist() == [0.0] * 3 and r.target.tolist() == [2, 2, 2]


def test_bad_options():
    x = torch.rand(1, 3, 8, 8)
    m = _wrap(_Stubborn())
    with pytest.raises(ConfigError, match="optimizer"):
        stadv(m, x, 1, optimizer="sgd")
    with pytest.raises(ConfigError, match="neighbourhood"):
        stadv(m, x, 1, neighbourhood="5")
    with pytest.raises(ConfigError, match="kappa"):
        stadv(m, x, 1, kappa=-1.0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        stadv(m, torch.rand(3, 8, 8), 1)


def test_registered():
    assert ATTACKS["stadv"] is stadv


@pytest.fixture(scope="module")
def correct_few(cifar_small, resnet20):
    """Eight real CIFAR-10 test photographs (different classes) resnet20 gets right."""
    x, y = cifar_small.float(), cifar_small.labels
    picked = []
    with torch.no_grad():
        for c in range(8):
            idx = (y == c).nonzero().flatten()[:10]
            pred = resnet20(x[idx]).argmax(1)
            picked.append(int(idx[(pred == c).nonzero().flatten()[0]]))
    return x[picked], y[picked]


def test_stadv_fools_resnet20_targeted(resnet20, correct_few):
    x, y = correct_few
    state = {k: v.clone() for k, v in resnet20.state_dict().items()}
    r = stadv(resnet20, x, "random", labels=y, generator=torch.Generator().manual_seed(0), steps=60)
    assert isinstance(r, AttackResult) and r.attack == "stadv"
    assert r.success_rate >= 7 / 8, r.success.tolist()
    assert (r.extras["evaluations"] <= 60).all()
    with torch.no_grad():
        z = resnet20(r.adversarial)
        pred = z.argmax(1)
        # judged again from the returned images, one at a time: the lead survives another batch
        single = torch.cat([resnet20(r.adversarial[i : i + 1]) for i in range(8)])
    assert torch.equal(pred[r.success], r.target[r.success])
    lead = -adversarial_margin(single, r.target, targeted=True, kappa=math.inf)
    assert (lead[r.success] > 5e-4).all(), lead
    assert torch.equal(r.predictions, pred)
    assert (r.target != y).all()
    e = r.extras
    assert e["flow"].shape == (8, 2, 32, 32) and e["untargeted_success"][r.success].all()
    # the returned images are the warp of the returned flow; the stats describe that flow
    assert torch.allclose(flow_warp(x, e["flow"]), r.adversarial, atol=1e-6)
    assert torch.allclose(e["flow_loss"], flow_loss(e["flow"]), rtol=1e-5)
    disp = e["flow"].norm(dim=1).flatten(1)
    assert torch.allclose(e["displacement_max"], disp.amax(1)) and torch.allclose(e["displacement_mean"], disp.mean(1))
    # a spatial attack: small flows (under a pixel on average), more than a few pixels touched
    assert float(e["displacement_mean"][r.success].mean()) < 1.0
    assert (r.l0[r.success] > 0.01).all()
    assert all(torch.equal(v, state[k]) for k, v in resnet20.state_dict().items())
    d = r.to_dict()
    assert AttackResult.from_dict(d, r.adversarial).success.tolist() == r.success.tolist()
    assert "flow_loss" in d["extras"] and "flow" not in d["extras"]


@pytest.mark.parametrize("init,optimizer", [("zero", "lbfgs"), ("adversarial", "adam")])
def test_stadv_untargeted_ensemble_and_other_size(resnet20, correct_few, init, optimizer):
    x, y = correct_few
    x = torch.nn.functional.interpolate(x[:4], size=(40, 36), mode="bilinear", align_corners=False)
    r = stadv([resnet20, resnet20], x, None, labels=y[:4], steps=30, init=init, optimizer=optimizer)
    assert r.target is None and "untargeted_success" not in r.extras
    assert r.extras["flow"].shape == (4, 2, 40, 36)
    assert r.success_rate >= 3 / 4
    with torch.no_grad():
        assert (resnet20(r.adversarial).argmax(1)[r.success] != y[:4][r.success]).all()


def test_cli_attack_stadv_reports_flow_and_draws_it(tmp_path, shared):
    from typer.testing import CliRunner

    from conftest import CIFAR_TEST, card
    from patchlab.cli import app

    data = tmp_path / "data"
    for cls in sorted(p.name for p in CIFAR_TEST.iterdir() if p.is_dir())[:3]:
        (data / cls).mkdir(parents=True)
        for f in sorted((CIFAR_TEST / cls).iterdir())[:2]:
            (data / cls / f.name).symlink_to(f)
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "attack",
            "stadv",
            "--model",
            card("resnet20"),
            "--data",
            str(data),
            "--out",
            str(out),
            "--n",
            "3",
            "--device",
            "cpu",
            "--target",
            "random",
            "--steps",
            "40",
            "--set",
            "tau=0.05",
            "--set",
            "kappa=0",
            "--set",
            "neighbourhood=4",
        ],
    )
    assert r.exit_code == 0, r.output
    for name in ("flow_loss", "displacement_mean", "displacement_max", "untargeted_success"):
        assert f"mean {name}" in r.output
    rec = json.loads((out / "attack.json").read_text())
    assert json.dumps(rec).count("flow_loss") >= 1
    assert (out / "grid.png").is_file()


# four CIFAR-10 test photographs mobilenetv2_100 classifies correctly, with the targets the
# benchmark drew for them (benchmarks/stadv.py, seed 0), on which L-BFGS on the smooth margin
# found no adversarial point in 300 evaluations: the images the rescue exists for
HARD_MOBILENET = (
    ("truck/0047.jpg", 9, 6),
    ("horse/0019.jpg", 7, 8),
    ("automobile/0070.jpg", 1, 5),
    ("truck/0075.jpg", 9, 4),
)


def test_rescue_makes_the_images_lbfgs_gives_up_on_adversarial():
    from conftest import CIFAR_TEST, card
    from PIL import Image

    from patchlab.models import load_model

    model = load_model(card("mobilenetv2_100"))
    x = (
        torch.stack(
            [
                torch.from_numpy(np.array(Image.open(CIFAR_TEST / f).convert("RGB"))).permute(2, 0, 1)
                for f, _, _ in HARD_MOBILENET
            ]
        ).float()
        / 255
    )
    y = torch.tensor([c for _, c, _ in HARD_MOBILENET])
    t = torch.tensor([c for _, _, c in HARD_MOBILENET])
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), y)
    r = stadv(model, x, t, labels=y)
    assert r.success.all(), r.extras["evaluations_to_adversarial"].tolist()
    # found after L-BFGS's share (rescue_after=50), i.e. by the rescue, within the budget
    assert (r.extras["evaluations_to_adversarial"] > 50).all() and (r.extras["evaluations"] <= 300).all()
    # L-BFGS alone, given twice the rescue's share, still finds none of them
    r0 = stadv(model, x, t, labels=y, steps=100, rescue_after=None)
    assert not r0.success.any(), r0.extras["evaluations_to_adversarial"].tolist()
