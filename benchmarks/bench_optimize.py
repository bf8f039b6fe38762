"""How close is patchlab's optimiser step to the physical limit, and to IBM ART's?

For each model and batch size, in one run and side by side (median over repeats
after warm-up; the device is named in the output):

* ``bare``: the model's own forward + backward to the input on the same batch (what
  any patch attack must at least pay per step), fp32, and bf16 autocast on CUDA;
* ``patchlab``: one :meth:`PatchOptimizer.one_step` (draw, EOT render, forward,
  loss, gradient, optimiser step) for each loss asked for;
* ``art``: one step of IBM ART's ``AdversarialPatchPyTorch`` (rotation, scale and
  perspective distortion like patchlab's ``physical`` EOT; the benchmark-only extra
  ``pip install adversarial-robustness-toolbox``), timed as ``generate`` over
  ``--art-iters`` steps of one batch, divided.

Random weights (timm, ``pretrained=False``) and random images: speed does not depend
on them. Ratios are ``time / bare``; ``per image`` divides by the batch.

CPU (this machine; one thread)::

    PATCHLAB_THREADS=1 python benchmarks/bench_optimize.py --models mobilenetv2_100 --size 64 --batch 64 \
        --losses sw,ce,w2 --eot physical

``--processes N`` repeats the whole measurement in N fresh processes and prints the
median of their ratios beside each one (on this shared 2-core machine one process's ratios
can sit 0.1 above or below the next one's for its whole life).

GPU::

    python benchmarks/bench_optimize.py --models resnet50,vit_base_patch16_224 --size 224 --batch 64,128 \
        --losses sw,ce --eot physical --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def clock(dev: torch.device) -> Callable[[], float]:
    """Wall time on a GPU (synchronised); on a CPU the process's CPU time, which a busy shared
    machine does not inflate (one torch thread: the work runs in this process's threads only)."""
    if dev.type == "cuda":

        def wall() -> float:
            torch.cuda.synchronize(dev)
            return time.perf_counter()

        return wall
    return time.process_time


def interleaved(
    fns: dict[str, Callable[[], None]], dev: torch.device, *, warmup: int, repeats: int, ref: str, block: int = 3
) -> tuple[dict[str, float], dict[str, float]]:
    """Steady-state seconds per call of each function, and its ratio to ``ref``, both as medians over rounds.

    A patch optimiser repeats one step hundreds of times, so what counts is a step's cost
    in a run of steps: in every round each function runs ``block`` times in a row and the
    calls after the first are timed (the first pays for the caches and page mappings the
    previous function left cold). A function's ratio is taken to ``ref``'s time of the same
    round, so a change of load or clock speed between rounds hits both sides alike.
    """
    now = clock(dev)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            fn()
            t0 = now()
            for _ in range(block - 1):
                fn()
            times[k].append((now() - t0) / (block - 1))
    ratios = {k: statistics.median(a / b for a, b in zip(v, times[ref])) for k, v in times.items() if k != ref}
    return {k: statistics.median(v) for k, v in times.items()}, ratios


def make_model(name: str, size: int, dev: torch.device):
    import timm

    import patchlab

    net = timm.create_model(name, pretrained=False, num_classes=1000).eval().to(dev)
    for p in net.parameters():
        p.requires_grad_(False)
    labels = [f"c{i}" for i in range(1000)]
    return net, patchlab.wrap(
        net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(3, size, size), labels=labels, name=name
    )


def bare_step(model, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    def fn() -> None:
        xi = x.detach().requires_grad_(True)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(xi)
        (g,) = torch.autograd.grad(out.float().logsumexp(1).mean(), xi)

    return fn


def patchlab_step(
    model, images, labels, target_images, loss: str, eot: str, batch: int, dev, precision: str, projections: int
):
    from patchlab.optimize import PatchAttack

    fresh = {"loss": "sw", "projection_bank": 0} if loss == "sw-fresh" else {"loss": loss}  # no bank: fresh directions
    attack = PatchAttack(
        **fresh,
        steps=10**6,
        batch_size=batch,
        eot=eot,
        projections=projections,
        device=dev,
        cache=False,
        precision=precision,
        placement="random",
    )
    prep = attack.prepare(model, (images, labels), "c1", target_images=target_images)
    state = prep.new_state()
    return (lambda: prep.optimizer.one_step(state)), prep


def bank_redraw_seconds(prep, dev: torch.device) -> float:
    """The cost of redrawing every projection bank of a prepared ``sw`` attack, per step (amortised)."""
    from patchlab import losses as L
    from patchlab.optimize.config import BANK_REUSE

    cfg = prep.optimizer.config
    tick = clock(dev)
    t0 = tick()
    for tf in prep.optimizer.target_feats:
        for y in tf.values():
            L.ProjectionBank(y, cfg.projection_bank * cfg.projections, seed=1)
    return (tick() - t0) / (BANK_REUSE * cfg.projection_bank)


def art_step(net, size: int, batch: int, dev, iters: int, images: torch.Tensor):
    import numpy as np
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(3, size, size),
        nb_classes=1000,
        clip_values=(0.0, 1.0),
        preprocessing=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        device_type="gpu" if dev.type == "cuda" else "cpu",
    )
    side = int(round(size * 0.1**0.5))
    attack = AdversarialPatchPyTorch(
        clf,
        rotation_max=20.0,
        scale_min=0.8,
        scale_max=1.2,
        distortion_scale_max=0.1,
        learning_rate=0.03,
        max_iter=iters,
        batch_size=batch,
        patch_shape=(3, side, side),
        patch_type="square",
        targeted=True,
        verbose=False,
    )
    x = images[:batch].float().div(255).numpy()
    y = np.eye(1000, dtype=np.float32)[np.full(batch, 1)]

    def fn() -> None:
        attack.generate(x=x, y=y)

    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mobilenetv2_100")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", default="64")
    ap.add_argument("--losses", default="sw,ce,w2")
    ap.add_argument("--eot", default="physical")
    ap.add_argument("--projections", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--art-iters", type=int, default=3, help="ART steps per timed generate() call (0: skip ART)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run the whole measurement in this many fresh processes, one after the other, and print each "
        "one's ratios and their median (a process's memory layout can shift its ratios for its whole life)",
    )
    args = ap.parse_args()
    if args.processes > 1:
        return across_processes(args)
    torch.set_num_threads(int(os.environ.get("PATCHLAB_THREADS", "1")))
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    print(
        f"device: {device_name(dev)}; torch {torch.__version__}; load: {os.getloadavg()}; "
        f"clock: {'wall, synchronised' if cuda else 'process CPU time'}"
    )
    rows = []
    for name in args.models.split(","):
        net, model = make_model(name, args.size, dev)
        for batch in (int(b) for b in args.batch.split(",")):
            g = torch.Generator().manual_seed(0)
            images = torch.randint(0, 256, (4 * batch, 3, args.size, args.size), dtype=torch.uint8, generator=g)
            labels = torch.randint(2, 1000, (4 * batch,), generator=g)
            target_images = torch.rand(batch, 3, args.size, args.size, generator=g)
            x = images[:batch].to(dev).float().div(255)
            row = {
                "model": name,
                "size": args.size,
                "batch": batch,
                "device": device_name(dev),
                "clock": "wall" if cuda else "process CPU time",
            }
            fns = {"bare_fp32": bare_step(model, x, False)}
            if cuda:
                fns["bare_bf16"] = bare_step(model, x, True)
            precision = "bf16" if cuda else "fp32"
            preps = []
            for loss in args.losses.split(","):
                fn, prep = patchlab_step(
                    model, images, labels, target_images, loss, args.eot, batch, dev, precision, args.projections
                )
                fns[f"patchlab_{loss}"] = fn
                preps.append(prep)
            if args.art_iters:
                try:
                    art = art_step(net, args.size, batch, dev, args.art_iters, images)
                    fns["art"] = art
                except Exception as exc:  # an optional extra: say why it is missing
                    row["art_error"] = f"{type(exc).__name__}: {exc}"
            ref_name = "bare_bf16" if cuda else "bare_fp32"
            med, ratio = interleaved(fns, dev, warmup=args.warmup, repeats=args.repeats, ref=ref_name)
            row.update(med)
            row["ratio_to_bare"] = ratio
            ref = row[ref_name]
            for loss, prep in zip(args.losses.split(","), preps):
                if loss == "sw" and prep.optimizer.config.projection_bank > 0:
                    # the bank is redrawn every BANK_REUSE * projection_bank steps: add its amortised cost
                    row["sw_bank_redraw"] = bank_redraw_seconds(prep, dev)
                    row["patchlab_sw"] += row["sw_bank_redraw"]
                    ratio["patchlab_sw"] += row["sw_bank_redraw"] / ref
            for prep in preps:
                prep.close()
            if "art" in row:
                row["art"] /= args.art_iters
                ratio["art"] /= args.art_iters
            print(
                f"\n{name} {args.size}px batch {batch}: bare fwd+bwd fp32 {row['bare_fp32'] * 1e3:.1f} ms"
                + (f", bf16 {row['bare_bf16'] * 1e3:.1f} ms" if cuda else "")
                + f" (ratios: median over {args.repeats} rounds of steady-state calls, to bare {'bf16' if cuda else 'fp32'})"
            )
            for loss in args.losses.split(","):
                t = row[f"patchlab_{loss}"]
                r = ratio[f"patchlab_{loss}"]
                print(f"  patchlab {loss:>3}: {t * 1e3:8.1f} ms  {r:5.2f}x bare  {t / batch * 1e3:.2f} ms/image")
                if loss == "sw" and "sw_bank_redraw" in row:
                    print(
                        f"    (sw includes {row['sw_bank_redraw'] * 1e3:.2f} ms/step of amortised projection-bank redraws)"
                    )
            if "art" in row:
                print(
                    f"  ART AdversarialPatchPyTorch: {row['art'] * 1e3:8.1f} ms  {ratio['art']:5.2f}x bare  "
                    f"{row['art'] / batch * 1e3:.2f} ms/image"
                )
                for loss in args.losses.split(","):
                    print(f"    ART / patchlab {loss}: {ratio['art'] / ratio[f'patchlab_{loss}']:.2f}x")
            elif "art_error" in row:
                print(f"  ART: not run ({row['art_error']})")
            rows.append(row)
    print(f"\nload after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def across_processes(args: argparse.Namespace) -> None:
    """Run this script ``args.processes`` times in fresh processes and summarise their ratios."""
    import subprocess
    import sys
    import tempfile

    runs: list[list[dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.processes):
            out = os.path.join(tmp, f"run{k}.json")
            print(f"\n=== process {k + 1} of {args.processes} ===", flush=True)
            # the same arguments; argparse keeps the last of a repeated option, so these two override
            cmd = [sys.executable, __file__, *sys.argv[1:], "--processes", "1", "--json", out]
            subprocess.run(cmd, check=True)
            with open(out) as f:
                runs.append(json.load(f))
    print(f"\n=== {args.processes} processes: ratio to the bare step, each process's median over its rounds ===")
    for r, row in enumerate(runs[0]):
        print(f"{row['model']} {row['size']}px batch {row['batch']} ({row['device']}, {row['clock']}):")
        for name in row["ratio_to_bare"]:
            vals = [run[r]["ratio_to_bare"][name] for run in runs]
            shown = ", ".join(f"{v:.2f}" for v in vals)
            print(f"  {name:>14}: median {statistics.median(vals):.2f}x  (runs: {shown})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
