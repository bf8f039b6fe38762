"""The ``patchlab`` command line: thin Typer commands over library functions.

Library errors (:class:`patchlab.PatchlabError`) become one line on stderr and exit
code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import warnings

import click
import typer
import typer.core

from ..errors import PatchlabError
from ._common import console, err_console


class _PatchlabGroup(typer.core.TyperGroup):
    """Top-level group: turns PatchlabError into ``error: ...`` and exit 1."""

    def invoke(self, ctx: click.Context):
        _route_warnings()
        try:
            return super().invoke(ctx)
        except PatchlabError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None


def _route_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

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

from . import defend as _defend  # noqa: E402

app.add_typer(_defend.app, name="defend")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    threads: int = typer.Option(None, "--threads", help="Torch CPU threads (default: $PATCHLAB_THREADS, "
                                                        "else the cores minus one).", show_default=False),
) -> None:
    import logging

    import torch

    from ..utils import default_threads

    if threads is not None and threads < 1:
        raise typer.BadParameter("--threads must be >= 1")
    torch.set_num_threads(threads or default_threads())

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    app()


__all__ = ["app", "main", "console"]
