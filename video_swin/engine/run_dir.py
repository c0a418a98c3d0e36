"""The run folder (``output_dir``) on a shared cluster: one run at a time, nothing overwritten by accident.

* :class:`RunLock`: an exclusive lock on ``output_dir/.lock`` for as long as a
  run trains. A second run on the same folder is refused, naming the
  holder's host and pid. The lock is a POSIX record lock (``lockf``, also
  honoured by NFS), so a run that died (kill -9, a lost node) holds nothing
  and the next one takes over; the lock file's text only says who held it
  last. Unlike ``flock``, it is not inherited by forked processes, so a
  killed run's DataLoader workers, still exiting, do not keep it.
* :func:`prepare_folder`: a folder that already holds a run is refused unless
  the new run resumes it (``--resume``) or replaces it (``--overwrite``, which
  removes the old files with a line naming them).
* :func:`check_resume_config`: before resuming, the saved resolved config is
  compared with the new one; a change that would make the resumed run differ
  from an uninterrupted one is refused with a one-line diff, unless named in
  ``--allow-changes``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object

from ..errors import ConfigError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"

# Keys whose change leaves the weights of a resumed run those of an uninterrupted one:
# where things are written and how often, loader parallelism, evaluation, limits on
# broken data, the pretrained files (a resumed run takes its weights from the state),
# and how the same model is run (threads, torch.compile: equal within float rounding).
SAFE_CHANGES = (
    "output_dir", "data.num_workers", "data.shm_slots", "data.decode_timeout", "data.max_bad_fraction",
    "data.generate_demo", "train.log_every_steps", "train.save_every_steps", "train.keep_last",
    "train.max_nonfinite_steps", "train.threads", "train.compile", "model.pretrained_image", "model.pretrained_video", "eval",
)  # fmt: skip
# Written beside the config by the trainer, compared like config keys.
RUN_KEYS = ("world_size",)


class RunLock:
    """An exclusive, crash-safe lock on a run folder; see the module docstring.

    Use as a context manager, on the main process only.
    """

    def __init__(self, folder: str | os.PathLike, *, subject: str | None = None,
                 advice: str = "choose another output_dir") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.subject = subject or f"output_dir {self.path.parent}"  # what the refusal names (prepare: its OUT)
        self.advice = advice
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises ConfigError naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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

    def release(self) -> None:
        if self._fd is not None:
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


def on_main(accelerator: Accelerator, work: Callable[[], None]) -> None:
    """Runs ``work`` on the main process; if it raises ConfigError, every process raises it.

    Without the exchange the other processes would wait forever at the next
    barrier while the main process exits with the error.
    """
    failure = None
    if accelerator.is_main_process:
        try:
            work()
        except ConfigError as e:
            failure = str(e)
    failures = gather_object([failure]) if accelerator.num_processes > 1 else [failure]
    message = next((f for f in failures if f), None)
    if message is not None:
        raise ConfigError(message)


def prepare_folder(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuses a folder holding a run unless resuming; with ``overwrite``, removes that run's files first."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if resume or not folder.is_dir():
        return
    existing = sorted(p for p in folder.iterdir() if p.name != LOCK_FILE)
    if not existing:
        return
    names = ", ".join(p.name for p in existing[:6]) + (" ..." if len(existing) > 6 else "")
    if not overwrite:
        raise ConfigError(
            f"output_dir {folder} already holds a run ({names}); continue it with --resume, replace it with "
            f"--overwrite, or choose another output_dir"
        )
    print(f"--overwrite: removing the previous run's files in {folder}: {names}", flush=True)
    for path in existing:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _covered(key: str, names: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``names`` or lies in a section named there (``eval`` covers ``eval.views``)."""
    return any(key == n or key.startswith(n + ".") for n in names)


def config_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every config or run key that differs (nested data in, dotted keys out)."""
    a, b = flat(saved), flat(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if _covered(k, ("seed", "model", "data", "train", "optim", "sched",
                                                                "eval", "output_dir", *RUN_KEYS))]  # fmt: skip
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def check_resume_config(saved_file: Path, new: Mapping[str, Any], allow: Iterable[str] = ()) -> list[str]:
    """Refuses to resume with a config that breaks exactness; returns the accepted changes as text.

    Args:
        saved_file: ``config.yaml`` of the run folder (what the interrupted run trained with).
        new: the new resolved config with the run keys (``world_size``).
        allow: keys or sections (``--allow-changes``) whose change is accepted knowingly.

    Raises:
        ConfigError: a change to the model, data, batch size, accumulation,
            world size, schedule, optimizer or seed that ``allow`` does not
            name; or an unreadable saved config.
    """
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{saved_file}: cannot read the saved config to compare it ({' '.join(str(e).split())})") from e
    if not isinstance(saved, Mapping):
        raise ConfigError(f"{saved_file}: the saved config is not a mapping")
    allow = list(allow)
    refused, accepted = [], []
    for key, old, value in config_changes(saved, new):
        text = f"{key} {old!r} -> {value!r}"
        if _covered(key, SAFE_CHANGES) or _covered(key, allow):
            accepted.append(text)
        else:
            refused.append((key, text))
    if refused:
        keys = " ".join(dict.fromkeys(k for k, _ in refused))
        raise ConfigError(
            f"--resume: the config differs from the one the run was trained with ({saved_file}) in what changes "
            f"the result: {'; '.join(t for _, t in refused)}; restore those values, or accept the change knowingly "
            f"with --allow-changes {keys}"
        )
    return accepted
