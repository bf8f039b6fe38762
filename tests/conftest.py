"""Shared fixtures: the real data and models in ../shared, read in place."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from patchlab.utils import default_threads

# The library calls below bypass the CLI, which sets this for every command: on a
# small shared CPU torch's default thread count makes each op many times slower.
torch.set_num_threads(default_threads())

# A test run started in the background (nohup, some CI runners) inherits SIGINT ignored, and the
# Ctrl-C tests (in process, and a child that inherits the disposition) then see no signal at all.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PATCHLAB_SHARED", REPO.parent / "shared"))
CIFAR_TEST = SHARED / "data" / "cifar10" / "test"
CIFAR_MODELS = SHARED / "models" / "cifar10"


def card(name: str) -> str:
    """Path of a shared CIFAR-10 model card, e.g. ``card("resnet20")``."""
    return str(CIFAR_MODELS / f"{name}.json")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.fail(
            f"../shared not found at {SHARED}: tests read the real data and models there "
            "(set PATCHLAB_SHARED to its location)"
        )
    return SHARED


@pytest.fixture(scope="session")
def cifar_small():
    """50 real CIFAR-10 test photographs per class (500 images), loaded once."""
    from patchlab.data import load_folder

    return load_folder(CIFAR_TEST, limit_per_class=50)


@pytest.fixture(scope="session")
def resnet20():
    from patchlab.models import load_model

    return load_model(card("resnet20"))


# ------------------------------------------------------------------ real short optimiser runs
def optimize_args(
    *,
    steps: int = 1,
    target: str = "frog",
    limit_per_class: int = 5,
    batch_size: int = 4,
    source: str = "resnet20",
) -> list[str]:
    """The cheapest real ``patchlab optimize`` argv (no ``--out``): a shared CIFAR-10 model,
    ``limit_per_class`` real test photographs per class, ``steps`` steps, on the CPU, no
    feature cache. The reliability tests build their optimiser commands from it."""
    return [
        "optimize",
        "--source",
        card(source),
        "--data",
        str(CIFAR_TEST),
        "--target",
        target,
        "--limit-per-class",
        str(limit_per_class),
        "--batch-size",
        str(batch_size),
        "--steps",
        str(steps),
        "--device",
        "cpu",
        "--no-cache",
    ]


#: the models a short run's transfer.json judges: its source and one other (transfer)
SHORT_RUN_JUDGES = ("resnet20", "vit_tiny_p4")


def make_short_run(
    out: Path,
    *,
    target: str = "cat",
    loss: str = "sw",
    seed: int = 0,
    steps: int = 3,
    patch_px: int = 64,
    judges: tuple[str, ...] = SHORT_RUN_JUDGES,
) -> Path:
    """A real run folder made as a user makes one: ``patchlab optimize`` for a few steps on
    resnet20 (a ``patch_px`` x ``patch_px`` patch, history logged every step), then
    ``patchlab eval transfer`` on ``judges`` (writes ``transfer.json``). Seconds on one core."""
    from typer.testing import CliRunner

    from patchlab.cli import app

    runner = CliRunner()
    argv = optimize_args(steps=steps, target=target)
    argv += ["--loss", loss, "--seed", str(seed), "--patch-px", str(patch_px), "--log-every", "1", "--out", str(out)]
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    models = [a for j in judges for a in ("--models", card(j))]
    res = runner.invoke(app, ["eval", "transfer", str(out), *models, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out


_RUNS_TMP: list[Path] = []


def short_run() -> Path:
    """The session's one shared short run (target ``cat``, ``sw``, 64x64 patch), made on
    first use. Read it, never write into it: copy it (:func:`copy_short_run`) to change it."""
    if not _RUNS_TMP:
        import atexit
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="patchlab-short-run-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _RUNS_TMP.append(make_short_run(tmp / "run-0001"))
    return _RUNS_TMP[0]


def copy_short_run(dest: Path) -> Path:
    """A copy of :func:`short_run` at ``dest`` (a folder a test may change or delete)."""
    import shutil

    shutil.copytree(short_run(), dest)
    return dest


@pytest.fixture(scope="session")
def short_run_dir() -> Path:
    """:func:`short_run` as a fixture."""
    return short_run()
