"""FGSM, BIM, PGD, regional masks and FGVM: parity with torchattacks, budgets, masks, results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patchlab.attacks import ATTACKS, AttackResult, bim, build_mask, fgsm, fgvm, parse_mask_spec, pgd, regional
from patchlab.attacks.gradient import smoothness_loss, total_variation
from patchlab.attacks.record import concat_results, flow_to_rgb, render_grid, summarize
from patchlab.errors import ConfigError

from conftest import card


@pytest.fixture(scope="module")
def batch(cifar_small):
    """8 real CIFAR-10 test photographs (a few classes) as float [0, 1]."""
    idx = torch.arange(0, 500, 63)[:8]
    return cifar_small.float(idx)


@pytest.fixture(scope="module")
def vit():
    from patchlab.models import load_model

    return load_model(card("vit_tiny_p4"))


def _torchattacks_cases(ta, m):
    return [
        ("fgsm", {}, ta.FGSM(m)),
        ("bim", {}, ta.BIM(m)),
        ("pgd", {"random_start": False}, ta.PGD(m, random_start=False)),
        ("pgd", {"random_start": False, "norm": "l2"}, ta.PGDL2(m, random_start=False)),
        ("bim", {"norm": "l2"}, ta.PGDL2(m, random_start=False)),
        ("fgsm", {"norm": "l2"}, ta.PGDL2(m, eps=1.0, alpha=1.0, steps=1, random_start=False)),
    ]


@pytest.mark.parametrize("which", ["resnet20", "vit"])
@pytest.mark.parametrize("targeted", [False, True])
def test_parity_with_torchattacks(which, targeted, batch, resnet20, vit):
    """Random start off: the same images as torchattacks (its model takes [0, 1] input, as ours
    does, and its loss is the batch-mean CE) to 1e-5, Linf and L2, untargeted and targeted."""
    ta = pytest.importorskip("torchattacks", reason="torchattacks is in the test extra: pip install -e .[test]")
    m = resnet20 if which == "resnet20" else vit
    y = m(batch).argmax(1)
    for name, kw, ref_attack in _torchattacks_cases(ta, m):
        if targeted:
            ref_attack.set_mode_targeted_by_function(lambda im, lab: (lab + 1) % 10)
        ours = ATTACKS[name](m, batch, (y + 1) % 10 if targeted else None, labels=y, **kw)
        ref = ref_attack(batch, y)
        diff = float((ours.adversarial - ref).abs().max())
        assert diff <= 1e-5, f"{which} {name} {kw} targeted={targeted}: max |ours - torchattacks| = {diff}"


def test_pgd_fools_a_real_model_within_budget(batch, resnet20):
    y = resnet20(batch).argmax(1)
    sd = {k: v.clone() for k, v in resnet20.state_dict().items()}
    r = pgd(resnet20, batch, labels=y, generator=torch.Generator().manual_seed(0))
    assert r.success_rate >= 0.9
    acc = float((resnet20(r.adversarial).argmax(1) == y).float().mean())
    assert acc < 0.2
    assert float(r.linf.max()) <= 8 / 255 + 1e-6 and float(r.adversarial.min()) >= 0 and float(r.adversarial.max()) <= 1
    assert all(torch.equal(sd[k], v) for k, v in resnet20.state_dict().items()), "the attack changed the model"
    r2 = pgd(resnet20, batch, labels=y, norm="l2", eps=0.5, alpha=0.1, generator=torch.Generator().manual_seed(0))
    assert float(r2.l2.max()) <= 0.5 + 1e-4
    assert r.config["eps"] == pytest.approx(8 / 255) and r.config["alpha"] == pytest.approx(2 / 255)
    assert r2.config["norm"] == "l2"


def test_margin_loss_moves_where_cross_entropy_is_flat():
    """A model whose softmax saturates in float32 (logits x 1e5) gives cross-entropy an exact zero
    gradient, so PGD-CE cannot move; the logit margin still has a direction (and fools it)."""
    from patchlab.attacks.gradient import logit_margin

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    with torch.no_grad():
        net[1].weight.mul_(1e5)
    x = torch.rand(6, 3, 8, 8)
    y = net(x).argmax(1)
    stuck = pgd(net, x, labels=y, random_start=False)
    assert float((stuck.adversarial - x).abs().max()) == 0.0 and not stuck.success.any()
    moved = pgd(net, x, labels=y, random_start=False, loss="margin")
    assert int(moved.success.sum()) >= 5 and moved.config["loss"] == "margin"
    assert float(moved.linf.max()) <= 8 / 255 + 1e-6
    z = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    assert torch.equal(logit_margin(z, torch.tensor([1, 0])), torch.tensor([-3.0, 3.0]))


def test_random_start_is_seeded(batch, resnet20):
    a = pgd(resnet20, batch[:4], steps=1, generator=torch.Generator().manual_seed(3))
    b = pgd(resnet20, batch[:4], steps=1, generator=torch.Generator().manual_seed(3))
    c = pgd(resnet20, batch[:4], steps=1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, c.adversarial)


def test_ensemble_averages_losses(batch, resnet20):
    """Two copies of one model: the mean loss is the model's loss, so the images are the same."""
    y = resnet20(batch[:6]).argmax(1)
    one = bim(resnet20, batch[:6], labels=y, steps=3)
    two = bim([resnet20, resnet20], batch[:6], labels=y, steps=3)
    assert torch.equal(one.adversarial, two.adversarial)


def test_targets_random_and_by_name(batch, resnet20):
    y = resnet20(batch).argmax(1)
    r = fgsm(resnet20, batch, "random", labels=y, generator=torch.Generator().manual_seed(0))
    assert (r.target != r.labels).all()
    r2 = bim(resnet20, batch, "frog", labels=y)
    assert (r2.target == resnet20.labels.index("frog")).all()
    assert r2.success_rate > 0.5 and torch.equal(r2.success, r2.predictions == r2.target)
    with pytest.raises(ConfigError, match="unknown class"):
        fgsm(resnet20, batch, "giraffe")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"eps": 2.0}, "eps must be in"),
        ({"eps": -0.1}, "eps must be in"),
        ({"alpha": 0.0}, "alpha"),
        ({"steps": 0}, "steps"),
        ({"norm": "l1"}, "unknown norm"),
        ({"loss": "dlr"}, "unknown loss"),
    ],
)
def test_bad_hyperparameters(kw, match, batch, resnet20):
    with pytest.raises(ConfigError, match=match):
        pgd(resnet20, batch[:2], **kw)


def test_bad_images(resnet20):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        pgd(resnet20, torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pgd(resnet20, torch.rand(1, 3, 32, 32) * 2)


# -- masks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, fraction",
    [
        ("center:s", 0.1614),
        ("center:m", 0.2870),
        ("center:l", 0.4484),
        ("frame:s", 0.1706),
        ("frame:m", 0.2805),
        ("frame:l", 0.4508),
        ("center:90px", 0.1614),
        ("frame:10px", 0.1706),
        ("frame:17px", 0.2805),
        ("frame:29px", 0.4508),
        ("random:l", 0.45),
        ("random:28%", 0.28),
    ],
)
def test_masks_at_the_papers_sizes(spec, fraction):
    """On the paper's 224x224 images each spec covers the paper's fraction (to 1e-3)."""
    m = build_mask(spec, (224, 224), n=2, generator=torch.Generator().manual_seed(0))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert float(m.mean()) == pytest.approx(fraction, abs=1e-3)


def test_mask_shapes_and_randomness():
    c = build_mask("center:10px", (32, 32))
    assert c.shape == (1, 1, 32, 32) and int(c.sum()) == 100 and c[0, 0, 16, 16] == 1 and c[0, 0, 0, 0] == 0
    f = build_mask("frame:2px", (32, 32))
    assert int(f.sum()) == 32 * 32 - 28 * 28 and f[0, 0, 0, 0] == 1 and f[0, 0, 16, 16] == 0
    r = build_mask("random:0.25", (32, 32), n=3, generator=torch.Generator().manual_seed(0))
    assert r.shape == (3, 1, 32, 32) and (r.flatten(1).sum(1) == 256).all()
    assert not torch.equal(r[0], r[1])


@pytest.mark.parametrize(
    "spec, match",
    [
        ("centre:1.5", "fraction must be in"),
        ("circle:0.2", "unknown mask spec"),
        ("center:0px", "covers no pixel"),
        ("random:0.0001", "covers no pixel"),
        ("center:40px", "does not fit"),
        ("frame:17px", "does not fit"),
        ("random:5px", "takes a fraction"),
        ("file:/no/such.png", "not found"),
    ],
)
def test_bad_mask_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_mask(spec, (32, 32))


def test_mask_from_an_image_file(tmp_path):
    from PIL import Image

    a = np.zeros((32, 32, 3), np.uint8)
    a[4:12, 20:30] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    m = build_mask(f"file:{tmp_path / 'm.png'}", (32, 32))
    assert int(m.sum()) == 80 and m[0, 0, 5, 25] == 1
    assert parse_mask_spec(str(tmp_path / "m.png")).kind == "file"
    with pytest.raises(ConfigError, match="draw the mask at the images' size"):
        build_mask(f"file:{tmp_path / 'm.png'}", (64, 64))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ConfigError, match="covers no pixel"):
        build_mask(f"file:{tmp_path / 'blank.png'}", (32, 32))


def test_regional_stays_in_the_mask_and_lowers_l0_l2(batch, resnet20):
    y = resnet20(batch).argmax(1)
    full = pgd(resnet20, batch, labels=y, random_start=False)
    for spec in ("center:m", "frame:m", "random:m"):
        r = regional(
            resnet20, batch, labels=y, mask=spec, random_start=False, generator=torch.Generator().manual_seed(0)
        )
        m = build_mask(spec, (32, 32), n=len(batch), generator=torch.Generator().manual_seed(0))
        # the target draws nothing here, so the mask drawn inside regional is this one
        outside = ((r.adversarial - batch).abs() * (1 - m)).amax()
        assert float(outside) == 0.0, spec
        assert float(r.l0.max()) <= float(m.flatten(1).mean(1).max()) + 1e-6
        assert float(r.l0.mean()) < float(full.l0.mean()) and float(r.l2.mean()) < float(full.l2.mean())
        assert r.config["mask"] == spec and r.attack == "regional"
    # the same mask through pgd's own mask keyword gives the same images
    a = regional(resnet20, batch, labels=y, mask="center:m", random_start=False)
    b = pgd(resnet20, batch, labels=y, mask="center:m", random_start=False)
    assert torch.equal(a.adversarial, b.adversarial)


def test_regional_released_settings_stop_on_the_transfer_model(batch, resnet20):
    from patchlab.models import load_model

    other = load_model(card("resnet32"))
    y = resnet20(batch).argmax(1)
    r = regional(resnet20, batch, labels=y, mask="center:l", released=True, stop_models=[other], steps=40)
    assert r.config["alpha"] == pytest.approx(1 / 255) and r.config["eps"] == 1.0
    moved = other(r.adversarial).argmax(1) != y
    # an image that left its class on the transfer model stopped there: it needed fewer than 40 steps
    assert moved.any()
    assert float(r.linf[moved].max()) <= 40 / 255 + 1e-6
    with pytest.raises(ConfigError, match="stop_models"):
        regional(resnet20, batch, released=True)


# -- FGVM ----------------------------------------------------------------------------


def test_smoothness_loss_is_seed_004s_formula():
    """Seed 004 computes it on one grey channel; ours applies it to each channel and sums."""
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    k = torch.tensor([[0, 0, 0], [0, -3, 1], [0, 1, 1]], dtype=torch.float64).view(1, 1, 3, 3)
    ref = sum((F.conv2d(F.pad(x[:, c : c + 1], (1, 1, 1, 1), "reflect"), k) ** 2).flatten(1).sum(1) for c in range(3))
    assert torch.allclose(smoothness_loss(x), ref)
    # NumPy transcription of the same sum for one image, one channel
    a = np.pad(x[0, 0].numpy(), 1, mode="reflect")
    v = sum(
        (-3 * a[i + 1, j + 1] + a[i + 1, j + 2] + a[i + 2, j + 1] + a[i + 2, j + 2]) ** 2
        for i in range(9)
        for j in range(7)
    )
    one = smoothness_loss(x[:1, :1])
    assert float(one) == pytest.approx(v)
    assert torch.autograd.gradcheck(smoothness_loss, (x.clone().requires_grad_(True),))
    assert float(total_variation(torch.zeros(1, 3, 4, 4))) == 0.0


def test_fgvm_targeted_from_images_and_noise(batch, resnet20):
    y = resnet20(batch[:4]).argmax(1)
    r = fgvm(resnet20, batch[:4], "frog", labels=y, steps=40, lr=0.01)
    assert r.success_rate == 1.0 and (r.extras["target_prob"] > 0.5).all()
    assert set(r.extras) == {"target_prob", "smoothness", "tv"}
    v = fgvm(resnet20, batch[:4], "frog", labels=y, steps=20, lr=0.01, optimizer="value")
    assert v.success_rate >= 0.75
    g = torch.Generator().manual_seed(0)
    smooth = fgvm(resnet20, batch[:2], "frog", labels=y[:2], steps=60, lr=0.01, init="noise", generator=g)
    g = torch.Generator().manual_seed(0)
    rough = fgvm(
        resnet20, batch[:2], "frog", labels=y[:2], steps=60, lr=0.01, init="noise", smoothness=0.0, generator=g
    )
    assert float(smooth.extras["tv"].mean()) < float(rough.extras["tv"].mean())
    with pytest.raises(ConfigError, match="unknown init"):
        fgvm(resnet20, batch[:1], "frog", init="zeros")


# -- results and records ---------------------------------------------------------------


def test_result_round_trip_summary_and_concat(batch, resnet20):
    r = pgd(resnet20, batch[:5], steps=2, generator=torch.Generator().manual_seed(0))
    d = r.to_dict()
    back = AttackResult.from_dict(d, adversarial=r.adversarial)
    assert torch.equal(back.success, r.success) and back.config == r.config
    r2 = AttackResult(**{**r.__dict__, "extras": {"flow_loss": torch.arange(5.0), "flow": torch.randn(5, 2, 32, 32)}})
    s = summarize(r2)
    assert s["extras"] == {"flow_loss": pytest.approx(2.0)}
    assert s["success_ci95"][0] <= s["success_rate"] <= s["success_ci95"][1]
    both = concat_results([r2, r2])
    assert both.n == 10 and both.extras["flow"].shape == (10, 2, 32, 32)
    from PIL import Image
    import io

    h_plain = Image.open(io.BytesIO(render_grid(batch[:5], r))).size[1]
    h_flow = Image.open(io.BytesIO(render_grid(batch[:5], r2))).size[1]
    assert h_flow > h_plain  # the flow row is drawn


def test_flow_colour_wheel():
    flow = torch.zeros(1, 2, 1, 3)
    flow[0, 0, 0, 0] = 1.0  # +x: hue 0, red
    flow[0, 1, 0, 1] = 0.5  # +y: hue 1/4 at half magnitude
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (1, 3, 1, 3)
    assert torch.allclose(rgb[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert float(rgb[0, :, 0, 1].max()) == pytest.approx(0.5)  # value = magnitude / max
    assert torch.equal(rgb[0, :, 0, 2], torch.zeros(3))  # no motion: black
