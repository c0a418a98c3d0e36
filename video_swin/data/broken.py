"""Accounting for videos that cannot be decoded.

A dataset handles a broken video where it meets it (in a DataLoader worker):
in training the sample is replaced, in evaluation it is marked invalid. Each
sample says what failed while it was built (``"failed"``: the paths, joined by
newlines, empty when nothing failed; ``"failed_reasons"``: why, line by line),
so the main process can count failures across all workers with
:class:`BrokenVideoLog` and end each epoch naming every broken video once,
with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from ..errors import TooManyBrokenVideos

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


def too_many(num_bad: int, num_videos: int, max_bad_fraction: float) -> bool:
    """Whether ``num_bad`` failures out of ``num_videos`` exceed the allowed fraction."""
    return num_bad > max_bad_fraction * num_videos


def _entries(batch: Mapping, key: str) -> list[str]:
    value = batch.get(key, "")
    return [value] if isinstance(value, str) else list(value)


def failed_paths(batch: Mapping) -> list[str]:
    """Paths that failed while building a collated batch (or a single sample)."""
    return [p for entry in _entries(batch, "failed") for p in entry.split("\n") if p]


def failed_reasons(batch: Mapping) -> dict[str, str]:
    """``{path: reason}`` of the failures in a collated batch (or a single sample); "" where none was given."""
    out: dict[str, str] = {}
    paths, reasons = _entries(batch, "failed"), _entries(batch, "failed_reasons")
    reasons += [""] * (len(paths) - len(reasons))
    for path_entry, reason_entry in zip(paths, reasons):
        entry_reasons = reason_entry.split("\n") if reason_entry else []
        for i, path in enumerate(p for p in path_entry.split("\n") if p):
            out.setdefault(path, entry_reasons[i] if i < len(entry_reasons) else "")
    return out


class BrokenVideoLog:
    """Counts broken videos reported by batches, across workers, per epoch and in total.

    :meth:`end_epoch` names every video that failed in the epoch once, with its
    reason, however many workers or replacement attempts met it.

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

    def add(self, paths: Iterable[str], reasons: Mapping[str, str] | None = None) -> None:
        """Records failed paths (and why); raises :class:`TooManyBrokenVideos` past the limit."""
        reasons = reasons or {}
        for path in paths:
            reason = reasons.get(path, "")
            for seen in (self._epoch, self._seen):
                if not seen.get(path):
                    seen[path] = reason
        if self.max_bad_fraction is not None and too_many(len(self._seen), self.num_videos, self.max_bad_fraction):
            raise TooManyBrokenVideos(self.paths, self.num_videos, self.max_bad_fraction, self._seen)

    def update(self, batch: Mapping) -> None:
        """Records the failures reported in a batch's ``"failed"`` and ``"failed_reasons"`` fields."""
        self.add(failed_paths(batch), failed_reasons(batch))

    def end_epoch(self, epoch: int | str | None = None) -> int:
        """Logs every distinct video that failed this epoch with its reason; resets the epoch; returns the count.

        Args:
            epoch: the epoch number, or a label for the pass (e.g. ``"val"``), shown in the log line.
        """
        count = len(self._epoch)
        where = f"epoch {epoch}: " if isinstance(epoch, int) else f"{epoch}: " if epoch else ""
        if count:
            named = "".join(f"\n  {path} ({reason or 'no reason given'})" for path, reason in self._epoch.items())
            logger.warning("%s%d video(s) could not be decoded:%s", where, count, named)
        else:
            logger.info("%sno broken videos", where)
        self._epoch = {}
        return count
