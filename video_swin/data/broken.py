"""Accounting for videos that cannot be decoded.

A dataset handles a broken video where it meets it (in a DataLoader worker):
in training the sample is replaced, in evaluation it is marked invalid. Each
sample says what failed while it was built (``"failed"``: the paths, joined by
newlines, empty when nothing failed), so the main process can count failures
across all workers with :class:`BrokenVideoLog` and end each epoch with a count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


class TooManyBrokenVideos(RuntimeError):
    """More videos failed to decode than ``max_bad_fraction`` allows.

    Attributes:
        paths: The failed paths seen so far (first ones first).
    """

    def __init__(
        self, paths: Sequence[str], num_videos: int, max_bad_fraction: float, reasons: Mapping[str, str] | None = None
    ) -> None:
        self.paths = list(paths)
        reasons = reasons or {}
        listed = "\n  ".join(f"{p} ({reasons[p]})" if p in reasons else p for p in self.paths[:_MAX_LISTED])
        more = f"\n  ... and {len(self.paths) - _MAX_LISTED} more" if len(self.paths) > _MAX_LISTED else ""
        super().__init__(
            f"{len(self.paths)} of {num_videos} videos could not be decoded, more than "
            f"max_bad_fraction={max_bad_fraction:g} allows; first:\n  {listed}{more}\n"
            "Fix or remove these files, or raise data.max_bad_fraction."
        )


def too_many(num_bad: int, num_videos: int, max_bad_fraction: float) -> bool:
    """Whether ``num_bad`` failures out of ``num_videos`` exceed the allowed fraction."""
    return num_bad > max_bad_fraction * num_videos


def failed_paths(batch: Mapping) -> list[str]:
    """Paths that failed while building a collated batch (or a single sample)."""
    failed = batch.get("failed", "")
    entries = [failed] if isinstance(failed, str) else list(failed)
    return [p for entry in entries for p in entry.split("\n") if p]


class BrokenVideoLog:
    """Counts broken videos reported by batches, across workers, per epoch and in total.

    Args:
        num_videos: Size of the dataset.
        max_bad_fraction: Largest allowed fraction of distinct broken videos.

    Example:
        >>> log = BrokenVideoLog(len(dataset), 0.05)
        >>> for batch in loader:
        ...     log.update(batch)          # raises TooManyBrokenVideos past the limit
        >>> log.end_epoch(epoch)           # logs the count, returns it
    """

    def __init__(self, num_videos: int, max_bad_fraction: float = 0.05) -> None:
        self.num_videos = num_videos
        self.max_bad_fraction = max_bad_fraction
        self._seen: dict[str, None] = {}  # insertion-ordered set
        self._epoch: dict[str, None] = {}

    @property
    def paths(self) -> list[str]:
        """Every distinct broken path seen, in order of first report."""
        return list(self._seen)

    def add(self, paths: Iterable[str]) -> None:
        """Records failed paths; raises :class:`TooManyBrokenVideos` past the limit."""
        for path in paths:
            self._epoch.setdefault(path)
            self._seen.setdefault(path)
        if too_many(len(self._seen), self.num_videos, self.max_bad_fraction):
            raise TooManyBrokenVideos(self.paths, self.num_videos, self.max_bad_fraction)

    def update(self, batch: Mapping) -> None:
        """Records the failures reported in a batch's ``"failed"`` field."""
        self.add(failed_paths(batch))

    def end_epoch(self, epoch: int | None = None) -> int:
        """Logs how many distinct videos failed this epoch, resets the epoch count, returns it."""
        count = len(self._epoch)
        where = f"epoch {epoch}: " if epoch is not None else ""
        if count:
            logger.warning(
                "%s%d video(s) could not be decoded; first: %s",
                where, count, ", ".join(list(self._epoch)[:_MAX_LISTED]),
            )  # fmt: skip
        else:
            logger.info("%sno broken videos", where)
        self._epoch = {}
        return count
