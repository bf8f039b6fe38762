"""Torch CPU threads vs speed of one optimiser step, measured side by side in one run.

Times a forward+backward of a batch through a shared CIFAR-10 model (what each
optimiser step does) with 1, 2, ... threads, alternating, and prints the medians
and their ratio to 1 thread. The machine's load is printed with them: the default
(``patchlab.utils.default_threads``: cores - 1) exists because a small shared CPU
makes extra threads a loss.

    python benchmarks/threads.py --model mobilenetv2_100 --batch 64 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from patchlab.models import load_model

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models" / "cifar10"


def step_seconds(model, x: torch.Tensor) -> float:
    t = time.perf_counter()
    x = x.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long))
    torch.autograd.grad(loss, x)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv2_100")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 2}))
    args = ap.parse_args()
    model = load_model(str(MODELS / f"{args.model}.json"))
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    times: dict[int, list[float]] = {n: [] for n in args.threads}
    for n in args.threads:  # warm-up
        torch.set_num_threads(n)
        step_seconds(model, x)
    for _ in range(args.repeat):
        for n in args.threads:
            torch.set_num_threads(n)
            times[n].append(step_seconds(model, x))
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores, torch {torch.__version__}")
    base = statistics.median(times[args.threads[0]])
    for n in args.threads:
        med = statistics.median(times[n])
        print(
            f"{args.model} batch {args.batch}: {n} thread(s) {med * 1000:.0f} ms per step "
            f"(x{med / base:.2f} of {args.threads[0]} thread)"
        )


if __name__ == "__main__":
    main()
