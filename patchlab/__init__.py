"""patchlab: physical-world adversarial patches, from optimisation to a scored camera.

Core package. The stage packages (``patchlab.calib``, ``patchlab.print``,
``patchlab.capture``, ``patchlab.eval``) live in the repository's top-level stage
folders and depend on this core; the core never imports a stage.
"""

__version__ = "0.1.0"

from .errors import ConfigError, DataError, ModelLoadError, PatchlabError  # noqa: E402

__all__ = ["__version__", "PatchlabError", "ModelLoadError", "DataError", "ConfigError"]
