"""``patchlab eval`` commands (physical)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._common import console


def _pct(d: dict | None) -> str:
    if not d or not d.get("n"):
        return "-"
    return f"{d['rate']:.1%} [{d['ci95'][0]:.0%}, {d['ci95'][1]:.0%}]"


def physical_tables(res) -> list[Table]:
    """Rich tables of a :class:`patchlab.eval.physical.PhysicalResult`."""
    out = []
    ps = res.pose_sources or {}
    policy = f"; lost frames with --crop roi: {res.on_lost}" if res.on_lost else ""
    policy += "" if res.defense == "none" else f"; defence {res.defense}"
    t = Table(
        "model",
        "tSuc [95% CI]",
        "n",
        "tSuc with pose",
        "tSuc detected",
        "mean p(target)",
        "accuracy",
        "untargeted err",
        title=f"{res.capture_dir}: target {res.target_class}, {res.counted} of {res.frames} frames counted; "
        f"patch detected {ps.get('detected', 0)}, tracked {ps.get('tracked', 0)}, lost "
        f"{ps.get('lost', 0)}{policy}",
    )
    for m in res.models:
        t.add_row(
            m.model,
            _pct(m.tsuc),
            str(m.tsuc["n"]),
            _pct(m.tsuc_with_pose),
            _pct(m.tsuc_detected),
            f"{m.mean_p_target:.3f}",
            _pct(m.accuracy),
            _pct(m.untargeted_error),
        )
    out.append(t)
    for q, pr in (res.pose_rates or {}).items():
        if not pr.rows:
            continue
        t = Table(
            f"{q} ({pr.unit})",
            "frames",
            "detected",
            "tracked",
            "lost",
            title=f"where the patch was found, by {q} ({pr.note}; {pr.unplaced} lost frames unplaced)",
        )
        for r in pr.rows:
            t.add_row(r.label, str(r.n), f"{r.detected} ({r.detection_rate:.0%})", str(r.tracked), str(r.lost))
        out.append(t)
    if res.control is not None:
        c = Table(
            "model",
            "patched tSuc",
            "control rate",
            "difference [95% CI]",
            "patched acc",
            "control acc",
            title=f"patched vs control ({res.control_dir})",
        )
        for r in res.control:
            c.add_row(
                r.model,
                _pct(r.patched),
                _pct(r.control),
                f"{r.difference:+.1%} [{r.ci95[0]:+.0%}, {r.ci95[1]:+.0%}]",
                _pct(r.patched_accuracy),
                _pct(r.control_accuracy),
            )
        out.append(c)
    for tab in res.bins.values():
        if not tab.measured:
            t = Table(f"{tab.label}", title=f"by {tab.label}")
            t.add_row(tab.note)
            out.append(t)
            continue
        names = list(tab.rows[0].rates)
        t = Table(f"{tab.label} ({tab.unit})", "n", "det/trk/lost", *names, title=f"tSuc by {tab.label}")
        for r in tab.rows + ([tab.unbinned] if tab.unbinned else []):
            sp = "/".join(str(r.sources.get(k, 0)) for k in ("detected", "tracked", "lost")) if r.sources else "-"
            t.add_row(r.label, str(r.n), sp, *(_pct(r.rates[n]) for n in names))
        out.append(t)
    return out


def physical_cmd(
    capture_dir: Annotated[Path, typer.Argument(help="Capture folder from `patchlab capture run`.")],
    control: Annotated[Optional[Path], typer.Option(help="Control capture: the same scene without the patch.")] = None,
    bins: Annotated[
        Optional[list[str]],
        typer.Option(
            "--bins",
            help="Conditions to bin by: distance, angle, size, "
            "roll, lighting (repeat; default: distance "
            "angle size lighting).",
        ),
    ] = None,
    n_bins: Annotated[int, typer.Option(help="Equal-count bins per condition.")] = 5,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the result here.")] = None,
    plots: Annotated[Optional[Path], typer.Option(help="Folder for the plots (default: CAPTURE_DIR/plots).")] = None,
    defense: Annotated[
        Optional[str],
        typer.Option(
            "--defense",
            help="The input defence the capture (and --control) must have been scored behind, e.g. "
            "blur:1.5 (frames are not stored: apply one with `patchlab capture run --defense`). "
            "Default: whatever it was, shown in the tables; a control must always match.",
        ),
    ] = None,
) -> None:
    """Physical tSuc per model (Wilson 95% CI), binned by distance, angle, size and lighting, vs a control."""
    from ..eval.physical import DEFAULT_BINS, evaluate_capture
    from ..eval.plots import bin_curve
    from ..utils import atomic_write_bytes, atomic_write_json

    res = evaluate_capture(
        capture_dir, control=control, bins=tuple(bins or DEFAULT_BINS), n_bins=n_bins, defense=defense
    )
    for t in physical_tables(res):
        console.print(t)
    folder = plots or (Path(capture_dir) / "plots")
    written = []
    for q, tab in res.bins.items():
        p = bin_curve(tab, control=(res.control_bins or {}).get(q))
        if p is not None:
            written.append(atomic_write_bytes(folder / f"{p.name}.png", p.png))
    for p in written:
        console.print(f"wrote {p}")
    if json_path is not None:
        atomic_write_json(json_path, res.to_dict())
        console.print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the ``eval`` sub-app."""
    app.command("physical")(physical_cmd)
