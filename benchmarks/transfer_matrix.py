"""The transfer experiment of the OT patch paper on the shared CIFAR-10 zoo, through the library.

Optimises one patch per (source, target, loss, area, seed) with
:func:`patchlab.optimize.prepare_run` / :func:`~patchlab.optimize.run_optimization`
(the same calls ``patchlab optimize`` makes), judges all of them on every model with
:func:`patchlab.eval.matrix.transfer_matrix`, and prints, per source and area, each
loss's white-box tSuc and mean transfer tSuc (over the models other than the source),
averaged over targets and seeds, plus the paired sw-vs-ce difference on the same
held-out images (:func:`patchlab.eval.compare.compare_runs`).

Re-running skips finished runs and resumes stopped ones, so it can be interrupted;
``--shard K/N`` runs every N-th optimisation so several processes can share a grid.

    python benchmarks/transfer_matrix.py --out runs/study --sources mobilenetv2_100 \\
        --targets frog airplane truck --losses sw w2 l2 ce --fracs 0.2 --seeds 0 1 2 --steps 300 \\
        --set eot=digital --set placement=random --set lr_schedule=cosine
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from patchlab.runs import load_run

if TYPE_CHECKING:
    from patchlab.eval.matrix import MatrixRow

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = SHARED / "models" / "cifar10"
DATA = SHARED / "data" / "cifar10" / "test"


def card(name: str) -> str:
    p = Path(name)
    return str(p if p.suffix == ".json" else MODELS / f"{name}.json")


def parse_sets(items: list[str]) -> dict:
    """``key=value`` settings of :class:`~patchlab.optimize.OptimizeConfig` (numbers and booleans parsed)."""
    from dataclasses import fields

    from patchlab.eot import load_eot
    from patchlab.optimize import OptimizeConfig

    known = {f.name: f for f in fields(OptimizeConfig)}
    out: dict = {}
    for it in items:
        k, v = it.split("=", 1)
        if k == "eot":
            out["eot"], out["eot_name"] = load_eot(v), v
            continue
        if k not in known:
            raise SystemExit(f"unknown setting {k!r}; known: {sorted(known)}")
        val: object = v
        for cast in (int, float):
            try:
                val = cast(v)
                break
            except ValueError:
                pass
        if v in ("true", "false"):
            val = v == "true"
        if v == "none":
            val = None
        out[k] = val
    return out


def run_grid(args: argparse.Namespace) -> list[Path]:
    from patchlab.data import load_folder
    from patchlab.models import load_model
    from patchlab.optimize import OptimizeConfig, prepare_run, run_optimization
    from patchlab.utils import resolve_device

    dev = resolve_device(args.device)
    sets = parse_sets(args.set)
    data = load_folder(DATA)
    runs, todo = [], []
    for src in args.sources:
        for frac in args.fracs:
            for tgt in args.targets:
                for loss in args.losses:
                    for seed in args.seeds:
                        d = args.out / f"{Path(src).stem}_{tgt}_{loss}_{int(round(frac * 100))}_s{seed}{args.tag}"
                        runs.append(d)
                        todo.append((src, frac, tgt, loss, seed, d))
    k, n = (int(x) for x in args.shard.split("/"))
    models: dict[str, object] = {}
    for i, (src, frac, tgt, loss, seed, d) in enumerate(todo):
        if args.eval_only or i % n != k:
            continue
        rec = d / "run.json"
        status = load_run(d, warn=False).status if rec.is_file() else None
        if status == "finished":
            continue
        resume = status is not None and (d / "checkpoint.pt").is_file()
        if not resume and d.exists():
            import shutil

            shutil.rmtree(d)
        if src not in models:
            models[src] = load_model(card(src), device=dev)
        config = OptimizeConfig(
            **{**sets, "target": tgt, "loss": loss, "frac": frac, "steps": args.steps, "seed": seed}
        )
        t = time.perf_counter()
        prepared = prepare_run(config, [models[src]], data, device=dev, cache=True)
        res = run_optimization(prepared, d, resume=resume, command=["benchmarks/transfer_matrix.py"])
        print(
            f"{d.name}: {res.steps} steps, running white-box tSuc {res.final_tsuc:.1%} "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sources", nargs="+", default=["mobilenetv2_100"])
    ap.add_argument("--targets", nargs="+", default=["frog", "airplane", "truck"])
    ap.add_argument("--losses", nargs="+", default=["sw", "w2", "l2", "ce"])
    ap.add_argument("--fracs", nargs="+", type=float, default=[0.2])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an OptimizeConfig setting for every run (eot=digital, placement=random, tv=0, ...)",
    )
    ap.add_argument("--models", nargs="+", default=None, help="judged models (default: every card in shared)")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--no-eval", action="store_true", help="optimise only")
    ap.add_argument("--shard", default="0/1", help="K/N: run every N-th optimisation, starting at K")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default="", help="suffix of the run folder names (one per configuration)")
    ap.add_argument(
        "--compare",
        nargs=2,
        default=None,
        metavar=("LOSS_A", "LOSS_B"),
        help="instead of the matrix: pair the finished runs of two losses (same source, target, area, "
        "seed) and print their paired difference on the same held-out images",
    )
    ap.add_argument(
        "--summarise",
        nargs="+",
        type=Path,
        default=None,
        metavar="MATRIX_JSON",
        help="only print the summary of these matrix.json files (merged)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.summarise:
        from patchlab.eval.matrix import MatrixResult

        summarise([row for f in args.summarise for row in MatrixResult.read(f).rows])
        return
    if args.out is None:
        ap.error("--out is required")
    runs = run_grid(args)
    if args.no_eval:
        return
    if args.compare:
        compare(args, runs)
        return
    from patchlab.eval.matrix import transfer_matrix
    from patchlab.models import load_model
    from patchlab.utils import resolve_device

    dev = resolve_device(args.device)
    judged = [load_model(card(m), device=dev) for m in (args.models or sorted(p.stem for p in MODELS.glob("*.json")))]
    done = [d for d in runs if (d / "run.json").is_file()]
    res = transfer_matrix(done, judged, device=dev)
    res.write(args.out / f"matrix{args.tag}")
    summarise(res.rows)


def compare(args: argparse.Namespace, runs: list[Path]) -> None:
    """Loss A against loss B on the same held-out images, pooled over targets and seeds, and per target."""
    from patchlab.eval.compare import compare_runs
    from patchlab.models import load_model
    from patchlab.runs import load_run
    from patchlab.utils import atomic_write_json, resolve_device

    a_loss, b_loss = args.compare
    finished = {d.name: d for d in runs if (d / "run.json").is_file() and load_run(d).status == "finished"}
    pairs = []
    for name, d in sorted(finished.items()):
        if f"_{a_loss}_" in name:
            other = name.replace(f"_{a_loss}_", f"_{b_loss}_")
            if other in finished:
                pairs.append((d, finished[other]))
    if not pairs:
        raise SystemExit(f"no finished pair of {a_loss} and {b_loss} runs in {args.out}")
    dev = resolve_device(args.device)
    judged = [load_model(card(m), device=dev) for m in (args.models or sorted(p.stem for p in MODELS.glob("*.json")))]
    t = time.perf_counter()
    res = compare_runs([a for a, _ in pairs], [b for _, b in pairs], judged, device=dev)
    atomic_write_json(args.out / f"compare_{a_loss}_{b_loss}{args.tag}.json", res.to_dict())
    print(f"\n{len(pairs)} pairs judged on {len(judged)} models in {time.perf_counter() - t:.0f} s")
    print(
        f"\n| target | pairs (seeds) | {a_loss} white-box | {b_loss} white-box | {a_loss} mean transfer | "
        f"{b_loss} mean transfer |"
    )
    print("|---|---|---|---|---|---|")
    by_t: dict[str, list[dict]] = defaultdict(list)
    for p in res.pairs:
        by_t[p["target"]].append(p)

    def wb_tr(p: dict, key: str) -> tuple[float, float]:
        src = set(p["sources"])
        wb = [v for m, v in p[key].items() if m in src]
        tr = [v for m, v in p[key].items() if m not in src]
        return sum(wb) / len(wb), sum(tr) / len(tr)

    for target, ps in sorted(by_t.items()):
        va = [wb_tr(p, "tsuc_a") for p in ps]
        vb = [wb_tr(p, "tsuc_b") for p in ps]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(
            f"| {target} | {len(ps)} | {mean([w for w, _ in va]):.1%} | {mean([w for w, _ in vb]):.1%} | "
            f"{mean([t for _, t in va]):.1%} | {mean([t for _, t in vb]):.1%} |"
        )
    print(f"\npooled over {len(pairs)} pairs ({res.models[0].n} image pairs), {a_loss} - {b_loss}:")
    print("| model | " + a_loss + " | " + b_loss + " | difference [95 % CI, paired bootstrap] | McNemar p |")
    print("|---|---|---|---|---|")
    for m in [*res.models, *([res.mean_transfer] if res.mean_transfer else [])]:
        p = "" if m.p_mcnemar is None else f"{m.p_mcnemar:.2g}"
        print(
            f"| {m.name.removeprefix('cifar10-')}{' (source)' if m.is_source else ''} | {m.a:.1%} | {m.b:.1%} | "
            f"{m.diff:+.1%} [{m.ci95[0]:+.1%}, {m.ci95[1]:+.1%}] | {p} |"
        )


def summarise(rows: Sequence[MatrixRow]) -> None:
    """Per source, area and configuration: each loss's white-box and mean transfer tSuc.

    Averaged over targets and seeds; the per-target values (mean over seeds) are
    listed so no cell hides behind a mean.
    """
    cells: dict[tuple[str, float, str], list[tuple[str, float, float]]] = defaultdict(list)
    from patchlab.eval.matrix import row_label
    from patchlab.runs import RUN_JSON

    for r in rows:
        label = r.label
        if (Path(r.run_dir) / RUN_JSON).is_file():  # labels from older matrices may lack knobs it now names
            label = row_label(load_run(r.run_dir))
        config = label.split("->", 1)[1].split(" ", 1)[1] if " " in label.split("->", 1)[1] else ""
        key = ("+".join(r.sources), r.frac, f"{r.loss} {config}".strip())
        cells[key].append((r.target_class, r.white_box or 0.0, r.mean_transfer or 0.0))
    print()
    print("| source | area | loss / config | runs | white-box tSuc | mean transfer tSuc | per target (wb / transfer) |")
    print("|---|---|---|---|---|---|---|")
    for (src, frac, loss), v in sorted(cells.items()):
        wb = sum(a for _, a, _ in v) / len(v)
        tr = sum(b for _, _, b in v) / len(v)
        per_t: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for t, a, b in v:
            per_t[t].append((a, b))
        per = ", ".join(
            f"{t} {sum(a for a, _ in x) / len(x):.0%}/{sum(b for _, b in x) / len(x):.1%}"
            for t, x in sorted(per_t.items())
        )
        print(f"| {src.removeprefix('cifar10-')} | {frac:.0%} | {loss} | {len(v)} | {wb:.1%} | {tr:.1%} | {per} |")


if __name__ == "__main__":
    main()
