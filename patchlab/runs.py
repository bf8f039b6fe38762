"""The optimiser's run folder: the contract between ``optimize`` and every later stage.

A run folder (``patchlab optimize --out RUN_DIR``) holds::

    patch.png        the patch, lossless 8-bit RGB, (h, w) pixels: what gets printed
    patch.npy        the float patch, (3, h, w) float32 in [0, 1]
    run.json         the run record (below), rewritten atomically as the run goes
    checkpoint.pt    optimiser state for ``--resume`` (written atomically)
    transfer.json    written by ``patchlab eval transfer RUN_DIR`` (same shape as its --json)

``run.json`` keys (all present once a run has started):

* ``run_id`` (the folder name), ``status`` (``running`` | ``finished`` |
  ``interrupted`` | ``diverged`` | ``error``), ``message`` (why it stopped, for the
  last three);
* ``target_class`` (name), ``target_index`` (index in the first source's labels),
  ``seed``;
* ``config``: every resolved option of the command (loss, steps, patch size,
  placement, EOT ranges, layers, ...); ``command``: the argv that produced it;
* ``sources``: model provenance dicts (:meth:`patchlab.models.ModelInfo.to_dict`,
  card included) and ``layers``: the feature layers used per source;
* ``patch``: ``{"pixels": [w, h], "shape": "square"|"circle", "frac": area fraction,
  "side_px": side in image pixels}``;
* ``data``: ``{"root", "n_images", "image_size", "classes"}`` and ``split``:
  :meth:`patchlab.data.Split.to_dict` (the held-out indices judge the patch);
* ``history``: one dict per logged step, ``{"step", "loss", "terms": {name: value},
  "tsuc": running white-box tSuc on the training batches}``;
* ``versions`` (:func:`patchlab.utils.versions`), ``started``/``finished`` (ISO times),
  ``seconds``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import ConfigError
from .locks import FolderLock, lock_holder
from .utils import atomic_write_bytes, atomic_write_json, json_dumps, now_iso, read_json_object

PATCH_PNG = "patch.png"
PATCH_FLOAT = "patch.npy"
RUN_JSON = "run.json"
CHECKPOINT = "checkpoint.pt"
TRANSFER_JSON = "transfer.json"


def read_run(run_dir: str | Path, *, warn: bool = True) -> dict[str, Any]:
    """The ``run.json`` of a run folder, with a clear error if it is not one.

    Args:
        run_dir: the run folder.
        warn: say in one warning line (:func:`warn_if_unfinished`) when the run is
            not ``finished`` (still running, killed, interrupted, diverged, failed):
            every command that uses a run's results reads it here, so none of them
            uses a partial result without a word.
    """
    p = Path(run_dir)
    if not p.is_dir():
        raise ConfigError(f"run folder not found: {p}")
    if not (p / RUN_JSON).exists():
        raise ConfigError(f"{p} is not a patchlab run folder (no {RUN_JSON}); make one with `patchlab optimize`")
    rec = read_json_object(p / RUN_JSON, "run record")
    if warn:
        warn_if_unfinished(rec, p, "run")
    return rec


#: run statuses after which nothing more will be written
FINAL_STATUSES = ("finished", "interrupted", "diverged", "error")


@dataclass(frozen=True)
class RunRecord:
    """A run folder's ``run.json`` as an object (see the module docstring for the keys).

    Built by :meth:`from_dict` from what :func:`patchlab.optimize.run_optimization`
    writes; keys it does not know are kept in ``extra``, so :meth:`to_dict` gives back
    what was read.
    """

    run_id: str
    status: str
    target_class: str | None
    seed: int
    config: dict[str, Any]
    sources: list[dict[str, Any]]
    patch: dict[str, Any]
    data: dict[str, Any]
    split: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    target_index: int | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    seconds: float = 0.0
    started: str | None = None
    finished: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    attack: str = ""
    limit_per_class: int | None = None
    defense: dict[str, Any] | None = None  # the input defence optimised through (Defense.to_dict())
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source_names(self) -> list[str]:
        return [str(s.get("name")) for s in self.sources]

    @property
    def holdout(self) -> list[int]:
        return [int(i) for i in self.split.get("holdout", [])]

    @property
    def frac(self) -> float:
        return float(self.config.get("frac", self.patch.get("frac", 0.0)))

    @property
    def final_tsuc(self) -> float | None:
        return float(self.history[-1]["tsuc"]) if self.history else None

    @property
    def last_step(self) -> dict[str, Any] | None:
        """The last logged step of :attr:`history` (``{"step", "loss", "terms", "tsuc"}``), or None."""
        return self.history[-1] if self.history else None

    # the options a reader shows most, None where the record does not say (an older run)
    @property
    def loss(self) -> str | None:
        v = self.config.get("loss")
        return None if v is None else str(v)

    @property
    def steps(self) -> int | None:
        v = self.config.get("steps")
        return None if v is None else int(v)

    @property
    def placement(self) -> str | None:
        v = self.config.get("placement")
        return None if v is None else str(v)

    @property
    def layer_spec(self) -> str | None:
        """The ``--layers`` option as given (:attr:`layers` holds the layers it resolved to)."""
        v = self.config.get("layers")
        return None if v is None else str(v)

    @property
    def data_root(self) -> str | None:
        """The data folder the run split into training and held-out images."""
        v = self.data.get("root")
        return None if v is None else str(v)

    @property
    def patch_shape(self) -> str:
        return str(self.patch.get("shape") or self.config.get("shape") or "square")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for k in ("limit_per_class", "defense"):  # written only by runs that limited their data / newer runs
            if d[k] is None:
                del d[k]
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, strict: bool = True) -> "RunRecord":
        """Read a ``run.json`` dict. ``strict`` refuses one without ``target_class`` and
        ``config`` (not a patchlab run record); without it they read as None and ``{}``
        (a reader that shows whatever a damaged or hand-made record holds: the report)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("target_class", "config") if k not in d]
        if missing and strict:
            raise ConfigError(f"run record lacks {', '.join(missing)}: not a patchlab run.json")
        d = {"target_class": None, "config": {}, **d} if missing else d
        kw: dict[str, Any] = {k: d[k] for k in known if k in d and d[k] is not None or k in ("target_class",)}
        kw.setdefault("run_id", str(d.get("run_id", "")))
        kw.setdefault("status", str(d.get("status", "unknown")))
        kw.setdefault("seed", int((d.get("config") or {}).get("seed", 0)))
        kw.setdefault("config", {})
        for k in ("sources", "data", "split", "patch"):
            kw.setdefault(k, [] if k == "sources" else {})
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})


def load_run(run_dir: str | Path, *, warn: bool = True, strict: bool = True) -> RunRecord:
    """The run record of a run folder as a :class:`RunRecord` (clear errors and the
    unfinished-run warning as :func:`read_run`; ``strict`` as :meth:`RunRecord.from_dict`)."""
    return RunRecord.from_dict(read_run(run_dir, warn=warn), strict=strict)


def read_patch(run_dir: str | Path) -> np.ndarray:
    """The run's patch as ``(3, h, w)`` float32 in [0, 1]: the float file when present, else the PNG."""
    p = Path(run_dir)
    f = p / PATCH_FLOAT
    if f.is_file():
        a = np.load(f, allow_pickle=False)
        if a.ndim != 3 or a.shape[0] != 3:
            raise ConfigError(f"{f} holds shape {a.shape}, expected (3, h, w)")
        return np.clip(a.astype(np.float32), 0.0, 1.0)
    png = p / PATCH_PNG
    if not png.is_file():
        raise ConfigError(f"{p} has neither {PATCH_FLOAT} nor {PATCH_PNG}")
    from .data import read_image

    return read_image(png).numpy()


# ----------------------------------------------------------- status of run and capture folders
#: Statuses of a run record whose results are partial.
UNFINISHED_STATUSES = ("running", "error", "interrupted", "diverged")
#: ... and of a capture record: a live camera is normally stopped by hand (``interrupted``),
#: which ends a capture, not spoils it.
UNFINISHED_CAPTURE_STATUSES = ("running", "error")


class UnfinishedResultWarning(UserWarning):
    """A run or capture that did not finish is being used (its results are partial)."""


def _status_of(record: Any) -> tuple[str, str]:
    """``(status, why)`` of a record read as a dict or as an object (:class:`RunRecord`,
    :class:`patchlab.captures.CaptureSummary`: ``message`` or ``error`` says why)."""
    if isinstance(record, dict):
        return str(record.get("status") or ""), str(record.get("message") or record.get("error") or "")
    msg = getattr(record, "message", None) or getattr(record, "error", None)
    return str(getattr(record, "status", "") or ""), str(msg or "")


def status_note(record: Any, folder: str | Path, what: str = "run") -> str | None:
    """One line saying why ``record``'s results are partial, or None when it finished.

    ``record`` is a ``run.json``/``summary.json`` dict or its object (:class:`RunRecord`,
    :class:`~patchlab.captures.CaptureSummary`). ``running`` is told apart by the folder's
    lock (:func:`patchlab.locks.lock_holder`): still being written by a live process, or
    left by one that died (killed).
    """
    status, msg = _status_of(record)
    if status not in (UNFINISHED_CAPTURE_STATUSES if "capture" in what else UNFINISHED_STATUSES):
        return None
    folder = Path(folder)
    msg = msg.strip()
    why = f" ({msg})" if msg else ""
    if status == "running":
        pid = lock_holder(folder)
        if pid:
            who = f"process {pid}" if pid > 0 else "another process"
            return f"{what} {folder} is still being written by {who}: its results so far are partial"
        hint = "; continue it with --resume" if (folder / CHECKPOINT).is_file() else ""
        return (
            f"{what} {folder} says 'running' but no process is writing it (killed or crashed): "
            f"its results are partial{hint}"
        )
    if status == "error":
        return f"{what} {folder} failed{why}: its results are partial"
    if status == "interrupted":
        return f"{what} {folder} was interrupted{why}: its results are partial"
    return f"{what} {folder} {status}{why}: its results are those of the last good step"


def warn_if_unfinished(record: Any, folder: str | Path, what: str = "run") -> str | None:
    """:func:`status_note` as a warning (the CLI prints it as one ``warning:`` line); returns the note."""
    note = status_note(record, folder, what)
    if note:
        warnings.warn(note, UnfinishedResultWarning, stacklevel=3)
    return note


def mark_stopped(record_path: str | Path, reason: str, *, status: str = "error") -> bool:
    """Record in ``record_path`` (``run.json``, ``summary.json``) that its writer stopped: ``status``,
    ``message`` (and ``error``/``end_reason`` where the record has them), ``finished``.

    Made for the worst case, a full disk: the record is rewritten atomically when
    possible, else in place over its own bytes (no new blocks needed; the JSON is
    padded with spaces), else left as it is. Returns whether the status was recorded.
    """
    path = Path(record_path)
    try:
        rec = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(rec, dict):
        return False
    rec.update(status=status, message=reason, finished=now_iso())
    if "error" in rec and status == "error":
        rec["error"] = reason
    if "end_reason" in rec:
        rec["end_reason"] = status
    try:
        atomic_write_json(path, rec)
        return True
    except Exception:  # noqa: BLE001 - the fallback below is the point
        pass
    for shrink in (False, True):
        if shrink and isinstance(rec.get("history"), list):
            rec["history"] = rec["history"][-1:]
        if _rewrite_in_place(path, json_dumps(rec)):
            return True
    return False


def _rewrite_in_place(path: Path, text: str) -> bool:
    data = text.encode("utf-8")
    try:
        size = path.stat().st_size
        if len(data) + 1 > size:
            return False
        with open(path, "r+b") as fh:
            fh.write(data + b" " * (size - len(data) - 1) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True
    except OSError:
        return False


@contextmanager
def writing_folder(folder: str | Path, *, record: str = RUN_JSON, what: str = "run folder") -> Iterator[FolderLock]:
    """The writer's side of a run or capture folder: one writer at a time, and never a
    record left saying ``running`` after its writer failed.

    Takes the folder's :class:`~patchlab.locks.FolderLock` (a second writer gets
    :class:`~patchlab.errors.FolderInUse`: "... in use by process N"; a lock this
    process already holds, the CLI's, is joined), and when the
    body raises while ``record`` still says ``running``, records ``error`` (or
    ``interrupted`` for Ctrl-C) with the reason through :func:`mark_stopped`.
    """
    rp = Path(folder) / record
    with FolderLock(folder, what, reentrant=True) as lock:
        before = _identity(rp)  # a record this writer did not write (a killed run's) is never touched
        try:
            yield lock
        except BaseException as exc:
            try:
                running = _identity(rp) not in (before, None) and json.loads(rp.read_bytes()).get("status") == "running"
            except (OSError, ValueError, AttributeError):
                running = False
            if running:
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    mark_stopped(rp, "interrupted", status="interrupted")
                else:
                    mark_stopped(rp, _one_line(exc), status="error")
            raise


def _identity(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------- the CLI's safety net for output folders
#: Records whose ``status`` says whether a folder's writer finished: a run's and a capture's.
STATUS_RECORDS = (RUN_JSON, "summary.json")


class OutputWatch:
    """What the CLI's error boundary knows about a command's ``--out`` folders.

    :meth:`watch` notes each record's identity (inode, mtime) before the command runs;
    when the command fails, :meth:`settle` marks every record that this command wrote
    and left saying ``running`` as ``error`` (or ``interrupted``) with the reason, so a
    failure a writer did not handle itself (a full disk while checkpointing) never
    leaves a folder claiming to run. A record another live process holds (its folder
    lock, :mod:`patchlab.locks`) or that this command did not touch is left alone.
    """

    def __init__(self) -> None:
        self._before: dict[Path, tuple[int, int] | None] = {}

    def watch(self, folder: str | Path) -> None:
        for name in STATUS_RECORDS:
            p = Path(folder) / name
            try:
                st = p.stat()
                self._before.setdefault(p, (st.st_ino, st.st_mtime_ns))
            except OSError:
                self._before.setdefault(p, None)

    def settle(self, exc: BaseException) -> list[Path]:
        """Mark the records this command left ``running``; returns those marked."""
        marked = []
        for p, before in self._before.items():
            try:
                st = p.stat()
            except OSError:
                continue
            if (st.st_ino, st.st_mtime_ns) == before:
                continue  # not written by this command
            holder = lock_holder(p.parent)
            if holder and holder != os.getpid():
                continue
            try:
                running = json.loads(p.read_bytes()).get("status") == "running"
            except (OSError, ValueError, AttributeError):
                continue
            if not running:
                continue
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                ok = mark_stopped(p, "interrupted", status="interrupted")
            else:
                ok = mark_stopped(p, _one_line(exc), status="error")
            if ok:
                marked.append(p)
        self._before.clear()
        return marked


def folder_status_note(path: str | Path) -> str | None:
    """:func:`status_note` of a run folder (``run.json``) or capture folder (``summary.json``),
    or None for anything else (a file, a folder of images, a record that cannot be read)."""
    p = Path(path)
    for name, what in ((RUN_JSON, "run"), ("summary.json", "capture")):
        rec = p / name
        if rec.is_file():
            try:
                d = json.loads(rec.read_bytes())
            except (OSError, ValueError):
                return None
            return status_note(d, p, what) if isinstance(d, dict) else None
    return None


def patch_to_png(patch: np.ndarray) -> bytes:
    """``(3, h, w)`` float in [0, 1] -> lossless 8-bit PNG bytes."""
    from PIL import Image

    arr = np.clip(np.round(np.transpose(patch, (1, 2, 0)) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_patch(run_dir: str | Path, patch: torch.Tensor | np.ndarray) -> None:
    """Write ``patch.png`` and ``patch.npy`` (``(3, h, w)`` in [0, 1]) atomically: :func:`read_patch`'s twin."""
    t = torch.as_tensor(patch)
    arr = t.detach().cpu().float().clamp(0, 1).numpy()
    atomic_write_bytes(Path(run_dir) / PATCH_PNG, patch_to_png(arr))
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(Path(run_dir) / PATCH_FLOAT, buf.getvalue())
