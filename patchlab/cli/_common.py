"""Shared CLI helpers: consoles, progress bars, device option."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)

DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N."


@contextmanager
def task_progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """One rich display on stderr for several tasks; yields ``start(description, total) -> advance(n)``
    (the progress factory the world and zoo builders take)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as prog:

        def start(description: str, total: int) -> Callable[[int], None]:
            task = prog.add_task(description, total=total)
            return lambda n=1: prog.advance(task, n)

        yield start


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    with task_progress() as start:
        yield start(description, total)


def rank_progress_bar(is_main: bool, description: str, total: int | None):
    """:func:`progress_bar` on torchrun's rank 0 (or in one process); a silent ``advance`` on the other ranks."""
    if is_main:
        return progress_bar(description, total)
    from contextlib import nullcontext

    return nullcontext(lambda n=1: None)


def command_line(ctx) -> list[str]:
    """The command as typed, rebuilt from what click parsed (for run records).

    ``sys.argv`` is the host program's under a test runner or a library caller;
    this is the ``patchlab`` command itself: its path and every parameter the user
    gave on the command line (defaults left out, since the record holds the
    resolved config anyway).
    """
    out = ["patchlab", *ctx.command_path.split()[1:]]
    for p in ctx.command.params:
        if not from_command_line(ctx, p.name):
            continue
        v = ctx.params[p.name]
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if not getattr(p, "opts", None) or p.param_type_name == "argument":
            out += [str(x) for x in values]
        elif getattr(p, "is_flag", False):
            names = p.opts if v else (p.secondary_opts or p.opts)
            out.append(names[0])
        else:
            for x in values:
                out += [p.opts[0], str(x)]
    return out


def from_command_line(ctx, name: str) -> bool:
    """Whether parameter ``name`` was typed on the command line (not a default).

    Compared by name: Typer ships its own copy of click, whose ``ParameterSource``
    enum is not the one ``import click`` gives.
    """
    return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
