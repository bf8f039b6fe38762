"""Benchmark: `patchlab world make` (images/s) and `patchlab world train` (seconds, val accuracy).

Runs the two commands exactly as a user does, in a temporary folder, and prints one
JSON record with the wall time of each, the per-model figures from the zoo's cards
and the machine load (1-minute load average) before and after, since shared
machines make timings noisy::

    .venv/bin/python benchmarks/world_make_train.py [--n-per-class 500] [--seed 0] [--keep DIR]

Acceptance (issue 6): each model >= 95 % val accuracy, training under 180 s in
total on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "patchlab", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None, help="write world/ and zoo/ here instead of a temp folder")
    a = ap.parse_args()
    base = a.keep or Path(tempfile.mkdtemp(prefix="patchlab-bench-"))
    world, zoo = base / "world", base / "zoo"
    shutil.rmtree(world, ignore_errors=True)
    shutil.rmtree(zoo, ignore_errors=True)
    rec: dict = {"cpu_count": os.cpu_count(), "load_before": os.getloadavg()[0]}
    make_s = _run(["world", "make", "--out", str(world), "--n-per-class", str(a.n_per_class), "--seed", str(a.seed)])
    wj = json.loads((world / "world.json").read_text())
    n = sum(wj["counts"].values())
    rec["make"] = {
        "wall_s": round(make_s, 2),
        "images": n,
        "images_per_s_wall": round(n / make_s, 1),
        "images_per_s_drawing": round(n / wj["seconds"], 1),
        "load_after": os.getloadavg()[0],
    }
    train_s = _run(
        [
            "world",
            "train",
            "--data",
            str(world),
            "--out",
            str(zoo),
            "--seed",
            str(a.seed),
            "--device",
            a.device,
            "--no-resume",
        ]
    )
    zj = json.loads((zoo / "zoo.json").read_text())
    rec["train"] = {
        "wall_s": round(train_s, 2),
        "library_s": zj["seconds"],
        "load_after": os.getloadavg()[0],
        "models": {m["name"]: {"val_accuracy": m["val_accuracy"], "train_s": m["train_seconds"]} for m in zj["models"]},
    }
    rec["ok"] = train_s < 180 and all(m["val_accuracy"] >= 0.95 for m in zj["models"])
    print(json.dumps(rec, indent=2))
    if a.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
