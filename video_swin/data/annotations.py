"""Annotation formats, the file index under a dataset root, and the class list.

Three formats, and plain lists of files:

* the official Kinetics CSV ``label,youtube_id,time_start,time_end,split``; the
  video of a row is the file named ``<youtube_id>_<start:06d>_<end:06d>.<ext>``
  (or ``<youtube_id>.<ext>``) anywhere under the root;
* the mmaction list, one ``relative/path.mp4 label_index`` per line, with an
  optional ``classes.txt`` (one name per line) beside it;
* a class-per-folder tree: ``<dir>/<class name>/**/<video>``;
* a list of video paths (unlabelled, taken as given: scoring one's own files).

Files are found by name through one recursive scan of the root, cached per
root, so the common downloader layouts (``train/<label>/...``, flat folders,
labels with spaces or underscores) all work. The scan follows symbolic links
(folders on other disks are common) but enters each real folder once, so a
link back up the tree cannot make it loop, and it stops with an error naming
the root past :data:`MAX_SCAN_FOLDERS` folders or :data:`MAX_SCAN_ENTRIES`
entries (a mistyped root such as ``/``). Rows whose file is missing are
reported (count and first names) and skipped; a row whose name matches
several files is an error listing them. Text files may carry a UTF-8 byte
order mark and Windows line endings.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from ..errors import AnnotationError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")
# Past these a scan stops: Kinetics-700 is ~650k files in ~1.4k folders, so a root
# this large is a mistyped one (``/``, a home folder) rather than a dataset.
MAX_SCAN_FOLDERS = 1_000_000
MAX_SCAN_ENTRIES = 20_000_000
SCAN_PROGRESS_AFTER_S = 3.0  # a scan that takes longer shows a progress bar (main process only)
_MAX_LISTED = 5


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset.

    Attributes:
        path: Absolute path of the file.
        label: Class name (Kinetics CSV, folders), class index (mmaction list),
            or None for unlabelled rows.
    """

    path: str
    label: str | int | None


@dataclass
class Annotations:
    """Parsed annotations with files resolved.

    Attributes:
        records: Videos whose file was found, in annotation order.
        missing: Names of rows whose file was not found under the root.
        classes: The class list these annotations define: sorted label names
            of all rows (found or not), the ``classes.txt`` beside an mmaction
            list (else ``"0".."K-1"``), or the folder names.
        source: The annotation file or folder.
    """

    records: list[VideoRecord]
    missing: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    source: str = ""


@dataclass
class FileIndex:
    """Video files under a root, by file name and by stem (name without extension)."""

    root: str
    by_name: dict[str, list[str]]
    by_stem: dict[str, list[str]]


_INDEX_CACHE: dict[str, FileIndex] = {}


def scan_videos(
    root: str | Path,
    refresh: bool = False,
    *,
    max_folders: int = MAX_SCAN_FOLDERS,
    max_entries: int = MAX_SCAN_ENTRIES,
) -> FileIndex:
    """Indexes every video file under ``root`` (one walk, cached per root).

    Symbolic links are followed, but every real folder (by device and inode) is
    entered once and the root's parents never: a ``self -> .`` link indexes
    nothing twice and ``up -> ..`` links lead nowhere. Folders reached without
    a link are entered first, so a file's path goes through a link only when
    there is no other way to it.
    Folders that cannot be listed are skipped with a warning. A scan that takes
    more than :data:`SCAN_PROGRESS_AFTER_S` seconds shows a progress bar on
    the main process (``RANK`` 0).

    Args:
        root: Dataset root.
        refresh: Rescan even when an index of this root is cached.
        max_folders: Most folders entered before the scan gives up.
        max_entries: Most directory entries (files, folders, links) listed before it gives up.

    Returns:
        The index.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        AnnotationError: More than ``max_folders`` folders or ``max_entries`` entries.
    """
    key = os.path.realpath(root)
    if not refresh and key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    if not os.path.isdir(key):
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    start = time.monotonic()
    show = os.environ.get("RANK", "0") in ("", "0")  # one bar per launch, not one per process
    bar = tqdm(desc=f"scanning {key}", unit=" entries", unit_scale=True, delay=SCAN_PROGRESS_AFTER_S,
               disable=not show, leave=False)  # fmt: skip
    with bar:
        folders = entries = 0
        for folder, names, listed in _walk_once(key):
            folders, entries = folders + 1, entries + listed
            if folders > max_folders or entries > max_entries:
                what = f"{max_folders:,} folders" if folders > max_folders else f"{max_entries:,} entries"
                raise AnnotationError(
                    f"dataset root {root}: more than {what} under it; is it the right folder? "
                    f"(a dataset root holds the videos; scanning stopped in {folder})"
                )
            bar.update(listed)
            for name in names:
                path = os.path.join(folder, name)
                by_name.setdefault(name, []).append(path)
                by_stem.setdefault(os.path.splitext(name)[0], []).append(path)
    index = FileIndex(key, by_name, by_stem)
    _INDEX_CACHE[key] = index
    seconds = time.monotonic() - start
    log = logger.info if seconds > SCAN_PROGRESS_AFTER_S else logger.debug
    log("indexed %d video files in %d folders under %s (%.1f s)", sum(map(len, by_name.values())), folders, key,
        seconds)  # fmt: skip
    return index


def _walk_once(root: str) -> Iterator[tuple[str, list[str], int]]:
    """``(folder, sorted video file names, entries listed)`` for every real folder under ``root``, once each.

    Depth first in name order, like ``os.walk``; folders behind symbolic links
    wait until no folder reachable without one is left. A folder is skipped
    when one with the same (device, inode) was already entered, which is what
    ends loops made by links; ``root``'s parents count as entered, so a link
    up the tree (``up -> ..``) leads nowhere.
    """
    entered: set[tuple[int, int]] = set()
    child, parent = root, os.path.dirname(root)
    while parent != child:  # up to "/", whose dirname is itself
        try:
            st = os.stat(parent)
            entered.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        child, parent = parent, os.path.dirname(parent)
    stack: list[str] = [root]
    behind_links: deque[str] = deque()
    while stack or behind_links:
        folder = stack.pop() if stack else behind_links.popleft()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in entered:
                continue
            entered.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                listing = sorted(it, key=lambda e: e.name)
        except OSError as e:
            logger.warning("cannot list %s (%s); videos under it are not indexed", folder, e.strerror or e)
            continue
        videos, subfolders, linked = [], [], []
        for entry in listing:
            try:
                is_dir = entry.is_dir()  # follows links; False for a dangling one
            except OSError:
                is_dir = False
            if is_dir:
                (linked if entry.is_symlink() else subfolders).append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in VIDEO_EXTENSIONS:
                videos.append(entry.name)  # dangling links too: reported as broken when read
        yield folder, videos, len(listing)
        stack.extend(reversed(subfolders))
        behind_links.extend(linked)


def clear_scan_cache() -> None:
    """Forgets all cached file indexes (after files were added under a scanned root)."""
    _INDEX_CACHE.clear()


def _choose(paths: list[str], split: str | None) -> list[str]:
    """The candidates left for one row: distinct files, narrowed to the row's split folder if that decides.

    Several names of one file (a link beside its target) count once, by the
    name that is not a link if there is one; of several files, the one under a
    folder named after the row's split wins. More than one left means the row
    is ambiguous.
    """
    if len(paths) > 1:
        distinct: dict[str, str] = {}
        for p in paths:
            real = os.path.realpath(p)
            if real not in distinct or p == real:
                distinct[real] = p
        paths = list(distinct.values())
    if len(paths) > 1 and split:
        preferred = [p for p in paths if split in Path(p).parts]
        if len(preferred) == 1:
            return preferred
    return paths


def _ambiguity_error(source: Path, root: Path, ambiguous: list[tuple[str, list[str]]]) -> AnnotationError:
    examples = "; ".join(f"{name!r} matches {', '.join(paths[:_MAX_LISTED])}" for name, paths in ambiguous[:3])
    more = f" (and {len(ambiguous) - 3} more rows)" if len(ambiguous) > 3 else ""
    return AnnotationError(
        f"{source}: {len(ambiguous)} row(s) match several files under {root}: {examples}{more}; "
        "keep one file per video or point data.root at one copy of the dataset"
    )


@contextmanager
def _text(path: Path, **kwargs) -> Iterator[IO[str]]:
    """An annotation text file: UTF-8 with or without a byte order mark, any line endings."""
    try:
        with open(path, encoding="utf-8-sig", **kwargs) as f:
            yield f
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None


def _kinetics_rows(path: Path) -> list[tuple[list[str], str, str | None]]:
    """(candidate stems, label, split) for each row of an official Kinetics CSV."""
    rows = []
    unlabelled: list[int] = []
    with _text(path, newline="") as f:  # newline="": the csv module handles \r\n itself
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        fields = set(reader.fieldnames)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        if not needed <= fields:
            raise AnnotationError(
                f"{path}: not a Kinetics CSV; needs columns {sorted(needed)}, has {sorted(fields)}"
            )
        for row in reader:
            if not any((value or "").strip() for value in row.values()):
                continue  # a blank line
            yid = (row["youtube_id"] or "").strip()
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise AnnotationError(
                    f"{path}:{reader.line_num}: time_start and time_end must be numbers, "
                    f"got {row['time_start']!r} and {row['time_end']!r}"
                ) from None
            label = (row["label"] or "").strip()
            if not label:
                unlabelled.append(reader.line_num)
            stems = [f"{yid}_{start:06d}_{end:06d}", yid, f"{yid}_{start}_{end}"]
            rows.append((stems, label, (row.get("split") or "").strip() or None))
    if unlabelled:
        which = "every row" if len(unlabelled) == len(rows) else f"{len(unlabelled)} of {len(rows)} rows"
        lines = ", ".join(map(str, unlabelled[:_MAX_LISTED])) + (", ..." if len(unlabelled) > _MAX_LISTED else "")
        raise AnnotationError(f"{path}: the label column is empty in {which} (line {lines}); every video needs a label")
    return rows


def _mmaction_rows(path: Path) -> list[tuple[str, str | int]]:
    """(relative path, label) for each line of an mmaction video list."""
    rows = []
    with _text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise AnnotationError(f"{path}:{lineno}: expected 'relative/path.mp4 label_index', got {line!r}")
            rel, label = parts
            rows.append((rel, int(label) if label.lstrip("-").isdigit() else label))
    return rows


def read_class_file(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (line i is class i)."""
    with _text(Path(path)) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: duplicate class names")
    return names


def _class_folders(folder: Path) -> list[Path]:
    """The class folders of a class-per-folder tree; a link to the tree itself or above it is not one."""
    real = os.path.realpath(folder)
    out = []
    for p in sorted(folder.iterdir()):
        target = os.path.realpath(p)
        if p.is_dir() and not (real + os.sep).startswith(target.rstrip(os.sep) + os.sep):
            out.append(p)
    return out


def _folder_records(folder: Path) -> tuple[list[VideoRecord], list[str]]:
    records, classes = [], []
    for class_dir in _class_folders(folder):
        files = sorted(scan_videos(class_dir).by_name.items())
        paths = [p for _, ps in files for p in ps]
        if paths:
            classes.append(class_dir.name)
            records.extend(VideoRecord(p, class_dir.name) for p in sorted(paths))
    return records, classes


def _annotation_kind(annotations: Path) -> str:
    if annotations.is_dir():
        return "folders"
    with _text(annotations) as f:
        header = f.readline()
    return "kinetics" if "youtube_id" in header else "mmaction"


def read_annotations(
    annotations: str | Path | Sequence[str | Path] | None, root: str | Path | None = None
) -> Annotations:
    """Parses annotations and finds their files.

    Args:
        annotations: A Kinetics CSV, an mmaction list, or a class-per-folder
            directory; None means the class-per-folder tree at ``root``. A list
            or tuple of video paths gives unlabelled records in that order, with
            no class list; its files are not looked for, so a missing one fails
            when it is decoded and is reported like any broken video.
        root: Where the videos are (searched recursively by file name); for an
            mmaction list, relative paths are tried against it first. Defaults to
            the annotation file's folder.

    Returns:
        The records whose file exists, the missing names, and the class list the
        annotations carry (if any).
    """
    if isinstance(annotations, (list, tuple)):
        return Annotations([VideoRecord(str(p), None) for p in annotations], [], [], "list of files")
    if annotations is None:
        if root is None:
            raise ValueError("give annotations, a root, or both")
        annotations = root
    annotations = Path(annotations)
    if not annotations.exists():
        raise FileNotFoundError(f"annotations {annotations} not found")
    kind = _annotation_kind(annotations)
    if kind == "folders":
        records, classes = _folder_records(annotations)
        if not records:
            raise AnnotationError(f"{annotations}: no class folders with video files")
        return Annotations(records, [], classes, str(annotations))
    root = Path(root) if root is not None else annotations.parent
    index = scan_videos(root)
    records: list[VideoRecord] = []
    missing: list[str] = []
    ambiguous: list[tuple[str, list[str]]] = []
    if kind == "kinetics":
        rows = _kinetics_rows(annotations)
        classes = _labels_to_classes([label for _, label, _ in rows])
        for stems, label, split in rows:
            # The most specific name present decides (the official clip name before a bare id).
            stem = next((s for s in stems if s in index.by_stem), None)
            found = _choose(index.by_stem[stem], split) if stem is not None else []
            if not found:
                missing.append(stems[0] + ".mp4")
            elif len(found) > 1:
                ambiguous.append((stem, found))
            else:
                records.append(VideoRecord(found[0], label))
    else:
        rows = _mmaction_rows(annotations)
        class_file = annotations.parent / "classes.txt"
        if class_file.is_file() and class_file != annotations:
            classes = read_class_file(class_file)
        else:
            classes = _labels_to_classes([label for _, label in rows])
        for rel, label in rows:
            direct = root / rel
            if direct.is_file():  # the path as written decides
                records.append(VideoRecord(str(direct.resolve()), label))
                continue
            name = os.path.basename(rel)
            found = _choose(index.by_name.get(name) or index.by_stem.get(os.path.splitext(name)[0]) or [], None)
            if len(found) > 1:
                ambiguous.append((rel, found))
            elif found:
                records.append(VideoRecord(found[0], label))
            else:
                missing.append(rel)
    if ambiguous:
        raise _ambiguity_error(annotations, root, ambiguous)
    if missing:
        logger.warning(
            "%d of %d videos listed in %s were not found under %s and are skipped; first: %s",
            len(missing), len(missing) + len(records), annotations, root, ", ".join(missing[:_MAX_LISTED]),
        )  # fmt: skip
    if not records:
        raise FileNotFoundError(f"none of the {len(missing)} videos listed in {annotations} were found under {root}")
    return Annotations(records, missing, classes, str(annotations))


def class_names(annotations: str | Path) -> list[str]:
    """The class list defined by training annotations, without looking for video files.

    Sorted label names of a Kinetics CSV; the ``classes.txt`` beside an mmaction
    list (else ``"0".."K-1"``); the sorted folder names of a class-per-folder tree.
    """
    annotations = Path(annotations)
    kind = _annotation_kind(annotations)
    if kind == "folders":
        return [p.name for p in _class_folders(annotations)]
    if kind == "kinetics":
        return sorted({label for _, label, _ in _kinetics_rows(annotations)})
    class_file = annotations.parent / "classes.txt"
    if class_file.is_file():
        return read_class_file(class_file)
    return _labels_to_classes([label for _, label in _mmaction_rows(annotations)])


def _labels_to_classes(labels: Sequence[str | int | None]) -> list[str]:
    present = [lab for lab in labels if lab is not None]
    if present and all(isinstance(lab, int) for lab in present):
        return [str(i) for i in range(max(present) + 1)]
    return sorted({str(lab) for lab in present})


def resolve_labels(
    records: Sequence[VideoRecord], classes: Sequence[str], source: str = "the annotations"
) -> list[int]:
    """Class indices of ``records`` into ``classes`` (-1 for unlabelled rows).

    Raises:
        AnnotationError: A label is not in ``classes``; the message names it.
    """
    lookup = {name: i for i, name in enumerate(classes)}
    labels = []
    for record in records:
        label = record.label
        if label is None:
            labels.append(-1)
        elif isinstance(label, int):
            if not 0 <= label < len(classes):
                raise AnnotationError(
                    f"label index {label} ({record.path}) in {source} is outside the {len(classes)} training classes"
                )
            labels.append(label)
        elif label in lookup:
            labels.append(lookup[label])
        else:
            raise AnnotationError(
                f"label {label!r} ({record.path}) in {source} is not one of the {len(classes)} training classes"
            )
    return labels


def build_classes(annotations: Annotations, classes: Sequence[str] | str | Path | None = None) -> list[str]:
    """The class list: the given names (or a file of them, one per line), else the annotations' own."""
    if isinstance(classes, (str, Path)):
        return read_class_file(classes)
    if classes is not None:
        if len(set(classes)) != len(classes):
            raise AnnotationError("duplicate class names")
        return list(classes)
    return list(annotations.classes)
