"""One distribution; the stage folders install inside the patchlab package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

STAGES = ("calib", "print", "capture", "eval")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (whl,) = out.glob("patchlab-*.whl")
    return whl


def test_wheel_maps_stage_folders_under_patchlab(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for stage in STAGES:
        assert f"patchlab/{stage}/__init__.py" in names
    tops = {n.split("/")[0] for n in names}
    assert not tops & set(STAGES), f"stage folder installed at the top of site-packages: {tops}"
    assert {t for t in tops if not t.endswith(".dist-info")} == {"patchlab"}
    # every package folder in the repository made it into the wheel
    for init in REPO.glob("patchlab/**/__init__.py"):
        rel = init.relative_to(REPO).as_posix()
        assert rel in names, f"{rel} missing from the wheel: add it to pyproject's packages"


def test_installed_copy_imports_the_stages(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    for stage in STAGES:
        assert not (target / stage).exists()
    code = (
        "import patchlab.calib, patchlab.print, patchlab.capture, patchlab.eval, builtins;"
        "print(patchlab.calib.__file__); print(patchlab.eval.__file__);"
        "assert builtins.print is print"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    for line in res.stdout.split():
        assert Path(line).is_relative_to(target), line


def test_editable_install_resolves_stages_to_the_repository():
    import patchlab.calib
    import patchlab.eval

    assert Path(patchlab.calib.__file__).resolve() == REPO / "calib" / "__init__.py"
    assert Path(patchlab.eval.__file__).resolve() == REPO / "eval" / "__init__.py"
