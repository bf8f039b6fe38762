"""``patchlab eval``: judge patches (digital transfer, matrices, physical captures).

The digital commands live in :mod:`.eval_digital`, the physical ones in
:mod:`.eval_physical`; each attaches itself to :data:`app`.
"""

from __future__ import annotations

import typer

from . import eval_digital, eval_physical

app = typer.Typer(help="Judge patches: digital transfer, transfer matrices, physical captures.", no_args_is_help=True)

eval_digital.register(app)
eval_physical.register(app)
