"""The transfer experiment of the OT patch paper on the shared CIFAR-10 zoo, from the CLI.

Optimises one patch per (source, target, loss, area) with ``patchlab optimize``,
judges all of them on every model with ``patchlab eval matrix``, and prints, side
by side per source and area, each loss's white-box tSuc and mean transfer tSuc
(over the models other than the source), averaged over the targets.

Re-running skips finished runs and resumes stopped ones, so it can be interrupted.

    python benchmarks/transfer_matrix.py --out runs/matrix \\
        --sources mobilenetv2_100 vit_tiny_p4 --targets frog ship truck \\
        --losses sw w2 quantile ce l2 --fracs 0.1 0.2 --steps 200 -- --placement random

Everything after ``--`` goes to every ``patchlab optimize`` call unchanged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = SHARED / "models" / "cifar10"
DATA = SHARED / "data" / "cifar10" / "test"


def card(name: str) -> str:
    p = Path(name)
    return str(p if p.suffix == ".json" else MODELS / f"{name}.json")


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if "optimize" in cmd else None)
    print(f"  ({time.perf_counter() - t:.0f} s) {cmd[cmd.index('--out') + 1] if '--out' in cmd else ''}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sources", nargs="+", default=["mobilenetv2_100", "vit_tiny_p4"])
    ap.add_argument("--targets", nargs="+", default=["frog", "ship", "truck"])
    ap.add_argument("--losses", nargs="+", default=["sw", "w2", "quantile", "ce", "l2"])
    ap.add_argument("--fracs", nargs="+", type=float, default=[0.1, 0.2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--models", nargs="+", default=None, help="judged models (default: every card in shared)")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default="", help="suffix of the run folder names (one per configuration)")
    ap.add_argument("--jobs", type=int, default=1, help="optimisations run at once (one torch thread each)")
    ap.add_argument("--summarise", nargs="+", type=Path, default=None, metavar="MATRIX_JSON",
                    help="only print the summary of these matrix.json files (merged)")
    args, extra = ap.parse_known_args()
    if args.summarise:
        merged: dict = {"runs": []}
        for f in args.summarise:
            merged["runs"] += json.loads(f.read_text())["runs"]
        summarise(merged)
        return
    extra = [a for a in extra if a != "--"]
    if args.out is None:
        ap.error("--out is required")
    patchlab = [sys.executable, "-m", "patchlab"] + (["--threads", "1"] if args.jobs > 1 else [])
    runs = []
    todo: list[list[str]] = []
    for src in args.sources:
        for frac in args.fracs:
            for tgt in args.targets:
                for loss in args.losses:
                    d = args.out / f"{Path(src).stem}_{tgt}_{loss}_{int(round(frac * 100))}{args.tag}"
                    runs.append(d)
                    if args.eval_only:
                        continue
                    rec = d / "run.json"
                    status = json.loads(rec.read_text()).get("status") if rec.is_file() else None
                    if status == "finished":
                        continue
                    cmd = [*patchlab, "optimize", "--out", str(d), "--device", args.device]
                    if status is not None and (d / "checkpoint.pt").is_file():
                        cmd += ["--resume"]
                    else:
                        if d.exists():
                            import shutil

                            shutil.rmtree(d)
                        cmd += ["--source", card(src), "--data", str(DATA), "--target", tgt, "--loss", loss,
                                "--patch-frac", str(frac), "--steps", str(args.steps), *extra]
                    todo.append(cmd)
    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, todo))
    else:
        for cmd in todo:
            run(cmd)
    models = [card(m) for m in args.models] if args.models else sorted(str(p) for p in MODELS.glob("*.json"))
    done = [str(d) for d in runs if (d / "run.json").is_file()]
    mdir = args.out / f"matrix{args.tag}"
    run([*patchlab, "eval", "matrix", *done, "--models", *models, "--out", str(mdir), "--device", args.device])
    summarise(json.loads((mdir / "matrix.json").read_text()))


def summarise(m: dict) -> None:
    """Per source, area and configuration: each loss's white-box and mean transfer tSuc.

    Averaged over the targets; min/max of the per-target mean transfer show the
    spread, and the per-target values are listed so no cell hides behind a mean.
    """
    cells: dict[tuple[str, float, str], list[tuple[str, float, float]]] = defaultdict(list)
    from patchlab.eval.matrix import row_label
    from patchlab.runs import RUN_JSON, read_run

    for r in m["runs"]:
        label = r["label"]
        if (Path(r["run_dir"]) / RUN_JSON).is_file():  # labels from older matrices may lack knobs it now names
            label = row_label(read_run(r["run_dir"]))
        config = label.split("->", 1)[1].split(" ", 1)[1] if " " in label.split("->", 1)[1] else ""
        key = ("+".join(r["sources"]), r["frac"], f"{r['loss']} {config}".strip())
        cells[key].append((r["target_class"], r["white_box"] or 0.0, r["mean_transfer"] or 0.0))
    print()
    print("| source | area | loss / config | white-box tSuc | mean transfer tSuc | per target (wb / transfer) |")
    print("|---|---|---|---|---|---|")
    for (src, frac, loss), v in sorted(cells.items()):
        wb = sum(a for _, a, _ in v) / len(v)
        tr = sum(b for _, _, b in v) / len(v)
        per = ", ".join(f"{t} {a:.0%}/{b:.1%}" for t, a, b in sorted(v))
        print(f"| {src.removeprefix('cifar10-')} | {frac:.0%} | {loss} | {wb:.1%} | {tr:.1%} | {per} |")


if __name__ == "__main__":
    main()
