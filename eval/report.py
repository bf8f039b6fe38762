"""Reports a person can read in a minute: one run, its digital transfer, its captures.

:func:`build_report` gathers what exists -- ``RUN_DIR/run.json`` (patch, config,
loss history), ``RUN_DIR/transfer.json`` (``patchlab eval transfer``), an optional
``matrix.json`` (``patchlab eval matrix``) and any capture folders (``patchlab
capture run``, judged as ``patchlab eval physical`` does) -- into a
:class:`Report`: a headline, then sections of tables, figures and sample frames,
each figure with the file and command it comes from, and a provenance section
with the exact commands, configs and library versions. What is missing is said
to be "not measured", with the command that would measure it; no plot is ever
drawn empty (:mod:`patchlab.eval.plots` returns None instead).

:func:`write_report` renders it as one self-contained HTML file (images inline
as base64 PNG) or as a PDF through reportlab, by the file's suffix.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from patchlab.captures import CaptureError, CaptureSummary
from patchlab.errors import ConfigError
from patchlab.runs import PATCH_PNG, RUN_JSON, TRANSFER_JSON, RunRecord, load_run, read_patch, warn_if_unfinished
from patchlab.transfer import TransferResult
from patchlab.utils import atomic_write_bytes, atomic_write_text, now_iso, read_json_object, versions

from . import plots as P
from .matrix import MatrixResult

#: Sample frames shown per capture.
SAMPLES_SHOWN = 6
#: Libraries whose versions a report records.
REPORT_VERSION_MODULES = ("matplotlib", "reportlab", "numpy")


# --------------------------------------------------------------------------------------
# the document model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str
    kind: str = "p"  # p | note | missing | warning (a partial result: a run or capture that did not finish)


@dataclass(frozen=True)
class KeyValues:
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class TableBlock:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    plot: P.Plot
    source: str  # where the data came from (file, command)


@dataclass(frozen=True)
class Gallery:
    images: list[tuple[bytes, str]]  # PNG/JPEG bytes, caption
    caption: str = ""


@dataclass(frozen=True)
class Code:
    text: str
    title: str = ""


Block = Text | KeyValues | TableBlock | Figure | Gallery | Code


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """A report before rendering. ``figures`` lists every plot with its data counts."""

    title: str
    subtitle: str
    headline: list[str]
    sections: list[Section]
    generated: str

    @property
    def figures(self) -> list[P.Plot]:
        return [b.plot for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "subtitle": self.subtitle,
            "headline": self.headline,
            "generated": self.generated,
            "sections": [
                {
                    "key": s.key,
                    "title": s.title,
                    "figures": [b.plot.to_dict() for b in s.blocks if isinstance(b, Figure)],
                    "missing": [b.text for b in s.blocks if isinstance(b, Text) and b.kind == "missing"],
                    "warnings": [b.text for b in s.blocks if isinstance(b, Text) and b.kind == "warning"],
                }
                for s in self.sections
            ],
        }


# --------------------------------------------------------------------------------------
# gathering
# --------------------------------------------------------------------------------------


def _pct(d: dict | None, ci: bool = True) -> str:
    if not d or not d.get("n"):
        return "not measured"
    s = f"{d['rate']:.1%}"
    return s + (f" [{d['ci95'][0]:.0%}, {d['ci95'][1]:.0%}]" if ci else "")


def _rate_ci(rate: float | None, ci: Sequence[float] | None) -> str:
    if rate is None:
        return "not measured"
    s = f"{float(rate):.1%}"
    return s + (f" [{float(ci[0]):.0%}, {float(ci[1]):.0%}]" if ci else "")


def _cmd(argv: Any) -> str:
    if isinstance(argv, (list, tuple)) and argv:
        return " ".join(shlex.quote(str(a)) for a in argv)
    if isinstance(argv, str) and argv:
        return argv
    return "(not recorded)"


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is absent (a part not measured)."""
    return read_json_object(path) if path.is_file() else None


def load_transfer(run_dir: Path) -> TransferResult | None:
    """``RUN_DIR/transfer.json`` as a :class:`TransferResult`; None when absent (not measured)."""
    d = _read_json(run_dir / TRANSFER_JSON)
    if d is None:
        return None
    try:
        return TransferResult.from_dict(d)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(
            f"{run_dir / TRANSFER_JSON} is not a transfer record of `patchlab eval transfer` ({exc!r}); "
            f"judge the patch again with `patchlab eval transfer {run_dir} --models MODEL...`"
        ) from exc


def load_matrix(path: Path) -> MatrixResult:
    """A ``matrix.json`` of ``patchlab eval matrix`` as a :class:`MatrixResult` (a file of another
    kind is refused by :func:`check_matrix_record`)."""
    d = _read_json(path)
    if d is None:
        raise ConfigError(f"matrix file not found: {path}")
    check_matrix_record(d, path)
    return MatrixResult.from_dict(d)


def _summary_of(record: dict[str, Any], folder: Path) -> CaptureSummary | None:
    """A capture's summary as an object; None when absent or of an older shape (shown as '?')."""
    if not record:
        return None
    try:
        return CaptureSummary.from_dict(record, source=str(folder / "summary.json"))
    except CaptureError:
        return None


def _short(name: str, names: Sequence[str]) -> str:
    return dict(zip(names, P._short(list(names)))).get(name, name)


def _patch_section(run_dir: Path, run: RunRecord) -> tuple[Section, dict[str, Any]]:
    blocks: list[Block] = []
    info: dict[str, Any] = {}
    try:
        patch = read_patch(run_dir)
        rgb = np.clip(np.round(patch.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        scale = max(1, 256 // max(rgb.shape[:2]))
        blocks.append(
            Gallery(
                [(P.image_png(rgb, scale=scale), f"{rgb.shape[1]}x{rgb.shape[0]} px, shown {scale}x")],
                caption=f"source: {run_dir / PATCH_PNG}",
            )
        )
        info["pixels"] = f"{rgb.shape[1]}x{rgb.shape[0]}"
    except ConfigError as exc:
        blocks.append(Text(f"Patch image not found: {exc}", "missing"))
    patch_desc = f"{info.get('pixels', '?')} px, {run.patch_shape}"
    if run.frac:
        patch_desc += f", {run.frac:.0%} of the image"
    items = [
        ("target class", _said(run.target_class)),
        ("run", run.run_id or run_dir.name),
        ("status", _said(run.status)),
        ("seed", str(run.seed)),
        ("loss", _said(run.loss)),
        ("steps", _said(run.steps)),
        ("patch", patch_desc),
        ("placement", _said(run.placement)),
        ("defence", _defense_text(run.defense or run.config.get("defense"))),
        ("source models", ", ".join(run.source_names) or "not recorded"),
    ]
    blocks.insert(0, KeyValues(items))
    return Section("patch", "The patch", blocks), info


def _said(v: Any) -> str:
    """A recorded value as text; "not recorded" where the record does not say."""
    return "not recorded" if v is None or v == "" else str(v)


def _transfer_figures(transfer: TransferResult | None) -> tuple[str, str]:
    """White-box and mean-transfer tSuc of a transfer.json, formatted (``-`` when not measured)."""
    if transfer is None or not transfer.models:
        return "not measured", "not measured"
    src = [m.tsuc for m in transfer.sources]
    oth = [m.tsuc for m in transfer.others]
    return (f"{np.mean(src):.1%}" if src else "-"), (f"{np.mean(oth):.1%}" if oth else "-")


def _compare_section(runs: Sequence[tuple[Path, RunRecord, TransferResult | None]]) -> Section:
    """The patches of several runs side by side, each with its loss and digital tSuc."""
    images: list[tuple[bytes, str]] = []
    rows = []
    for rd, run, transfer in runs:
        wb, tr = _transfer_figures(transfer)
        rgb = np.clip(np.round(read_patch(rd).transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        scale = max(1, 192 // max(rgb.shape[:2]))
        label = f"{run.loss or '?'} ({run.run_id or rd.name})"
        images.append((P.image_png(rgb, scale=scale), f"{label}: white-box {wb}, transfer {tr}"))
        rows.append([label, run.target_class or "?", run.layer_spec or "-", wb, tr])
    return Section(
        "compare",
        "Patches side by side",
        [
            Gallery(images, caption="each run's patch.png; tSuc from its transfer.json"),
            TableBlock(
                ["patch", "target", "layers", "white-box tSuc", "mean transfer tSuc"],
                rows,
                caption="white-box: mean over the source models; transfer: mean over the other judged models",
            ),
        ],
    )


def _loss_section(run_dir: Path, run: RunRecord) -> Section:
    hist = run.history
    plot = P.loss_curves(hist, title=f"optimisation of {run.run_id or run_dir.name}")
    last = run.last_step
    if plot is None or last is None:
        return Section(
            "loss", "Optimisation", [Text("Loss curves: not measured (run.json has no history).", "missing")]
        )
    terms = ", ".join(f"{k} {float(v):.3g}" for k, v in (last.get("terms") or {}).items())
    return Section(
        "loss",
        "Optimisation",
        [
            Figure(plot, f"{run_dir / RUN_JSON} history; command: {_cmd(run.command)}"),
            Text(
                f"{len(hist)} logged steps; last step {last.get('step')}: loss {float(last.get('loss', float('nan'))):.4g}"
                + (f" ({terms})" if terms else "")
                + (f", running white-box tSuc {float(last['tsuc']):.0%}" if last.get("tsuc") is not None else "")
                + "."
            ),
        ],
    )


def _transfer_section(run_dir: Path, transfer: TransferResult | None) -> Section:
    if transfer is None or not transfer.models:
        return Section(
            "transfer",
            "Digital transfer",
            [
                Text(
                    f"Digital transfer: not measured (no {TRANSFER_JSON} in {run_dir}; "
                    f"run `patchlab eval transfer {run_dir} --models MODEL...`).",
                    "missing",
                )
            ],
        )
    ms = transfer.models
    rows = [
        [
            m.name + (" (source)" if m.is_source else ""),
            _rate_ci(m.tsuc, m.ci95),
            f"{m.clean_accuracy:.1%}",
            f"{m.untargeted_error:.1%}",
            str(m.n),
        ]
        for m in ms
    ]
    blocks: list[Block] = [
        TableBlock(
            ["model", "tSuc [95% CI]", "clean accuracy", "untargeted error", "n"],
            rows,
            caption=f"placement {transfer.placement}{_judged_defense(transfer)}; source: {run_dir / TRANSFER_JSON}",
        )
    ]
    plot = P.rate_bars(
        [(m.name, m.tsuc, m.ci95) for m in ms],
        title="digital tSuc per model",
        highlight=[m.is_source for m in ms],
        name="transfer",
    )
    if plot is not None:
        blocks.insert(0, Figure(plot, f"{run_dir / TRANSFER_JSON} (red: source model)"))
    return Section("transfer", "Digital transfer", blocks)


def _matrix_section(matrix_path: Path | None, m: MatrixResult | None) -> Section:
    if matrix_path is None or m is None:
        return Section(
            "matrix",
            "Transfer matrix",
            [
                Text(
                    "Transfer matrix: not measured (pass --matrix matrix.json from `patchlab eval matrix RUN_DIR... "
                    "--models ... --out DIR`).",
                    "missing",
                )
            ],
        )
    plot = P.matrix_heatmap(m)
    if plot is None:
        return Section(
            "matrix", "Transfer matrix", [Text(f"Transfer matrix: {matrix_path} holds no measured cell.", "missing")]
        )
    rows = [
        [
            r.label or r.run_id,
            r.loss or "-",
            *("-" if v is None else f"{float(v):.1%}" for v in (r.mean_transfer, r.min_transfer, r.max_transfer)),
        ]
        for r in m.rows
    ]
    return Section(
        "matrix",
        "Transfer matrix",
        [
            Figure(plot, f"{matrix_path}"),
            TableBlock(
                ["run", "loss", "mean transfer", "min", "max"],
                rows,
                caption="transfer = tSuc on models the patch was not optimised on" + _judged_defense(m),
            ),
        ],
    )


def check_matrix_record(m: dict[str, Any], path: str | Path) -> None:
    """Refuse a JSON file that is not a ``matrix.json`` of ``patchlab eval matrix`` (a run record,
    a capture summary, a transfer.json...), naming what it looks like."""
    runs, models = m.get("runs"), m.get("models")
    if isinstance(runs, list) and isinstance(models, list) and all(isinstance(r, dict) for r in runs):
        return
    looks = (
        "a run record (run.json)"
        if "run_id" in m or "history" in m
        else "a capture summary (summary.json)"
        if "capture_dir" in m or "end_reason" in m
        else "a transfer record (transfer.json)"
        if "is_source" in json.dumps(models)[:100000]
        else "another kind of file"
    )
    raise ConfigError(
        f"--matrix {path} is not a matrix.json from `patchlab eval matrix` (it looks like {looks}; "
        "it has no 'runs' and 'models' lists)"
    )


def _defense_text(d: Any) -> str:
    """A recorded input defence (a ``Defense.to_dict()``, an older capture's name + repr, or a spec)."""
    if isinstance(d, dict):
        if d.get("name") in (None, "none"):
            return "none"
        return str(d.get("spec") or d.get("repr") or d.get("name")) + (
            " (attacked through it with BPDA)" if d.get("bpda") else ""
        )
    return str(d or "none")


def _judged_defense(rec: TransferResult | MatrixResult | None) -> str:
    """`` behind the defence X`` for a transfer/matrix record judged with ``--defense``, else ``""``."""
    d = None if rec is None else rec.defense
    return f"; judged behind the defence {d}" if d else ""


def _samples(capture_dir: Path, frames_by_index: dict[int, dict[str, Any]], names: Sequence[str]) -> Gallery | None:
    files = sorted((capture_dir / "samples").glob("frame_*.jpg"))
    if not files:
        return None
    pick = [files[int(round(i))] for i in np.linspace(0, len(files) - 1, min(SAMPLES_SHOWN, len(files)))]
    out = []
    for f in dict.fromkeys(pick):
        idx = int(f.stem.split("_")[1])
        rec = frames_by_index.get(idx, {})
        tops = (
            ", ".join(
                f"{_short(n, names)}: {rec['models'][n]['top5'][0][0]}" for n in names if n in (rec.get("models") or {})
            )
            or "not scored"
        )
        pose = rec.get("pose")
        where = f"patch {pose['size_px']:.0f} px, {rec.get('pose_source', 'detected')}" if pose else "patch lost"
        out.append((f.read_bytes(), f"frame {idx} ({where}) - {tops}"))
    return Gallery(out, caption=f"annotated frames from {capture_dir / 'samples'}")


def _capture_section(k: int, capture_dir: Path, control: Path | None, n_bins: int) -> tuple[Section, Any]:
    from patchlab.captures import load_capture

    from .physical import BIN_QUANTITIES, DEFAULT_BINS, evaluate_capture

    loaded = load_capture(capture_dir)  # each capture folder read once: the summary, the frames
    ctrl = None if control is None else load_capture(control)
    res = evaluate_capture(
        capture_dir,
        control=control,
        bins=DEFAULT_BINS + ("roll",),
        n_bins=n_bins,
        loaded=loaded,
        control_loaded=ctrl,
    )
    summ = _summary_of(loaded[0], capture_dir)
    partial = _partial_notes(
        ([] if summ is None else [(summ, capture_dir, "capture")])
        + ([] if control is None or ctrl is None else [(_summary_of(ctrl[0], control), control, "control capture")])
    )
    names = res.model_names
    cfg = {} if summ is None else summ.config
    src = {} if summ is None else summ.source
    blocks: list[Block] = [
        KeyValues(
            [
                ("source", f"{src.get('description', '?')} ({src.get('kind', '?')})"),
                (
                    "frames",
                    f"{res.frames} scored, {res.counted} counted for tSuc"
                    + (" (frames of the target class left out)" if res.truth else "")
                    + f", {res.frames_with_pose} with the patch's pose",
                ),
                ("ended", "?" if summ is None else f"{summ.end_reason} ({summ.status})"),
                ("loop rate", f"{0.0 if summ is None else summ.fps:.1f} frames/s"),
                ("crop / defence", f"{cfg.get('crop', '?')} / {_defense_text(cfg.get('defense'))}"),
                (
                    "layout / camera",
                    f"{(summ and summ.layout) or 'none (nominal marker frame)'} / "
                    f"{(summ and summ.camera) or 'none (no distance or angle)'}",
                ),
            ]
        )
    ]
    rows = []
    for m in res.models:
        rows.append(
            [
                m.model,
                _pct(m.tsuc),
                str(m.tsuc["n"]),
                f"{m.mean_p_target:.3f}",
                _pct(m.accuracy) if res.truth else "no ground truth",
                _pct(m.untargeted_error) if res.truth else "no ground truth",
            ]
        )
    blocks.append(
        TableBlock(
            ["model", "tSuc [95% CI]", "n", "mean p(target)", "clean accuracy", "untargeted error"],
            rows,
            caption=f"physical/hybrid tSuc = top-1 is '{res.target_class}'; Wilson 95 % intervals",
        )
    )
    blocks[:0] = [Text(f"Partial result: {n}", "warning") for n in partial]
    plot = P.rate_bars(
        [(m.model, m.tsuc["rate"], tuple(m.tsuc["ci95"])) for m in res.models if m.tsuc["n"]],
        title=f"capture {capture_dir.name}: tSuc per model",
        name=f"capture{k}-tsuc",
    )
    if plot is not None:
        blocks.append(Figure(plot, f"{capture_dir / 'frames.jsonl'}; command: {_cmd(summ and summ.command)}"))
    if res.control is not None:
        crow = [
            [
                r.model,
                _pct(r.patched),
                _pct(r.control),
                f"{r.difference:+.1%} [{r.ci95[0]:+.0%}, {r.ci95[1]:+.0%}]",
                _pct(r.patched_accuracy) if r.patched_accuracy else "-",
                _pct(r.control_accuracy) if r.control_accuracy else "-",
            ]
            for r in res.control
        ]
        blocks.append(
            TableBlock(
                [
                    "model",
                    "patched tSuc",
                    "control rate",
                    "difference [95% CI]",
                    "patched accuracy",
                    "control accuracy",
                ],
                crow,
                caption=f"control: {control} (same scene, no patch); difference interval: Newcombe",
            )
        )
    else:
        blocks.append(
            Text(
                "Clean-vs-patched comparison: not measured (no control capture; film the same scene "
                "without the patch, e.g. `patchlab simulate capture ... --control blank`, and pass "
                "--control).",
                "missing",
            )
        )
    for q in DEFAULT_BINS + ("roll",):
        tab = res.bins[q]
        label, unit, _, _ = BIN_QUANTITIES[q]
        if not tab.measured:
            blocks.append(Text(f"tSuc by {label}: {tab.note}.", "missing"))
            continue
        p = P.bin_curve(tab, control=(res.control_bins or {}).get(q))
        if p is None:
            blocks.append(Text(f"tSuc by {label}: not measured (no frames).", "missing"))
            continue
        p = P.Plot(f"capture{k}-{p.name}", p.title, p.png, p.n_points, p.n_series, p.caption)
        blocks.append(Figure(p, f"{capture_dir / 'frames.jsonl'}, {tab.label} per frame"))
        trows = [
            [r.label, str(r.n), *(_pct(r.rates[n]) for n in names)]
            for r in tab.rows + ([tab.unbinned] if tab.unbinned else [])
        ]
        blocks.append(TableBlock([f"{label} ({unit})", "n", *[_short(n, names) for n in names]], trows))
    blocks += _pose_blocks(res, names)
    g = _samples(capture_dir, {f["index"]: f for f in loaded[1]}, names)
    blocks.append(g if g is not None else Text("Sample frames: none kept (samples/ is empty).", "missing"))
    return Section(f"capture-{k}", f"Physical: {capture_dir.name}", blocks), Filmed(capture_dir, res, summ)


@dataclass(frozen=True)
class Filmed:
    """One capture as the report read it: the folder, what ``eval physical`` measures, its summary."""

    folder: Path
    result: Any  # patchlab.eval.physical.PhysicalResult
    summary: CaptureSummary | None


def _pose_blocks(res: Any, names: Sequence[str]) -> list[Block]:
    """Issue 15: where the patch's pose came from (detected / tracked / lost), tSuc on
    frames with a pose, and the detection rate by distance bin."""
    ps = res.pose_sources or {}
    n = max(res.frames, 1)
    out: list[Block] = [
        KeyValues(
            [
                (
                    "patch pose",
                    f"detected on {ps.get('detected', 0)} frames ({ps.get('detected', 0) / n:.0%}), tracked on "
                    f"{ps.get('tracked', 0)} ({ps.get('tracked', 0) / n:.0%}), lost on {ps.get('lost', 0)} "
                    f"({ps.get('lost', 0) / n:.0%})",
                ),
                (
                    "lost frames",
                    f"--on-lost {res.on_lost} (crop roi)"
                    if res.on_lost
                    else "scored on the same crop as all others (crop is not roi)",
                ),
            ]
        )
    ]
    rows = [[m.model, _pct(m.tsuc), _pct(m.tsuc_with_pose), _pct(m.tsuc_detected)] for m in res.models]
    out.append(
        TableBlock(
            ["model", "tSuc, all counted frames", "tSuc, frames with a pose", "tSuc, detected frames"],
            rows,
            caption="frames not scored (--on-lost skip) count as misses in the first column",
        )
    )
    for q, pr in (res.pose_rates or {}).items():
        if not pr.rows:
            out.append(Text(f"Detection rate by {q}: {pr.note or 'not measured'}.", "missing"))
            continue
        trows = [
            [r.label, str(r.n), f"{r.detection_rate:.0%}", f"{r.tracked / r.n:.0%}", f"{r.lost / r.n:.0%}"]
            for r in pr.rows
        ]
        out.append(
            TableBlock(
                [f"{q} ({pr.unit})", "frames", "detected", "tracked", "lost"],
                trows,
                caption=f"detection rate by {q}; {pr.note}; {pr.unplaced} lost frames could not be placed",
            )
        )
    return out


def _provenance(
    run_dir: Path,
    run: RunRecord,
    transfer: TransferResult | None,
    matrix: Path | None,
    captures: list[Filmed],
    argv: Sequence[str] | None,
) -> Section:
    blocks: list[Block] = [
        Code(_cmd(run.command), f"optimiser run ({run_dir / RUN_JSON})"),
        Code(json.dumps(run.config, sort_keys=True), "optimiser config"),
        Code(json.dumps(run.versions, sort_keys=True), "optimiser versions"),
    ]
    if transfer is not None:
        blocks.append(
            Code(
                _cmd(transfer.command)
                if transfer.command
                else f"patchlab eval transfer {run_dir} (file {run_dir / TRANSFER_JSON}; its command is not "
                "recorded in it)",
                "digital transfer",
            )
        )
    if matrix is not None:
        blocks.append(Code(str(matrix), "transfer matrix file"))
    for c in captures:
        cdir, s = c.folder, c.summary
        blocks.append(Code(_cmd(s and s.command), f"capture {cdir}"))
        blocks.append(Code(json.dumps({} if s is None else s.config, sort_keys=True), f"capture config {cdir.name}"))
        blocks.append(
            Code(json.dumps({} if s is None else s.versions, sort_keys=True), f"capture versions {cdir.name}")
        )
        sim = None if s is None else _simulation_of(s)
        if sim is not None:
            scenes = [
                f"{sc.get('object_class')}: {sc.get('path')} frames {sc.get('frames')}" for sc in sim.get("scenes", [])
            ]
            blocks.append(
                Code(
                    json.dumps(
                        {k: sim.get(k) for k in ("config", "frames", "markers_in_frame", "patch", "distance_range_mm")},
                        default=str,
                    )
                    + "\nscenes:\n"
                    + "\n".join(scenes),
                    f"simulated video {sim.get('video')}",
                )
            )
    blocks.append(Code(_cmd(list(argv) if argv else None), "this report"))
    blocks.append(Code(json.dumps(versions(REPORT_VERSION_MODULES), sort_keys=True), "report versions"))
    return Section("provenance", "Commands, configs and versions", blocks)


def _simulation_of(summary: CaptureSummary) -> dict[str, Any] | None:
    desc = summary.source.get("description")
    if not desc:
        return None
    from patchlab.captures import sim_path_for

    p = sim_path_for(desc)
    try:
        return _read_json(p) if p.is_file() else None
    except ConfigError:
        return None


def _headline(run: RunRecord, transfer: TransferResult | None, captures: list[Filmed]) -> list[str]:
    out = [
        f"Adversarial patch for target class '{run.target_class or '?'}' "
        f"(run {run.run_id or '?'}, loss {run.loss or '?'}, status {run.status or '?'}"
        + (
            ""
            if _defense_text(run.defense) == "none"
            else f", optimised through the defence {_defense_text(run.defense)}"
        )
        + ")."
    ]
    if transfer is not None and transfer.models:
        src, oth = transfer.sources, transfer.others
        parts = []
        if src:
            parts.append("on its source model(s) " + ", ".join(f"{m.name} {m.tsuc:.0%}" for m in src))
        if oth:
            best = max(oth, key=lambda m: m.tsuc)
            parts.append(
                f"transfers to {len(oth)} other model(s) at {np.mean([m.tsuc for m in oth]):.0%} on "
                f"average (best {best.name} {best.tsuc:.0%})"
            )
        out.append("Digitally it succeeds " + "; ".join(parts) + ".")
    else:
        out.append("Digital transfer: not measured.")
    for c in captures:
        cdir, res = c.folder, c.result
        best = max(res.models, key=lambda m: m.tsuc["rate"] if m.tsuc["n"] else -1)
        line = (
            f"Filmed ({cdir.name}, {res.frames} frames): tSuc "
            + ", ".join(f"{m.model} {_pct(m.tsuc)}" for m in res.models)
            + "."
        )
        if res.control is not None:
            c = next(r for r in res.control if r.model == best.model)
            line += (
                f" Against the control, {best.model} moves from {_pct(c.control, False)} to "
                f"{_pct(c.patched, False)} ({c.difference:+.0%}, 95 % CI {c.ci95[0]:+.0%} to {c.ci95[1]:+.0%})."
            )
        out.append(line)
    if not captures:
        out.append("Physical tSuc: not measured (no capture given).")
    return out


def build_report(
    run_dir: str | Path,
    captures: Sequence[str | Path] = (),
    *,
    matrix: str | Path | None = None,
    controls: Sequence[str | Path] = (),
    n_bins: int = 5,
    argv: Sequence[str] | None = None,
    compare: Sequence[str | Path] = (),
) -> Report:
    """Gather a run, its transfer and matrix files and its captures into a :class:`Report`.

    Args:
        run_dir: optimiser run folder (``run.json``, ``patch.png``, optional ``transfer.json``).
        captures: capture folders of this patch.
        matrix: a ``matrix.json`` from ``patchlab eval matrix``.
        controls: control captures, paired with ``captures`` in order (fewer is fine).
        n_bins: bins per condition in the physical sections.
        argv: the command that made the report (recorded).
        compare: other run folders whose patches are shown side by side with this one.
    """
    run_dir = Path(run_dir)
    from patchlab.attacks.record import is_attack_run

    if is_attack_run(run_dir) and not (run_dir / "run.json").is_file():
        return build_attack_report(run_dir, argv=argv)
    run = load_run(run_dir, warn=False, strict=False)  # a damaged record still renders, "not recorded"
    run_partial = _partial_notes([(run, run_dir, "run")])
    if len(controls) > len(captures):
        raise ConfigError(
            f"{len(controls)} --control folders for {len(captures)} captures: give one capture per control"
        )
    transfer = load_transfer(run_dir)
    matrix_path = None if matrix is None else Path(matrix)
    matrix_res = None if matrix_path is None else load_matrix(matrix_path)
    others = [(Path(rd), load_run(rd, strict=False), load_transfer(Path(rd))) for rd in compare]  # warns if unfinished
    sections = []
    patch_sec, _ = _patch_section(run_dir, run)
    patch_sec.blocks[:0] = [Text(f"Partial result: {n}", "warning") for n in run_partial]
    sections.append(patch_sec)
    if compare:
        sections.append(_compare_section([(run_dir, run, transfer), *others]))
    sections.append(_loss_section(run_dir, run))
    sections.append(_transfer_section(run_dir, transfer))
    sections.append(_matrix_section(matrix_path, matrix_res))
    done: list[Filmed] = []
    for k, cdir in enumerate(captures):
        ctrl = Path(controls[k]) if k < len(controls) else None
        sec, filmed = _capture_section(k, Path(cdir), ctrl, n_bins)
        sections.append(sec)
        done.append(filmed)
    if not captures:
        sections.append(
            Section(
                "capture-none",
                "Physical",
                [
                    Text(
                        "Physical tSuc: not measured (film the printed patch with `patchlab capture run` -- or simulate it with "
                        "`patchlab simulate capture` -- and pass the capture folders).",
                        "missing",
                    )
                ],
            )
        )
    sections.append(_provenance(run_dir, run, transfer, matrix_path, done, argv))
    headline = _headline(run, transfer, done)
    headline += [
        f"Partial result: {t.text.split(': ', 1)[1]}"
        for s in sections
        for t in s.blocks
        if isinstance(t, Text) and t.kind == "warning"
    ]
    summary = Section("summary", "Summary", [Text(s) for s in headline])
    overview = _overview_plot(transfer, done)
    if overview is not None:
        summary.blocks.append(Figure(overview, "digital: transfer.json; physical: each capture's frames.jsonl"))
    return Report(
        title=f"patchlab report: run {run.run_id or run_dir.name}",
        subtitle=f"target '{run.target_class or '?'}' - {run_dir.resolve()}",
        headline=headline,
        sections=[summary] + sections,
        generated=now_iso(),
    )


def _partial_notes(items: Sequence[tuple[Any, Path, str]]) -> list[str]:
    """A warning line (and the note for the report) for each run or capture that did not finish."""
    notes = []
    for record, folder, what in items:
        if record is None:
            continue
        note = warn_if_unfinished(record, folder, what)
        if note:
            notes.append(note)
    return notes


# -- attack runs (``patchlab attack``): a self-contained section set ------------------------


def build_attack_report(run_dir: str | Path, *, argv: Sequence[str] | None = None) -> Report:
    """A report of an attack run folder (``attack.json``, ``grid.png``): success, Lp norms,
    per-image scalar extras, the transfer table, the picture grid and the provenance."""
    from patchlab.attacks.record import GRID_PNG, TransferRow, read_attack_run

    run_dir = Path(run_dir)
    doc = read_attack_run(run_dir)
    s = doc.get("summary") or {}
    cfg = doc.get("config") or {}
    name = str(doc.get("attack", "?"))
    sel = (doc.get("data") or {}).get("selection") or {}
    ci = s.get("success_ci95")
    src = ", ".join(str(m.get("name", m.get("ref", "?"))) for m in doc.get("sources") or []) or "not recorded"
    mean_std = lambda k: f"{s[k]['mean']:.4g} ± {s[k]['std']:.4g}" if isinstance(s.get(k), dict) else "-"  # noqa: E731
    headline = [
        f"{name} on {src}, target {doc.get('target', 'none')}: success {_rate_ci(s.get('success_rate'), ci)} "
        f"over {s.get('n', '?')} images the source classified correctly "
        f"({sel.get('correct', '?')} correct of {sel.get('scanned', '?')} scanned)."
    ]
    overview: list[Block] = [
        KeyValues(
            [
                ("attack", name),
                ("source models", src),
                ("defence", _defense_text(doc.get("defense"))),
                ("target", str(doc.get("target", "none"))),
                ("hyperparameters", ", ".join(f"{k}={v}" for k, v in cfg.items())),
                ("success", _rate_ci(s.get("success_rate"), ci)),
                (
                    "success after 8-bit PNG",
                    "-" if doc.get("success_png_rate") is None else f"{float(doc['success_png_rate']):.1%}",
                ),
                ("L0 (fraction of pixels)", mean_std("l0")),
                ("L2", mean_std("l2")),
                ("Linf", mean_std("linf")),
                *[(f"mean {k}", f"{float(v):.4g}") for k, v in (s.get("extras") or {}).items()],
            ]
        )
    ]
    grid = run_dir / (doc.get("grid") or GRID_PNG)
    if grid.is_file():
        overview.append(
            Gallery(
                [(grid.read_bytes(), "originals / amplified perturbations / adversarials")], caption=f"source: {grid}"
            )
        )
    else:
        overview.append(Text(f"Picture grid: not found ({grid}).", "missing"))
    rows = [
        [
            t.model,
            f"{t.clean_accuracy:.1%}",
            _rate_ci(t.untargeted, t.untargeted_ci95) + f" (n={t.untargeted_n})",
            "-" if t.targeted is None else f"{t.targeted:.1%} (n={t.targeted_n})",
            f"{t.error:.1%}",
        ]
        for t in (TransferRow.from_dict(d) for d in doc.get("transfer") or [])
    ]
    transfer: list[Block] = (
        [
            TableBlock(
                ["target model", "clean accuracy", "untargeted transfer [95% CI]", "targeted transfer", "error on all"],
                rows,
                caption="of the images that fooled the source (Ozbulak et al. 2020); "
                f"source: {run_dir / 'attack.json'}",
            )
        ]
        if rows
        else [Text("Transfer: not measured (rerun `patchlab attack` with --transfer MODEL).", "missing")]
    )
    prov = Section(
        "provenance",
        "Commands, configs and versions",
        [
            Code(_cmd(doc.get("command")), f"attack run ({run_dir / 'attack.json'})"),
            Code(json.dumps(cfg, sort_keys=True, default=str), "attack config"),
            Code(json.dumps(doc.get("versions") or {}, sort_keys=True), "attack versions"),
            Code(_cmd(list(argv) if argv else None), "this report"),
            Code(json.dumps(versions(REPORT_VERSION_MODULES), sort_keys=True), "report versions"),
        ],
    )
    sections = [
        Section("summary", "Summary", [Text(h) for h in headline]),
        Section("attack", f"Attack: {name}", overview),
        Section("attack-transfer", "Transfer", transfer),
        prov,
    ]
    return Report(
        title=f"patchlab report: attack {name}",
        subtitle=str(run_dir.resolve()),
        headline=headline,
        sections=sections,
        generated=now_iso(),
    )


def _overview_plot(transfer: TransferResult | None, captures: list[Filmed]) -> P.Plot | None:
    """Grouped bars: tSuc per model, digital and per capture."""
    groups: dict[str, dict[str, tuple[float, tuple[float, float]]]] = {}
    if transfer is not None:
        for mt in transfer.models:
            groups.setdefault("digital", {})[mt.name] = (mt.tsuc, mt.ci95)
    for c in captures:
        cdir, res = c.folder, c.result
        for m in res.models:
            if m.tsuc["n"]:
                groups.setdefault(f"filmed: {cdir.name}", {})[m.model] = (m.tsuc["rate"], tuple(m.tsuc["ci95"]))
    models = list(dict.fromkeys(n for g in groups.values() for n in g))
    n = sum(len(g) for g in groups.values())
    if n == 0:
        return None
    plt = P._mpl()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(models) + 2.5), 3.2))
    width = 0.8 / max(1, len(groups))
    for k, (gname, g) in enumerate(groups.items()):
        xs, ys, lo, hi = [], [], [], []
        for j, mname in enumerate(models):
            if mname in g:
                v, (a, b) = g[mname]
                xs.append(j + (k - (len(groups) - 1) / 2) * width)
                ys.append(v)
                lo.append(max(0.0, v - a))
                hi.append(max(0.0, b - v))
        ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=3, label=gname, color=P.PALETTE[k % len(P.PALETTE)])
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(P._short(models), rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("tSuc")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("tSuc per model: digital vs filmed")
    return P.Plot(
        "overview", "tSuc per model: digital vs filmed", P._png(fig), n, len(groups), "whiskers: Wilson 95 % intervals"
    )


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1050px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:1.8em}
.sub{color:#666;margin-top:2px}.headline{background:#f4f7fb;border-left:4px solid #1f77b4;padding:10px 16px}
.headline p{margin:6px 0}table{border-collapse:collapse;margin:10px 0;font-size:0.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}th{background:#f0f0f0}
.kv td:first-child{font-weight:600;background:#fafafa}.missing{color:#a15c00;background:#fff6e8;padding:6px 10px;
border-radius:4px}figure{margin:12px 0}figcaption{font-size:0.85em;color:#555}img.fig{max-width:100%}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{width:320px;margin:0}.gallery img{width:100%}
pre{background:#f6f6f6;padding:8px;font-size:0.78em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
nav a{margin-right:12px;font-size:0.9em}.caption{font-size:0.85em;color:#555}
"""


def _img_uri(data: bytes) -> str:
    kind = "jpeg" if data[:2] == b"\xff\xd8" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document."""
    e = html.escape
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(report.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        f"<p class='sub'>{e(report.subtitle)} - generated {e(report.generated)}</p>",
        "<nav>" + "".join(f"<a href='#{e(s.key)}'>{e(s.title)}</a>" for s in report.sections) + "</nav>",
    ]
    for s in report.sections:
        out.append(f"<section id='{e(s.key)}'><h2>{e(s.title)}</h2>")
        if s.key == "summary":
            out.append("<div class='headline'>")
        for b in s.blocks:
            if isinstance(b, Text):
                cls = " class='missing'" if b.kind in ("missing", "warning") else ""
                out.append(f"<p{cls}>{e(b.text)}</p>")
            elif isinstance(b, KeyValues):
                out.append(
                    "<table class='kv'>"
                    + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in b.items)
                    + "</table>"
                )
            elif isinstance(b, TableBlock):
                out.append(
                    "<table><tr>"
                    + "".join(f"<th>{e(h)}</th>" for h in b.header)
                    + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
                    + "</table>"
                )
                if b.caption:
                    out.append(f"<p class='caption'>{e(b.caption)}</p>")
            elif isinstance(b, Figure):
                out.append(
                    f"<figure data-points='{b.plot.n_points}' data-series='{b.plot.n_series}'>"
                    f"<img class='fig' alt='{e(b.plot.title)}' src='{_img_uri(b.plot.png)}'>"
                    f"<figcaption>{e(b.plot.caption)}. Data: {e(b.source)}</figcaption></figure>"
                )
            elif isinstance(b, Gallery):
                out.append(
                    "<div class='gallery'>"
                    + "".join(
                        f"<figure><img alt='{e(c)}' src='{_img_uri(d)}'><figcaption>{e(c)}</figcaption></figure>"
                        for d, c in b.images
                    )
                    + "</div>"
                )
                if b.caption:
                    out.append(f"<p class='caption'>{e(b.caption)}</p>")
            elif isinstance(b, Code):
                out.append(f"<p class='caption'><b>{e(b.title)}</b></p><pre>{e(b.text)}</pre>")
        if s.key == "summary":
            out.append("</div>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def render_pdf(report: Report) -> bytes:
    """The report as a PDF (reportlab platypus, A4)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        Image,
        KeepTogether,
        Paragraph,
        Preformatted,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    ss = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=ss["BodyText"], fontSize=9, leading=12)
    small = ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5, textColor=colors.HexColor("#555555"))
    missing = ParagraphStyle(
        "missing",
        parent=body,
        textColor=colors.HexColor("#a15c00"),
        backColor=colors.HexColor("#fff6e8"),
        borderPadding=3,
    )
    cell = ParagraphStyle("cell", parent=body, fontSize=7.5, leading=9)
    h2 = ParagraphStyle("h2", parent=ss["Heading2"], keepWithNext=1)
    code = ParagraphStyle("code", parent=ss["Code"], fontSize=6.5, leading=8)
    e = html.escape
    width = A4[0] - 30 * mm
    story: list[Any] = [
        Paragraph(e(report.title), ss["Title"]),
        Paragraph(e(f"{report.subtitle} - generated {report.generated}"), small),
        Spacer(1, 4 * mm),
    ]

    def image(data: bytes, max_w: float, max_h: float = 120 * mm, natural: bool = False) -> Image:
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(data)) as im:
            w, h = im.size
        s = min(max_w / w, max_h / h)
        if natural:  # never larger than the figure was drawn (points at the plots' dpi)
            s = min(s, 72.0 / P.DPI)
        return Image(io.BytesIO(data), width=w * s, height=h * s)

    def table(header: list[str] | None, rows: list[list[str]], col0: float | None = None) -> Table:
        data = ([[Paragraph(f"<b>{e(h)}</b>", cell) for h in header]] if header else []) + [
            [Paragraph(e(c), cell) for c in r] for r in rows
        ]
        ncol = len(data[0]) if data else 1
        t = Table(
            data,
            repeatRows=1 if header else 0,
            hAlign="LEFT",
            colWidths=None if col0 is None else [col0] + [(width - col0) / max(1, ncol - 1)] * (ncol - 1),
        )
        band = (
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f0f0"))
            if header
            else ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#fafafa"))
        )
        t.setStyle(
            TableStyle(
                [("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#cccccc")), band, ("VALIGN", (0, 0), (-1, -1), "TOP")]
            )
        )
        return t

    for s in report.sections:
        head = len(story)
        story.append(Paragraph(e(s.title), h2))
        for k, b in enumerate(s.blocks):
            if k == 1:  # the title stays on the page of the section's first block
                story[head:] = [KeepTogether(story[head:])]
            if isinstance(b, Text):
                story.append(Paragraph(e(b.text), missing if b.kind in ("missing", "warning") else body))
                story.append(Spacer(1, 2 * mm))
            elif isinstance(b, KeyValues):
                story.append(table(None, [[k, v] for k, v in b.items], col0=35 * mm) if b.items else Spacer(1, 1))
                story.append(Spacer(1, 2 * mm))
            elif isinstance(b, TableBlock):
                story.append(table(b.header, b.rows))
                if b.caption:
                    story.append(Paragraph(e(b.caption), small))
                story.append(Spacer(1, 3 * mm))
            elif isinstance(b, Figure):
                # one table cell: the figure and its caption never part
                fig = Table(
                    [
                        [
                            [
                                image(b.plot.png, width * 0.85, 95 * mm, natural=True),
                                Paragraph(e(f"{b.plot.caption}. Data: {b.source}"), small),
                            ]
                        ]
                    ],
                    colWidths=[width],
                    hAlign="LEFT",
                )
                fig.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 0), ("RIGHTPADDING", (0, 0), (-1, -1), 0)]))
                story.append(fig)
                story.append(Spacer(1, 3 * mm))
            elif isinstance(b, Gallery):
                cells = [[image(d, width / 3 - 4 * mm, 55 * mm), Paragraph(e(c), small)] for d, c in b.images]
                rows = []
                for i in range(0, len(cells), 3):
                    chunk = cells[i : i + 3]
                    rows.append([c[0] for c in chunk] + [""] * (3 - len(chunk)))
                    rows.append([c[1] for c in chunk] + [""] * (3 - len(chunk)))
                g = Table(rows, colWidths=[width / 3] * 3, hAlign="LEFT")
                g.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
                story.append(g)
                if b.caption:
                    story.append(Paragraph(e(b.caption), small))
                story.append(Spacer(1, 3 * mm))
            elif isinstance(b, Code):
                story.append(Paragraph(f"<b>{e(b.title)}</b>", small))
                story.append(Preformatted(b.text, code, maxLineLength=130))
                story.append(Spacer(1, 2 * mm))
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=14 * mm,
        bottomMargin=14 * mm,
        title=report.title,
        author="patchlab",
        invariant=1,
    )
    doc.build(story)
    return buf.getvalue()


def check_report_path(out: str | Path) -> str:
    """``"html"`` or ``"pdf"`` by the suffix of ``out``, or a clear error."""
    suffix = Path(out).suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".pdf":
        return "pdf"
    raise ConfigError(f"--out must end in .html or .pdf, got {out}")


def write_report(report: Report, out: str | Path) -> Path:
    """Write ``out`` as HTML (``.html``/``.htm``) or PDF (``.pdf``), atomically."""
    if check_report_path(out) == "html":
        return atomic_write_text(out, render_html(report))
    return atomic_write_bytes(out, render_pdf(report))
