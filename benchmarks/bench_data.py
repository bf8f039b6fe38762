"""Does decoding keep the optimiser fed? Streamed (``--workers N``) against in-memory steps.

In one run, side by side (median over repeats after warm-up, wall time: the decoding
happens in other processes, so wall time is what a waiting device would see):

* ``decode``: images per second that :func:`patchlab.inputs.folder_loader` delivers
  (JPEG files decoded in ``N`` DataLoader workers), for each ``--workers``;
* ``step in memory``: one :meth:`PatchOptimizer.one_step` drawing from images already
  in memory (the step's own cost);
* ``step streamed``: the same step drawing its batch from the folder stream.

``streamed / in memory`` near 1.00 means the workers decode faster than the step
consumes, so the device never waits for data; above 1 it waits.

The JPEGs are made once in a temporary folder (``--size`` px, smooth random colour
fields with noise, about the bytes of a photograph of that size); the model is timm's
with random weights (speed does not depend on them).

CPU (this machine; one torch thread for the step, the workers on the other core)::

    PATCHLAB_THREADS=1 python benchmarks/bench_data.py --model mobilenetv2_100 --model-size 64 --size 224 \
        --batch 64 --workers 0,1,2

GPU::

    python benchmarks/bench_data.py --model resnet50 --model-size 224 --size 256 --batch 128 \
        --workers 4,8,16 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimize import device_name, make_model  # noqa: E402

CLASSES = ("c0", "c1", "c2", "c3")


def make_folder(root: Path, n: int, size: int, seed: int = 0) -> list[tuple[Path, int]]:
    """``n`` JPEGs of ``size`` px in class folders ``c0..c3``: smooth colour fields plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        c = i % len(CLASSES)
        d = root / CLASSES[c]
        d.mkdir(parents=True, exist_ok=True)
        coarse = rng.random((8, 8, 3))
        field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
        img = np.clip(field.astype(np.float32) + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        p = d / f"{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        items.append((p, c))
    return items


def decode_rate(items, batch: int, workers: int, batches: int) -> float:
    """Images per second the loader delivers (after its first batch: the workers' start-up)."""
    from patchlab.inputs import folder_loader

    loader = folder_loader(items, classes=CLASSES, batch_size=batch, workers=workers, seed=0)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    del it, loader
    return batches * batch / dt


def step_time(model, data, target_images, batch: int, dev, precision: str, *, warmup: int, repeats: int) -> float:
    """Median wall seconds of one :meth:`PatchOptimizer.one_step` drawing from ``data``."""
    from patchlab.optimize import PatchAttack

    attack = PatchAttack(
        loss="ce",
        steps=10**6,
        batch_size=batch,
        eot="physical",
        device=dev,
        cache=False,
        precision=precision,
        placement="random",
    )
    prep = attack.prepare(model, data, "c1", target_images=target_images)
    state = prep.new_state()

    def fn() -> None:
        prep.optimizer.one_step(state)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    try:
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    finally:
        prep.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mobilenetv2_100")
    ap.add_argument("--model-size", type=int, default=64, help="the model's input size (images are resized to it)")
    ap.add_argument("--size", type=int, default=224, help="the JPEGs' size")
    ap.add_argument("--n", type=int, default=1024, help="JPEGs in the folder")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--decode-batches", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("PATCHLAB_THREADS", "1")))
    dev = torch.device(args.device)
    print(f"device: {device_name(dev)}; torch {torch.__version__}; load: {os.getloadavg()}; clock: wall")
    from patchlab.data import load_folder
    from patchlab.inputs import folder_loader

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        items = make_folder(root, args.n, args.size)
        kb = sum(p.stat().st_size for p, _ in items) / len(items) / 1024
        print(f"{args.n} JPEGs of {args.size} px ({kb:.1f} KiB each) made in {time.perf_counter() - t0:.1f} s")
        _net, model = make_model(args.model, args.model_size, dev)
        g = torch.Generator().manual_seed(0)
        target_images = torch.rand(args.batch, 3, args.model_size, args.model_size, generator=g)
        step = dict(warmup=args.warmup, repeats=args.repeats)
        t_mem = step_time(model, load_folder(root), target_images, args.batch, dev, args.precision, **step)
        print(
            f"\n{args.model} at {args.model_size} px, batch {args.batch}, ce, EOT physical, {args.precision}:\n"
            f"  step in memory: {t_mem * 1e3:8.1f} ms  ({args.batch / t_mem:7.1f} images/s consumed)"
        )
        for w in (int(x) for x in args.workers.split(",")):
            rate = decode_rate(items, args.batch, w, args.decode_batches)
            loader = folder_loader(
                items, classes=CLASSES, batch_size=args.batch, workers=w, seed=0, device=dev, prefetch=4
            )
            t = step_time(model, loader, target_images, args.batch, dev, args.precision, **step)
            print(
                f"  workers {w}: decode {rate:7.1f} images/s ({rate / (args.batch / t_mem):4.2f}x what the step "
                f"consumes); step streamed {t * 1e3:8.1f} ms = {t / t_mem:4.2f}x in memory"
            )
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
