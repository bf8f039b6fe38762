"""``python -m patchlab`` (and ``torchrun -m patchlab``): the ``patchlab`` command.

The program name is fixed to ``patchlab`` so that run records hold ``patchlab optimize ...``
whichever way the command was started (click would otherwise name it ``python -m patchlab``).
"""

from patchlab.cli import app

if __name__ == "__main__":
    app(prog_name="patchlab")
