"""patchlab.eval.report: every section present, every plot drawn with data, both formats render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from patchlab.cli import app
from patchlab.errors import ConfigError
from patchlab.eval.report import Figure, build_report, render_html, write_report
from conftest import copy_short_run, make_short_run
from patchlab.runs import load_run
from patchlab.transfer import TransferResult
from test_capture_helpers import capture, run_dir

SECTIONS = ["summary", "patch", "loss", "transfer", "matrix", "capture-0", "provenance"]


def _matrix(tmp_path):
    m = {
        "models": ["cifar10-resnet20", "cifar10-vit_tiny_p4", "cifar10-mobilenetv2_100"],
        "runs": [
            {
                "run_id": "run-0001",
                "run_dir": str(run_dir()),
                "label": "ot r20",
                "loss": "ot",
                "sources": ["cifar10-resnet20"],
                "target_class": "cat",
                "frac": 0.1,
                "tsuc": {"cifar10-resnet20": 0.62, "cifar10-vit_tiny_p4": 0.21},
                "ci95": {"cifar10-resnet20": [0.55, 0.69], "cifar10-vit_tiny_p4": [0.16, 0.28]},
                "mean_transfer": 0.21,
                "min_transfer": 0.21,
                "max_transfer": 0.21,
            },
            {
                "run_id": "run-0002",
                "run_dir": "x",
                "label": "ce r20",
                "loss": "ce",
                "sources": ["cifar10-resnet20"],
                "target_class": "cat",
                "frac": 0.1,
                "tsuc": {"cifar10-resnet20": 0.9, "cifar10-vit_tiny_p4": 0.05, "cifar10-mobilenetv2_100": 0.1},
                "ci95": {},
                "mean_transfer": 0.075,
                "min_transfer": 0.05,
                "max_transfer": 0.1,
            },
        ],
    }
    p = tmp_path / "matrix.json"
    p.write_text(json.dumps(m))
    return p


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    return build_report(
        run_dir(),
        [capture()],
        matrix=_matrix(tmp),
        controls=[capture(control="blank")],
        argv=["patchlab", "report", "..."],
    )


def test_every_section_and_no_empty_plot(full):
    keys = [s.key for s in full.sections]
    assert keys == SECTIONS
    figs = full.figures
    names = {f.name for f in figs}
    assert {
        "overview",
        "loss",
        "transfer",
        "matrix",
        "capture0-tsuc",
        "capture0-bins-distance",
        "capture0-bins-angle",
        "capture0-bins-size",
        "capture0-bins-lighting",
    } <= names
    for f in figs:
        assert f.n_points > 0 and f.n_series > 0 and f.png[:4] == b"\x89PNG", f.name
    hist = load_run(run_dir()).history  # a real run: loss, each named term and the train tSuc per logged step
    assert next(f for f in figs if f.name == "loss").n_points == len(hist) * (2 + len(hist[0]["terms"]))
    assert next(f for f in figs if f.name == "matrix").n_points == 5  # measured cells only
    missing = [t for s in full.to_dict()["sections"] for t in s["missing"]]
    assert missing == []  # everything was measured here
    cap = next(s for s in full.sections if s.key == "capture-0")
    gallery = [b for b in cap.blocks if type(b).__name__ == "Gallery"]
    assert gallery and 1 <= len(gallery[0].images) <= 6
    prov = next(s for s in full.sections if s.key == "provenance")
    texts = " ".join(b.text for b in prov.blocks)
    assert "patchlab optimize" in texts and "patchlab capture run" in texts and "torch" in texts
    assert "patchlab eval transfer" in texts and "its command is not recorded" not in texts
    for f in (b for s in full.sections for b in s.blocks if isinstance(b, Figure)):
        assert f.source  # every figure says where its data came from


def test_missing_parts_are_said_not_measured(tmp_path):
    run = copy_short_run(tmp_path / "bare")  # as a run that stopped before its first logged step
    rec = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**rec, "history": []}))
    (run / "transfer.json").unlink()
    rep = build_report(run)
    missing = " ".join(t for s in rep.to_dict()["sections"] for t in s["missing"])
    for what in (
        "Loss curves: not measured",
        "Digital transfer: not measured",
        "Transfer matrix: not measured",
        "Physical tSuc: not measured",
    ):
        assert what in missing
    assert [f.name for f in rep.figures] == []  # nothing to draw: no figure at all, not an empty one
    html = render_html(rep)
    assert html.count("class='missing'") >= 4 and "<img class='fig'" not in html
    nocam = build_report(run_dir(), [capture(camera=False)])
    missing = " ".join(t for s in nocam.to_dict()["sections"] for t in s["missing"])
    assert "tSuc by distance: not measured" in missing and "Clean-vs-patched comparison: not measured" in missing


def test_html_is_self_contained(full, tmp_path):
    p = write_report(full, tmp_path / "report.html")
    text = p.read_text()
    for key in SECTIONS:
        assert f"id='{key}'" in text
    assert not re.search(r"src='(?!data:)", text)  # every image inline
    assert text.count("data:image/png;base64,") >= len(full.figures)
    pts = [int(v) for v in re.findall(r"data-points='(\d+)'", text)]
    assert len(pts) == len(full.figures) and min(pts) > 0


def test_pdf_renders_with_every_section(full, tmp_path):
    p = write_report(full, tmp_path / "report.pdf")
    assert p.read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(p), "-"], capture_output=True, text=True, check=True).stdout
        for title in (
            "Summary",
            "The patch",
            "Optimisation",
            "Digital transfer",
            "Transfer matrix",
            "Physical:",
            "Commands, configs and versions",
        ):
            assert title in text
    if shutil.which("pdftoppm"):
        subprocess.run(
            ["pdftoppm", "-png", "-r", "30", "-f", "1", "-l", "1", str(p), str(tmp_path / "page")],
            check=True,
            capture_output=True,
        )
        assert list(tmp_path.glob("page*.png"))


def test_cli_report(tmp_path):
    out = tmp_path / "r.html"
    r = CliRunner().invoke(
        app, ["report", str(run_dir()), str(capture()), "--out", str(out), "--control", str(capture(control="blank"))]
    )
    assert r.exit_code == 0, r.output
    assert out.is_file() and "Filmed (" in r.output
    bad = CliRunner().invoke(app, ["report", str(run_dir()), "--out", str(tmp_path / "r.docx")])
    assert bad.exit_code == 1 and "--out must end in .html or .pdf" in bad.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 1 and "not a patchlab run folder" in bad.output
    with pytest.raises(ConfigError, match="--control"):
        build_report(run_dir(), [], controls=[capture()])


def test_compare_shows_patches_side_by_side(tmp_path):
    other = make_short_run(tmp_path / "run-ce", loss="ce", seed=5, steps=2)
    rep = build_report(run_dir(), [], compare=[other])
    sec = next(s for s in rep.sections if s.key == "compare")
    gallery = next(b for b in sec.blocks if b.__class__.__name__ == "Gallery")
    assert len(gallery.images) == 2 and "run-ce" in gallery.images[1][1]
    t = TransferResult.from_dict(json.loads((run_dir() / "transfer.json").read_text()))
    wb, tr = t.sources[0].tsuc, t.others[0].tsuc
    assert f"sw (run-0001): white-box {wb:.1%}, transfer {tr:.1%}" == gallery.images[0][1]
    assert gallery.images[1][1].startswith("ce (run-ce): white-box ")
    html = render_html(rep)
    assert "Patches side by side" in html
    r = CliRunner().invoke(app, ["report", str(run_dir()), "--compare", str(other), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    assert "Patches side by side" in (tmp_path / "r.html").read_text()


def test_a_damaged_run_record_still_renders(tmp_path):
    """A run.json cut down to its status (hand-edited, or from a tool that wrote little) renders,
    each missing value "not recorded", the unfinished status as a partial result."""
    run = copy_short_run(tmp_path / "cut")
    (run / "run.json").write_text(json.dumps({"status": "error", "message": "boom"}))
    with pytest.warns(UserWarning, match="failed"):
        rep = build_report(run)
    kv = dict(next(b for b in rep.sections[1].blocks if type(b).__name__ == "KeyValues").items)
    assert kv["target class"] == "not recorded" and kv["loss"] == "not recorded" and kv["status"] == "error"
    assert "Partial result" in render_html(rep) and "boom" in render_html(rep)
    with pytest.raises(ConfigError, match="not a patchlab run.json"):
        load_run(run, warn=False)  # readers that need the record's contents still refuse it
