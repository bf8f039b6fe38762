"""Measure stAdv (issue 13): targeted success, flow loss, displacement and time per model.

Calls the library exactly as ``patchlab attack stadv`` does (``ATTACKS["stadv"](models,
images, "random", labels=..., generator=..., tau=..., kappa=...)``), on held-out
images the model classifies correctly, one random target per image. Benchmark-only
extras, each clearly apart from patchlab:

* ``--advertorch N``: advertorch's ``SpatialTransformAttack`` on the first N of the
  same images and targets (its objective sums the batch into one scipy L-BFGS-B
  problem; failed images come back as zeros).
* ``--blur``: a Gaussian blur defence (sigma 1 pixel, kornia) applied to the attacked
  images, for stAdv and for a minimal targeted L-inf PGD written here (eps 8/255,
  step 2/255, 20 steps, cross-entropy towards the target; Madry et al. 2018): how much
  targeted success each keeps.

Usage (one torch thread; outputs are JSON per model plus summary.json)::

    PATCHLAB_THREADS=1 python benchmarks/stadv.py --models ../shared/models/cifar10/resnet20.json \\
        --data ../shared/data/cifar10/test --n 200 --out /tmp/stadv-bench --blur --advertorch 50
    PATCHLAB_THREADS=1 python benchmarks/stadv.py --world-lenet --n 200 --out /tmp/stadv-bench
"""

from __future__ import annotations

import os

# One thread for every pool, before numpy/scipy load: scipy's OpenBLAS would otherwise start a worker
# thread that advertorch's L-BFGS-B keeps busy, adding up to 3.5x to advertorch's CPU time per image
# (measured 2026-12-02) while patchlab runs on one torch thread.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from patchlab.attacks import ATTACKS  # noqa: E402
from patchlab.attacks.base import logit_margin  # noqa: E402
from patchlab.data import load_folder  # noqa: E402
from patchlab.models import load_model  # noqa: E402
from patchlab.utils import atomic_write_json, default_threads  # noqa: E402

BLUR_SIGMA = 1.0  # pixels: the defence the paper suggests
BLUR_KERNEL = 7  # covers +-3 sigma
PGD_EPS, PGD_STEP, PGD_STEPS = 8 / 255, 2 / 255, 20


def pick_images(model, data, n: int, seed: int, limit_per_class: int | None, size: tuple[int, int] | None = None):
    """The first ``n`` images of a seeded shuffle that ``model`` classifies correctly."""
    ds = load_folder(data, limit_per_class=limit_per_class, size=size)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    xs, ys = [], []
    with torch.no_grad():
        for s in range(0, len(order), 256):
            idx = order[s : s + 256]
            x, y = ds.float(idx), ds.labels[idx]
            ok = model(x).argmax(1) == y
            xs.append(x[ok])
            ys.append(y[ok])
            if sum(len(v) for v in ys) >= n:
                break
    x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
    if len(x) < n:
        print(f"warning: only {len(x)} correctly classified images", file=sys.stderr)
    return x, y


def blur(x: torch.Tensor) -> torch.Tensor:
    import kornia

    return kornia.filters.gaussian_blur2d(
        x, (BLUR_KERNEL, BLUR_KERNEL), (BLUR_SIGMA, BLUR_SIGMA), border_type="reflect"
    )


def pgd_targeted(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Benchmark-only minimal targeted L-inf PGD (not patchlab's): eps 8/255, 20 steps of 2/255."""
    adv = x.clone()
    for _ in range(PGD_STEPS):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), target)
        (g,) = torch.autograd.grad(loss, adv)
        adv = (adv.detach() - PGD_STEP * g.sign()).clamp(x - PGD_EPS, x + PGD_EPS).clamp(0, 1)
    return adv.detach()


def run_advertorch(model, x, y, target, *, tau: float, batch: int, max_iterations: int) -> dict:
    import torch.autograd.gradcheck  # noqa: F401  (the module; the package attribute is the function)

    gc = sys.modules["torch.autograd.gradcheck"]
    if not hasattr(gc, "zero_gradients"):  # advertorch 0.2.3 imports a helper torch removed in 1.9
        gc.zero_gradients = lambda t: None
    import scipy.optimize

    from advertorch.attacks import SpatialTransformAttack

    from patchlab.attacks.stadv import flow_loss

    # advertorch keeps only the images; its perturb calls scipy's fmin_l_bfgs_b once per
    # batch (search_steps=1) on the sampling grid, so the grid it found is read there
    grids: list = []
    calls = [0]
    lbfgsb = scipy.optimize.fmin_l_bfgs_b

    def recording_lbfgsb(func, x0, *a, **kw):
        def counted(*fa):
            calls[0] += 1
            return func(*fa)

        out = lbfgsb(counted, x0, *a, **kw)
        grids.append(torch.from_numpy(out[0]).float())
        return out

    atk = SpatialTransformAttack(
        model,
        num_classes=len(model.labels),
        confidence=0.0,
        initial_const=tau,
        max_iterations=max_iterations,
        targeted=True,
    )
    scipy.optimize.fmin_l_bfgs_b = recording_lbfgsb
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        advs = torch.cat([atk.perturb(x[s : s + batch], target[s : s + batch]) for s in range(0, len(x), batch)])
        dt, cdt = time.perf_counter() - t0, time.process_time() - c0
    finally:
        scipy.optimize.fmin_l_bfgs_b = lbfgsb
    with torch.no_grad():
        pred = model(advs).argmax(1)
    zero = advs.flatten(1).abs().amax(1) == 0
    ok = (pred == target) & ~zero
    # the flow in pixels: advertorch's grid minus the identity grid (align_corners=False)
    h, w = x.shape[-2:]
    grid = torch.cat([g.view(-1, h, w, 2) for g in grids])
    ident = F.affine_grid(torch.eye(2, 3).expand(len(x), 2, 3), list(x.shape), align_corners=False)
    d = (grid - ident).permute(0, 3, 1, 2)
    flow = torch.stack((d[:, 0] * w / 2, d[:, 1] * h / 2), dim=1)
    fl = flow_loss(flow)
    disp = flow.square().sum(1).sqrt().flatten(1).mean(1)
    return {
        "success_mask": ok.tolist(),
        "flow_losses": fl.tolist(),
        "flow_loss_mean_successful": float(fl[ok].mean()) if ok.any() else None,
        "displacement_mean_successful": float(disp[ok].mean()) if ok.any() else None,
        "evaluations_per_batch": calls[0] / len(grids),
        "n": len(x),
        "batch": batch,
        "max_iterations": max_iterations,
        "initial_const": tau,
        # an all-zero image is advertorch's failure, even where the model happens to call it the target
        "success": float(ok.float().mean()),
        "untargeted_success": float(((pred != y) & ~zero).float().mean()),
        "zeros_returned": int(zero.sum()),
        "seconds": dt,
        "seconds_per_image": dt / len(x),
        "cpu_seconds_per_image": cdt / len(x),  # the process's CPU time: other jobs do not inflate it
    }


def measure(model, x, y, args, name: str) -> dict:
    kw = dict(tau=args.tau, kappa=args.kappa, steps=args.steps, **args.extra)
    t0, c0 = time.perf_counter(), time.process_time()
    r = ATTACKS["stadv"](model, x, "random", labels=y, generator=torch.Generator().manual_seed(args.seed), **kw)
    dt, cdt = time.perf_counter() - t0, time.process_time() - c0
    e, s = r.extras, r.success
    out = {
        "model": name,
        "n": r.n,
        "config": r.config,
        "success": r.success_rate,
        "success_ci95": r.success_ci95,
        "untargeted_success": float(e["untargeted_success"].float().mean()),
        "flow_loss_mean_successful": float(e["flow_loss"][s].mean()) if s.any() else None,
        "displacement_mean_successful": float(e["displacement_mean"][s].mean()) if s.any() else None,
        "displacement_max_successful": float(e["displacement_max"][s].mean()) if s.any() else None,
        "flow_loss_mean": float(e["flow_loss"].mean()),
        "displacement_mean": float(e["displacement_mean"].mean()),
        "evaluations_mean": float(e["evaluations"].mean()),
        "seconds": dt,
        "seconds_per_image": dt / r.n,
        "cpu_seconds_per_image": cdt / r.n,
        "threads": torch.get_num_threads(),
    }
    with torch.no_grad():
        z = model(r.adversarial)
    lead = -logit_margin(z, r.target)  # target logit minus the largest other, as judged here
    out["per_image"] = {
        "target": r.target.tolist(),
        "success": r.success.tolist(),
        "lead": lead.tolist(),
        "evaluations": e["evaluations"].tolist(),
        "evaluations_to_adversarial": e["evaluations_to_adversarial"].tolist(),
        "flow_loss": e["flow_loss"].tolist(),
    }
    if args.blur:
        with torch.no_grad():
            out["blur_clean_accuracy"] = float((model(blur(x)).argmax(1) == y).float().mean())
            out["blur_stadv_success"] = float((model(blur(r.adversarial)).argmax(1) == r.target).float().mean())
        t1 = time.perf_counter()
        adv = pgd_targeted(model, x, r.target)
        out["pgd_seconds_per_image"] = (time.perf_counter() - t1) / r.n
        with torch.no_grad():
            out["pgd_success"] = float((model(adv).argmax(1) == r.target).float().mean())
            out["blur_pgd_success"] = float((model(blur(adv)).argmax(1) == r.target).float().mean())
    if args.advertorch:
        k = min(args.advertorch, r.n)
        out["advertorch"] = run_advertorch(
            model,
            x[:k],
            y[:k],
            r.target[:k],
            tau=args.tau,
            batch=args.advertorch_batch,
            max_iterations=args.advertorch_iterations,
        )
        both = torch.tensor(out["advertorch"]["success_mask"]) & r.success[:k]
        out["patchlab_on_advertorch_images"] = {
            "n": k,
            "success": float(r.success[:k].float().mean()),
            "seconds_per_image": dt / r.n,
            "cpu_seconds_per_image": cdt / r.n,
            "flow_loss_mean_successful": float(e["flow_loss"][:k][r.success[:k]].mean()),
            "flow_loss_mean_both_successful": float(e["flow_loss"][:k][both].mean()) if both.any() else None,
            "advertorch_flow_loss_mean_both_successful": (
                float(torch.tensor(out["advertorch"]["flow_losses"])[both].mean()) if both.any() else None
            ),
        }
    return out


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def summarise(folder: Path) -> str:
    """A markdown table of every ``*.json`` the driver wrote into ``folder``."""
    rows = [
        "| model | n | targeted success (95% CI) | untargeted | mean flow loss | mean / max displacement (px) "
        "| evaluations | s / image | blur: clean acc / stAdv kept / PGD kept "
        "| advertorch: success, s / image, flow loss [patchlab on the same images] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        if "model" not in r:
            continue
        lo, hi = r["success_ci95"]
        blur = (
            (
                f"{r['blur_clean_accuracy']:.1%} / {r['blur_stadv_success']:.1%} of {r['success']:.1%} / "
                f"{r['blur_pgd_success']:.1%} of {r['pgd_success']:.1%}"
            )
            if "blur_pgd_success" in r
            else "-"
        )
        adv, pl = r.get("advertorch"), r.get("patchlab_on_advertorch_images")
        if adv and "flow_loss_mean_successful" in adv:
            advs = (
                f"n={adv['n']}: {adv['success']:.1%} (zeros {adv['zeros_returned']}), "
                f"{adv['seconds_per_image']:.2f} s, flow loss {adv['flow_loss_mean_successful']:.0f} "
                f"[patchlab {pl['success']:.1%}, {pl['seconds_per_image']:.3f} s "
                f"({adv['seconds_per_image'] / pl['seconds_per_image']:.1f}x faster"
                + (
                    f"; CPU time {adv['cpu_seconds_per_image'] / pl['cpu_seconds_per_image']:.1f}x"
                    if "cpu_seconds_per_image" in adv and "cpu_seconds_per_image" in pl
                    else ""
                )
                + "), "
                f"flow loss {pl['flow_loss_mean_both_successful']:.0f} "
                f"vs {pl['advertorch_flow_loss_mean_both_successful']:.0f} on both's successes]"
            )
        elif adv:
            advs = (
                f"{adv['success']:.1%} (n={adv['n']}, zeros {adv['zeros_returned']}), {adv['seconds_per_image']:.2f} "
                f"[patchlab on the same: {pl['success']:.1%}]"
            )
        else:
            advs = "-"
        fl = r["flow_loss_mean_successful"]
        rows.append(
            f"| {r['model']} | {r['n']} | {r['success']:.1%} ({lo:.1%}-{hi:.1%}) | {r['untargeted_success']:.1%} "
            f"| {fl:.1f} | {r['displacement_mean_successful']:.3f} / {r['displacement_max_successful']:.2f} "
            f"| {r['evaluations_mean']:.0f} | {r['seconds_per_image']:.2f} | {blur} | {advs} |"
            if fl is not None
            else f"| {r['model']} | {r['n']} | {r['success']:.1%} | - | - | - | - | - | - | - |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--data", default="../shared/data/cifar10/test")
    ap.add_argument("--world-lenet", action="store_true", help="also the embedded world's LeNet on its val split")
    ap.add_argument("--world-native", action="store_true", help="attack the world's images at 64 px, not 32")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--limit-per-class", type=int, default=100, help="images read per class before shuffling")
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--kappa", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blur", action="store_true")
    ap.add_argument("--advertorch", type=int, default=0, help="run advertorch on the first N images")
    ap.add_argument("--advertorch-batch", type=int, default=10)
    ap.add_argument("--advertorch-iterations", type=int, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summarise", action="store_true", help="print the table of --out and stop")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another keyword of stadv (int, float, true/false or text), e.g. --set patience=2",
    )
    args = ap.parse_args(argv)
    args.extra = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.summarise:
        print(summarise(Path(args.out)))
        return
    torch.set_num_threads(default_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(Path(c).stem, lambda c=c: load_model(c), args.data, None) for c in args.models]
    if args.world_lenet:
        from patchlab.world import ensure_world, ensure_zoo

        world = ensure_world(n_per_class=500, size=64, seed=0)  # the default world (README)
        zoo = ensure_zoo(world, seed=0)
        # attacked at the LeNet's own input size (32 px; the world is drawn at 64), as the
        # paper attacks its MNIST models at 28 px; --world-native keeps the 64 px images
        jobs.append(
            (
                "world-lenet",
                lambda c=zoo.card("lenet"): load_model(str(c)),
                str(Path(world.root) / "val"),
                "native" if args.world_native else "model",
            )
        )
    for name, load, data, size in jobs:
        model = load()
        hw = model.input_hw if size == "model" else None
        x, y = pick_images(model, data, args.n, args.seed, args.limit_per_class, hw)
        res = measure(model, x, y, args, name)
        res["data"] = data
        res["image_size"] = list(x.shape[-2:])
        atomic_write_json(out / f"{name}.json", res)
        print(json.dumps({k: v for k, v in res.items() if k != "config"}), flush=True)


if __name__ == "__main__":
    main()
