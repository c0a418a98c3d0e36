"""A stratified, seeded validation split of the training videos, written as annotation files.

Where a dataset comes without validation annotations (``data.val_annotations:
null``, e.g. a folder per class), a share of each class's videos is held out.
The split is written as mmaction lists (``relative/path.mp4 label_index``, with
``classes.txt`` beside them; :func:`~video_swin.data.annotations.read_annotations`
reads them), so that it is visible, and a resumed run reads the same files
instead of drawing again. The mmaction list rather than a Kinetics CSV: the
CSV finds a video by its file name, and class folders often repeat names
(``0001.mp4`` in every class); a list line holds the path itself. Labels are
class indices because class names may hold spaces, which end a list line's path.

Each class is drawn from its own generator, seeded by (seed, class name), so
that adding a class leaves the other classes' draws as they were.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import ConfigError
from .annotations import VideoRecord, _mmaction_rows, build_classes, read_annotations, read_class_file, resolve_labels

logger = logging.getLogger(__name__)

TRAIN_FILE, VAL_FILE, CLASSES_FILE = "train.txt", "val.txt", "classes.txt"
_SHOWN = 5


@dataclass(frozen=True)
class Split:
    """Training and held-out videos (``label``: the class index into ``classes``)."""

    train: list[VideoRecord]
    val: list[VideoRecord]
    classes: list[str]


class SplitFiles(NamedTuple):
    """The lists a run trains and validates on, and one line saying what the split is."""

    train: Path
    val: Path
    summary: str


def val_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` videos are held out: ``fraction * n`` rounded half up, at least one
    where the class has two or more videos, and never all of them (a class keeps one training video)."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.floor(fraction * n + 0.5)))


def stratified_split(records: Sequence[VideoRecord], classes: Sequence[str], fraction: float, seed: int) -> Split:
    """Holds out :func:`val_count` videos of each class, drawn by a generator seeded with (seed, class name).

    Args:
        records: labelled videos; labels are class indices into ``classes``.
        classes: the class names.
        fraction: share of each class held out.
        seed: the draw's seed.

    Returns:
        The split; both lists in path order within each class, classes in their order.
    """
    by_class: dict[int, list[VideoRecord]] = {}
    for r in records:
        by_class.setdefault(int(r.label), []).append(r)  # type: ignore[arg-type]
    train: list[VideoRecord] = []
    val: list[VideoRecord] = []
    for index in sorted(by_class):
        videos = sorted(by_class[index], key=lambda r: r.path)
        # A string seed is hashed by SHA-512 (random.seed, version 2): the same draw in every process and run.
        rng = random.Random(f"{seed}/{classes[index]}")
        held = set(rng.sample(range(len(videos)), val_count(len(videos), fraction)))
        for i, r in enumerate(videos):
            (val if i in held else train).append(r)
    return Split(train, val, list(classes))


def _line_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` when it lies under it, else absolute; never read as a comment."""
    rel = os.path.relpath(path, root)
    if rel.startswith(os.pardir):
        rel = os.path.abspath(path)
    return f".{os.sep}{rel}" if rel.startswith("#") else rel


def _write_list(path: Path, records: Sequence[VideoRecord], root: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{_line_path(r.path, root)} {r.label}\n" for r in records), encoding="utf-8")
    tmp.replace(path)  # complete or absent


def write_split(split: Split, folder: str | Path, root: str | Path) -> tuple[Path, Path]:
    """Writes ``folder/train.txt``, ``folder/val.txt`` and ``folder/classes.txt``; returns the two lists."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real_root = os.path.realpath(root)
    (folder / CLASSES_FILE).write_text("".join(c + "\n" for c in split.classes), encoding="utf-8")
    _write_list(folder / TRAIN_FILE, split.train, real_root)
    _write_list(folder / VAL_FILE, split.val, real_root)
    return folder / TRAIN_FILE, folder / VAL_FILE


def split_files(folder: str | Path) -> tuple[Path, Path]:
    """The training and validation lists of a split folder."""
    return Path(folder) / TRAIN_FILE, Path(folder) / VAL_FILE


def _written_paths(folder: Path, root: str | Path) -> set[str]:
    """Real paths of every video a written split lists."""
    paths = set()
    for name in (TRAIN_FILE, VAL_FILE):
        for rel, _ in _mmaction_rows(folder / name):
            paths.add(os.path.realpath(Path(root) / rel))  # an absolute rel stays itself
    return paths


def _names(paths: Sequence[str]) -> str:
    return ", ".join(paths[:_SHOWN]) + (" ..." if len(paths) > _SHOWN else "")


def ensure_split(
    folder: str | Path,
    annotations: str | Path,
    root: str | Path,
    *,
    classes: Sequence[str] | str | None,
    fraction: float,
    seed: int,
) -> SplitFiles:
    """The split lists in ``folder``: written from ``annotations`` if absent, else checked and reused.

    A written split is the run's dataset from then on (a resumed run must see
    the same videos to reach the weights of an uninterrupted one). Videos found
    now that it does not list (added since) are named in a warning and not used;
    videos it lists that are gone (or moved to another class folder) are refused.

    Args:
        folder: where the lists are (``OUTPUT_DIR/split``).
        annotations, root: the training annotations (a class-per-folder tree, a CSV, a list) and data root.
        classes: ``data.classes`` (a class file or names), else the annotations' own class list.
        fraction, seed: ``data.val_fraction``, ``data.split_seed``.

    Raises:
        ConfigError: videos of the written split are gone; no class has two videos to split.
    """
    folder = Path(folder)
    found = read_annotations(annotations, root)
    current = {os.path.realpath(r.path) for r in found.records}
    train_file, val_file = split_files(folder)
    if train_file.is_file() and val_file.is_file() and (folder / CLASSES_FILE).is_file():
        written = _written_paths(folder, root)
        gone = sorted(written - current)
        if gone:
            raise ConfigError(
                f"data.root: {len(gone)} video(s) of this run's split ({folder}) are no longer among the training "
                f"videos of {annotations} (first: {_names(gone)}); restore them, or start a new run "
                f"(--overwrite or another output_dir), which splits the videos found now"
            )
        added = sorted(current - written)
        if added:
            logger.warning("%d video(s) of %s are not in this run's split (%s) and are not used (first: %s); a new "
                           "run (--overwrite or another output_dir) splits them in", len(added), annotations, folder,
                           _names(added))  # fmt: skip
        classes_written = len(read_class_file(folder / CLASSES_FILE))
        return SplitFiles(train_file, val_file, f"validation split: reusing {folder} ({classes_written} classes)")
    names = build_classes(found, classes)
    labels = resolve_labels(found.records, names, str(annotations))
    records = [VideoRecord(r.path, label) for r, label in zip(found.records, labels)]
    split = stratified_split(records, names, fraction, seed)
    if not split.val:
        raise ConfigError(f"data.val_annotations: null, but no class of {annotations} has two videos to hold one out "
                          f"for validation; give data.val_annotations")
    held_classes = {r.label for r in split.val}
    single = sorted(names[int(r.label)] for r in split.train if r.label not in held_classes)  # type: ignore[arg-type]
    if single:
        logger.warning("%d class(es) have a single training video and none held out for validation: %s",
                       len(single), _names(single))  # fmt: skip
    write_split(split, folder, root)
    return SplitFiles(train_file, val_file, f"validation split: {len(split.val)} of {len(records)} videos held out "
                      f"(data.val_fraction {fraction:g} of each of {len(names)} classes, data.split_seed {seed}), "
                      f"written to {folder}")


__all__ = ["Split", "SplitFiles", "ensure_split", "split_files", "stratified_split", "val_count", "write_split"]
