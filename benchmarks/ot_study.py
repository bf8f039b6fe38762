"""The OT study's judging and tables (issue 11, and the robustified setting of issue 14).

``judge``: every finished run of a study folder (``transfer_matrix.py --no-eval``) judged once per
defence on all shared models, on the first ``--n-judge`` held-out images of one seeded shuffle of its
split (paired runs, made with the same seed, share them), with the placements ``eval transfer``
draws; per-image outcomes are cached as ``RUN__DEFENCE.npz`` (resumable: cached runs are skipped).

``report``: from the cache, per source and loss the white-box tSuc and the mean transfer to the
other models; ``sw`` against ``ce`` paired on the same images (paired bootstrap over images within
each pair, McNemar per model, and a t interval over the pairs, which includes seed and target
variance); and under ``--defense lgs`` the difference in differences
``(sw_lgs - sw_none) - (ce_lgs - ce_none)`` per image: does the OT patch keep more of its tSuc
under LGS than the CE patch (the paper's claim)?

    PATCHLAB_THREADS=1 python benchmarks/ot_study.py judge --study runs/study --cache runs/judged --defense none lgs
    python benchmarks/ot_study.py report --cache runs/judged
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models" / "cifar10"
NAMES = ["resnet20", "resnet32", "resnet56", "mobilenetv2_100", "efficientnet_b0", "convnext_atto", "vit_tiny_p4"]


def judge(args: argparse.Namespace) -> None:
    import patchlab.eval.transfer as ET
    from patchlab.defenses import defend
    from patchlab.models import load_model
    from patchlab.runs import load_run

    torch.set_num_threads(1)
    base = [load_model(MODELS / f"{n}.json") for n in NAMES]
    args.cache.mkdir(parents=True, exist_ok=True)
    for d in args.defense:
        zoo = base if d == "none" else [defend(m, d) for m in base]
        clean: dict = {}
        data: dict = {}
        for run in sorted(args.study.iterdir()):
            if not (run / "run.json").exists() or (args.only and not any(s in run.name for s in args.only)):
                continue
            out = args.cache / f"{run.name}__{d}.npz"
            if out.exists() or load_run(run).status != "finished":
                continue
            t = time.time()
            r, _imgs, _pl, o = ET.judge_run(
                run, zoo, device="cpu", clean_cache=clean, data_cache=data, max_images=args.n_judge, subset_seed=12345
            )
            np.savez(
                out,
                hit=o.hit.numpy(),
                wrong=o.wrong.numpy(),
                clean_ok=o.clean_ok.numpy(),
                non_target=o.non_target.numpy(),
                models=np.array(NAMES),
                sources=np.array(r.source_names),
            )
            rates = " ".join(f"{n}:{float(h[o.non_target].float().mean()):.2f}" for n, h in zip(NAMES, o.hit))
            print(f"{run.name} {d}: {time.time() - t:.0f}s  tSuc {rates}", flush=True)


PATTERN = re.compile(r"(?P<src>.+)_(?P<tgt>[a-z]+)_(?P<loss>sw|ce|w2|l2)_20_s(?P<seed>\d)__(?P<d>.+)\.npz")


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def fmt_ci(d: float, lo: float, hi: float) -> str:
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def load_cache(folder: Path) -> dict:
    """``{(source, target, loss, seed, defence): {hit (models, images), models, sources}}``."""
    runs = {}
    for f in sorted(folder.glob("*.npz")):
        m = PATTERN.match(f.name)
        if not m:
            continue
        z = np.load(f)
        runs[(m["src"], m["tgt"], m["loss"], int(m["seed"]), m["d"])] = {
            "hit": z["hit"][:, z["non_target"]].astype(float),
            "models": [str(n) for n in z["models"]],
            "sources": {str(s).removeprefix("cifar10-") for s in z["sources"]},
        }
    return runs


def paired(runs: dict, src: str, a: str, b: str, defence: str = "none") -> tuple[list, list, list]:
    """The (target, seed) cells where both losses were judged: their hit matrices, in order."""
    cells = sorted({(t, s) for (sr, t, lo, s, d) in runs if sr == src and lo == a and d == defence})
    cells = [c for c in cells if (src, c[0], b, c[1], defence) in runs]
    return (
        cells,
        [runs[(src, t, a, s, defence)]["hit"] for t, s in cells],
        [runs[(src, t, b, s, defence)]["hit"] for t, s in cells],
    )


def summary_table(runs: dict) -> None:
    print("## Per source and loss (no defence): mean over runs\n")
    print("| source | loss | runs (target:seed) | white-box tSuc | mean transfer tSuc |")
    print("|---|---|---|---|---|")
    agg = defaultdict(list)
    for (src, tgt, loss, seed, d), r in runs.items():
        if d != "none":
            continue
        si = [i for i, n in enumerate(r["models"]) if n in r["sources"]]
        oi = [i for i, n in enumerate(r["models"]) if n not in r["sources"]]
        agg[(src, loss)].append((r["hit"][si].mean(), r["hit"][oi].mean(), f"{tgt}:{seed}"))
    for (src, loss), v in sorted(agg.items()):
        cells = ", ".join(sorted(x[2] for x in v))
        print(
            f"| {src} | {loss} | {len(v)} ({cells}) | {pct(np.mean([x[0] for x in v]))} | "
            f"{pct(np.mean([x[1] for x in v]))} |"
        )


def common_cells_table(runs: dict) -> None:
    """Every loss on the (target, seed) cells where all of a source's losses were run: a like-for-like mean."""
    for src in sorted({k[0] for k in runs}):
        losses = sorted({k[2] for k in runs if k[0] == src and k[4] == "none"})
        cells = None
        for lo in losses:
            have = {(k[1], k[3]) for k in runs if k[0] == src and k[2] == lo and k[4] == "none"}
            cells = have if cells is None else cells & have
        if not cells or len(losses) < 3:
            continue
        cells_txt = ", ".join(f"{t}:{s}" for t, s in sorted(cells))
        print(f"\n## {src}: every loss on the same {len(cells)} cells ({cells_txt})\n")
        print("| loss | white-box tSuc | mean transfer tSuc |")
        print("|---|---|---|")
        for lo in losses:
            wb, tr = [], []
            for t, s in sorted(cells):
                r = runs[(src, t, lo, s, "none")]
                si = [i for i, n in enumerate(r["models"]) if n in r["sources"]]
                oi = [i for i, n in enumerate(r["models"]) if n not in r["sources"]]
                wb.append(r["hit"][si].mean())
                tr.append(r["hit"][oi].mean())
            print(f"| {lo} | {pct(float(np.mean(wb)))} | {pct(float(np.mean(tr)))} |")


def compare(runs: dict, src: str, a: str, b: str) -> None:
    from scipy import stats

    from patchlab.stats import mcnemar_exact, paired_bootstrap

    cells, A_, B_ = paired(runs, src, a, b)
    if not cells:
        return
    names = runs[(src, cells[0][0], a, cells[0][1], "none")]["models"]
    srcs = runs[(src, cells[0][0], a, cells[0][1], "none")]["sources"]
    S = np.concatenate([np.full(x.shape[1], j) for j, x in enumerate(A_)])
    A, B = np.concatenate(A_, 1), np.concatenate(B_, 1)
    print(f"\n## {src}: {a} - {b}, {len(cells)} pairs, {A.shape[1]} image pairs\n")
    print(f"| model | {a} | {b} | difference, points [95% CI, paired bootstrap] | McNemar p |")
    print("|---|---|---|---|---|")
    mean, (lo, hi) = paired_bootstrap(A - B, S, n_boot=2000, seed=0)
    for i, n in enumerate(names):
        _, _, p = mcnemar_exact(A[i].astype(bool), B[i].astype(bool))
        tag = " (source)" if n in srcs else ""
        print(f"| {n}{tag} | {pct(A[i].mean())} | {pct(B[i].mean())} | {fmt_ci(mean[i], lo[i], hi[i])} | {p:.2g} |")
    oi = [i for i, n in enumerate(names) if n not in srcs]
    d, (l_, h_) = paired_bootstrap(A[oi].mean(0) - B[oi].mean(0), S, n_boot=2000, seed=0)
    d, l_, h_ = (float(np.ravel(v)[0]) for v in (d, l_, h_))
    print(f"| mean transfer | {pct(A[oi].mean())} | {pct(B[oi].mean())} | {fmt_ci(d, l_, h_)} | |")
    per = np.array([a_[oi].mean() - b_[oi].mean() for a_, b_ in zip(A_, B_)])
    half = stats.t.ppf(0.975, len(per) - 1) * per.std(ddof=1) / np.sqrt(len(per)) if len(per) > 1 else float("nan")
    cells_txt = ", ".join(f"{t}:{s} {100 * v:+.1f}" for (t, s), v in zip(cells, per))
    print(f"\nPer pair (target:seed), mean-transfer difference in points: {cells_txt}.")
    print(
        f"Over pairs (seed and target variance included): {100 * per.mean():+.1f} points, t 95% CI "
        f"[{100 * (per.mean() - half):+.1f}, {100 * (per.mean() + half):+.1f}]; {int((per > 0).sum())} of "
        f"{len(per)} pairs favour {a}."
    )


def defended(runs: dict, src: str, defence: str, a: str = "sw", b: str = "ce") -> None:
    from patchlab.stats import paired_bootstrap

    cells, A1_, B1_ = paired(runs, src, a, b, defence)
    cells = [c for c in cells if (src, c[0], a, c[1], "none") in runs and (src, c[0], b, c[1], "none") in runs]
    if not cells:
        return
    get = lambda lo, d: np.concatenate([runs[(src, t, lo, s, d)]["hit"] for t, s in cells], 1)  # noqa: E731
    A0, B0, A1, B1 = get(a, "none"), get(b, "none"), get(a, defence), get(b, defence)
    S = np.concatenate([np.full(runs[(src, t, a, s, "none")]["hit"].shape[1], j) for j, (t, s) in enumerate(cells)])
    names = runs[(src, cells[0][0], a, cells[0][1], "none")]["models"]
    srcs = runs[(src, cells[0][0], a, cells[0][1], "none")]["sources"]
    print(f"\n## {src}: --defense {defence}, {len(cells)} {a}/{b} pairs, {A0.shape[1]} images\n")
    print(
        f"| model | {a} | {a} + {defence} | {b} | {b} + {defence} | "
        f"({a} kept - {b} kept), points [95% CI, paired bootstrap] |"
    )
    print("|---|---|---|---|---|---|")
    mean, (lo, hi) = paired_bootstrap((A1 - A0) - (B1 - B0), S, n_boot=2000, seed=0)
    for i, n in enumerate(names):
        tag = " (source)" if n in srcs else ""
        print(
            f"| {n}{tag} | {pct(A0[i].mean())} | {pct(A1[i].mean())} | {pct(B0[i].mean())} | "
            f"{pct(B1[i].mean())} | {fmt_ci(mean[i], lo[i], hi[i])} |"
        )
    oi = [i for i, n in enumerate(names) if n not in srcs]
    dm = (A1[oi].mean(0) - A0[oi].mean(0)) - (B1[oi].mean(0) - B0[oi].mean(0))
    d, (l_, h_) = paired_bootstrap(dm, S, n_boot=2000, seed=0)
    d, l_, h_ = (float(np.ravel(v)[0]) for v in (d, l_, h_))
    print(
        f"| mean transfer | {pct(A0[oi].mean())} | {pct(A1[oi].mean())} | {pct(B0[oi].mean())} | "
        f"{pct(B1[oi].mean())} | {fmt_ci(d, l_, h_)} |"
    )
    si = [i for i, n in enumerate(names) if n in srcs]
    print(
        f"\nWhite-box tSuc kept under {defence}: {a} {A1[si].mean() / max(A0[si].mean(), 1e-9):.1%}, "
        f"{b} {B1[si].mean() / max(B0[si].mean(), 1e-9):.1%}."
    )


def report(args: argparse.Namespace) -> None:
    runs = load_cache(args.cache)
    summary_table(runs)
    common_cells_table(runs)
    defences = sorted({k[4] for k in runs} - {"none"})
    for src in sorted({k[0] for k in runs}):
        compare(runs, src, "sw", "ce")
        for d in defences:
            defended(runs, src, d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("judge")
    j.add_argument("--study", type=Path, required=True)
    j.add_argument("--cache", type=Path, required=True)
    j.add_argument("--defense", nargs="+", default=["none"])
    j.add_argument("--n-judge", type=int, default=600)
    j.add_argument("--only", nargs="*", default=[], help="run-name substrings")
    r = sub.add_parser("report")
    r.add_argument("--cache", type=Path, required=True)
    args = ap.parse_args()
    judge(args) if args.cmd == "judge" else report(args)


if __name__ == "__main__":
    main()
