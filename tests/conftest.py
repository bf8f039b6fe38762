"""Shared fixtures: the real data and models in ../shared, read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from patchlab.utils import default_threads

# The library calls below bypass the CLI, which sets this for every command: on a
# small shared CPU torch's default thread count makes each op many times slower.
torch.set_num_threads(default_threads())

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
