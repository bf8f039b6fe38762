"""patchlab's sliced Wasserstein against POT's, and the exact W2 path, side by side.

For each size: the same clouds and the same projections go to
``patchlab.losses.sliced_wasserstein`` (SW_2 squared) and POT's
``ot.sliced_wasserstein_distance`` (SW_2, squared here to compare), with the torch
backend on the same device. Prints the agreement (relative difference) and the time
ratio of value + gradient (median over repeats after warm-up), then the exact W2
(``patchlab.losses.wasserstein2``, POT's network simplex) at the sizes it is meant for.

CPU (this machine; one thread)::

    PATCHLAB_THREADS=1 python benchmarks/bench_sw.py

GPU::

    python benchmarks/bench_sw.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def timeit(fn, dev, warmup: int, repeats: int) -> float:
    """Median seconds per call: wall time (synchronised) on a GPU, process CPU time on a CPU
    (a busy shared machine does not inflate it)."""
    if dev.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize(dev)
            return time.perf_counter()
    else:
        now = time.process_time
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = now()
        fn()
        ts.append(now() - t0)
    return statistics.median(ts)


def paired(a, b, dev, warmup: int, repeats: int) -> tuple[float, float]:
    """Both functions' medians, taking turns call by call."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timeit(a, dev, warmup, 1))
        tb.append(timeit(b, dev, warmup, 1))
        warmup = 0
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    import ot

    from patchlab import losses as L

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="64,256,1024")
    ap.add_argument("--d", default="512,2048")
    ap.add_argument("--m", type=int, default=0, help="target cloud size (0: the same as n)")
    ap.add_argument("--projections", type=int, default=500)
    ap.add_argument("--w2-n", default="64,256")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("PATCHLAB_THREADS", "1")))
    dev = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU {platform.machine()}, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"device: {name}; torch {torch.__version__}; POT {ot.__version__}; load: {os.getloadavg()}; "
        f"clock: {'wall, synchronised' if dev.type == 'cuda' else 'process CPU time'}"
    )
    print(f"\nsliced W2^2, {args.projections} projections, value + gradient")
    print(f"{'n':>6} {'m':>6} {'d':>6} {'rel. diff':>10} {'patchlab ms':>12} {'POT ms':>9} {'POT/patchlab':>13}")
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in (int(v) for v in args.n.split(",")):
        m = args.m or n
        for d in (int(v) for v in args.d.split(",")):
            x = torch.randn(n, d, generator=g).to(dev).requires_grad_(True)
            y = (torch.randn(m, d, generator=g) * 1.5 + 0.3).to(dev)
            P = L.random_projections(d, args.projections, generator=g, device=dev)
            ours = L.sliced_wasserstein(x, y, projections=P)
            pots = ot.sliced_wasserstein_distance(x, y, projections=P) ** 2
            rel = float((ours - pots).detach().abs() / pots.detach().abs())
            worst = max(worst, rel)

            def run_ours():
                (gx,) = torch.autograd.grad(L.sliced_wasserstein(x, y, projections=P), x)

            def run_pot():
                (gx,) = torch.autograd.grad(ot.sliced_wasserstein_distance(x, y, projections=P) ** 2, x)

            t_ours, t_pot = paired(run_ours, run_pot, dev, args.warmup, args.repeats)
            print(
                f"{n:>6} {m:>6} {d:>6} {rel:>10.1e} {t_ours * 1e3:>12.2f} {t_pot * 1e3:>9.2f} {t_pot / t_ours:>12.2f}x"
            )
    print(f"worst relative difference: {worst:.1e} ({'within' if worst <= 1e-4 else 'OUTSIDE'} 1e-4)")
    print("\nexact W2^2 (POT network simplex, gradient through the cost), value + gradient")
    print(f"{'n':>6} {'d':>6} {'ms':>9}")
    for n in (int(v) for v in args.w2_n.split(",")):
        d = 512
        x = torch.randn(n, d, generator=g).to(dev).requires_grad_(True)
        y = torch.randn(n, d, generator=g).to(dev)

        def run_w2():
            (gx,) = torch.autograd.grad(L.wasserstein2(x, y), x)

        print(f"{n:>6} {d:>6} {timeit(run_w2, dev, 1, max(3, args.repeats // 2)) * 1e3:>9.2f}")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
