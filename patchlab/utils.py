"""Small shared helpers: device choice, atomic writes, shape checks, versions."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    A crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json_object(path: str | os.PathLike, what: str = "file", *, error: type[Exception] = ConfigError,
                     missing: str = "") -> dict[str, Any]:
    """Read a JSON file that must hold an object, with one clear error per way it can fail.

    Args:
        path: the file.
        what: what it is, for the messages (``"layout file"``, ``"model card"``).
        error: the :class:`~patchlab.errors.PatchlabError` subclass to raise.
        missing: a hint appended to the not-found message (how to make one).
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}" + (f" ({missing})" if missing else ""))
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {p} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise error(f"{what} {p} must hold a JSON object")
    return d


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
