"""Small shared helpers: device choice, atomic writes, shape checks, versions."""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import platform
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ConfigError, WriteError


def now_iso() -> str:
    """The current time as patchlab writes it in every record: UTC, ISO 8601, whole seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def resolve_device(spec: "str | torch.device | None" = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:N]|mps`` into a :class:`torch.device`.

    ``auto`` picks CUDA when available, else CPU. Asking for CUDA on a machine
    without it is a :class:`ConfigError`, not a crash deep inside a forward pass.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for, but CUDA is not available here: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available here: use --device cpu")
    return dev


#: Environment variable that sets patchlab's default number of torch CPU threads.
THREADS_ENV = "PATCHLAB_THREADS"


def default_threads() -> int:
    """Torch CPU threads patchlab uses unless told: ``$PATCHLAB_THREADS``, else the cores minus one.

    On a small, shared CPU torch's thread hand-offs cost far more than they give:
    on the 2-core development machine, with one other busy process, a mobilenet
    forward+backward took 5.2 s on 2 threads and 0.17 s on 1
    (``benchmarks/threads.py`` measures it side by side).
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"${THREADS_ENV} must be a whole number of threads, got {env!r}") from None
        if n < 1:
            raise ConfigError(f"${THREADS_ENV} must be >= 1, got {n}")
        return n
    return max(1, (os.cpu_count() or 2) - 1)


def check_images(x: torch.Tensor, name: str = "images") -> None:
    """Check the image contract: ``(B, 3, H, W)`` floating point in ``[0, 1]``.

    Raises:
        ValueError: naming what was expected and what came.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {name} as a (B, 3, H, W) tensor in [0, 1], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected {name} of shape (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected {name} as floating point in [0, 1], got dtype {x.dtype}")


def check_patch(p: torch.Tensor, name: str = "patch") -> None:
    """Check the patch contract: ``(3, h, w)`` floating point."""
    if not isinstance(p, torch.Tensor) or p.ndim != 3 or p.shape[0] != 3 or not p.is_floating_point():
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"expected {name} of shape (3, h, w) float in [0, 1], got {got}")


def os_error_text(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an ``OSError``: the path it concerns and the cause, in words.

    ``ENOSPC`` reads "no space left on device", ``ENOTDIR`` "a parent is a file, not
    a folder", and so on, from the C library's own ``strerror``.
    """
    where = path if path is not None else (exc.filename if exc.filename is not None else "")
    cause = exc.strerror or str(exc) or type(exc).__name__
    extra = {
        errno.ENOTDIR: " (a parent of it is a file, not a folder)",
        errno.EISDIR: " (it is a folder; name a file)",
        errno.EEXIST: " (something else already has that name)",
        errno.EROFS: " (read-only file system)",
        errno.ENOSPC: " (free some space, or write elsewhere)",
        errno.EDQUOT: " (disk quota exceeded: free some space, or write elsewhere)",
    }.get(exc.errno or 0, "")
    return f"{where}: {cause}{extra}" if where != "" else f"{cause}{extra}"


@contextmanager
def writing(path: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """Context for code that writes ``path``: any ``OSError`` becomes one :class:`WriteError` line.

    Every writer of an output goes through this (the atomic writers below use it),
    so a full disk, a missing permission, ``--out`` under a regular file or in
    ``/proc``, or a folder where a file is expected all end as ``error: cannot
    write PATH: CAUSE`` and never as a traceback.
    """
    p = Path(path)
    try:
        yield p
    except WriteError:
        raise
    except OSError as exc:
        label = f"cannot write {what} " if what else "cannot write "
        raise WriteError(
            label + os_error_text(exc, p if exc.filename is None or _is_tmp(exc.filename) else None)
        ) from exc


def _is_tmp(name: Any) -> bool:
    return isinstance(name, (str, os.PathLike)) and Path(name).name.startswith(".") and str(name).endswith(".tmp")


def make_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """``mkdir -p`` with one clear line when it cannot be done (a file in the way, no permission)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise WriteError(f"cannot write {what} {p}: it exists and is not a folder")
    with writing(p, what):
        p.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def atomic_output(path: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """The one atomic-file helper: yields a temporary path beside ``path``; on success
    it is fsynced and renamed onto ``path``, on any failure it is removed.

    A crash, a full disk or Ctrl-C leave either the old file or the new one, never
    half of one; an ``OSError`` becomes a one-line :class:`WriteError` naming ``path``.
    Use it for writers that want a file name (``torch.save``, ``cv2.VideoWriter``,
    ``fig.savefig``); :func:`atomic_write_bytes` covers bytes in memory.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {what + ' ' if what else ''}{path}: it is a folder; name a file")
    with writing(path, what):
        make_folder(path.parent)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make every output private
        try:
            yield tmp
            _fsync_path(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "") -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_output` (temporary file + atomic rename).

    Raises:
        WriteError: one line naming ``path`` and the cause (full disk, permission...).
    """
    path = Path(path)
    with atomic_output(path, what) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``.

    ``json.dumps`` writes a bare ``NaN``, which is not JSON; patchlab's files hold
    ``null`` instead (a loss that diverged, a rate over zero frames), which every
    JSON reader accepts. Tensors, arrays and numpy scalars are converted first.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    try:
        return json_safe(_json_default(obj))
    except TypeError:
        return obj


def json_dumps(obj: Any, *, indent: int | None = None) -> str:
    """The one JSON encoder for patchlab files: non-finite numbers become ``null``
    (:func:`json_safe`), paths and tensors are converted, and a bare ``NaN`` can never
    be written (``allow_nan=False`` checks it)."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=False, default=_json_default, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, what: str = "") -> Path:
    """Write ``obj`` as indented JSON (see :func:`json_dumps`) atomically."""
    return atomic_write_text(path, json_dumps(obj, indent=2) + "\n", what)


def atomic_torch_save(obj: Any, path: str | os.PathLike, what: str = "") -> Path:
    """``torch.save`` through :func:`atomic_output`."""
    path = Path(path)
    with atomic_output(path, what) as tmp:
        torch.save(obj, tmp)
    return path


def read_json_object(
    path: str | os.PathLike, what: str = "file", *, error: type[Exception] = ConfigError, missing: str = ""
) -> dict[str, Any]:
    """Read a JSON file that must hold an object, with one clear error per way it can fail.

    Args:
        path: the file.
        what: what it is, for the messages (``"layout file"``, ``"model card"``).
        error: the :class:`~patchlab.errors.PatchlabError` subclass to raise.
        missing: a hint appended to the not-found message (how to make one).
    """
    p = Path(path)
    if not p.is_file():
        if p.exists() or p.is_symlink():
            kind = "a folder" if p.is_dir() else "not a regular file (a pipe, socket or device?)"
            raise error(f"{what} {p} is {kind}")
        raise error(f"{what} not found: {p}" + (f" ({missing})" if missing else ""))
    try:
        d = json.loads(p.read_bytes())
    except OSError as exc:
        raise error(f"cannot read {what} {os_error_text(exc, p)}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {p} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise error(f"{what} {p} is nested too deeply to be a patchlab file") from exc
    if not isinstance(d, dict):
        raise error(f"{what} {p} must hold a JSON object, not a {type(d).__name__}")
    return d


def is_special_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a FIFO or a socket: opening one for reading can block forever."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


#: Libraries recorded by :func:`versions` unless told otherwise.
VERSION_MODULES = ("torch", "torchvision", "timm", "kornia", "ot", "cv2", "numpy", "reportlab")


def versions(modules: tuple[str, ...] = VERSION_MODULES) -> dict[str, str]:
    """Versions of the libraries that shape a result, for run records.

    Args:
        modules: which libraries to import and record; stages that use few of them
            (printing, calibration) pass their own, cheaper list.
    """
    out = {"python": platform.python_version(), "platform": platform.platform()}
    from . import __version__

    out["patchlab"] = __version__
    for mod in modules:
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception:  # pragma: no cover - optional at record time
            out[mod] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def user_cache_dir() -> Path:
    """patchlab's cache folder: ``$PATCHLAB_CACHE`` or ``~/.cache/patchlab``."""
    env = os.environ.get("PATCHLAB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "patchlab"


def parse_kv(items: list[str] | None) -> dict[str, str]:
    """Parse ``["k=v", ...]`` into a dict, with a clear error for a malformed item."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
