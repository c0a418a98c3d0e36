"""Every exception the library raises on purpose, in one place.

Each is a user-facing condition with a one-line message naming what was
wrong; the ``video-swin`` command maps them to exit codes (see
:mod:`video_swin.cli`): a user mistake (config, checkpoint, resume) is exit
code 2, a run that cannot go on (non-finite losses, too many broken videos)
is exit code 1, a run stopped by a signal after saving its state
(:class:`Preempted`) exits with 128 + the signal. The modules that raise
them re-export them, so ``from video_swin.config import ConfigError`` keeps
working.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

_MAX_LISTED = 10


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message names the key or path."""


class AnnotationError(ConfigError):
    """Annotations or a dataset root that cannot be used as given (unlabelled or ambiguous rows,
    a file that is not a readable annotation list, a root too large to scan); names the file or folder."""


class CheckpointError(ValueError):
    """A weight file that cannot be used, with the reason."""


class ResumeError(RuntimeError):
    """A saved state that cannot be restored exactly."""


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite losses, a broken distributed launch, ...)."""


class ShardError(RuntimeError):
    """A WebDataset shard that cannot be read (damaged, truncated, or gone while a run streams it);
    names the shard and why. The data is broken, not the command: a run that cannot go on (exit 1)."""


class ShardLocationError(ShardError, ConfigError):
    """``data.shards`` names no readable shard of a split: a pattern or folder that matches nothing,
    or shards that cannot be reached when the run starts. A user mistake (exit 2); names the pattern."""


class Preempted(Exception):
    """Training stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after saving the state of ``step``.

    Not an error: the run continues with ``--resume``. The command exits
    with ``128 + signum`` (143 SIGTERM, 130 SIGINT, 138 SIGUSR1), the code
    the shell reports for a process ended by that signal, so wrappers that
    requeue on 143 keep working.

    Attributes:
        step: The optimizer step of the saved state.
        signum: The signal that asked the run to stop.
        process: This process's index when the run has several, else None.
    """

    def __init__(self, step: int, signum: int, process: int | None = None) -> None:
        import signal

        self.step, self.signum, self.process = int(step), int(signum), process
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        by = f" (process {process})" if process is not None else ""
        super().__init__(f"stopped by {name}{by}: saved step {self.step}; continue with --resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self):  # noqa: ANN204
        return (type(self), (self.step, self.signum, self.process))


class DecodeError(RuntimeError):
    """A video could not be decoded (missing, empty, truncated or not a video).

    Attributes:
        path: The file that failed.
        reason: A short human-readable cause.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # noqa: ANN204  (picklable across DataLoader workers with both arguments)
        return (type(self), (self.path, self.reason))


class TooManyBrokenVideos(RuntimeError):
    """More videos failed to decode than ``max_bad_fraction`` allows.

    Attributes:
        paths: The failed paths seen so far (first ones first).
    """

    def __init__(
        self, paths: Sequence[str], num_videos: int, max_bad_fraction: float, reasons: Mapping[str, str] | None = None
    ) -> None:
        self.paths = list(paths)
        self.num_videos, self.max_bad_fraction = num_videos, max_bad_fraction
        self.reasons = dict(reasons or {})
        listed = "\n  ".join(
            f"{p} ({self.reasons[p]})" if self.reasons.get(p) else p for p in self.paths[:_MAX_LISTED]
        )
        more = f"\n  ... and {len(self.paths) - _MAX_LISTED} more" if len(self.paths) > _MAX_LISTED else ""
        super().__init__(
            f"{len(self.paths)} of {num_videos} videos could not be decoded, more than "
            f"max_bad_fraction={max_bad_fraction:g} allows; first:\n  {listed}{more}\n"
            "Fix or remove these files, or raise data.max_bad_fraction."
        )

    def __reduce__(self):  # noqa: ANN204
        return (type(self), (self.paths, self.num_videos, self.max_bad_fraction, self.reasons))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The cause an exception gives, on one line, for a reason shown to users.

    FFmpeg's errors (PyAV, ``OSError`` subclasses) give their message without
    the errno and path; decord's lose their log prefix ("[12:34:56] /src/x.cc:171: ").
    """
    if isinstance(getattr(exc, "strerror", None), str):
        return exc.strerror[:limit]
    text = str(exc).strip().splitlines()
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text[0])[:limit] if text else type(exc).__name__


# Exit codes of the command line: user mistakes and runs that cannot go on.
USAGE_ERRORS = (ConfigError, CheckpointError, ResumeError, FileNotFoundError)
RUN_ERRORS = (TrainingError, TooManyBrokenVideos, ShardError)

__all__ = [
    "AnnotationError",
    "CheckpointError",
    "ConfigError",
    "DecodeError",
    "Preempted",
    "ResumeError",
    "RUN_ERRORS",
    "ShardError",
    "ShardLocationError",
    "TooManyBrokenVideos",
    "TrainingError",
    "USAGE_ERRORS",
    "first_line",
]
