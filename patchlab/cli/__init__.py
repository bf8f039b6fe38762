"""The ``patchlab`` command line: thin Typer commands over library functions.

The error boundary (:class:`_PatchlabGroup`) is the one place where failures meet the
user:

* library errors (:class:`patchlab.PatchlabError`) become one line on stderr and exit
  code 1; so does any ``OSError`` that escaped a writer or reader (a full disk, a
  missing permission): ``error: PATH: CAUSE``;
* every numeric option of every command is checked once, as it is parsed, by
  :func:`patchlab.checks.check_number` (finite, and in the range the option's name has
  in :data:`patchlab.checks.OPTION_RANGES`); every path-like value naming a pipe or
  socket is refused (:func:`patchlab.checks.check_input_path`);

anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import warnings

import click
import typer
import typer.core

from ..errors import PatchlabError
from ._common import console, err_console


class _PatchlabGroup(typer.core.TyperGroup):
    """Top-level group: turns PatchlabError and OSError into ``error: ...`` and exit 1,
    and checks every subcommand's numeric and path values as they are parsed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, cmd in self.commands.items():
            _install_checks(cmd, name)

    def invoke(self, ctx: click.Context):
        _route_warnings()
        frame = _Frame()
        _FRAMES.append(frame)
        try:
            return super().invoke(ctx)
        except PatchlabError as exc:
            frame.settle(exc)
            _error(str(exc))
        except OSError as exc:
            from ..utils import os_error_text

            frame.settle(exc)
            _error(os_error_text(exc))
        except KeyboardInterrupt as exc:
            frame.settle(exc)
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except BaseException as exc:
            frame.settle(exc)
            raise
        finally:
            frame.release()
            _FRAMES.remove(frame)


def _error(message: str):
    from rich.markup import escape

    # escaped: a message's own brackets ("input_size [3, 0, 32]") are text, not rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


#: Commands whose ``--out`` is a folder they write for a while: the boundary locks it
#: (:class:`patchlab.locks.FolderLock`) as soon as ``--out`` is parsed, so a second
#: writer is turned away before any work ("... is in use by process N").
FOLDER_WRITERS = {
    "optimize": "run folder",
    "capture run": "capture folder",
    "eval matrix": "matrix folder",
    "world make": "world folder",
    "world train": "zoo folder",
    "demo": "demo folder",
    "attack": "attack run folder",
}


class _Frame:
    """One command invocation at the boundary: the folders it locked and the records it watches."""

    def __init__(self) -> None:
        from ..runs import OutputWatch

        self.watch = OutputWatch()
        self.locks: list = []
        self.shown: set[str] = set()

    def lock(self, folder, what: str) -> None:
        from ..locks import FolderLock

        self.locks.append(FolderLock(folder, what).acquire())

    def settle(self, exc: BaseException) -> None:
        """A failed command leaves no output folder claiming ``running`` (:class:`patchlab.runs.OutputWatch`)."""
        if (
            type(exc).__name__ == "Exit"
            and not getattr(exc, "exit_code", 1)
            or (isinstance(exc, SystemExit) and not exc.code)
        ):
            return  # a command that ended on purpose with success
        try:
            self.watch.settle(exc)
        except Exception:  # noqa: BLE001 - the safety net never hides the error itself
            pass

    def release(self) -> None:
        while self.locks:
            self.locks.pop().release()


_FRAMES: list[_Frame] = []


#: Video files patchlab writes (OpenCV's mp4v and MJPG writers).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv")


def _beside(*suffixes: str):
    return lambda out, params: [out.with_name(out.stem + s) for s in suffixes]


#: Files commands write, checked before the command runs: per command, the option that
#: names the file, the files written beside it, and the suffixes it may have. An
#: existing file is refused without ``--overwrite`` (:func:`patchlab.checks.check_overwrite`:
#: one convention for every command; commands without the flag are given one), and the
#: file's suffix and place are checked (:func:`patchlab.checks.check_output_file`) so a
#: wrong ``--record x.txt`` fails before the first frame, not after the last.
FILE_WRITERS = {
    "print patch": [("--out", _beside(".layout.json"), (".pdf",))],
    "print chart": [("--out", _beside(".layout.json"), (".pdf",))],
    "print board": [("--out", _beside(".layout.json"), (".pdf",))],
    "print check": [("--json", _beside(), (".json",))],
    "simulate capture": [
        (
            "--out",
            lambda out, params: [
                out.with_name(out.stem + s)
                for s in (".truth.jsonl", ".sim.json", ".camera.json")
                + (() if params.get("layout") else (".layout.json",))
            ],
            VIDEO_SUFFIXES,
        )
    ],
    "eval physical": [("--json", _beside(), (".json",))],
    "eval transfer": [("--json", _beside(), (".json",))],
    "eval compare": [("--json", _beside(), (".json",))],
    "capture run": [("--record", _beside(), VIDEO_SUFFIXES)],
}


def _install_checks(cmd, path: str = "") -> None:
    """Wrap each parameter's callback of ``cmd`` (and of its subcommands) with the boundary checks."""
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            _install_checks(sub, f"{path} {name}".strip())
        return
    if getattr(cmd, "_patchlab_checked", False):
        return
    cmd._patchlab_checked = True
    for param in cmd.params:
        param.callback = _checked_callback(param, param.callback)
    if path in FILE_WRITERS:
        _guard_file_outputs(cmd, FILE_WRITERS[path])


def _command_key(ctx) -> str:
    """``"capture run"``: the subcommand names under the root (whatever the program is called:
    ``patchlab``, ``python -m patchlab``, a test runner's name)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def _overwrite_option():
    """A ``--overwrite`` flag, built by Typer as it builds every other option."""
    t = typer.Typer()

    @t.command()
    def _cmd(overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist.")):
        pass

    return typer.main.get_command(t).params[0]


def _guard_file_outputs(cmd, outputs) -> None:
    """Before ``cmd`` runs: check each output file's place and suffix, and refuse to replace
    one that exists (or a file written beside it) unless ``--overwrite`` is given."""
    from pathlib import Path

    from ..checks import check_output_file, check_overwrite

    names = {o: p.name for p in cmd.params for o in (getattr(p, "opts", None) or [])}
    outputs = [(names[opt], opt, companions, suffixes) for opt, companions, suffixes in outputs if opt in names]
    if not outputs:
        return
    injected = not any(p.name == "overwrite" for p in cmd.params)
    if injected:
        cmd.params.append(_overwrite_option())
    inner = cmd.callback

    def callback(*args, **kwargs):
        overwrite = kwargs.pop("overwrite", False) if injected else kwargs.get("overwrite", False)
        for pname, opt, companions, suffixes in outputs:
            out = kwargs.get(pname)
            if out is None:
                continue
            out = check_output_file(Path(out), option=opt, suffixes=suffixes)
            check_overwrite([out, *companions(out, kwargs)], bool(overwrite))
        return inner(*args, **kwargs)

    cmd.callback = callback


def _checked_callback(param, inner):
    from pathlib import PurePath

    from ..checks import OPTION_RANGES, Range, check_input_path, check_number

    opts = list(getattr(param, "opts", None) or [])
    is_option = param.param_type_name == "option"
    name = opts[0] if (opts and is_option) else (param.name or "value").upper()
    rng = next((OPTION_RANGES[o] for o in opts if o in OPTION_RANGES), None) if is_option else None
    if rng is None and (getattr(param, "min", None) is not None or getattr(param, "max", None) is not None):
        rng = Range(param.min, param.max)

    watch = is_option and "--out" in opts
    is_output = is_option and any(o in ("--out", "--json", "--record", "--plots", "--palette") for o in opts)

    def check(ctx, value):
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            check_number(value, name, rng)
        elif isinstance(value, (str, PurePath)):
            check_input_path(value, name)
            if not is_output:
                _warn_if_unfinished(value)
            if watch and _FRAMES and not _secondary_rank():  # under torchrun rank 0 alone writes --out
                frame = _FRAMES[-1]
                what = FOLDER_WRITERS.get(_command_key(ctx))
                if what is not None:
                    frame.lock(value, what)
                frame.watch.watch(value)

    def callback(ctx, p, value):
        if not getattr(ctx, "resilient_parsing", False):
            for v in value if isinstance(value, (list, tuple)) else [value]:
                check(ctx, v)
        return inner(ctx, p, value) if inner is not None else value

    return callback


def _secondary_rank() -> bool:
    from ..distributed import secondary_rank

    return secondary_rank()


def _warn_if_unfinished(value) -> None:
    """Any run or capture folder given as input whose record says it did not finish: one warning line."""
    import os
    import warnings

    from ..runs import UnfinishedResultWarning, folder_status_note

    try:
        if not os.path.isdir(value):
            return
    except (TypeError, ValueError):
        return
    note = folder_status_note(value)
    if note:
        warnings.warn(note, UnfinishedResultWarning, stacklevel=2)


def _route_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        from rich.markup import escape

        text = str(message)
        shown = _FRAMES[0].shown if _FRAMES else set()
        if text in shown:  # the boundary and the library may both say it: once is enough
            return
        shown.add(text)

        err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

    warnings.showwarning = show


app = typer.Typer(
    cls=_PatchlabGroup,
    name="patchlab",
    help="Physical-world adversarial patches: optimise, print, calibrate, capture, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

from . import models as _models  # noqa: E402

app.add_typer(_models.app, name="models")

from . import calib as _calib, print_cmd as _print  # noqa: E402

app.add_typer(_print.app, name="print")
app.add_typer(_calib.app, name="calib")

# Each stage's commands live in their own module and attach themselves with
# ``register(app)`` (top-level commands) or as a sub-app, so stages grow without
# editing each other's files.
from . import capture as _capture, evaluate as _evaluate, optimize as _optimize, report as _report  # noqa: E402
from . import demo as _demo, simulate as _simulate, world as _world  # noqa: E402

_optimize.register(app)
app.add_typer(_evaluate.app, name="eval")
app.add_typer(_capture.app, name="capture")
app.add_typer(_simulate.app, name="simulate")
_report.register(app)
app.add_typer(_world.app, name="world")
_demo.register(app)
from . import attack as _attack  # noqa: E402

_attack.register(app)

from . import defend as _defend  # noqa: E402

app.add_typer(_defend.app, name="defend")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    threads: int = typer.Option(
        None,
        "--threads",
        help="Torch CPU threads (default: $PATCHLAB_THREADS, else the cores minus one).",
        show_default=False,
    ),
) -> None:
    import logging

    import torch

    from ..utils import default_threads

    if threads is not None and threads < 1:
        raise typer.BadParameter("--threads must be >= 1")
    torch.set_num_threads(threads or default_threads())

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    app()


__all__ = ["app", "main", "console"]
