"""Reliability, family 4: every number is checked once, at the boundary, with one helper.

The shared mechanism under test: :func:`patchlab.checks.check_number` — run by the CLI's error
boundary on every numeric option of every command (range by option name in
:data:`patchlab.checks.OPTION_RANGES`, else finite), by :class:`patchlab.models.Preprocess` on a
card's ``input_size``/``mean``/``std`` — and :func:`patchlab.utils.json_dumps`, which never writes
a bare ``NaN``.
"""

from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card
from patchlab.checks import OPTION_RANGES, Range, check_number
from patchlab.cli import app
from patchlab.errors import ConfigError, ModelLoadError
from patchlab.models import load_model
from patchlab.models.wrapper import Preprocess

R20 = card("resnet20")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _numeric_options():
    """(command words, option, python type) for every numeric option of every command."""
    out = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for n, c in cmd.commands.items():
                walk(c, path + [n])
            return
        for p in cmd.params:
            ann = str(getattr(getattr(p, "type_descriptor", None), "annotation", ""))
            kind = "float" if "float" in ann else "int" if "int" in ann else None
            if kind and p.param_type_name == "option":
                out.append((tuple(path), p.opts[0], kind))

    walk(typer.main.get_command(app), [])
    return out


OPTIONS = _numeric_options()


def test_the_walk_sees_the_options_of_the_issue():
    seen = {(" ".join(c), o) for c, o, _ in OPTIONS}
    for want in [
        ("print patch", "--size-mm"),
        ("optimize", "--tv"),
        ("optimize", "--nps-weight"),
        ("simulate capture", "--fps"),
        ("eval transfer", "--batch-size"),
    ]:
        assert want in seen


@pytest.mark.parametrize("cmd,opt,kind", OPTIONS, ids=[f"{' '.join(c)} {o}" for c, o, _ in OPTIONS])
def test_every_numeric_option_refuses_non_finite_and_out_of_range_values(cmd, opt, kind):
    bad = ["nan", "inf", "-inf"] if kind == "float" else []
    rng = OPTION_RANGES.get(opt)
    if rng is not None and rng.lo is not None:
        bad.append(str(int(rng.lo) - 1 if kind == "int" else rng.lo - 1.0))
        if rng.lo_open:
            bad.append(str(int(rng.lo)) if kind == "int" else str(float(rng.lo)))
    if rng is not None and rng.hi is not None:
        bad.append(str(int(rng.hi) + 1 if kind == "int" else rng.hi + 1.0))
    for value in bad:
        res = invoke(*cmd, opt, value)
        assert res.exit_code == 1, (cmd, opt, value, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {opt} must be"), (cmd, opt, value, res.output)


@pytest.mark.parametrize(
    "args,msg",
    [
        (
            ["print", "patch", "x", "--size-mm", "nan", "--out", "p.pdf"],
            "--size-mm must be a finite number > 0, got nan",
        ),
        (["optimize", "--tv", "nan"], "--tv must be a finite number >= 0, got nan"),
        (["optimize", "--nps-weight", "inf"], "--nps-weight must be a finite number >= 0, got inf"),
        (["simulate", "capture", "--fps", "nan"], "--fps must be a finite number > 0, got nan"),
        (["eval", "transfer", "x", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["optimize", "--patch-frac", "1.5"], "--patch-frac must be in (0, 1), got 1.5"),
    ],
)
def test_the_cases_of_the_issue(args, msg):
    res = invoke(*args)
    assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output


def test_helper_messages():
    with pytest.raises(ConfigError, match=r"^--lr must be a finite number > 0, got nan$"):
        check_number(float("nan"), "--lr", Range(0, lo_open=True))
    with pytest.raises(ConfigError, match=r"^--n must be an integer, got 2.5$"):
        check_number(2.5, "--n", Range(1, integer=True))
    with pytest.raises(ConfigError, match=r"must be a number, got True"):
        check_number(True, "--x")
    assert check_number(3, "--n", Range(1, integer=True)) == 3


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("std", [0.2, 0.0, 0.2], "std[1] must be > 0, got 0"),
        ("std", [0.2, -0.1, 0.2], "std[1] must be > 0"),
        ("std", [0.2, "nan", 0.2], "std[1] must be a finite number > 0"),
        ("mean", [0.5, float("inf"), 0.5], "mean[1] must be a finite number"),
        ("input_size", [3, 0, 32], "input_size[1] must be an integer >= 1, got 0"),
        ("input_size", [3, 32.5, 32], "input_size[1] must be an integer"),
        ("input_size", [3, 32], "input_size must be [channels, height, width]"),
        ("input_size", 32, "input_size must be a list of numbers, got 32"),
        ("std", "x", "std must be a list of numbers"),
        ("std", [0.2, 0.2], "mean/std must have 3 entries"),
    ],
)
def test_card_numbers_are_refused_before_any_weights_are_read(tmp_path, field, value, msg):
    d = json.loads(open(R20).read())
    d[field] = [float(v) if v == "nan" else v for v in value] if isinstance(value, list) else value
    d["weights"] = str(tmp_path / "never-read.th")  # absent: the card must fail first
    p = tmp_path / "c.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ModelLoadError, match=rf"model card {p}: .*{msg.replace('[', '.').replace(']', '.')}"):
        load_model(str(p))
    res = invoke("models", "check", p, "--data", CIFAR_TEST, "--limit-per-class", "1", "--device", "cpu")
    assert res.exit_code == 1 and "error: model card" in res.output and "Traceback" not in res.output


def test_preprocess_is_checked_for_every_source_of_models():
    with pytest.raises(ValueError, match="std"):
        Preprocess(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.2, 0.0, 0.2))
    Preprocess(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


def test_run_record_never_holds_a_bare_nan(tmp_path):
    from patchlab.utils import atomic_write_json

    rec = {"history": [{"step": 1, "loss": float("nan")}], "tsuc": math.inf}
    text = atomic_write_json(tmp_path / "run.json", rec).read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
