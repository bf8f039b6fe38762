"""patchlab.calib colour: recover a known printer+camera distortion from a chart photo.

The chart PDF is rendered with pdftoppm, passed through a synthetic printer (per-
channel dot gain, ink cross-talk, paper white and black level, a mild
non-linearity outside the fitted model family) and camera (white balance,
exposure), then photographed in perspective with vignetting, noise and JPEG.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchlab.calib.chart import read_chart
from patchlab.calib.color import (
    ColorTransform,
    apply_color_transform,
    fit_color_transform,
    load_color_transform,
    load_palette,
    palette_text,
    predict,
    write_palette,
)
from patchlab.calib.colorcal import calibrate_color, holdout_split
from patchlab.calib.synth import look_at, photograph, render_plane_view
from patchlab.color import linear_to_srgb, srgb_to_linear
from patchlab.errors import ConfigError, DataError
from patchlab.print.sheets import make_chart_pdf
from patchlab.print.verify import render_pdf

CHART_DPI = 100


def printer_camera(rgb: np.ndarray) -> np.ndarray:
    """A known, smooth printer + camera colour distortion (uint8 sRGB in and out)."""
    x = torch.from_numpy(rgb.astype(np.float64) / 255.0)
    t = srgb_to_linear(x) ** torch.tensor([1.12, 1.0, 0.9], dtype=torch.float64)  # dot gain per ink
    crosstalk = torch.tensor([[0.90, 0.07, 0.03], [0.06, 0.88, 0.06], [0.02, 0.10, 0.88]], dtype=torch.float64)
    paper, black = torch.tensor([0.86, 0.85, 0.78], dtype=torch.float64), 0.025
    refl = black + (paper - black) * (t @ crosstalk.T)
    cam = refl * torch.tensor([1.08, 1.0, 1.1], dtype=torch.float64) * 1.05  # white balance, exposure
    y = linear_to_srgb(cam.clamp(0, 1))
    y = y + 0.02 * torch.sin(np.pi * y)  # not a curve + matrix: the fit cannot be exact
    return (y.clamp(0, 1) * 255).round().numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def chart(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chart")
    res = make_chart_pdf(date="2025-01-02")
    pdf, lay = res.write(tmp / "chart.pdf")
    page = render_pdf(pdf, CHART_DPI)
    return res.layout, lay, page


@pytest.fixture(scope="module")
def chart_photo(chart):
    layout, _, page = chart
    printed = printer_camera(page)
    K = np.array([[1250.0, 0, 800], [0, 1250.0, 600], [0, 0, 1]])
    pose = look_at((105, 135), 330, tilt_x_deg=14, tilt_y_deg=-9, roll_deg=5)  # the chart fills the frame
    view = render_plane_view(printed, CHART_DPI / 25.4, K, None, pose, (1600, 1200))
    return photograph(view, rng=np.random.default_rng(3), vignetting=0.35, noise_sigma=2.5, jpeg_quality=88)


def test_recovers_synthetic_printer_camera_to_below_2_delta_e(chart, chart_photo):
    layout, _, _ = chart
    cal = calibrate_color(chart_photo, layout, seed=0)
    before, after = cal.heldout_before, cal.heldout_after
    print(
        f"held-out CIEDE2000 before {before['mean']:.2f} (max {before['max']:.2f}), "
        f"after {after['mean']:.2f} (max {after['max']:.2f}), {cal.improvement:.1f}x; flat field "
        f"{cal.reading.flat_field}"
    )
    assert cal.reading.markers_found == [46, 47, 48, 49]
    assert after["n"] >= 30 and after["mean"] < 2.0 and after["max"] < 5.0
    assert before["mean"] > 5.0 and cal.improvement > 3.0  # "no calibration" is far worse
    # the vignetting was seen on the paper and corrected
    assert cal.reading.flat_field["used"] and cal.reading.flat_field["gain_min"] < 0.95
    d = cal.to_dict()
    assert d["metrics"]["heldout"]["after"]["mean"] == pytest.approx(after["mean"])
    assert len(d["palette"]) == 150 and {s["split"] for s in d["swatches"]} == {"train", "test"}


def test_flat_field_helps_under_vignetting(chart, chart_photo):
    layout, _, _ = chart
    with_ff = calibrate_color(chart_photo, layout, seed=0).heldout_after["mean"]
    without = calibrate_color(chart_photo, layout, seed=0, flat_field=False).heldout_after["mean"]
    print(f"held-out mean CIEDE2000 with flat field {with_ff:.2f}, without {without:.2f}")
    assert with_ff < without


def test_observed_colours_match_the_true_distortion(chart, chart_photo):
    """Reading the chart (homography + median of the swatch core) returns what was printed."""
    layout, _, _ = chart
    r = read_chart(chart_photo, layout, flat_field=False)
    truth = printer_camera(r.intended.astype(np.uint8)[None])[0].astype(np.float64)
    centre = np.array(
        [abs(x + w / 2 - 105) < 40 and abs(y + h / 2 - 135) < 40 for x, y, w, h in (s.rect_mm for s in layout.swatches)]
    )  # little vignetting near the centre
    assert np.abs(r.raw[centre] - truth[centre]).mean() < 4.0


def test_no_chart_in_photo_is_a_data_error(chart):
    layout, _, _ = chart
    blank = np.full((480, 640, 3), 200, np.uint8)
    with pytest.raises(DataError, match="no colour chart found"):
        read_chart(blank, layout)


def test_transform_is_differentiable_and_follows_dtype():
    t = ColorTransform(
        torch.tensor([[0.0, 0.1, 0.35, 1.0], [0.0, 0.2, 0.5, 1.0], [0.0, 0.05, 0.3, 1.0]]),
        torch.tensor([[0.8, 0.1, 0.0], [0.05, 0.85, 0.05], [0.0, 0.1, 0.8]]),
        torch.tensor([0.02, 0.02, 0.03]),
    )
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(t, (x,), eps=1e-6, atol=1e-5)
    # also in the curve values (what a joint fit would need)
    c = t.curves.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda cc: apply_color_transform(x.detach(), cc, t.matrix, t.offset), (c,), eps=1e-6, atol=1e-5
    )
    y32 = t(x.detach().float())
    assert y32.dtype == torch.float32 and y32.shape == (2, 3, 4, 5) and 0 <= y32.min() and y32.max() <= 1
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t(torch.rand(3, 8, 8))


def test_identity_transform_is_near_identity():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert (ColorTransform.identity(16)(x) - x).abs().max() < 0.01


def test_fit_recovers_an_in_family_transform_exactly():
    rng = np.random.default_rng(0)
    true = ColorTransform(
        torch.tensor([[0.0, 0.03, 0.12, 0.3, 1.0]] * 3),
        torch.tensor([[0.85, 0.1, 0.0], [0.05, 0.8, 0.1], [0.0, 0.08, 0.9]]),
        torch.tensor([0.03, 0.02, 0.025]),
    )
    x = rng.integers(0, 256, (120, 3)).astype(np.float64)
    y = predict(true, x)
    fit = fit_color_transform(x, y, knots=4)
    assert np.abs(predict(fit, x) - y).max() < 1.0
    with pytest.raises(ConfigError, match="too few"):
        fit_color_transform(x[:5], y[:5])


def test_json_and_palette_round_trip(tmp_path):
    t = ColorTransform.identity(8)
    p = tmp_path / "color.json"
    p.write_text(json.dumps({"transform": t.to_dict()}))
    t2 = load_color_transform(p)
    assert torch.equal(t2.curves, t.curves) and "knots=8" in repr(t2)
    with pytest.raises(ConfigError, match="not found"):
        load_color_transform(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"transform": {"type": "lut"}}))
    with pytest.raises(ConfigError, match="unknown colour transform type"):
        load_color_transform(tmp_path / "bad.json")
    cols = np.array([[10.2, 20.7, 30.0], [255, 0, 0], [10, 21, 30]])
    write_palette(tmp_path / "pal.txt", cols, ["test"])
    pal = load_palette(tmp_path / "pal.txt")
    assert pal.shape == (2, 3) and torch.allclose(pal[0] * 255, torch.tensor([10.0, 21, 30]))
    assert np.loadtxt(tmp_path / "pal.txt", ndmin=2).shape == (2, 3)  # plain numpy reads it
    assert palette_text(cols).startswith("# patchlab printable palette")


def test_holdout_split_is_stratified_seeded_and_keeps_extremes():
    from patchlab.print.swatches import chart_swatches

    items = chart_swatches(150)
    names = [n for n, _ in items]
    rgb = np.array([c for _, c in items])
    tr, te = holdout_split(names, rgb, frac=0.25, seed=0)
    tr2, te2 = holdout_split(names, rgb, frac=0.25, seed=0)
    assert np.array_equal(te, te2) and len(set(tr) & set(te)) == 0 and len(tr) + len(te) == 150
    assert 30 <= len(te) <= 45
    assert names.index("grey_00") in tr and names.index("grey_15") in tr
    assert any(names[i].startswith("skin") for i in te) and any(names[i].startswith("grey") for i in te)
    assert not np.array_equal(te, holdout_split(names, rgb, frac=0.25, seed=1)[1])
