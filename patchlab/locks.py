"""One writer per output folder: an exclusive ``fcntl`` lock with the holder's process id.

A run folder (``patchlab optimize --out``) or a capture folder (``patchlab capture run
--out``) is written by one process at a time. :class:`FolderLock` takes an exclusive
``flock`` on a lock file beside the folder, ``PARENT/.NAME.patchlab-lock`` (beside, not
inside: a folder's contents stay the command's own, and a folder swapped into place
by a rename keeps its lock), and writes its process id there:

* a second writer (a second ``optimize`` into the same ``--out``, a ``--resume`` of a
  run still going) gets one line, ``... is in use by process N``, and exit 1;
* the kernel drops the lock when its process ends, however it ends (Ctrl-C, an
  exception, ``kill -9``), so a lock file left by a dead process is stale: the next
  writer takes it over and writes its own id;
* :func:`lock_holder` tells a reader whether a folder whose record says ``running``
  is still being written (and by whom) or was left by a process that died.

The lock file is removed on release (a writer that finds it replaced after locking
retries, so removal cannot let two writers in). ``flock`` locks belong to an open
file description, so two writers in one process (two ``CliRunner`` calls in a test)
exclude each other just as two processes do.

The CLI takes this lock for every command that writes a folder
(:data:`patchlab.cli.FOLDER_WRITERS`) as soon as ``--out`` is parsed; library callers
use :class:`FolderLock` or :func:`patchlab.runs.writing_folder`.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from .errors import FolderInUse
from .utils import make_folder, os_error_text, writing

#: Suffix of a lock file; the lock of ``PARENT/NAME`` is ``PARENT/.NAME`` + this.
LOCK_SUFFIX = ".patchlab-lock"
#: A lock file inside a folder (an older layout) is ignored when the folder's emptiness is judged.
LOCK_NAME = ".patchlab.lock"


#: lock files this process holds, with how many FolderLock objects hold each
_HELD: dict[Path, int] = {}


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``PARENT/.NAME.patchlab-lock``."""
    p = Path(os.path.abspath(folder))
    return p.parent / f".{p.name}{LOCK_SUFFIX}"


class FolderLock:
    """Exclusive writer lock on a folder; a context manager.

    Args:
        folder: the folder (created if missing).
        what: what the folder is, for the message (``"run folder"``).

    Raises:
        FolderInUse: another live process holds the folder.
        WriteError: the folder or its lock file cannot be created.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder", *, reentrant: bool = False) -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = lock_path(self.folder)
        #: join a lock this process already holds on the folder (the CLI takes it as ``--out`` is
        #: parsed; the library writer inside the command then joins it instead of meeting itself)
        self.reentrant = reentrant
        self._fd: int | None = None
        self._joined = False
        #: process id of a dead previous holder whose stale lock was taken over, if any
        self.took_over_from: int | None = None

    def __repr__(self) -> str:
        return f"FolderLock(folder={str(self.folder)!r}, what={self.what!r}, held={self.held})"

    @property
    def held(self) -> bool:
        return self._fd is not None or self._joined

    def acquire(self) -> "FolderLock":
        if self.held:
            return self
        if self.reentrant and _HELD.get(self.path):
            self._joined = True
            return self
        if self.folder.exists() and not self.folder.is_dir():
            return self._file_in_the_way()
        make_folder(self.path.parent, "folder")
        for _ in range(50):
            with writing(self.path, f"the lock file of {self.what}"):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock_soon(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    pid = _read_pid(self.path)
                    who = f"process {pid}" if pid else "another process"
                    raise FolderInUse(
                        f"{self.what} {self.folder} is in use by {who}: wait for it to finish, stop "
                        "it, or write to another folder"
                    ) from None
                raise FolderInUse(f"cannot lock {self.what} {os_error_text(exc, self.path)}") from exc
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder released and removed it between our open and our lock: try again
        else:  # pragma: no cover - 50 races in a row
            raise FolderInUse(f"cannot lock {self.what} {self.folder}: its lock file keeps changing")
        old = _read_pid(self.path)
        if old and old != os.getpid():
            self.took_over_from = old
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only the id is not shown
            pass
        self._fd = fd
        _HELD[self.path] = _HELD.get(self.path, 0) + 1
        return self

    def _file_in_the_way(self) -> "FolderLock":
        from .errors import WriteError

        raise WriteError(f"cannot write {self.what} {self.folder}: it exists and is not a folder")

    def release(self) -> None:
        if self._joined:
            self._joined = False
            return
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD[self.path] = _HELD.get(self.path, 1) - 1
        if _HELD[self.path] <= 0:
            del _HELD[self.path]
        try:
            if _same_file(fd, self.path):
                self.path.unlink()  # still locked: a writer that opened it meanwhile sees it gone and retries
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _lock_soon(fd: int, tries: int = 5, wait_s: float = 0.02) -> None:
    """``LOCK_EX`` without blocking, tried a few times: a reader's probe (:func:`lock_holder`)
    holds a shared lock for microseconds and must not turn a writer away."""
    import time

    for k in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or k == tries - 1:
                raise
            time.sleep(wait_s)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_holder(folder: str | os.PathLike) -> int | None:
    """Process id of the live process writing ``folder``, or None when nobody holds it.

    Probes the lock without taking it for longer than the probe; a lock file left by a
    dead process reads as None (stale).
    """
    path = lock_path(folder)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(path) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def folder_is_empty(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds nothing but patchlab's lock file (a missing folder is empty)."""
    p = Path(folder)
    if not p.is_dir():
        return True
    return all(c.name == LOCK_NAME for c in p.iterdir())


__all__ = ["FolderLock", "LOCK_NAME", "LOCK_SUFFIX", "lock_path", "lock_holder", "folder_is_empty"]
