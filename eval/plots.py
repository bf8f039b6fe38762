"""The judge's figures (matplotlib, no display needed): every plot says how much it shows.

Each function returns a :class:`Plot` -- PNG bytes plus the number of data points
and series drawn -- or None when there is nothing to draw, so a report never
shows an empty axis: it says "not measured" instead.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from .matrix import MatrixResult

#: Colours per model, in order (matplotlib's tab10, colour-blind friendlier than the default cycle order).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
DPI = 110


@dataclass(frozen=True)
class Plot:
    """One figure: ``png`` bytes, what it shows and how much data is on it."""

    name: str
    title: str
    png: bytes
    n_points: int
    n_series: int
    caption: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "n_points": self.n_points,
            "n_series": self.n_series,
            "caption": self.caption,
        }


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _mpl()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _short(names: Sequence[str]) -> list[str]:
    import os

    names = list(names)
    if len(names) < 2:
        return names
    pre = os.path.commonprefix(names)
    cut = max(pre.rfind("-"), pre.rfind("_"), pre.rfind(":"), pre.rfind("/")) + 1
    return [n[cut:] or n for n in names]


def loss_curves(history: Sequence[dict[str, Any]], *, title: str = "optimisation") -> Plot | None:
    """Total loss, each named term and the running white-box tSuc against the step."""
    hist = [h for h in history if isinstance(h, dict) and "step" in h]
    if not hist:
        return None
    plt = _mpl()
    steps = np.array([h["step"] for h in hist], float)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    n_pts, n_series = 0, 0
    series = {"loss": [h.get("loss") for h in hist]}
    terms = sorted({k for h in hist for k in (h.get("terms") or {})})
    for t in terms:
        series[t] = [(h.get("terms") or {}).get(t) for h in hist]
    for k, (name, ys) in enumerate(series.items()):
        y = np.array([np.nan if v is None else float(v) for v in ys])
        ok = np.isfinite(y)
        if not ok.any():
            continue
        ax.plot(steps[ok], y[ok], label=name, color=PALETTE[k % len(PALETTE)], lw=2.0 if name == "loss" else 1.2)
        n_pts += int(ok.sum())
        n_series += 1
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ts = np.array([np.nan if h.get("tsuc") is None else float(h["tsuc"]) for h in hist])
    if np.isfinite(ts).any():
        ax2 = ax.twinx()
        ok = np.isfinite(ts)
        ax2.plot(steps[ok], ts[ok], color="black", ls="--", lw=1.2, label="train tSuc")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("white-box tSuc (train batches)")
        n_pts += int(ok.sum())
        n_series += 1
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    else:
        ax.legend(fontsize=8)
    ax.set_title(title)
    if n_pts == 0:
        plt.close(fig)
        return None
    return Plot("loss", title, _png(fig), n_pts, n_series, "loss terms (left axis) and running tSuc (right axis)")


def rate_bars(
    rows: Sequence[tuple[str, float, tuple[float, float]]],
    *,
    title: str,
    ylabel: str = "tSuc",
    highlight: Sequence[bool] | None = None,
    name: str = "bars",
) -> Plot | None:
    """A bar per ``(label, rate, (lo, hi))`` with its 95 % interval."""
    rows = [r for r in rows if r[1] is not None and math.isfinite(r[1])]
    if not rows:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.2))
    x = np.arange(len(rows))
    vals = np.array([r[1] for r in rows])
    lo = np.maximum(vals - np.array([r[2][0] for r in rows]), 0.0)
    hi = np.maximum(np.array([r[2][1] for r in rows]) - vals, 0.0)
    colors = [("#d62728" if (highlight and highlight[i]) else "#1f77b4") for i in range(len(rows))]
    ax.bar(x, vals, color=colors, yerr=np.vstack([lo, hi]), capsize=4, ecolor="black")
    for i, v in enumerate(vals):
        ax.text(i, min(v + hi[i] + 0.02, 1.0), f"{v:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(_short([r[0] for r in rows]), rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return Plot(name, title, _png(fig), len(rows), 1, "bars: rate; whiskers: Wilson 95 % interval")


def matrix_heatmap(matrix: MatrixResult, *, title: str = "transfer matrix (tSuc)") -> Plot | None:
    """Runs (rows) x judged models (columns) tSuc heatmap of a ``matrix.json``."""
    models = list(matrix.models)
    runs = list(matrix.rows)
    if not models or not runs:
        return None
    M = np.full((len(runs), len(models)), np.nan)
    for i, r in enumerate(runs):
        for j, m in enumerate(models):
            v = r.tsuc.get(m)
            if v is not None:
                M[i, j] = float(v)
    n = int(np.isfinite(M).sum())
    if n == 0:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(1.0 * len(models) + 3, 0.55 * len(runs) + 1.8))
    im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(runs)):
        for j in range(len(models)):
            if np.isfinite(M[i, j]):
                ax.text(
                    j,
                    i,
                    f"{M[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if M[i, j] < 0.6 else "black",
                )
            else:
                ax.text(j, i, "n/m", ha="center", va="center", fontsize=7, color="grey")
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(_short(models), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(runs)))
    ax.set_yticklabels([r.label or r.run_id for r in runs], fontsize=8)
    sources = [set(r.sources) for r in runs]
    for i, src in enumerate(sources):
        for j, m in enumerate(models):
            if m in src:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="tSuc")
    ax.set_title(title)
    return Plot(
        "matrix", title, _png(fig), n, len(runs), "red frame: the model the patch was optimised on; n/m: not measured"
    )


def bin_curve(table: Any, *, control: Any = None, title: str | None = None) -> Plot | None:
    """tSuc per model against a binned condition (:class:`patchlab.eval.physical.BinTable`),
    with Wilson 95 % intervals; a control capture's rates dashed."""
    if table is None or not table.measured or not table.rows:
        return None
    plt = _mpl()
    names = list(table.rows[0].rates)
    short = _short(names)
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    n_pts = 0
    n_series = 0
    width = 0.0
    if len(table.rows) > 1:
        xs_all = [r.centre for r in table.rows]
        width = (max(xs_all) - min(xs_all)) / max(1, len(xs_all) - 1) * 0.06
    for k, (n, sn) in enumerate(zip(names, short)):
        xs, ys, lo, hi = [], [], [], []
        for r in table.rows:
            d = r.rates[n]
            if d["n"] == 0:
                continue
            xs.append(r.centre + (k - (len(names) - 1) / 2) * width)
            ys.append(d["rate"])
            lo.append(max(0.0, d["rate"] - d["ci95"][0]))
            hi.append(max(0.0, d["ci95"][1] - d["rate"]))
        if not xs:
            continue
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color=PALETTE[k % len(PALETTE)], label=sn)
        n_pts += len(xs)
        n_series += 1
        if control is not None and control.measured:
            cx = [r.centre for r in control.rows if r.rates.get(n, {}).get("n")]
            cy = [r.rates[n]["rate"] for r in control.rows if r.rates.get(n, {}).get("n")]
            if cx:
                ax.plot(
                    cx, cy, ls="--", marker="x", color=PALETTE[k % len(PALETTE)], alpha=0.7, label=f"{sn} (control)"
                )
                n_pts += len(cx)
                n_series += 1
    if n_pts == 0:
        plt.close(fig)
        return None
    for r in table.rows[1:]:
        ax.axvline(r.lo, color="grey", lw=0.5, alpha=0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"{table.label} ({table.unit})")
    ax.set_ylabel("tSuc")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ttl = title or f"tSuc by {table.label}"
    ax.set_title(ttl)
    return Plot(
        f"bins-{table.quantity}",
        ttl,
        _png(fig),
        n_pts,
        n_series,
        "points: bin median; whiskers: Wilson 95 % interval; thin lines: bin edges (equal-count bins)",
    )


def image_png(rgb: np.ndarray, *, scale: int = 1) -> bytes:
    """An ``(H, W, 3)`` uint8 RGB image as PNG bytes, upscaled ``scale`` times (nearest)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
