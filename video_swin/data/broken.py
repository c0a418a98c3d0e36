"""Accounting for videos that cannot be decoded.

A dataset handles a broken video where it meets it (in a DataLoader worker):
in training the sample is replaced, in evaluation it is marked invalid. Each
sample lists what failed while it was built as :class:`DecodeFailure` records
under ``"failures"`` (empty when nothing failed); a batch carries the flat list
of its samples' records (:func:`~video_swin.data.collate.collate`). The main
process counts them across all workers with :class:`BrokenVideoLog` and ends
each epoch naming every broken video once, with its reason.

The limit (``max_bad_fraction``) is enforced in the process that iterates
the DataLoader: a dataset raises :class:`TooManyBrokenVideos` itself only
when it is read there (``num_workers=0``); in a DataLoader worker it keeps
going and :meth:`BrokenVideoLog.update` raises it for the batch that crosses
the limit. An exception raised in a worker would reach the main process as
torch's ``Caught ... in DataLoader worker process N`` with the worker's
traceback instead of the list of files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import DecodeError, TooManyBrokenVideos, TrainingError

logger = logging.getLogger(__name__)

FAILURES = "failures"  # the sample and batch key of the failure records
_MAX_LISTED = 10


@dataclass(frozen=True)
class DecodeFailure:
    """A video that could not be decoded while a sample was built.

    Attributes:
        path: The file, as the annotations name it.
        reason: Why, in a few words ("" where none was given).
        gave_up: Set on the last record of a training sample for which no
            decodable video was found in ``max_attempts`` tries; the sample holds
            a zero video and :meth:`BrokenVideoLog.add` stops the run.
    """

    path: str
    reason: str = ""
    gave_up: bool = False

    @classmethod
    def from_error(cls, error: DecodeError) -> DecodeFailure:
        return cls(error.path, error.reason)


def too_many(num_bad: int, num_videos: int, max_bad_fraction: float) -> bool:
    """Whether ``num_bad`` failures out of ``num_videos`` exceed the allowed fraction."""
    return num_bad > max_bad_fraction * num_videos


class BrokenVideoLog:
    """Counts broken videos reported by batches, across workers, per epoch and in total.

    :meth:`end_epoch` names every video that failed in the epoch once, with its
    reason, however many workers or replacement attempts met it. With
    DataLoader workers, :meth:`update` is where ``max_bad_fraction`` is
    enforced (the datasets do not raise in a worker).

    Args:
        num_videos: Size of the dataset.
        max_bad_fraction: Largest allowed fraction of distinct broken videos (None: no limit, only logging).

    Example:
        >>> log = BrokenVideoLog(len(dataset), 0.05)
        >>> for batch in loader:
        ...     log.update(batch)          # raises TooManyBrokenVideos past the limit
        >>> log.end_epoch(epoch)           # logs the count, returns it
    """

    def __init__(self, num_videos: int, max_bad_fraction: float | None = 0.05) -> None:
        self.num_videos = num_videos
        self.max_bad_fraction = max_bad_fraction
        self._seen: dict[str, str] = {}  # path -> reason, in order of first report
        self._epoch: dict[str, str] = {}

    @property
    def paths(self) -> list[str]:
        """Every distinct broken path seen, in order of first report."""
        return list(self._seen)

    @property
    def reasons(self) -> dict[str, str]:
        """``{path: reason}`` of every distinct broken video seen ("" where no reason was reported)."""
        return dict(self._seen)

    def add(self, failures: Iterable[DecodeFailure]) -> None:
        """Records failures.

        Raises:
            TooManyBrokenVideos: More distinct broken videos than ``max_bad_fraction`` allows.
            TrainingError: A training sample found no decodable video (a record with ``gave_up``).
        """
        failures = list(failures)
        for failure in failures:
            for seen in (self._epoch, self._seen):
                if not seen.get(failure.path):  # a reason given later fills in a missing one
                    seen[failure.path] = failure.reason
        if self.max_bad_fraction is not None and too_many(len(self._seen), self.num_videos, self.max_bad_fraction):
            raise TooManyBrokenVideos(self.paths, self.num_videos, self.max_bad_fraction, self._seen)
        if any(failure.gave_up for failure in failures):
            listed = "".join(f"\n  {path} ({_one_line(reason) or 'no reason given'})"
                             for path, reason in list(self._seen.items())[:_MAX_LISTED])  # fmt: skip
            more = f"\n  ... and {len(self._seen) - _MAX_LISTED} more" if len(self._seen) > _MAX_LISTED else ""
            raise TrainingError(
                f"a training sample found no decodable video in its tries; {len(self._seen)} of "
                f"{self.num_videos} videos could not be decoded so far:{listed}{more}\nFix or remove these files."
            )

    def update(self, batch: Mapping) -> None:
        """Records the failures a batch (or a single sample) reports: its ``"failures"`` records."""
        self.add(batch.get(FAILURES, ()))

    def end_epoch(self, epoch: int | str | None = None) -> int:
        """Logs every distinct video that failed this epoch with its reason; resets the epoch; returns the count.

        Args:
            epoch: the epoch number, or a label for the pass (e.g. ``"val"``), shown in the log line.
        """
        count = len(self._epoch)
        where = f"epoch {epoch}: " if isinstance(epoch, int) else f"{epoch}: " if epoch else ""
        if count:
            named = "".join(
                f"\n  {path} ({_one_line(reason) or 'no reason given'})" for path, reason in self._epoch.items()
            )
            logger.warning("%s%d video(s) could not be decoded:%s", where, count, named)
        else:
            logger.info("%sno broken videos", where)
        self._epoch = {}
        return count


def _one_line(text: str) -> str:
    return " ".join(text.split())  # one log line per video, whatever the decoder's message held
