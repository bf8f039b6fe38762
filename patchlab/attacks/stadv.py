"""stAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018).

C. Xiao, J.-Y. Zhu, B. Li, W. He, M. Liu, D. Song, "Spatially Transformed
Adversarial Examples", ICLR 2018 (arXiv:1801.02612). Instead of adding a
perturbation, stAdv moves pixels: a per-pixel flow field ``f`` (``(N, 2, H, W)``,
in pixels) resamples the image bilinearly at the displaced points (eq. 1), and the
flow is found by minimising, per image,

    L(f) = L_adv(f) + tau * L_flow(f)                                   (eq. 2)

with the Carlini-Wagner margin on the **logits** ``Z`` (eq. 3)

    L_adv = max(max_{i != t} Z_i - Z_t, -kappa)      targeted towards t
    L_adv = max(Z_y - max_{i != y} Z_i, -kappa)      untargeted, true class y

and the flow smoothness loss (eq. 4), summed over pixels ``p`` and their
neighbours ``q``

    L_flow = sum_p sum_{q in N(p)} sqrt(||du(p) - du(q)||^2 + ||dv(p) - dv(q)||^2 + eps).

Public pieces: :func:`flow_warp` (eq. 1), :func:`flow_loss` (eq. 4),
:func:`adversarial_margin` (eq. 3) and the attack :func:`stadv`.

Conventions: ``flow[:, 0]`` is the horizontal displacement (x, towards larger
column index) and ``flow[:, 1]`` the vertical one (y, towards larger row index),
both in pixels; the adversarial pixel ``p`` takes the input's value at ``p + f(p)``
(the optical-flow ``(u, v)`` order that colour-wheel drawings expect).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import AttackResult, as_float_images, as_model_list, logit_margin, lp_norms, resolve_target

#: eq. 4's stabiliser inside the square root; the value of the reference TF code
#: (rakutentech/stAdv ``flow_loss(..., epsilon=1e-8)``).
FLOW_EPS = 1e-8

#: neighbour offsets ``(dy, dx)`` of eq. 4's ``N(p)``: the 4-connected neighbourhood
#: of the paper, the diagonal one of the reference TF code, and both.
NEIGHBOURHOODS: dict[str, tuple[tuple[int, int], ...]] = {
    "4": ((-1, 0), (1, 0), (0, -1), (0, 1)),
    "diagonal": ((-1, -1), (-1, 1), (1, -1), (1, 1)),
    "8": ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)),
}

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("adversarial", "zero")

#: a kept point must lower the flow loss by this fraction to reset ``patience``
PATIENCE_REL = 1e-3

#: the rescue of ``init="adversarial"``: the Adam step sizes (pixels) of its runs from
#: zero flow, one run each, and the evaluations per run (see :func:`stadv`, ``rescue_after``)
RESCUE_LRS = (1.0, 0.3, 3.0)
RESCUE_RUN = 40


# ---------------------------------------------------------------------------
# eq. 1: bilinear resampling at the displaced points
# ---------------------------------------------------------------------------
def _pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


def flow_warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` bilinearly at the pixel positions displaced by ``flow`` (eq. 1).

    Args:
        images: ``(N, C, H, W)`` float.
        flow: ``(N, 2, H, W)`` displacements in pixels (channel 0: x, channel 1: y),
            same dtype and device.

    Returns:
        ``(N, C, H, W)``: ``out[p] = bilinear(images, p + flow[p])``; points outside
        the image take the nearest border value (``padding_mode="border"``). Zero flow
        returns ``images`` bit for bit, at any size, on any device.

    How the identity is made exact: ``grid_sample`` maps normalised coordinates to
    pixels by ``(g + 1) * size / 2 - 0.5`` (``align_corners=False``). For a generic
    size the pixel centres ``(2j + 1) / size - 1`` are not representable, the
    round trip lands a hair beside ``j`` and the output mixes in a neighbour
    (``align_corners=True`` fails the same way: about 170 of 90 sizes x 2 tested
    were inexact). The image is therefore padded (replicate, bottom/right) to
    power-of-two sides; then every pixel centre and the flow scale ``2 / size`` are
    dyadic, the mapping is exact in floating point and the bilinear weights at zero
    flow are exactly 1 and 0. The replicated margin reads the same values as
    ``padding_mode="border"`` would, so the warp is otherwise unchanged.
    """
    if (
        images.ndim != 4
        or flow.ndim != 4
        or flow.shape[1] != 2
        or flow.shape[0] != images.shape[0]
        or flow.shape[-2:] != images.shape[-2:]
    ):
        raise ValueError(
            f"expected images (N, C, H, W) and flow (N, 2, H, W) of the same N, H, W, "
            f"got {tuple(images.shape)} and {tuple(flow.shape)}"
        )
    n, _, h, w = images.shape
    ph, pw = _pow2(h), _pow2(w)
    src = F.pad(images, (0, pw - w, 0, ph - h), mode="replicate") if (ph, pw) != (h, w) else images
    dt, dev = flow.dtype, flow.device
    xs = (torch.arange(w, dtype=dt, device=dev) * 2 + 1) / pw - 1  # exact: dyadic
    ys = (torch.arange(h, dtype=dt, device=dev) * 2 + 1) / ph - 1
    gx = xs.view(1, 1, w) + flow[:, 0] * (2.0 / pw)
    gy = ys.view(1, h, 1) + flow[:, 1] * (2.0 / ph)
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------------------
# eq. 4: flow smoothness loss
# ---------------------------------------------------------------------------
def flow_loss(flow: torch.Tensor, *, neighbourhood: str = "4", eps: float = FLOW_EPS) -> torch.Tensor:
    """The flow loss of eq. 4, per image.

    Args:
        flow: ``(N, 2, H, W)`` displacements in pixels.
        neighbourhood: ``"4"`` (the paper's 4-connected ``N(p)``), ``"diagonal"``
            (the four diagonal neighbours of the reference TF code) or ``"8"`` (both).
        eps: added under the square root so the loss is differentiable at equal
            neighbours (reference TF code: 1e-8).

    Returns:
        ``(N,)``: ``sum_p sum_{q in N(p)} sqrt(|du_p - du_q|^2 + |dv_p - dv_q|^2 + eps)``.
        Neighbours outside the image are the border pixel itself (replicate padding),
        so each pixel has all its neighbours and zero flow gives
        ``H * W * |N| * sqrt(eps)``; every pair inside is counted from both ends, as
        the sum over ``p`` and ``q`` in eq. 4 says.
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected flow of shape (N, 2, H, W), got {tuple(flow.shape)}")
    if neighbourhood not in NEIGHBOURHOODS:
        raise ConfigError(f"neighbourhood must be one of {sorted(NEIGHBOURHOODS)}, got {neighbourhood!r}")
    h, w = flow.shape[-2:]
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    total = flow.new_zeros(flow.shape[0])
    for dy, dx in NEIGHBOURHOODS[neighbourhood]:
        q = padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        total = total + (flow - q).square().sum(dim=1).add(eps).sqrt().flatten(1).sum(dim=1)
    return total


# ---------------------------------------------------------------------------
# eq. 3: C&W margin on logits
# ---------------------------------------------------------------------------
def adversarial_margin(
    logits: torch.Tensor, classes: torch.Tensor, *, targeted: bool, kappa: float = 0.0
) -> torch.Tensor:
    """Eq. 3 on logits ``(N, K)``: ``max(max_{i!=t} Z_i - Z_t, -kappa)`` towards ``classes``
    (targeted), or ``max(Z_y - max_{i!=y} Z_i, -kappa)`` away from them (untargeted).

    It reaches its floor ``-kappa`` once the target leads every other class by
    ``kappa`` (or the true class trails one by ``kappa``); ``kappa >= 0``.
    """
    margin = logit_margin(logits, classes)
    return (margin if targeted else -margin).clamp(min=-kappa)


def smooth_margin(logits: torch.Tensor, classes: torch.Tensor, *, targeted: bool, kappa: float = 0.0) -> torch.Tensor:
    """Eq. 3 with the max over the other classes replaced by logsumexp (a smooth upper
    bound of it), unfloored: ``logsumexp_{i!=t} Z_i - Z_t`` (targeted) or
    ``Z_y - logsumexp_{i!=y} Z_i`` (untargeted, a lower bound of eq. 3's margin).

    Where two other classes tie for the max, eq. 3 has a kink and its gradient follows
    one of them; a line search along it can find no decrease at all (L-BFGS then stops
    for good on a few images). Used only to find the starting point of
    ``init="adversarial"``; ``kappa`` is accepted and ignored.
    """
    own = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(classes, logits.shape[1]).bool(), float("-inf")).logsumexp(dim=1)
    return others - own if targeted else own - others


# ---------------------------------------------------------------------------
# L-BFGS, one problem per image, evaluated in batches
# ---------------------------------------------------------------------------
Evaluation = tuple[float, torch.Tensor]


def _cubic_interpolate(
    x1: float, f1: float, g1: float, x2: float, f2: float, g2: float, bounds: tuple[float, float] | None = None
) -> float:
    # torch.optim.lbfgs._cubic_interpolate on Python floats (Nocedal & Wright eq. 3.59)
    xmin_bound, xmax_bound = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(
    x: torch.Tensor,
    t: float,
    d: torch.Tensor,
    f: float,
    g: torch.Tensor,
    gtd: float,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> Generator[torch.Tensor, Evaluation, tuple[float, torch.Tensor, float, int]]:
    """torch.optim.lbfgs._strong_wolfe as a coroutine: yields ``x + t d``, receives ``(f, g)``."""
    d_norm = float(d.abs().max())
    f_new, g_new = yield x + t * d
    ls_func_evals = 1
    gtd_new = float(g_new.dot(d))
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    bracket: list[float] = []
    bracket_f: list[float] = []
    bracket_g: list[torch.Tensor] = []
    bracket_gtd: list[float] = []
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_g, bracket_gtd = (
                [t_prev, t],
                [f_prev, f_new],
                [g_prev, g_new],
                [gtd_prev, gtd_new],
            )
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_g, bracket_gtd = (
                [t_prev, t],
                [f_prev, f_new],
                [g_prev, g_new],
                [gtd_prev, gtd_new],
            )
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = yield x + t * d
        ls_func_evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = yield x + t * d
        ls_func_evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos], bracket_g[high_pos] = t, f_new, g_new
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos], bracket_g[low_pos] = t, f_new, g_new
            bracket_gtd[low_pos] = gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def lbfgs_coroutine(
    x0: torch.Tensor,
    *,
    max_iter: int = 20,
    max_eval: int | None = None,
    lr: float = 1.0,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
) -> Generator[torch.Tensor, Evaluation, torch.Tensor]:
    """One L-BFGS problem as a coroutine: ``torch.optim.LBFGS(line_search_fn="strong_wolfe").step``.

    The same algorithm, defaults and stopping tests as one call of
    ``torch.optim.LBFGS([x], lr, max_iter, max_eval, tolerance_grad, tolerance_change,
    history_size, line_search_fn="strong_wolfe").step(closure)``, with the closure
    turned inside out: the coroutine yields each point it wants evaluated (a 1-D
    tensor) and is sent ``(loss, gradient)`` back; it returns the final point. Many
    coroutines can then share one batched evaluation while each keeps its own
    history, curvature and line search (:func:`run_lbfgs_batched`). The tests run
    it beside ``torch.optim.LBFGS`` and compare the iterates.
    """
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    x = x0.detach().clone()
    loss, flat_grad = yield x
    current_evals = 1
    if float(flat_grad.abs().max()) <= tolerance_grad:
        return x
    old_dirs: list[torch.Tensor] = []
    old_stps: list[torch.Tensor] = []
    ro: list[float] = []
    h_diag = 1.0
    d = flat_grad.neg()
    t = 0.0
    prev_flat_grad = flat_grad
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        if n_iter > 1:
            y = flat_grad.sub(prev_flat_grad)
            s = d.mul(t)
            ys = float(y.dot(s))
            if ys > 1e-10:
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                h_diag = ys / float(y.dot(y))
            al = [0.0] * len(old_dirs)
            q = flat_grad.neg()
            for i in range(len(old_dirs) - 1, -1, -1):
                al[i] = float(old_stps[i].dot(q)) * ro[i]
                q.add_(old_dirs[i], alpha=-al[i])
            d = r = q.mul(h_diag)
            for i in range(len(old_dirs)):
                be_i = float(old_dirs[i].dot(r)) * ro[i]
                r.add_(old_stps[i], alpha=al[i] - be_i)
        prev_flat_grad = flat_grad
        prev_loss = loss
        t = min(1.0, 1.0 / float(flat_grad.abs().sum())) * lr if n_iter == 1 else lr
        gtd = float(flat_grad.dot(d))
        if gtd > -tolerance_change:
            break
        loss, flat_grad, t, ls_func_evals = yield from _strong_wolfe(
            x, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
        )
        x = x + t * d
        opt_cond = float(flat_grad.abs().max()) <= tolerance_grad
        current_evals += ls_func_evals
        if n_iter == max_iter or current_evals >= max_eval or opt_cond:
            break
        if float(d.mul(t).abs().max()) <= tolerance_change:
            break
        if abs(loss - prev_loss) < tolerance_change:
            break
    return x


def run_lbfgs_batched(
    x0: torch.Tensor,
    evaluate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    budget: int | Sequence[int] | None = None,
    restart: Callable[[int], bool] | None = None,
    stop: Callable[[int], bool] | None = None,
    **lbfgs_kw: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``N`` independent problems with one L-BFGS each, evaluating them together.

    Args:
        x0: ``(N, D)`` starting points.
        evaluate: ``evaluate(idx, X)`` with ``idx`` ``(n,)`` problem indices and ``X``
            ``(n, D)`` points returns per-problem losses ``(n,)`` and gradients
            ``(n, D)``. It is called once per round with every problem that wants a
            point evaluated in that round (each problem asks for exactly one per round
            until it stops), so its cost is one batched forward/backward.
        budget: evaluations per problem over all runs, a hard cap (default: one run,
            no cap beyond ``max_eval``, which torch's line search may pass by one).
        restart: ``restart(i)`` says whether problem ``i``, whose L-BFGS run stopped
            with budget left, starts a fresh run (empty history) from where it stopped.
        stop: ``stop(i)``, asked after each evaluation, ends problem ``i`` early.
        **lbfgs_kw: passed to :func:`lbfgs_coroutine` (its ``max_eval`` is capped by
            what is left of ``budget``).

    Returns:
        the final points ``(N, D)`` and the number of evaluations per problem ``(N,)``.
    """
    n = x0.shape[0]
    kw = dict(lbfgs_kw)
    cap = kw.pop("max_eval", None)
    budgets = None if budget is None else ([int(budget)] * n if isinstance(budget, int) else [int(b) for b in budget])

    def start(i: int, x: torch.Tensor, left: int | None) -> Generator[torch.Tensor, Evaluation, torch.Tensor]:
        me = cap if left is None else (left if cap is None else min(cap, left))
        return lbfgs_coroutine(x, max_eval=me, **kw)

    coros = [start(i, x0[i], None if budgets is None else budgets[i]) for i in range(n)]
    final = x0.detach().clone()
    evals = torch.zeros(n, dtype=torch.long)
    pending = {i: next(c) for i, c in enumerate(coros) if budgets is None or budgets[i] > 0}
    while pending:
        idx = list(pending)
        losses, grads = evaluate(
            torch.tensor(idx, dtype=torch.long, device=x0.device), torch.stack([pending[i] for i in idx])
        )
        losses_f = losses.detach().cpu().tolist()
        pending_x, pending = pending, {}
        for j, i in enumerate(idx):
            evals[i] += 1
            if (budgets is not None and int(evals[i]) >= budgets[i]) or (stop is not None and stop(i)):
                # a hard cap (also inside a line search), or the caller is done with it
                final[i] = pending_x[i]
                coros[i].close()
                continue
            try:
                pending[i] = coros[i].send((losses_f[j], grads[j]))
            except StopIteration as finished:
                final[i] = finished.value
                left = None if budgets is None else budgets[i] - int(evals[i])
                if left is not None and left > 0 and restart is not None and restart(i):
                    coros[i] = start(i, final[i], left)
                    pending[i] = next(coros[i])
    return final, evals


# ---------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------
def _device_of(models: Sequence[nn.Module]) -> torch.device:
    for m in models:
        for p in m.parameters():
            return p.device
        for b in m.buffers():
            return b.device
    return torch.device("cpu")


def _rescue(
    evaluate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    start: torch.Tensor,
    best_loss: torch.Tensor,
    evals: torch.Tensor,
    *,
    steps: int,
) -> torch.Tensor:
    """Adam runs from zero flow for the images of ``start`` ``(k, D)`` that L-BFGS did not
    make adversarial (``best_loss`` still inf; ``evaluate`` records successes into it).

    Run ``j`` starts from zero flow with fresh Adam moments and takes steps of
    ``RESCUE_LRS[j]`` pixels for ``RESCUE_RUN`` evaluations; an image leaves once it has
    a successful point or has spent ``steps`` evaluations (``evals``, the caller's
    per-image counters, which ``evaluate`` advances). Returns the starting points of
    what follows: a rescued image's successful point, the others' ``start`` unchanged.
    """
    start = start.clone()
    trial = torch.zeros_like(start)
    m, v = torch.zeros_like(start), torch.zeros_like(start)
    for lr in RESCUE_LRS:
        idx = (torch.isinf(best_loss) & (evals < steps).to(best_loss.device)).nonzero().flatten()
        trial.zero_()
        m.zero_()
        v.zero_()
        for k in range(1, RESCUE_RUN + 1):
            if not len(idx):
                break
            _, g = evaluate(idx, trial[idx])
            done = torch.isfinite(best_loss[idx])
            start[idx[done]] = trial[idx[done]]
            go = ~done & (evals[idx.cpu()] < steps).to(idx.device)
            idx, g = idx[go], g[go]
            m[idx] = 0.9 * m[idx] + 0.1 * g
            v[idx] = 0.999 * v[idx] + 0.001 * g.square()
            trial[idx] -= lr * (m[idx] / (1 - 0.9**k)) / ((v[idx] / (1 - 0.999**k)).sqrt() + 1e-8)
    return start


def stadv(
    models: nn.Module | Sequence[nn.Module],
    images: torch.Tensor,
    target: Any = "random",
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tau: float = 0.05,
    kappa: float = 0.0,
    steps: int = 300,
    optimizer: str = "lbfgs",
    neighbourhood: str = "4",
    eps: float = FLOW_EPS,
    init: str = "adversarial",
    history_size: int = 20,
    restarts: bool = True,
    patience: int | None = 2,
    decision_tol: float = 1e-3,
    rescue_after: int | None = 50,
    lr: float = 0.01,
    batch_size: int = 256,
) -> AttackResult:
    """stAdv (Xiao et al. 2018): the smoothest per-pixel flow that makes the models say ``target``.

    Minimises, separately for every image, ``L_adv + tau * L_flow`` (eq. 2) over a
    per-pixel flow ``(2, H, W)``, with ``L_adv`` the margin of eq. 3 on logits
    (:func:`adversarial_margin`; an ensemble sums the margins of its models) and
    ``L_flow`` eq. 4 (:func:`flow_loss`). The image is resampled by :func:`flow_warp`
    (eq. 1).

    Every point the optimiser evaluates is also judged (the forward pass is shared):
    the result keeps, per image, the **successful** point with the smallest flow loss
    (eq. 4). An image with no successful point comes back unchanged (the input image,
    zero flow) and counts as failed; it is never dropped or zeroed. The returned
    images are judged once more in the result's own batches, and that judgement is
    ``success`` (a kept point that fails it is a failure like any other).

    Where this departs from a literal reading, and why:
        * Decision tolerance. With ``kappa = 0`` the optimum of eq. 2 lies *on* the
          decision boundary and the iterates hug it; kept points had leads of 1e-7
          logits, and 7 of 96 such "successes" flipped when the image was run again in
          another batch (float32 noise). So a point counts only when the target's
          logit (ensemble mean) leads by more than ``kappa + decision_tol``, and
          eq. 3's floor is ``-(kappa + 2 * decision_tol)`` so that the optimum lies
          inside that region. With the default 1e-3 logits this is invisible next to
          logit gaps of 5-20; ``decision_tol=0`` is eq. 3 to the letter.
        * Initial point (``init="adversarial"``). The paper does not say where L-BFGS
          starts. From zero flow, eq. 4 with its tiny ``eps`` acts like an L1 penalty
          on flow differences: every pixel that moves at all pays ``tau`` per unit
          at once, and L-BFGS stalls next to zero flow on robust models (the world's
          LeNet: 4 of 20 images adversarial at 300 evaluations, 1 of 10 at 1000). The
          default first minimises ``L_adv`` alone (``tau = 0``) from zero flow until
          the image is adversarial (typically ~10 evaluations; with eq. 3's max
          replaced by logsumexp, :func:`smooth_margin`, whose gradient does not jam
          where two classes tie: with the plain max 2 of 60 LeNet images stalled at
          a margin of 11-12 logits for good), then minimises eq. 2
          from that flow; the result is still the kept successful point with the
          smallest eq. 4. ``init="zero"`` starts eq. 2 at zero flow.
        * Rescue (``rescue_after``). On the CIFAR models that upsample to 64 px some
          images creep: L-BFGS on the smooth margin lowers it by ~0.7 logits in 300
          evaluations (mobilenetv2_100: 8 of 200 images never adversarial, every miss
          of that model and of efficientnet_b0). An image still not adversarial after
          ``rescue_after`` L-BFGS evaluations gets three Adam runs from zero flow with
          steps of 1, 0.3 and 3 pixels (:data:`RESCUE_LRS`, 40 evaluations each:
          elementwise steps cross the kinks of the bilinear warp that stall the
          curvature model), and if none is adversarial it resumes L-BFGS from its own
          point with the rest of the budget. All 8 then succeeded within 114 evaluations.
          Only the starting point of eq. 2 changes; ``rescue_after=None`` turns it off.
        * Stopping (``patience``). Once adversarial, the kept flow loss falls fast and
          then barely moves while the iterates hug the boundary. The default 2 stops an
          image after 2 evaluations without a 0.1 % gain: on resnet20 (40 images) 14
          evaluations and a mean eq. 4 of 271, against 196 and 63 at ``patience=10``;
          advertorch's flows on the same images have a mean eq. 4 of 26,635. On
          mobilenetv2_100 (200 images) ``patience=3`` was 4.5x faster than advertorch
          in CPU time, ``patience=2`` 7.4x at a mean eq. 4 of 3,811 against
          advertorch's 7,354 (benchmarks/README.md).

    Optimisers:
        ``"lbfgs"`` (the paper's): L-BFGS with a strong-Wolfe line search, one
        problem per image. ``torch.optim.LBFGS`` optimises one objective: summing
        the images' losses into it would give all images one line-search step, one
        curvature history and one stopping test, a different algorithm whose result
        for an image depends on the rest of the batch. Here every image runs its own
        copy of ``torch.optim.LBFGS.step`` (same two-loop recursion, strong-Wolfe
        line search and stopping tests, transcribed as the coroutine
        :func:`lbfgs_coroutine` and tested against ``torch.optim.LBFGS``); the
        coroutines advance in rounds, and each round evaluates every image that asks
        for a point in one batched forward/backward on the models' device
        (:func:`run_lbfgs_batched`). No NumPy round trip. The vector work of the
        two-loop recursion runs per image (small tensors on the device); only the
        model evaluation is batched. ``steps`` caps the evaluations
        (forward/backward passes, line search included) per image. A run that stops
        (converged, or a line search that found no decrease: the objective has kinks
        where the max in eq. 3 switches class and where a ReLU turns) while the image
        is not yet adversarial restarts from where it stopped with an empty history
        (``restarts=True``) until the image succeeds or its budget is spent.
        ``"adam"``: Adam steps of size ``lr`` (pixels). Adam's update is
        elementwise, so the summed loss gives each image exactly its own problem.

    Args:
        models: a wrapped model or a list of them (ensemble).
        images: ``(N, 3, H, W)`` float in [0, 1] (or uint8), any size.
        target: ``None`` (untargeted), a class index or name, ``"random"`` or ``(N,)``.
        labels: ``(N,)`` true classes; default: the first model's clean predictions.
        generator: random source for ``target="random"``.
        tau: weight of the flow loss (eq. 2; paper: 0.05).
        kappa: confidence of eq. 3 (paper: 0), >= 0.
        steps: forward/backward passes per image, all stages together.
        optimizer: ``"lbfgs"`` or ``"adam"``.
        neighbourhood: eq. 4's ``N(p)``: ``"4"``, ``"diagonal"`` (reference TF code) or ``"8"``.
        eps: the stabiliser under eq. 4's square root.
        init: ``"adversarial"`` or ``"zero"`` (see above).
        history_size: L-BFGS curvature pairs kept per image.
        restarts: restart a stopped L-BFGS run of a not-yet-adversarial image.
        patience: an adversarial image stops after this many evaluations in which its
            kept flow loss did not fall by 0.1 % (``None``: use the whole budget); the
            iterates otherwise hug the boundary while the kept flow loss barely moves.
        decision_tol: the extra lead (logits) a kept point must have (see above).
        rescue_after: L-BFGS evaluations of ``init="adversarial"`` before an image still
            not adversarial is rescued (see above); ``None``: L-BFGS only.
        lr: Adam step size in pixels.
        batch_size: images optimised together (memory bound of one forward/backward).

    Returns:
        :class:`AttackResult` with ``extras``: ``flow`` ``(N, 2, H, W)`` (pixels; x then
        y), ``flow_loss`` ``(N,)`` (eq. 4 of the returned flow, same ``eps`` and
        neighbourhood; zero flow gives ``H * W * |N| * sqrt(eps)``),
        ``displacement_mean`` / ``displacement_max`` ``(N,)`` (length of the flow
        vectors in pixels), ``evaluations`` ``(N,)`` (forward/backward passes spent on
        the image), ``evaluations_to_adversarial`` ``(N,)`` (the evaluation that found
        the first successful point, -1 if none) and, when targeted,
        ``untargeted_success`` ``(N,)``.
    """
    ms = as_model_list(models)
    x_all = as_float_images(images)
    neighbourhood = str(neighbourhood)  # "--set neighbourhood=8" may arrive as a number
    if init not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if neighbourhood not in NEIGHBOURHOODS:
        raise ConfigError(f"neighbourhood must be one of {sorted(NEIGHBOURHOODS)}, got {neighbourhood!r}")
    if tau < 0 or kappa < 0 or eps <= 0 or decision_tol < 0:
        raise ConfigError(
            f"stadv needs tau, kappa, decision_tol >= 0 and eps > 0, got tau={tau}, "
            f"kappa={kappa}, decision_tol={decision_tol}, eps={eps}"
        )
    if (
        steps < 1
        or history_size < 1
        or batch_size < 1
        or lr <= 0
        or (patience is not None and patience < 1)
        or (rescue_after is not None and rescue_after < 1)
    ):
        raise ConfigError("stadv needs steps, history_size, batch_size, patience, rescue_after >= 1 and lr > 0")
    config = {
        "tau": tau,
        "kappa": kappa,
        "steps": steps,
        "optimizer": optimizer,
        "neighbourhood": neighbourhood,
        "eps": eps,
        "init": init,
        "history_size": history_size,
        "restarts": restarts,
        "patience": patience,
        "decision_tol": decision_tol,
        "rescue_after": rescue_after,
        "lr": lr,
        "batch_size": batch_size,
    }
    floor = kappa + 2 * decision_tol  # eq. 3's -kappa, lifted so the optimum lies inside the kept region
    device = _device_of(ms)
    x_all = x_all.detach().to(device)
    n, _, h, w = x_all.shape
    class_names = list(getattr(ms[0], "labels", []))

    def mean_logits(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in ms]).mean(0)

    def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x[s : s + batch_size]) for s in range(0, n, batch_size)])

    with torch.no_grad():
        clean_first = batched(ms[0], x_all)
    if labels is None:
        y_all = clean_first.argmax(1)
    else:
        y_all = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(device)
        if y_all.numel() != n:
            raise ConfigError(f"labels must hold {n} class indices, got {y_all.numel()}")
    class_names = class_names or [str(i) for i in range(clean_first.shape[1])]
    tgt = resolve_target(target, class_names, y_all.cpu(), generator=generator)
    targeted = tgt is not None
    cls_all = tgt.to(device) if targeted else y_all

    best_flow = torch.zeros(n, 2, h, w, dtype=x_all.dtype, device=device)
    best_adv = x_all.clone()
    best_loss = torch.full((n,), float("inf"), dtype=x_all.dtype, device=device)
    evals = torch.zeros(n, dtype=torch.long)
    improved_at = torch.zeros(n, dtype=torch.long)  # evaluation count at the last real improvement
    first_ok = torch.full((n,), -1, dtype=torch.long)  # evaluation count at the first successful point

    def make_evaluate(
        off: int,
        x: torch.Tensor,
        cls: torch.Tensor,
        tau: float,
        margin: Callable[..., torch.Tensor] = adversarial_margin,
    ):
        def evaluate(idx: torch.Tensor, flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Per-image loss and gradient at ``flows`` ``(k, 2HW)`` of images ``idx``; records successes."""
            flow = flows.detach().view(-1, 2, h, w).requires_grad_(True)
            with torch.enable_grad():
                adv = flow_warp(x[idx], flow)
                logits = [m(adv) for m in ms]
                l_adv = sum(margin(z, cls[idx], targeted=targeted, kappa=floor) for z in logits)
                l_flow = flow_loss(flow, neighbourhood=neighbourhood, eps=eps)
                loss = l_adv + tau * l_flow
                (grad,) = torch.autograd.grad(loss.sum(), flow)  # images are independent: row i = dL_i/df_i
            with torch.no_grad():
                m_mean = adversarial_margin(
                    torch.stack(logits).mean(0), cls[idx], targeted=targeted, kappa=math.inf
                )  # unfloored; < 0: adversarial
                ok = m_mean < -(kappa + decision_tol)
                gi = idx + off
                better = ok & (l_flow < best_loss[gi])
                if bool(better.any()):
                    b = gi[better]
                    real = b[~(best_loss[b] * (1 - PATIENCE_REL) <= l_flow[better])]  # first success or > 0.1 %
                    fresh = b[torch.isinf(best_loss[b])].cpu()
                    first_ok[fresh] = evals[fresh] + 1
                    improved_at[real.cpu()] = evals[real.cpu()] + 1
                    best_loss[b] = l_flow.detach()[better]
                    best_flow[b] = flow.detach()[better]
                    best_adv[b] = adv.detach()[better]
            evals[gi.cpu()] += 1
            return loss.detach(), grad.reshape(len(idx), -1)

        return evaluate

    def patient(i: int) -> bool:
        return (
            patience is not None and bool(torch.isfinite(best_loss[i])) and int(evals[i] - improved_at[i]) >= patience
        )

    def lbfgs(s: int, start: torch.Tensor, evaluate, budget, stop: Callable[[int], bool]):
        """:func:`run_lbfgs_batched` on the images from ``s`` on; a stopped run of an image
        not yet adversarial restarts (``restarts``)."""
        return run_lbfgs_batched(
            start,
            evaluate,
            budget=budget,
            max_iter=steps,
            history_size=history_size,
            restart=lambda i: restarts and bool(torch.isinf(best_loss[s + i])),
            stop=stop,
        )

    for s in range(0, n, batch_size):
        x, cls = x_all[s : s + batch_size], cls_all[s : s + batch_size]
        k = x.shape[0]
        start = x.new_zeros(k, 2 * h * w)
        if init == "adversarial":  # L_adv alone (tau = 0) from zero flow, until the image is adversarial
            find = make_evaluate(s, x, cls, 0.0, smooth_margin)

            def adversarial(i: int, s: int = s) -> bool:
                return bool(torch.isfinite(best_loss[s + i]))

            budget = steps if rescue_after is None else min(steps, rescue_after)
            start, _ = lbfgs(s, start, find, budget, adversarial)
            if rescue_after is not None:
                start = _rescue(find, start, best_loss[s : s + k], evals[s : s + k], steps=steps)
                left = torch.where(torch.isinf(best_loss[s : s + k]).cpu(), steps - evals[s : s + k], 0)
                start, _ = lbfgs(s, start, find, left.tolist(), adversarial)  # the images still not adversarial
            improved_at[s : s + k] = evals[s : s + k]
        evaluate = make_evaluate(s, x, cls, tau)
        if optimizer == "lbfgs":
            lbfgs(s, start, evaluate, (steps - evals[s : s + k]).tolist(), lambda i, s=s: patient(s + i))
        else:
            flow = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([flow], lr=lr)
            idx = torch.arange(k, device=device)
            for _ in range(max(0, steps - 1 - int(evals[s : s + k].max()))):
                _, g = evaluate(idx, flow.detach())
                flow.grad = g
                opt.step()
            evaluate(idx, flow.detach())  # judge the last point too

    with torch.no_grad():
        # judge the returned images once more, in the result's own batches; a point kept at
        # the decision boundary that does not hold up there is a failure like any other
        mean_z = batched(mean_logits, best_adv)
        pred = mean_z.argmax(1)
        success = pred == cls_all if targeted else pred != y_all
        failed = ~success & torch.isfinite(best_loss) | torch.isinf(best_loss)
        best_adv[failed] = x_all[failed]  # unchanged: the input itself, zero flow
        best_flow[failed] = 0
        if bool((failed & torch.isfinite(best_loss)).any()):
            mean_z = batched(mean_logits, best_adv)
            pred = mean_z.argmax(1)
            success = pred == cls_all if targeted else pred != y_all
        first_pred = pred if len(ms) == 1 else batched(ms[0], best_adv).argmax(1)
        fl = flow_loss(best_flow, neighbourhood=neighbourhood, eps=eps)
        disp = best_flow.square().sum(1).sqrt().flatten(1)
    extras = {
        "flow": best_flow.cpu(),
        "flow_loss": fl.cpu(),
        "displacement_mean": disp.mean(1).cpu(),
        "displacement_max": disp.amax(1).cpu(),
        "evaluations": evals.to(torch.float32),
        "evaluations_to_adversarial": first_ok.to(torch.float32),
    }
    if targeted:
        extras["untargeted_success"] = (pred != y_all).cpu()
    adv_cpu, x_cpu = best_adv.cpu(), x_all.cpu()
    norms = lp_norms(x_cpu, adv_cpu)
    return AttackResult(
        attack="stadv",
        config=config,
        adversarial=adv_cpu,
        labels=y_all.cpu(),
        target=None if tgt is None else tgt.cpu(),
        predictions=first_pred.cpu(),
        success=success.cpu(),
        l0=norms["l0"],
        l2=norms["l2"],
        linf=norms["linf"],
        class_names=class_names,
        extras=extras,
    )


__all__ = [
    "FLOW_EPS",
    "NEIGHBOURHOODS",
    "adversarial_margin",
    "flow_loss",
    "flow_warp",
    "lbfgs_coroutine",
    "run_lbfgs_batched",
    "stadv",
]
