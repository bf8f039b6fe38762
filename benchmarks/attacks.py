"""Attack benchmarks: PGD speed against torchattacks, and the regional (Ozbulak et al.) table.

``speed``: times ``patchlab.attacks.pgd`` and ``torchattacks.PGD`` on the same wrapped
model, batch, device and settings in A-B-B-A pairs (alternating which goes first),
and prints the median of the per-pair ratios (patchlab / torchattacks). patchlab's time includes
what its result holds beyond torchattacks' images (a forward pass to judge success,
the Lp norms). torchattacks is a test-only dependency (``pip install -e .[test]``).

    python benchmarks/attacks.py speed --model resnet20 --batch 128 --repeat 9 --device cpu

``regional``: runs ``patchlab attack`` from the command line with no mask and with
each mask family at the paper's three sizes (centre, frame, random x s/m/l), judged
on transfer models, and writes the markdown table of success, L0/L2/Linf and
untargeted transfer (with its ratio to the unmasked attack's) that
``benchmarks/README.md`` shows.

    python benchmarks/attacks.py regional --source resnet56 --n 500 --out /tmp/regional

``fgvm-tv``: from two ``patchlab attack fgvm --set init=noise`` runs (smoothness 0.05
and 0), the share that end in the target class with probability >= 0.9, the ratio of
their total variation, and a figure of both.

    python benchmarks/attacks.py fgvm-tv runs/fgvm_w005 runs/fgvm_w0 --out fgvm_tv.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimize import clock  # noqa: E402  (process CPU time on a CPU, synchronised wall time on a GPU)

SHARED = Path(os.environ.get("PATCHLAB_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS = SHARED / "models" / "cifar10"
CIFAR_TEST = SHARED / "data" / "cifar10" / "test"
ALL_MODELS = ("resnet20", "resnet32", "resnet56", "mobilenetv2_100", "efficientnet_b0", "convnext_atto", "vit_tiny_p4")
MASKS = ("center:s", "center:m", "center:l", "frame:s", "frame:m", "frame:l", "random:s", "random:m", "random:l")


def speed(args: argparse.Namespace) -> None:
    """patchlab's PGD against torchattacks' on the same model, batch and device. On a CPU the clock is
    the process's CPU time (one torch thread: the work runs in this process only), which other jobs on
    a shared machine do not inflate; on a GPU, synchronised wall time."""
    import torchattacks

    from patchlab.attacks import pgd
    from patchlab.data import load_folder
    from patchlab.models import load_model
    from patchlab.utils import resolve_device

    dev = resolve_device(args.device)
    now = clock(dev)
    torch.set_num_threads(args.threads)
    model = load_model(str(MODELS / f"{args.model}.json"), device=dev)
    data = load_folder(CIFAR_TEST, limit_per_class=(args.batch + 9) // 10)
    x = data.float()[: args.batch].to(dev)
    with torch.no_grad():
        y = model(x).argmax(1)
    ta = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=args.steps, random_start=True)
    adv = ta(x, y)

    def timed(fn) -> Callable[[], float]:
        def run() -> float:
            t = now()
            fn()
            return now() - t

        return run

    ours = timed(lambda: pgd(model, x, labels=y, steps=args.steps, generator=torch.Generator().manual_seed(0)))
    theirs = timed(lambda: ta(x, y))

    @timed
    def judge() -> None:  # what a torchattacks user adds to learn which images were fooled
        with torch.no_grad():
            (model(adv).argmax(1) != y).float().mean()

    ours(), theirs(), judge()  # warm-up
    ratios, judged, t_ours, t_theirs, t_judge = [], [], [], [], []
    for i in range(args.repeat):
        # one pair is A B B A (which goes first alternates): a load that drifts linearly over
        # the pair costs both the same, so the ratio is immune to it on a shared machine
        if i % 2 == 0:
            a1, b1, b2, a2 = ours(), theirs(), theirs(), ours()
        else:
            b1, a1, a2, b2 = theirs(), ours(), ours(), theirs()
        j = judge() + judge()
        t_ours += [a1, a2]
        t_theirs += [b1, b2]
        t_judge.append(j / 2)
        ratios.append((a1 + a2) / (b1 + b2))
        judged.append((a1 + a2) / (b1 + b2 + j))
    print(
        f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{args.threads} thread(s)'}), "
        f"load average {tuple(round(v, 2) for v in os.getloadavg())}, torch {torch.__version__}, "
        f"torchattacks {torchattacks.__version__}, clock: {'wall' if dev.type == 'cuda' else 'process CPU time'}"
    )
    print(
        f"PGD-{args.steps} on {args.model}, batch {args.batch}: patchlab median {statistics.median(t_ours):.3f} s, "
        f"torchattacks median {statistics.median(t_theirs):.3f} s"
    )
    print(
        f"median of {args.repeat} paired ratios patchlab/torchattacks: {statistics.median(ratios):.3f}x "
        f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    print(
        f"patchlab's call also judges the images (one forward pass, {statistics.median(t_judge):.3f} s alone); "
        f"against torchattacks plus that forward: {statistics.median(judged):.3f}x "
        f"(pairs: {', '.join(f'{r:.3f}' for r in judged)})"
    )


def _run(cmd: list[str], log) -> None:
    print("$", " ".join(cmd), file=log, flush=True)
    res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}")


def regional(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("patchlab"))
    targets = [m for m in args.targets if m != args.source]
    configs = ["none", *args.masks]
    with open(out / "log.txt", "a") as log:
        for spec in configs:
            js = out / f"{spec.replace(':', '_')}.json"
            if js.is_file() and not args.force:
                continue
            cmd = [
                exe,
                "attack",
                args.attack,
                "--model",
                str(MODELS / f"{args.source}.json"),
                "--data",
                str(args.data),
                "--n",
                str(args.n),
                "--seed",
                str(args.seed),
                "--device",
                args.device,
                "--out",
                str(out / spec.replace(":", "_")),
                "--json",
                str(js),
            ]
            cmd += [a for t in targets for a in ("--transfer", str(MODELS / f"{t}.json"))]
            if spec != "none":
                cmd += ["--mask", spec]
            _run(cmd + list(args.extra), log)
    print(table(out, configs, targets))


def table(out: Path, configs: list[str], targets: list[str]) -> str:
    """The markdown table of the finished configurations in ``out``."""
    from patchlab.attacks import build_mask

    docs = {
        c: json.loads((out / f"{c.replace(':', '_')}.json").read_text())
        for c in configs
        if (out / f"{c.replace(':', '_')}.json").is_file()
    }
    base = docs.get("none")
    head = ["mask", "covers", "n", "success", "L0", "L2", "Linf", *[f"-> {t}" for t in targets], "mean transfer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    key = lambda k: Path(k).stem.split("-")[-1]  # noqa: E731  (a card path or a card name: cifar10-resnet20)
    base_tr = {key(r["model"]): r["untargeted"] for r in base["transfer"]} if base else {}
    for c, d in docs.items():
        s = d["summary"]
        tr = {key(r["model"]): r["untargeted"] for r in d["transfer"]}
        cells = []
        for t in targets:
            v, b = tr.get(t), base_tr.get(t)
            ratio = f" ({v / b:.0%})" if (c != "none" and v is not None and b) else ""
            cells.append("-" if v is None else f"{v:.0%}{ratio}")
        mean = statistics.mean(tr.values()) if tr else float("nan")
        bmean = statistics.mean(base_tr.values()) if base_tr else float("nan")
        mratio = f" ({mean / bmean:.0%})" if c != "none" and bmean else ""
        run = json.loads((out / c.replace(":", "_") / "attack.json").read_text())
        size = tuple(run["data"]["image_size"])
        cover = "100%" if c == "none" else f"{float(build_mask(c, size, n=1).mean()):.1%}"
        lines.append(
            "| "
            + " | ".join(
                [
                    c,
                    cover,
                    str(s["n"]),
                    f"{s['success_rate']:.1%}",
                    f"{s['l0']['mean']:.3f}",
                    f"{s['l2']['mean']:.3f}",
                    f"{s['linf']['mean']:.4f}",
                    *cells,
                    f"{mean:.0%}{mratio}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def fgvm_tv(args: argparse.Namespace) -> None:
    """The TV-ratio figure of two ``patchlab attack fgvm`` runs: with and without the smoothness loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    runs = {}
    for label, d in (("smoothness 0.05", Path(args.smooth)), ("smoothness 0", Path(args.rough))):
        doc = json.loads((d / "attack.json").read_text())
        ims = doc["images"]
        ok = [im["success"] and im["target_prob"] >= args.prob for im in ims]
        runs[label] = {
            "doc": doc,
            "tv": np.array([im["tv"] for im in ims]),
            "ok": np.array(ok),
            "png": [np.asarray(Image.open(d / im["adversarial"])) for im in ims[:8]],
        }
    (a, ra), (b, rb) = runs.items()
    both = ra["ok"] & rb["ok"]
    ratio = float(np.mean(rb["tv"][both]) / np.mean(ra["tv"][both])) if both.any() else float("nan")
    per = rb["tv"][both] / ra["tv"][both]
    lines = [
        f"{k}: {int(r['ok'].sum())}/{len(r['ok'])} end '{args.target}' with p >= {args.prob}, "
        f"mean TV {r['tv'].mean():.1f}"
        for k, r in runs.items()
    ]
    lines.append(
        f"on the {int(both.sum())} images both runs bring there: mean TV ratio (0 / 0.05) {ratio:.1f}x, "
        f"per-image ratio median {np.median(per):.1f}x, min {per.min():.1f}x"
    )
    print("\n".join(lines))
    fig, axes = plt.subplots(2, 8, figsize=(12, 3.6))
    for row, (k, r) in enumerate(runs.items()):
        for j in range(8):
            ax = axes[row, j]
            ax.axis("off")
            if j < len(r["png"]):
                ax.imshow(r["png"][j])
                ax.set_title(f"TV {r['tv'][j]:.0f}", fontsize=8)
        axes[row, 0].text(-0.1, 0.5, k, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle(
        f"FGVM from noise towards '{args.target}': total variation {ratio:.1f}x lower with the smoothness loss",
        fontsize=10,
    )
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed", help="patchlab PGD vs torchattacks PGD, paired")
    sp.add_argument("--model", default="resnet20")
    sp.add_argument("--batch", type=int, default=128)
    sp.add_argument("--steps", type=int, default=10)
    sp.add_argument("--repeat", type=int, default=9)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--threads", type=int, default=int(os.environ.get("PATCHLAB_THREADS", "1")))
    rp = sub.add_parser("regional", help="the regional table (runs `patchlab attack` per mask)")
    rp.add_argument("--source", default="resnet56")
    rp.add_argument("--targets", nargs="+", default=list(ALL_MODELS))
    rp.add_argument("--masks", nargs="+", default=list(MASKS))
    rp.add_argument("--attack", default="pgd")
    rp.add_argument("--data", default=str(CIFAR_TEST))
    rp.add_argument("--n", type=int, default=500)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--device", default="cpu")
    rp.add_argument("--out", default="regional")
    rp.add_argument("--force", action="store_true", help="rerun configurations already done")
    rp.add_argument("extra", nargs="*", help="more `patchlab attack` options, after --")
    fp = sub.add_parser("fgvm-tv", help="TV-ratio figure of two fgvm runs (smoothness on / off)")
    fp.add_argument("smooth", help="run folder of `patchlab attack fgvm ... --set init=noise`")
    fp.add_argument("rough", help="the same with --set smoothness=0")
    fp.add_argument("--target", default="stop")
    fp.add_argument("--prob", type=float, default=0.9)
    fp.add_argument("--out", default="fgvm_tv.png")
    tp = sub.add_parser("regional-table", help="the table of a regional --out folder as it stands")
    tp.add_argument("out")
    tp.add_argument("--source", default="resnet56")
    args = ap.parse_args()
    if args.cmd == "regional-table":
        print(table(Path(args.out), ["none", *MASKS], [m for m in ALL_MODELS if m != args.source]))
        return
    {"speed": speed, "regional": regional, "fgvm-tv": fgvm_tv}[args.cmd](args)


if __name__ == "__main__":
    main()
