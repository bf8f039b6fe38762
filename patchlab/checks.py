"""Checks at the boundary: numbers, inputs that could hang, outputs that exist.

One helper per family, used by every command and by the model-card reader:

* :func:`check_number` — finite, in range, integer when it must be, with the
  option's (or card field's) name in the one-line message. The CLI's error boundary
  (:mod:`patchlab.cli`) runs it on every numeric option of every command, with the
  range from :data:`OPTION_RANGES` (one table, by option name) or from the option's
  own ``min=``/``max=``, so ``--fps nan`` or ``--batch-size 0`` never reach a library;
* :func:`check_input_path` — refuses FIFOs and sockets (opening one for reading
  blocks for ever) wherever a path is given;
* :func:`check_overwrite` — the one ``--overwrite`` convention: an existing output
  is replaced only when asked;
* :func:`check_output_file` — an output file's suffix and place are checked before
  the work that produces it (``--record x.txt`` fails before the first frame).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import ConfigError
from .utils import is_special_file


@dataclass(frozen=True)
class Range:
    """A numeric range: bounds (None = open-ended), whether each bound is included,
    and whether the value must be a whole number."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def contains(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def describe(self) -> str:
        kind = "an integer " if self.integer else ""
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{kind}{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{kind}{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return "a finite number"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


#: Shorthands for the table below.
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1, integer=True)
FRACTION = Range(0, 1, lo_open=True, hi_open=True)

#: Ranges of numeric command-line options, by option name, for every command that has
#: the option (one place: a new command with ``--fps`` is checked like the others).
#: Options not listed are still checked to be finite.
OPTION_RANGES: dict[str, Range] = {
    "--batch-size": COUNT,
    "--checkpoint-every": COUNT,
    "--copies": COUNT,
    "--log-every": COUNT,
    "--limit-per-class": COUNT,
    "--max-frames": COUNT,
    "--min-corners": Range(4, integer=True),
    "--min-markers": COUNT,
    "--min-views": Range(3, integer=True),
    "--n-bins": COUNT,
    "--n-per-class": Range(2, integer=True),
    "--patch-px": COUNT,
    "--projections": COUNT,
    "--projection-bank": Range(0, integer=True),
    "--scene-frames": COUNT,
    "--scenes-per-class": Range(0, integer=True),
    "--frames": COUNT,
    "--knots": COUNT,
    "--steps": COUNT,
    "--swatches": COUNT,
    "--target-images": COUNT,
    "--threads": COUNT,
    "--workers": COUNT,
    "--seed": Range(0, integer=True),
    "--dpi": POSITIVE,
    "--fps": POSITIVE,
    "--lr": POSITIVE,
    "--size-mm": POSITIVE,
    "--square-mm": POSITIVE,
    "--swatch-mm": POSITIVE,
    "--tv": NON_NEGATIVE,
    "--nps-weight": NON_NEGATIVE,
    "--holdout": FRACTION,
    "--holdout-frac": Range(0, 1, hi_open=True),
    "--patch-frac": FRACTION,
    "--val-frac": FRACTION,
    "--roi-frac": Range(0, 1, lo_open=True),
    "--marker-ratio": FRACTION,
}


def check_number(value: Any, name: str, rng: Range | None = None, *, error: type[Exception] = ConfigError) -> Any:
    """Check one number given at a boundary; return it unchanged.

    Args:
        value: the number (``bool`` is refused; ``None`` is left for the caller).
        name: what it is, as the user wrote it (``--fps``, ``model card m.json: std[0]``).
        rng: its range; None checks only that it is finite.
        error: the exception raised (``ConfigError`` for options, ``ValueError`` in
            library contracts).

    Raises:
        ``error``: ``"--fps must be > 0, got nan"`` and the like, in one line.
    """
    rng = rng or Range()
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be {'an integer' if rng.integer else 'a number'}, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise error(
            f"{name} must be a finite number{'' if rng.describe() == 'a finite number' else ' ' + rng.describe()}"
            f", got {value}"
        )
    if rng.integer and not v.is_integer():
        raise error(f"{name} must be an integer, got {value}")
    if not rng.contains(v):
        raise error(f"{name} must be {rng.describe()}, got {value}")
    return value


def check_numbers(
    values: Iterable[Any], name: str, rng: Range | None = None, *, error: type[Exception] = ConfigError
) -> list[Any]:
    """:func:`check_number` on each of ``values``; a list's item is named ``name[i]``."""
    return [check_number(v, f"{name}[{i}]", rng, error=error) for i, v in enumerate(values)]


def check_input_path(path: str | os.PathLike | None, name: str = "path") -> None:
    """Refuse a FIFO or a socket as input: reading one blocks until a writer appears."""
    if path is None:
        return
    try:
        p = os.fspath(path)
    except TypeError:
        return
    if p and is_special_file(p):
        raise ConfigError(
            f"{name} {p} is a pipe or socket, not a file: patchlab reads regular files, folders "
            "and camera devices (a pipe would block for ever)"
        )


def check_overwrite(paths: Path | str | Sequence[Path | str], overwrite: bool, *, option: str = "--overwrite") -> None:
    """The one ``--overwrite`` convention: refuse to replace existing outputs unless asked.

    Args:
        paths: the output file(s) a command is about to write.
        overwrite: the command's ``--overwrite`` flag.

    Raises:
        ConfigError: naming the first existing output and the flag.
    """
    if overwrite:
        return
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
        p = Path(p)
        if p.exists() or p.is_symlink():
            raise ConfigError(f"{p} already exists: choose another output or pass {option} to replace it")


def check_output_file(path: str | os.PathLike, *, option: str = "--out", suffixes: Sequence[str] = ()) -> Path:
    """Check an output file before the work that writes it: suffix, not a folder, and a
    parent that is (or can become) a folder.

    Raises:
        ConfigError: in one line naming the option.
    """
    p = Path(path)
    if suffixes and p.suffix.lower() not in {s.lower() for s in suffixes}:
        names = suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
        raise ConfigError(f"{option} must name a {names} file, got {p}")
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder; name a file")
    for parent in [p.parent, *p.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {p}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {p}: cannot write in {parent} (permission denied)")
            break
    return p


__all__ = [
    "Range",
    "OPTION_RANGES",
    "POSITIVE",
    "NON_NEGATIVE",
    "COUNT",
    "FRACTION",
    "check_number",
    "check_numbers",
    "check_input_path",
    "check_overwrite",
    "check_output_file",
]
