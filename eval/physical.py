"""Judge a capture: physical / hybrid tSuc per model, by condition, against a control.

Reads a capture folder written by ``patchlab capture run`` (``frames.jsonl`` +
``summary.json``, see :mod:`patchlab.captures`) and reports:

* tSuc per model -- the fraction of frames whose top-1 class is the target --
  with its Wilson 95 % interval. When the log carries ground truth (simulated
  videos), frames whose object *is* the target class are left out, as digital tSuc
  leaves out target-class images, and clean accuracy / untargeted error are given.
* Honest accounting of the patch's pose: every frame is ``detected`` (markers
  found in it), ``tracked`` (followed from earlier frames) or ``lost``; every table
  row says how many of each it holds, tSuc is given over all counted frames (a
  frame the ``--on-lost skip`` policy left unscored counts as a miss) and over the
  frames with a pose, and :func:`pose_rate_by` gives the detection rate by
  distance (or size) bin, lost frames placed by the pose before and after them.
* Binned tables: tSuc per model in equal-count bins of a condition --
  ``distance`` (camera to patch, mm; needs ``--camera`` at capture time),
  ``angle`` (off-axis viewing angle, degrees; needs ``--camera``), ``size``
  (apparent patch size, px), ``roll`` (in-plane angle, degrees) and ``lighting``
  (mean frame brightness, 0-255). Frames where the patch was not found by its
  markers have no pose; they get a row of their own, never a made-up bin.
* With a control capture (the same scene without the adversarial patch): the
  control's rate of the target class per model, and the difference patched -
  control with Newcombe's hybrid score interval (R. G. Newcombe, "Interval
  estimation for the difference between independent proportions", Statistics in
  Medicine 17, 1998, method 10).
* The input defence the capture was scored behind (``capture run --defense``), in
  the result and its titles. The frames themselves are not stored, so a defence is
  chosen at capture time: ``defense=`` here checks that the capture (and its
  control, which must always match the patched capture) was scored with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from patchlab.captures import DETECTED, LOST, POSE_SOURCES, TRACKED, is_scored, load_capture, pose_source
from patchlab.errors import ConfigError
from patchlab.stats import Rate, wilson_interval


#: ``(summary.json dict, frames)`` of a capture folder, as :func:`patchlab.captures.load_capture` returns them
Loaded = tuple[dict[str, Any], list[dict[str, Any]]]


#: The conditions a capture can be binned by: quantity -> (label, unit, how to read it, what it needs).


def _pose_value(key: str) -> Callable[[dict[str, Any]], float | None]:
    def get(frame: dict[str, Any]) -> float | None:
        p = frame.get("pose")
        v = None if not p else p.get(key)
        return None if v is None else float(v)

    return get


def _abs_roll(frame: dict[str, Any]) -> float | None:
    v = _pose_value("angle_deg")(frame)
    return None if v is None else abs(v)


BIN_QUANTITIES: dict[str, tuple[str, str, Callable[[dict[str, Any]], float | None], str]] = {
    "distance": (
        "distance",
        "mm",
        _pose_value("distance_mm"),
        "needs the layout and a camera file at capture time (--layout, --camera)",
    ),
    "angle": ("viewing angle", "deg", _pose_value("view_angle_deg"), "needs a camera file at capture time (--camera)"),
    "size": ("apparent size", "px", _pose_value("size_px"), "needs the patch's markers in view"),
    "roll": ("in-plane angle |roll|", "deg", _abs_roll, "needs the patch's markers in view"),
    "lighting": ("brightness", "0-255", lambda f: None if f.get("brightness") is None else float(f["brightness"]), ""),
}
DEFAULT_BINS = ("distance", "angle", "size", "lighting")
DEFAULT_N_BINS = 5
NO_POSE = "no pose (patch lost)"


def newcombe_interval(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """95 % interval of ``p1 - p2`` for independent proportions (Newcombe 1998, method 10)."""
    if n1 == 0 or n2 == 0:
        return -1.0, 1.0
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1)
    l2, u2 = wilson_interval(s2, n2)
    d = p1 - p2
    return (
        max(-1.0, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)),
        min(1.0, d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)),
    )


def _rate_dict(s: int, n: int) -> dict[str, Any]:
    return Rate(s, n).to_dict()


def _hit(f: dict[str, Any], name: str) -> bool:
    """Top-1 was the target; a frame the models did not score is a miss."""
    m = (f.get("models") or {}).get(name)
    return bool(m and m["hit"])


def _sources(frames: Sequence[dict[str, Any]]) -> dict[str, int]:
    out = {k: 0 for k in POSE_SOURCES}
    for f in frames:
        out[pose_source(f)] += 1
    return out


@dataclass(frozen=True)
class ModelRate:
    """One model's tSuc over the counted frames, plus accuracy when truth is known.

    ``tsuc`` counts every counted frame (unscored ones as misses); ``tsuc_scored``
    only the frames the models classified; ``tsuc_with_pose`` the frames with a pose
    (detected or tracked); ``tsuc_detected`` the frames whose markers were found.
    """

    model: str
    tsuc: dict[str, Any]  # Rate.to_dict(): successes, n, rate, ci95
    mean_p_target: float
    accuracy: dict[str, Any] | None = None  # top-1 == object class, frames with a known class
    untargeted_error: dict[str, Any] | None = None  # top-1 != object class, frames not of the target class
    tsuc_scored: dict[str, Any] | None = None
    tsuc_with_pose: dict[str, Any] | None = None
    tsuc_detected: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRate":
        return cls(
            **{
                k: d.get(k)
                for k in (
                    "model",
                    "tsuc",
                    "mean_p_target",
                    "accuracy",
                    "untargeted_error",
                    "tsuc_scored",
                    "tsuc_with_pose",
                    "tsuc_detected",
                )
            }
        )


@dataclass(frozen=True)
class BinRow:
    """Frames whose condition falls in ``[lo, hi)`` (the last bin includes ``hi``)."""

    label: str
    lo: float | None
    hi: float | None
    centre: float | None  # median of the values in the bin
    n: int
    rates: dict[str, dict[str, Any]]  # model -> Rate.to_dict()
    sources: dict[str, int] = field(default_factory=dict)  # detected / tracked / lost frames in the bin

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BinRow":
        return cls(
            label=d["label"],
            lo=d.get("lo"),
            hi=d.get("hi"),
            centre=d.get("centre"),
            n=int(d["n"]),
            rates=dict(d["rates"]),
            sources=dict(d.get("sources") or {}),
        )


@dataclass(frozen=True)
class BinTable:
    """tSuc per model in bins of one condition; ``measured`` False says why not."""

    quantity: str
    label: str
    unit: str
    measured: bool
    note: str
    rows: list[BinRow] = field(default_factory=list)
    unbinned: BinRow | None = None  # frames without the quantity (no pose)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BinTable":
        return cls(
            quantity=d["quantity"],
            label=d["label"],
            unit=d["unit"],
            measured=bool(d["measured"]),
            note=d.get("note", ""),
            rows=[BinRow.from_dict(r) for r in d.get("rows", [])],
            unbinned=None if d.get("unbinned") is None else BinRow.from_dict(d["unbinned"]),
        )


@dataclass(frozen=True)
class ControlRow:
    """Patched vs control for one model: both target rates and their difference."""

    model: str
    patched: dict[str, Any]
    control: dict[str, Any]
    difference: float
    ci95: tuple[float, float]
    patched_accuracy: dict[str, Any] | None = None
    control_accuracy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ControlRow":
        return cls(
            model=d["model"],
            patched=d["patched"],
            control=d["control"],
            difference=float(d["difference"]),
            ci95=(float(d["ci95"][0]), float(d["ci95"][1])),
            patched_accuracy=d.get("patched_accuracy"),
            control_accuracy=d.get("control_accuracy"),
        )


@dataclass(frozen=True)
class PoseRateRow:
    """Frames in one bin of distance (or size): how many had their patch detected, tracked, lost."""

    label: str
    lo: float | None
    hi: float | None
    n: int
    detected: int
    tracked: int
    lost: int

    @property
    def detection_rate(self) -> float:
        return self.detected / self.n if self.n else float("nan")

    @property
    def pose_rate(self) -> float:
        return (self.detected + self.tracked) / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"detection_rate": self.detection_rate, "pose_rate": self.pose_rate}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoseRateRow":
        return cls(**{k: d[k] for k in ("label", "lo", "hi", "n", "detected", "tracked", "lost")})


@dataclass(frozen=True)
class PoseRateTable:
    """Detection / tracking / loss by bin of ``quantity``; ``unplaced`` counts lost frames
    with no pose before or after them to place them by."""

    quantity: str
    unit: str
    rows: list[PoseRateRow]
    unplaced: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity,
            "unit": self.unit,
            "rows": [r.to_dict() for r in self.rows],
            "unplaced": self.unplaced,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoseRateTable":
        return cls(
            quantity=d["quantity"],
            unit=d["unit"],
            rows=[PoseRateRow.from_dict(r) for r in d["rows"]],
            unplaced=int(d["unplaced"]),
            note=d.get("note", ""),
        )


@dataclass(frozen=True)
class PhysicalResult:
    """Everything ``patchlab eval physical`` measures on one capture."""

    capture_dir: str
    target_class: str
    models: list[ModelRate]
    frames: int
    counted: int  # frames that count for tSuc (target-class frames left out when truth is known)
    frames_with_pose: int
    truth: bool
    bins: dict[str, BinTable]
    control: list[ControlRow] | None
    control_dir: str | None
    control_bins: dict[str, BinTable] | None
    capture: dict[str, Any]  # the capture's summary.json (source, config, models, versions, command)
    pose_sources: dict[str, int] = field(default_factory=dict)  # detected / tracked / lost, all frames
    frames_scored: int | None = None
    on_lost: str | None = None  # the capture's --on-lost policy (with --crop roi)
    pose_rates: dict[str, PoseRateTable] = field(default_factory=dict)  # by distance / size
    defense: str = "none"  # the input defence the frames were scored behind (capture run --defense)

    @property
    def model_names(self) -> list[str]:
        return [m.model for m in self.models]

    def to_dict(self) -> dict[str, Any]:
        return {
            "capture_dir": self.capture_dir,
            "target_class": self.target_class,
            "models": [m.to_dict() for m in self.models],
            "frames": self.frames,
            "counted": self.counted,
            "frames_with_pose": self.frames_with_pose,
            "truth": self.truth,
            "bins": {k: v.to_dict() for k, v in self.bins.items()},
            "control": None if self.control is None else [c.to_dict() for c in self.control],
            "control_dir": self.control_dir,
            "control_bins": None
            if self.control_bins is None
            else {k: v.to_dict() for k, v in self.control_bins.items()},
            "capture": {
                k: self.capture.get(k)
                for k in (
                    "status",
                    "end_reason",
                    "source",
                    "config",
                    "command",
                    "versions",
                    "fps",
                    "started",
                    "finished",
                    "layout",
                    "camera",
                    "stream",
                    "pose_sources",
                )
            },
            "pose_sources": dict(self.pose_sources),
            "frames_scored": self.frames_scored,
            "on_lost": self.on_lost,
            "pose_rates": {k: v.to_dict() for k, v in self.pose_rates.items()},
            "defense": self.defense,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PhysicalResult":
        """Read back what :meth:`to_dict` wrote (``eval physical --json``)."""
        bins = lambda bd: None if bd is None else {k: BinTable.from_dict(v) for k, v in bd.items()}  # noqa: E731
        try:
            return cls(
                capture_dir=d["capture_dir"],
                target_class=d["target_class"],
                models=[ModelRate.from_dict(m) for m in d["models"]],
                frames=int(d["frames"]),
                counted=int(d["counted"]),
                frames_with_pose=int(d["frames_with_pose"]),
                truth=bool(d["truth"]),
                bins=bins(d["bins"]) or {},
                control=None if d.get("control") is None else [ControlRow.from_dict(c) for c in d["control"]],
                control_dir=d.get("control_dir"),
                control_bins=bins(d.get("control_bins")),
                capture=dict(d.get("capture") or {}),
                pose_sources=dict(d.get("pose_sources") or {}),
                frames_scored=d.get("frames_scored"),
                on_lost=d.get("on_lost"),
                pose_rates={k: PoseRateTable.from_dict(v) for k, v in (d.get("pose_rates") or {}).items()},
                defense=str(d.get("defense") or "none"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a patchlab physical result: {exc!r}") from exc


def capture_defense(summary: dict[str, Any]) -> str:
    """The input defence a capture's frames were scored behind, as a canonical spec
    (``none``, ``blur:sigma=1.5``), from ``summary.json``'s ``config.defense`` (also as
    written before the defences moved to :mod:`patchlab.defenses`: a name and a repr)."""
    import re

    from patchlab.defenses import get_defense

    d = (summary.get("config") or {}).get("defense")
    if not d:
        return "none"
    if isinstance(d, str):
        return get_defense(d).plain_spec
    if d.get("spec"):
        return get_defense(str(d["spec"])).plain_spec
    params = re.findall(r"(\w+)=([-+.\deE]+)", str(d.get("repr") or ""))  # BlurDefense(name='blur', sigma=1.5)
    name = str(d.get("name") or "none")
    return get_defense(name + (":" + ",".join(f"{k}={v}" for k, v in params) if params else "")).plain_spec


def _same(a: Any, b: Any) -> bool:
    return (
        a is not None
        and b is not None
        and str(a).strip().lower().replace("_", " ") == str(b).strip().lower().replace("_", " ")
    )


def _counts(frames: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {n: _rate_dict(sum(_hit(f, n) for f in frames), len(frames)) for n in names}


def _edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-count bin edges over ``values`` (fewer bins when values repeat)."""
    qs = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    return np.unique(qs)


def _fmt(v: float, unit: str) -> str:
    if unit == "mm" and v >= 1000:
        return f"{v / 1000:.2f} m"
    digits = 0 if abs(v) >= 20 else 1
    return f"{v:.{digits}f}"


def bin_frames(
    frames: Sequence[dict[str, Any]], names: Sequence[str], quantity: str, n_bins: int = DEFAULT_N_BINS
) -> BinTable:
    """tSuc per model in ``n_bins`` equal-count bins of ``quantity`` (see :data:`BIN_QUANTITIES`)."""
    if quantity not in BIN_QUANTITIES:
        raise ConfigError(f"unknown bin {quantity!r}; choose from {', '.join(BIN_QUANTITIES)}")
    if n_bins < 1:
        raise ConfigError(f"--n-bins must be >= 1, got {n_bins}")
    label, unit, get, needs = BIN_QUANTITIES[quantity]
    vals = [get(f) for f in frames]
    have = [(v, f) for v, f in zip(vals, frames) if v is not None and math.isfinite(v)]
    missing = [f for v, f in zip(vals, frames) if v is None or not math.isfinite(v)]
    unbinned = None
    if missing and quantity != "lighting":
        unbinned = BinRow(
            label=NO_POSE,
            lo=None,
            hi=None,
            centre=None,
            n=len(missing),
            rates=_counts(missing, names),
            sources=_sources(missing),
        )
    if not have:
        return BinTable(
            quantity=quantity,
            label=label,
            unit=unit,
            measured=False,
            note=f"not measured: {needs}" if needs else "not measured",
            unbinned=unbinned,
        )
    v = np.array([x for x, _ in have])
    edges = _edges(v, n_bins)
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0]])
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = [have[i][1] for i in np.flatnonzero(idx == b)]
        if not sel:
            continue
        lo, hi = float(edges[b]), float(edges[b + 1])
        close = "]" if b == len(edges) - 2 else ")"
        rows.append(
            BinRow(
                label=f"[{_fmt(lo, unit)}, {_fmt(hi, unit)}{close}",
                lo=lo,
                hi=hi,
                centre=float(np.median(v[idx == b])),
                n=len(sel),
                rates=_counts(sel, names),
                sources=_sources(sel),
            )
        )
    return BinTable(quantity=quantity, label=label, unit=unit, measured=True, note="", rows=rows, unbinned=unbinned)


def _evaluate(capture_dir: str | Path, bins: Sequence[str], n_bins: int, loaded: Loaded | None = None):
    summ, frames = load_capture(capture_dir) if loaded is None else loaded
    scored = [f for f in frames if is_scored(f)]
    if not scored:
        raise ConfigError(f"{capture_dir} holds no scored frames")
    names = list(scored[0]["models"])
    target = summ.get("target_class")
    if target is None:
        raise ConfigError(f"{capture_dir}/summary.json does not name the target class")
    truth = any("truth" in f for f in frames)
    counted = [f for f in frames if not _same((f.get("truth") or {}).get("object_class"), target)]
    models = []
    for n in names:
        acc = unt = None
        if truth:
            known = [f for f in frames if (f.get("truth") or {}).get("object_class") is not None and is_scored(f)]
            if known:
                acc = _rate_dict(
                    sum(_same(f["models"][n]["top5"][0][0], f["truth"]["object_class"]) for f in known), len(known)
                )
                other = [f for f in known if not _same(f["truth"]["object_class"], target)]
                unt = _rate_dict(
                    sum(not _same(f["models"][n]["top5"][0][0], f["truth"]["object_class"]) for f in other), len(other)
                )
        c_scored = [f for f in counted if is_scored(f)]
        c_pose = [f for f in counted if pose_source(f) != LOST]
        c_det = [f for f in counted if pose_source(f) == DETECTED]
        models.append(
            ModelRate(
                model=n,
                tsuc=_rate_dict(sum(_hit(f, n) for f in counted), len(counted)),
                mean_p_target=float(np.mean([f["models"][n]["p_target"] for f in c_scored]))
                if c_scored
                else float("nan"),
                accuracy=acc,
                untargeted_error=unt,
                tsuc_scored=_rate_dict(sum(_hit(f, n) for f in c_scored), len(c_scored)),
                tsuc_with_pose=_rate_dict(sum(_hit(f, n) for f in c_pose), len(c_pose)),
                tsuc_detected=_rate_dict(sum(_hit(f, n) for f in c_det), len(c_det)),
            )
        )
    tables = {q: bin_frames(counted, names, q, n_bins) for q in bins}
    return summ, frames, counted, names, target, truth, models, tables


def evaluate_capture(
    capture_dir: str | Path,
    *,
    control: str | Path | None = None,
    bins: Sequence[str] = DEFAULT_BINS,
    n_bins: int = DEFAULT_N_BINS,
    defense: str | None = None,
    loaded: Loaded | None = None,
    control_loaded: Loaded | None = None,
) -> PhysicalResult:
    """Measure a capture folder (and compare with a control capture).

    Args:
        defense: the input defence the capture must have been scored behind (a
            :func:`patchlab.defenses.get_defense` spec; ``None``: whatever it was). The frames
            are not stored, so a defence is applied at capture time (``capture run --defense``).
        loaded, control_loaded: what :func:`patchlab.captures.load_capture` already read from
            ``capture_dir`` / ``control`` (``(summary, frames)``), for a caller that needs the
            frames too (the report); read here when None.

    Raises:
        ConfigError: not a capture folder, an unknown bin, a control scored with
            other models, another target or another defence, or a capture not scored
            behind ``defense``.
    """
    for q in bins:
        if q not in BIN_QUANTITIES:
            raise ConfigError(f"unknown --bins {q!r}; choose from {', '.join(BIN_QUANTITIES)}")
    want = None
    if defense is not None:
        from patchlab.defenses import get_defense

        want = get_defense(defense).plain_spec  # a bad spec fails before any file is read
    summ, frames, counted, names, target, truth, models, tables = _evaluate(capture_dir, bins, n_bins, loaded)
    used = capture_defense(summ)
    if want is not None and used != want:
        raise ConfigError(
            f"{capture_dir} was scored behind the defence {used!r}, not {want!r}: the frames are not "
            f"stored, so film it again with `patchlab capture run ... --defense {want}`"
        )
    ctrl_rows = ctrl_tables = None
    if control is not None:
        csumm, _, ccounted, cnames, ctarget, _, cmodels, ctables = _evaluate(control, bins, n_bins, control_loaded)
        if not _same(ctarget, target):
            raise ConfigError(f"the control capture's target is {ctarget!r}, the patched one's {target!r}")
        cused = capture_defense(csumm)
        if cused != used:
            raise ConfigError(
                f"the control capture was scored behind the defence {cused!r}, the patched one behind "
                f"{used!r}: film both with the same --defense, so the comparison stays matched"
            )
        missing = [n for n in names if n not in cnames]
        if missing:
            raise ConfigError(
                f"the control capture was not scored with {', '.join(missing)}: capture it with the same --models"
            )
        # bin the control on the patched capture's edges, so the two curves share their bins
        ctrl_tables = {}
        for q, t in tables.items():
            if t.measured and t.rows:
                ctrl_tables[q] = _rebin(ccounted, names, q, t)
            else:
                ctrl_tables[q] = ctables[q]
        cm = {m.model: m for m in cmodels}
        ctrl_rows = []
        for m in models:
            c = cm[m.model]
            s1, n1 = m.tsuc["successes"], m.tsuc["n"]
            s2, n2 = c.tsuc["successes"], c.tsuc["n"]
            d = (s1 / n1 if n1 else float("nan")) - (s2 / n2 if n2 else float("nan"))
            ctrl_rows.append(
                ControlRow(
                    model=m.model,
                    patched=m.tsuc,
                    control=c.tsuc,
                    difference=d,
                    ci95=newcombe_interval(s1, n1, s2, n2),
                    patched_accuracy=m.accuracy,
                    control_accuracy=c.accuracy,
                )
            )
    cfg = summ.get("config") or {}
    return PhysicalResult(
        capture_dir=str(capture_dir),
        target_class=str(target),
        models=models,
        frames=len(frames),
        counted=len(counted),
        frames_with_pose=sum(pose_source(f) != LOST for f in frames),
        truth=truth,
        bins=tables,
        control=ctrl_rows,
        control_dir=None if control is None else str(control),
        control_bins=ctrl_tables,
        capture=summ,
        pose_sources=_sources(frames),
        frames_scored=sum(is_scored(f) for f in frames),
        on_lost=cfg.get("on_lost") if cfg.get("crop") == "roi" else None,
        pose_rates={q: pose_rate_by(frames, q) for q in ("distance", "size")},
        defense=used,
    )


def _rebin(frames: Sequence[dict[str, Any]], names: Sequence[str], quantity: str, like: BinTable) -> BinTable:
    """Bin ``frames`` on the bins of ``like`` (values outside go to the nearest end bin)."""
    label, unit, get, needs = BIN_QUANTITIES[quantity]
    rows, missing = [], []
    groups: list[list[dict[str, Any]]] = [[] for _ in like.rows]
    values: list[list[float]] = [[] for _ in like.rows]
    his = [r.hi for r in like.rows]
    for f in frames:
        v = get(f)
        if v is None or not math.isfinite(v):
            missing.append(f)
            continue
        k = min(int(np.searchsorted(np.array(his[:-1]), v, side="right")), len(like.rows) - 1)
        groups[k].append(f)
        values[k].append(v)
    for r, g, vs in zip(like.rows, groups, values):
        if g:
            rows.append(
                BinRow(
                    label=r.label,
                    lo=r.lo,
                    hi=r.hi,
                    centre=float(np.median(vs)),
                    n=len(g),
                    rates=_counts(g, names),
                    sources=_sources(g),
                )
            )
    unbinned = (
        BinRow(
            label=NO_POSE,
            lo=None,
            hi=None,
            centre=None,
            n=len(missing),
            rates=_counts(missing, names),
            sources=_sources(missing),
        )
        if missing and quantity != "lighting"
        else None
    )
    if not rows:
        return BinTable(
            quantity=quantity,
            label=label,
            unit=unit,
            measured=False,
            note=f"not measured in the control: {needs}" if needs else "not measured",
            unbinned=unbinned,
        )
    return BinTable(quantity=quantity, label=label, unit=unit, measured=True, note="", rows=rows, unbinned=unbinned)


def pose_rate_by(
    frames: Sequence[dict[str, Any]], quantity: str = "distance", n_bins: int = DEFAULT_N_BINS
) -> PoseRateTable:
    """Detected / tracked / lost frames by bin of ``distance`` (mm) or ``size`` (px).

    A lost frame has no distance of its own: it is placed at the value interpolated
    (in time, by frame index) between the nearest frames before and after it that
    have a pose -- a card that vanishes between 2 m and 2.4 m was about 2.2 m away.
    Lost frames before the first pose or after the last one (no bracket) are
    ``unplaced``. Bins are equal-count over the frames with a pose.
    """
    if quantity not in ("distance", "size"):
        raise ConfigError(f"pose rates are binned by distance or size, not {quantity!r}")
    _, unit, get, needs = BIN_QUANTITIES[quantity]
    order = sorted(frames, key=lambda f: int(f["index"]))
    known = [(int(f["index"]), get(f)) for f in order if pose_source(f) != LOST and get(f) is not None]
    if not known:
        return PoseRateTable(
            quantity=quantity,
            unit=unit,
            rows=[],
            unplaced=sum(pose_source(f) == LOST for f in order),
            note=f"not measured: {needs}",
        )
    ki = np.array([k for k, _ in known], np.float64)
    kv = np.array([v for _, v in known], np.float64)
    placed: list[tuple[float, str]] = []
    unplaced = 0
    for f in order:
        src = pose_source(f)
        if src != LOST:
            v = get(f)
            if v is not None:
                placed.append((float(v), src))
            continue
        i = int(f["index"])
        if i < ki[0] or i > ki[-1]:
            unplaced += 1
            continue
        placed.append((float(np.interp(i, ki, kv)), LOST))
    edges = _edges(kv, n_bins)
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0]])
    vals = np.array([v for v, _ in placed])
    idx = np.clip(np.searchsorted(edges, vals, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        srcs = [s_ for (_, s_), k in zip(placed, idx) if k == b]
        if not srcs:
            continue
        lo, hi = float(edges[b]), float(edges[b + 1])
        rows.append(
            PoseRateRow(
                label=f"[{_fmt(lo, unit)}, {_fmt(hi, unit)}{']' if b == len(edges) - 2 else ')'}",
                lo=lo,
                hi=hi,
                n=len(srcs),
                detected=srcs.count(DETECTED),
                tracked=srcs.count(TRACKED),
                lost=srcs.count(LOST),
            )
        )
    return PoseRateTable(
        quantity=quantity,
        unit=unit,
        rows=rows,
        unplaced=unplaced,
        note="lost frames placed between the poses before and after them",
    )


# --------------------------------------------------------------------------------------
# pose accounting against ground truth (simulated films)
# --------------------------------------------------------------------------------------

#: Apparent patch side bins (px) of :func:`pose_accuracy`.
SIZE_EDGES_PX = (0.0, 15.0, 25.0, 40.0, 60.0, 100.0, 150.0, 250.0, float("inf"))


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@dataclass(frozen=True)
class PoseBin:
    """Frames in view whose true apparent patch side is in ``[lo, hi)`` px."""

    label: str
    lo: float
    hi: float
    in_view: int
    detected: int
    tracked: int
    lost: int
    size_err_p95: float | None
    angle_err_p95: float | None

    @property
    def pose_rate(self) -> float:
        return (self.detected + self.tracked) / self.in_view if self.in_view else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"pose_rate": self.pose_rate}


@dataclass(frozen=True)
class PoseAccuracy:
    """How often, and how well, the patch's pose was found on frames where it is in view.

    Errors are measured on frames with a pose: apparent size ``|measured / true - 1|``
    and in-plane angle (degrees), as :func:`patchlab.capture.pose.quad_metrics` defines them.
    """

    in_view: int
    detected: int
    tracked: int
    lost: int
    size_err: dict[str, float | None]  # p50, p95, max
    angle_err: dict[str, float | None]
    size_err_by_source: dict[str, float | None]  # p95 per source
    bins: list[PoseBin]

    @property
    def pose_rate(self) -> float:
        return (self.detected + self.tracked) / self.in_view if self.in_view else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_view": self.in_view,
            "detected": self.detected,
            "tracked": self.tracked,
            "lost": self.lost,
            "pose_rate": self.pose_rate,
            "size_err": self.size_err,
            "angle_err": self.angle_err,
            "size_err_by_source": self.size_err_by_source,
            "bins": [b.to_dict() for b in self.bins],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoseAccuracy":
        bins = [PoseBin(**{k: v for k, v in b.items() if k != "pose_rate"}) for b in d.get("bins", [])]
        return cls(
            in_view=int(d["in_view"]),
            detected=int(d["detected"]),
            tracked=int(d["tracked"]),
            lost=int(d["lost"]),
            size_err=dict(d["size_err"]),
            angle_err=dict(d["angle_err"]),
            size_err_by_source=dict(d.get("size_err_by_source", {})),
            bins=bins,
        )


def pose_accuracy(
    frames: Sequence[dict[str, Any]], truth: Sequence[dict[str, Any]], *, edges: Sequence[float] = SIZE_EDGES_PX
) -> PoseAccuracy:
    """Pose rate (detected / tracked / lost) and error on the frames where the patch is in view.

    Args:
        frames: capture log lines (``index``, ``pose_source``, ``pose``).
        truth: the simulator's ground truth, indexed by frame index (``patch_in_view``,
            ``size_px``, ``angle_deg``; older truth without ``patch_in_view`` uses
            ``markers_in_frame``).
        edges: apparent patch side bin edges (px).
    """
    by_index = {int(t["index"]): t for t in truth}
    per_bin: list[dict[str, Any]] = [
        {"n": 0, DETECTED: 0, TRACKED: 0, LOST: 0, "s": [], "a": []} for _ in range(len(edges) - 1)
    ]
    tot = {DETECTED: 0, TRACKED: 0, LOST: 0}
    s_all: list[float] = []
    a_all: list[float] = []
    s_src: dict[str, list[float]] = {DETECTED: [], TRACKED: []}
    for f in frames:
        t = by_index.get(int(f["index"]))
        if t is None or not t.get("patch_in_view", t.get("markers_in_frame", False)):
            continue
        src = pose_source(f)
        k = min(max(int(np.searchsorted(edges, float(t["size_px"]), side="right")) - 1, 0), len(edges) - 2)
        b = per_bin[k]
        b["n"] += 1
        b[src] += 1
        tot[src] += 1
        p = f.get("pose")
        if p and src != LOST:
            se = abs(float(p["size_px"]) / float(t["size_px"]) - 1)
            ae = abs((float(p["angle_deg"]) - float(t["angle_deg"]) + 180) % 360 - 180)
            b["s"].append(se)
            b["a"].append(ae)
            s_all.append(se)
            a_all.append(ae)
            s_src[src].append(se)
    bins = []
    for k, b in enumerate(per_bin):
        if not b["n"]:
            continue
        lo, hi = float(edges[k]), float(edges[k + 1])
        label = f"{lo:.0f}+ px" if math.isinf(hi) else f"[{lo:.0f}, {hi:.0f}) px"
        bins.append(
            PoseBin(
                label=label,
                lo=lo,
                hi=hi,
                in_view=b["n"],
                detected=b[DETECTED],
                tracked=b[TRACKED],
                lost=b[LOST],
                size_err_p95=_pct(b["s"], 95),
                angle_err_p95=_pct(b["a"], 95),
            )
        )
    stats = lambda v: {"p50": _pct(v, 50), "p95": _pct(v, 95), "max": max(v) if v else None}  # noqa: E731
    return PoseAccuracy(
        in_view=sum(tot.values()),
        detected=tot[DETECTED],
        tracked=tot[TRACKED],
        lost=tot[LOST],
        size_err=stats(s_all),
        angle_err=stats(a_all),
        size_err_by_source={k: _pct(v, 95) for k, v in s_src.items()},
        bins=bins,
    )
