"""Where a command writes its results: checked before the work, written under a temporary name.

A command that scores videos for an hour or exports a model for minutes
checks its destinations first, so that a read-only folder or a file where a
folder is needed (or the reverse) is one line naming the option and the path
before anything is computed (:func:`check_file_destination`,
:func:`check_folder_destination`). Files are then written beside their
destination under a hidden temporary name and renamed into place once
complete (:func:`temporary_beside`), so the destination holds a whole file
or none. Torch-free: the command line calls these before importing the engine.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (what a ``mkdir(parents=True)`` would create in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _writable_folder(folder: Path) -> bool:
    # os.access asks the kernel: a read-only mount answers no even to root.
    return os.access(folder, os.W_OK | os.X_OK)


def check_folder_destination(path: str | os.PathLike, key: str) -> Path:
    """A folder the command will write files into (created with its parents where missing).

    Raises:
        ConfigError: ``path`` (or one of its parents) is a file, or the folder
            (or, for a folder still to create, its closest existing parent) is
            not writable; the message names ``key`` and the path.
    """
    path = Path(path)
    _check_folder(path, key, path)
    return path


def _check_folder(folder: Path, key: str, named: Path) -> None:
    """``folder`` (to hold or to be ``named``, the path the user gave) is, or can be made, a writable folder."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        if base == Path(os.path.abspath(named)):
            raise ConfigError(f"{key}: {named} is a file, not a folder; give a folder (or a new name)")
        raise ConfigError(f"{key}: {named} lies under the file {base}, which is not a folder; choose another path")
    if not _writable_folder(base):
        where = "" if base == Path(os.path.abspath(named)) else f" (to write {named})"
        raise ConfigError(f"{key}: cannot write into {base}{where}: read-only or no permission; "
                          f"choose a writable folder")


def check_file_destination(path: str | os.PathLike, key: str) -> Path:
    """A file the command will write (its folder created where missing); an existing file is replaced.

    Raises:
        ConfigError: ``path`` is a folder, a parent is a file, the folder is
            not writable, or the file exists and is read-only; names ``key`` and the path.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{key}: {path} is a folder; give the file to write (e.g. {path / 'NAME'} with its suffix)")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{key}: {path} exists and is read-only; choose another file or make it writable")
    _check_folder(path.parent, key, path)
    return path


def temporary_beside(path: str | os.PathLike) -> Path:
    """A hidden name in ``path``'s folder to write ``path`` under until it is complete (then ``os.replace``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class RunLock:
    """An exclusive, crash-safe lock on a run folder: :mod:`video_swin.engine.run_dir`'s docstring says how.

    Use as a context manager, on the main process only.
    """

    def __init__(self, folder: str | os.PathLike, *, subject: str | None = None,
                 advice: str = "choose another output_dir") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.subject = subject or f"output_dir {self.path.parent}"  # what the refusal names (prepare: its OUT)
        self.advice = advice
        self._fd: int | None = None
        self.created = False  # whether acquire created the lock file

    def acquire(self) -> None:
        """Takes the lock or raises ConfigError naming the run that holds it (or why the folder cannot hold a run)."""
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"output_dir {folder} is a file, not a folder; choose a folder for the run")
        self.created = not self.path.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"output_dir {folder}: cannot write in it ({e.strerror}); choose a writable folder "
                              f"for the run") from e
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise ConfigError(f"{self.subject}: cannot lock {self.path} ({e.strerror})") from e
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{self.subject} is in use by another run ({holder}); wait for it to end or {self.advice}"
            ) from None
        previous = _read_holder(fd)
        if previous != "unknown":
            log.info("took over %s from a run that is gone (%s)", self.path, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)  # fmt: skip
        self._fd = fd

    def release(self, *, discard: bool = False) -> None:
        """Releases the lock; with ``discard``, also removes the lock file if this lock created it
        (a run refused before it started leaves nothing in a folder that is not its own)."""
        if self._fd is not None:
            if discard and self.created:
                self.path.unlink(missing_ok=True)
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
    except (ValueError, TypeError, KeyError):
        return "unknown"


__all__ = ["LOCK_FILE", "RunLock", "check_file_destination", "check_folder_destination", "temporary_beside"]
