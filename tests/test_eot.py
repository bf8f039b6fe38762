"""EOT renderer: exact paste, placements, replay, gradients, markers, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchlab.eot import PRESETS, EOTConfig, EOTParams, PatchRenderer, footprint, load_eot
from patchlab.errors import ConfigError
from patchlab.markers import detect_markers


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_footprint_keeps_the_area_fraction():
    assert footprint((32, 32), (1, 1), 0.1) == (10, 10)
    assert footprint((32, 32), (1, 1), 0.2) == (14, 14)
    fh, fw = footprint((480, 640), (1, 2), 0.05)
    assert abs(fh * fw / (480 * 640) - 0.05) < 0.002 and abs(fw / fh - 2) < 0.05


def test_no_eot_pastes_the_patch_pixel_for_pixel():
    r = PatchRenderer((32, 32), (10, 10), frac=0.1, placement="random")
    imgs = torch.rand(16, 3, 32, 32)
    patch = torch.rand(3, 10, 10)
    out, params = r.paste(imgs, patch, gen())
    for i in range(16):
        x, y = params.top_left[i].tolist()
        assert torch.allclose(out[i, :, y : y + 10, x : x + 10], patch, atol=1e-5)
        rest = out[i].clone()
        rest[:, y : y + 10, x : x + 10] = imgs[i, :, y : y + 10, x : x + 10]
        assert torch.allclose(rest, imgs[i], atol=1e-5)


def test_placements():
    H = W = 32
    n = 200
    side = PatchRenderer((H, W), (10, 10), frac=0.1, placement="side").sample(n, gen())
    x, y = side.top_left[:, 0], side.top_left[:, 1]
    free = W - 10
    inset = int(0.125 * free)
    near = (x <= inset) | (x >= free - inset) | (y <= inset) | (y >= free - inset)
    assert bool(near.all())  # every patch touches (almost) a side: none sits in the centre
    assert {int(v) for v in x} - set(range(0, inset + 1)) - set(range(free - inset, free + 1))  # and moves along
    centre = PatchRenderer((H, W), (10, 10), frac=0.1, placement="center").sample(3, gen())
    assert centre.top_left.tolist() == [[11, 11]] * 3
    fixed = PatchRenderer((H, W), (10, 10), frac=0.1, placement="fixed", position=(0.0, 1.0)).sample(2, gen())
    assert fixed.top_left.tolist() == [[0, 22]] * 2
    rnd = PatchRenderer((H, W), (10, 10), frac=0.1, placement="random").sample(n, gen())
    assert int(rnd.top_left.min()) >= 0 and int(rnd.top_left.max()) <= free


def test_seeded_and_replayable():
    r = PatchRenderer((32, 32), (14, 14), frac=0.2, placement="side", eot=PRESETS["physical"], shape="circle")
    imgs, patch = torch.rand(8, 3, 32, 32), torch.rand(3, 14, 14)
    a, pa = r.paste(imgs, patch, gen(7))
    b, _ = r.paste(imgs, patch, gen(7))
    assert torch.equal(a, b)
    replay = r(imgs, patch, EOTParams.from_dict(pa.to_dict()))
    assert torch.allclose(replay, a, atol=1e-6)
    c, _ = r.paste(imgs, patch, gen(8))
    assert not torch.allclose(a, c)


def test_renderer_gradcheck_physical():
    r = PatchRenderer((12, 12), (6, 6), frac=0.25, placement="random", eot=PRESETS["physical"]).double()
    params = r.sample(2, gen(1))
    imgs = torch.rand(2, 3, 12, 12, dtype=torch.float64, generator=gen(2))
    patch = (torch.rand(3, 6, 6, dtype=torch.float64, generator=gen(3)) * 0.6 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: r(imgs, p, params), (patch,))


@pytest.mark.parametrize(
    "hw, frac, eot, placement, frame",
    [
        ((64, 64), 0.1, "physical", "random", False),
        ((96, 128), 0.05, "physical", "side", True),
        ((224, 224), 0.1, "physical", "center", False),
        ((64, 64), 0.1, "none", "side", False),
    ],
)
def test_window_render_equals_the_whole_image_render(monkeypatch, hw, frac, eot, placement, frame):
    """The sticker is warped into a window around it; the image and the gradient equal the
    whole-image warp's (which a window fraction of 0 forces), and a rank's rows match."""
    import patchlab.eot as E

    r = PatchRenderer(hw, (20, 20), frac=frac, placement=placement, eot=load_eot(eot), frame=frame)
    params = r.sample(12, gen(3))
    win = r.windows(r.homographies(params, dtype=torch.float64))
    assert win is not None and win[1] * win[2] < 0.5 * hw[0] * hw[1]  # the window path is the one tested
    imgs = torch.rand(12, 3, *hw, generator=gen(4))
    patch = torch.rand(3, 20, 20, generator=gen(5)).requires_grad_(True)
    weight = torch.rand(12, 3, *hw, generator=gen(6))
    out = r(imgs, patch, params)
    (g_win,) = torch.autograd.grad((out * weight).sum(), patch)
    monkeypatch.setattr(E, "WINDOW_MAX_FRAC", 0.0)
    assert r.windows(r.homographies(params, dtype=torch.float64)) is None
    full = r(imgs, patch, params)
    (g_full,) = torch.autograd.grad((full * weight).sum(), patch)
    assert (out - full).abs().max() < 1e-4  # a translated homography: the sample points move by ~1e-6 px
    assert torch.allclose(g_win, g_full, rtol=1e-4, atol=1e-3)
    monkeypatch.setattr(E, "WINDOW_MAX_FRAC", 0.6)
    assert torch.equal(r(imgs[3:7], patch, params, rows=slice(3, 7)), out[3:7])


def test_window_render_gradcheck():
    r = PatchRenderer((32, 32), (6, 6), frac=0.05, placement="random", eot=PRESETS["physical"]).double()
    params = r.sample(2, gen(1))
    assert r.windows(r.homographies(params, dtype=torch.float64)) is not None
    imgs = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=gen(2))
    patch = (torch.rand(3, 6, 6, dtype=torch.float64, generator=gen(3)) * 0.6 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: r(imgs, p, params), (patch,))


def test_dtype_follows_the_images():
    r = PatchRenderer((16, 16), (5, 5), frac=0.1, eot=PRESETS["digital"])
    out, _ = r.paste(torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.rand(3, 5, 5, dtype=torch.float64), gen())
    assert out.dtype == torch.float64


def test_circle_leaves_the_corners_of_its_box():
    r = PatchRenderer((32, 32), (14, 14), frac=0.2, placement="center", shape="circle")
    imgs = torch.zeros(1, 3, 32, 32)
    out, p = r.paste(imgs, torch.ones(3, 14, 14), gen())
    x, y = p.top_left[0].tolist()
    box = out[0, 0, y : y + 14, x : x + 14]
    assert float(box[0, 0]) == 0.0 and float(box[7, 7]) == 1.0


def test_marker_frame_is_rendered_and_detectable():
    r = PatchRenderer((256, 256), (64, 64), frac=0.25, placement="center", frame=True)
    assert r.up == 2  # the frame is drawn at the resolution it is shown at
    out, _ = r.paste(torch.full((1, 3, 256, 256), 0.5), torch.rand(3, 64, 64), gen())
    bgr = (out[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).astype(np.uint8)
    assert [d.id for d in detect_markers(bgr)] == [0, 1, 2, 3]


def test_eot_toml_and_bad_input(tmp_path):
    f = tmp_path / "eot.toml"
    f.write_text('preset = "physical"\nrotation_deg = 30\nscale = [0.7, 1.3]\n')
    cfg = load_eot(f)
    assert cfg.rotation_deg == 30 and cfg.scale == (0.7, 1.3) and cfg.perspective == PRESETS["physical"].perspective
    (tmp_path / "bad.toml").write_text("rotaton = 3\n")
    with pytest.raises(ConfigError, match="unknown EOT keys"):
        load_eot(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="unknown EOT preset"):
        load_eot("wobbly")
    with pytest.raises(ConfigError, match="scale"):
        EOTConfig(scale=(1.2, 0.8))
    with pytest.raises(ConfigError, match="larger than the 32x32 image"):
        PatchRenderer((32, 32), (30, 30), frac=0.9, frame=True)
    with pytest.raises(ConfigError, match="area fraction"):
        PatchRenderer((32, 32), (10, 10), frac=1.5)
    with pytest.raises(ConfigError, match="--position"):
        PatchRenderer((32, 32), (10, 10), frac=0.1, placement="fixed")


def test_colour_transform_is_applied_to_the_sticker():
    from patchlab.calib import ColorTransform

    ct = ColorTransform.identity()
    dim = ColorTransform(ct.curves, 0.5 * torch.eye(3), torch.zeros(3))
    r = PatchRenderer((16, 16), (8, 8), frac=0.25, placement="center", color=dim)
    out, p = r.paste(torch.zeros(1, 3, 16, 16), torch.ones(3, 8, 8), gen())
    x, y = p.top_left[0].tolist()
    seen = float(out[0, :, y : y + 8, x : x + 8].mean())
    assert abs(seen - 0.7354) < 0.01  # white printed at half the light: sRGB(0.5)
    grad_patch = torch.full((3, 8, 8), 0.5, requires_grad=True)
    r(torch.zeros(1, 3, 16, 16), grad_patch, p).sum().backward()
    assert grad_patch.grad.abs().sum() > 0  # differentiable through the transform
