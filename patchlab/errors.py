"""Exception hierarchy.

Library code raises :class:`PatchlabError` subclasses with a message a user can act
on; only the CLI turns them into one line on stderr and exit code 1.
"""

from __future__ import annotations


class PatchlabError(Exception):
    """Base class of every error patchlab raises on purpose."""


class ModelLoadError(PatchlabError):
    """A model reference, card or weights file cannot be turned into a model."""


class DataError(PatchlabError):
    """A data folder, image or label set cannot be used."""


class ConfigError(PatchlabError):
    """An option, config file or combination of options is invalid."""


class WriteError(PatchlabError):
    """An output cannot be written (full disk, no permission, a file where a folder should be...).

    The message names the path and the cause in one line; see
    :func:`patchlab.utils.writing`, which turns every ``OSError`` into one.
    """


class FolderInUse(PatchlabError):
    """A run or capture folder is held by another live process (see :mod:`patchlab.locks`)."""
