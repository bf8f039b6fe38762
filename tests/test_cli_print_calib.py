"""`patchlab print` and `patchlab calib` from the command line, as a user runs them.

Bad input gives one ``error:`` line, exit code 1 and writes nothing.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from patchlab.calib.color import load_color_transform, load_palette
from patchlab.calib.synth import look_at, photograph, render_plane_view
from patchlab.cli import app
from patchlab.layout import load_layout
from patchlab.print.verify import render_pdf

from test_calib_color import printer_camera
from conftest import copy_short_run

runner = CliRunner()


def ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def fails(args, match, folder):
    """Exit 1 with one error line matching ``match``, and no new file in ``folder``."""
    before = sorted(p.name for p in folder.rglob("*"))
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and match in res.output.replace("\n", " "), res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in folder.rglob("*")) == before, "something was written"
    return res


@pytest.fixture(scope="module")
def sheets(tmp_path_factory):
    """A run folder, a patch PDF, a chart and a board, made with the CLI."""
    tmp = tmp_path_factory.mktemp("cli")
    run = copy_short_run(tmp / "run-7")
    img = np.asarray(Image.open(run / "patch.png").convert("RGB"))
    ok(["print", "patch", str(run), "--size-mm", "50", "--out", str(tmp / "patch.pdf"), "--copies", "2", "--chart"])
    ok(["print", "chart", "--out", str(tmp / "chart.pdf")])
    ok(["print", "board", "--out", str(tmp / "board.pdf"), "--paper", "letter"])
    return tmp, img


def test_print_commands_write_pdf_and_layout(sheets):
    tmp, _ = sheets
    for name, kind in (("patch", "patch"), ("chart", "chart"), ("board", "board")):
        assert (tmp / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert load_layout(tmp / f"{name}.layout.json").kind == kind
    lay = load_layout(tmp / "patch.layout.json")
    assert lay.meta["target_class"] == "cat" and len(lay.patches) == 2 and lay.swatches
    assert load_layout(tmp / "board.layout.json").page_mm == (215.9, 279.4)


def test_print_check_measures_the_pdf(sheets):
    tmp, _ = sheets
    out = tmp / "check" / "check.json"
    res = ok(["print", "check", str(tmp / "patch.pdf"), "--dpi", "300", "--json", str(out)])
    assert "PSNR" in res.output
    d = json.loads(out.read_text())
    assert [c["copy"] for c in d["copies"]] == [0, 1]
    for c in d["copies"]:
        assert abs(c["width_error_mm"]) < 0.2 and c["psnr_db"] >= 40


def test_calib_color_from_a_photo_of_the_chart(sheets):
    tmp, _ = sheets
    lay = load_layout(tmp / "chart.layout.json")
    page = printer_camera(render_pdf(tmp / "chart.pdf", 100))
    K = np.array([[1250.0, 0, 800], [0, 1250.0, 600], [0, 0, 1]])
    view = render_plane_view(page, 100 / 25.4, K, None, look_at((105, 135), 340, tilt_x_deg=-10), (1600, 1200))
    photo = photograph(view, rng=np.random.default_rng(0), vignetting=0.2, noise_sigma=2, jpeg_quality=90)
    cv2.imwrite(str(tmp / "chart_photo.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    out = tmp / "calib" / "color.json"
    res = ok(
        [
            "calib",
            "color",
            "--photo",
            str(tmp / "chart_photo.jpg"),
            "--chart",
            str(tmp / "chart.layout.json"),
            "--out",
            str(out),
        ]
    )
    assert "held-out CIEDE2000" in res.output and "better" in res.output
    d = json.loads(out.read_text())
    assert d["metrics"]["heldout"]["after"]["mean"] < 2.0 < d["metrics"]["heldout"]["before"]["mean"]
    assert d["palette_file"].endswith("color.palette.txt") and len(d["swatches"]) == len(lay.swatches)
    assert "versions" in d and d["fit"]["seed"] == 0
    t = load_color_transform(out)
    assert t.knots == 8
    assert load_palette(tmp / "calib" / "color.palette.txt").shape == (len(lay.swatches), 3)


def test_calib_camera_from_a_folder(sheets, tmp_path):
    tmp, _ = sheets
    lay = load_layout(tmp / "board.layout.json")
    page = cv2.cvtColor(render_pdf(tmp / "board.pdf", 150), cv2.COLOR_RGB2GRAY)
    K = np.array([[800.0, 0, 322.0], [0, 800.0, 238.0], [0, 0, 1]])
    spec = lay.board
    cx = spec["origin_mm"][0] + spec["squares"][0] * spec["square_mm"] / 2
    cy = spec["origin_mm"][1] + spec["squares"][1] * spec["square_mm"] / 2
    rng = np.random.default_rng(0)
    for k, (tx, ty, roll) in enumerate(
        [(0, 0, 0), (25, 0, 5), (-25, 0, -5), (0, 25, 10), (0, -25, -10), (20, 20, 0), (-20, -20, 20)]
    ):
        v = render_plane_view(
            page, 150 / 25.4, K, None, look_at((cx, cy), 560, tilt_x_deg=tx, tilt_y_deg=ty, roll_deg=roll), (640, 480)
        )
        cv2.imwrite(str(tmp_path / f"img{k}.png"), photograph(v, rng=rng, noise_sigma=1.5))
    out = tmp_path / "out" / "camera.json"
    res = ok(
        ["calib", "camera", "--images", str(tmp_path), "--board", str(tmp / "board.layout.json"), "--out", str(out)]
    )
    assert "7 of 7 views used" in res.output
    d = json.loads(out.read_text())
    assert abs(d["fx"] / 800 - 1) < 0.01 and abs(d["cx"] - 322) < 2 and d["image_size"] == [640, 480]


# ---------------------------------------------------------------------------------------- bad input


def test_patch_larger_than_the_paper(sheets, tmp_path):
    tmp, _ = sheets
    res = fails(
        ["print", "patch", str(tmp / "run-7"), "--size-mm", "400", "--out", str(tmp_path / "big.pdf")],
        "does not fit on A4",
        tmp_path,
    )
    assert "largest size that fits" in res.output


def test_photo_with_no_chart(sheets, tmp_path):
    tmp, _ = sheets
    cv2.imwrite(str(tmp_path / "cat.jpg"), np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    fails(
        [
            "calib",
            "color",
            "--photo",
            str(tmp_path / "cat.jpg"),
            "--chart",
            str(tmp / "chart.layout.json"),
            "--out",
            str(tmp_path / "color.json"),
        ],
        "no colour chart found",
        tmp_path,
    )


def test_blurred_board(sheets, tmp_path):
    tmp, _ = sheets
    page = cv2.cvtColor(render_pdf(tmp / "board.pdf", 100), cv2.COLOR_RGB2GRAY)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    K = np.array([[800.0, 0, 320.0], [0, 800.0, 240.0], [0, 0, 1]])
    for k in range(6):
        v = render_plane_view(page, 100 / 25.4, K, None, look_at((108, 150), 560, tilt_x_deg=5 * k), (640, 480))
        cv2.imwrite(str(imgs / f"img{k}.png"), cv2.GaussianBlur(v, (0, 0), 7))
    fails(
        [
            "calib",
            "camera",
            "--images",
            str(imgs),
            "--board",
            str(tmp / "board.layout.json"),
            "--out",
            str(tmp_path / "camera.json"),
        ],
        "only 0 of 6 views show the ChArUco board",
        tmp_path,
    )


def test_missing_layout_file(sheets, tmp_path):
    tmp, _ = sheets
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((10, 10, 3), np.uint8))
    fails(
        [
            "calib",
            "color",
            "--photo",
            str(tmp_path / "p.png"),
            "--chart",
            str(tmp_path / "missing.layout.json"),
            "--out",
            str(tmp_path / "color.json"),
        ],
        "layout file not found",
        tmp_path,
    )
    fails(
        [
            "calib",
            "camera",
            "--images",
            str(tmp_path),
            "--board",
            str(tmp_path / "missing.layout.json"),
            "--out",
            str(tmp_path / "camera.json"),
        ],
        "layout file not found",
        tmp_path,
    )
    fails(
        ["print", "check", str(tmp_path / "p.png"), "--layout", str(tmp_path / "missing.layout.json")],
        "layout file not found",
        tmp_path,
    )


def test_other_bad_input(sheets, tmp_path):
    tmp, _ = sheets
    run = str(tmp / "run-7")
    fails(["print", "patch", run, "--size-mm", "30", "--out", str(tmp_path / "p.png")], "must name a .pdf", tmp_path)
    fails(
        ["print", "patch", str(tmp_path / "nope"), "--size-mm", "30", "--out", str(tmp_path / "p.pdf")],
        "patch not found",
        tmp_path,
    )
    fails(
        ["print", "patch", run, "--size-mm", "30", "--copies", "12", "--out", str(tmp_path / "p.pdf")],
        "room for 11 copies",
        tmp_path,
    )
    fails(
        ["print", "board", "--squares", "7by10", "--out", str(tmp_path / "b.pdf")], "--squares must look like", tmp_path
    )
    fails(
        ["calib", "camera", "--board", str(tmp / "board.layout.json"), "--out", str(tmp_path / "c.json")],
        "exactly one of --images",
        tmp_path,
    )
    fails(
        [
            "calib",
            "camera",
            "--images",
            str(tmp_path),
            "--board",
            str(tmp / "chart.layout.json"),
            "--out",
            str(tmp_path / "c.json"),
        ],
        "not a ChArUco board",
        tmp_path,
    )
    fails(
        [
            "calib",
            "color",
            "--photo",
            str(tmp_path / "none.jpg"),
            "--chart",
            str(tmp / "chart.layout.json"),
            "--out",
            str(tmp_path / "c.json"),
        ],
        "photo not found",
        tmp_path,
    )
    fails(
        [
            "calib",
            "color",
            "--photo",
            str(tmp / "chart.pdf"),
            "--chart",
            str(tmp / "board.layout.json"),
            "--out",
            str(tmp_path / "c.json"),
        ],
        "cannot read image",
        tmp_path,
    )
