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

import os
from pathlib import Path

from .errors import ConfigError


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


__all__ = ["check_file_destination", "check_folder_destination", "temporary_beside"]
