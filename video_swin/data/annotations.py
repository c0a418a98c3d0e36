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
labels with spaces or underscores) all work. Rows whose file is missing are
reported (count and first names) and skipped.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")
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


def scan_videos(root: str | Path, refresh: bool = False) -> FileIndex:
    """Indexes every video file under ``root`` (one walk, cached per root).

    Args:
        root: Dataset root.
        refresh: Rescan even when an index of this root is cached.

    Returns:
        The index.
    """
    key = os.path.realpath(root)
    if not refresh and key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    if not os.path.isdir(key):
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(key, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                path = os.path.join(dirpath, name)
                by_name.setdefault(name, []).append(path)
                by_stem.setdefault(stem, []).append(path)
    index = FileIndex(key, by_name, by_stem)
    _INDEX_CACHE[key] = index
    logger.debug("indexed %d video files under %s", sum(map(len, by_name.values())), key)
    return index


def clear_scan_cache() -> None:
    """Forgets all cached file indexes (after files were added under a scanned root)."""
    _INDEX_CACHE.clear()


def _pick(paths: list[str], split: str | None) -> str:
    if len(paths) > 1 and split:
        preferred = [p for p in paths if split in Path(p).parts]
        if preferred:
            return preferred[0]
    return paths[0]


def _kinetics_rows(path: Path) -> list[tuple[list[str], str | None, str | None]]:
    """(candidate stems, label, split) for each row of an official Kinetics CSV."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        needed = {"youtube_id", "time_start", "time_end"}
        if not needed <= fields:
            raise ValueError(f"{path}: not a Kinetics CSV; needs columns {sorted(needed)}, has {sorted(fields)}")
        for row in reader:
            yid = row["youtube_id"].strip()
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            stems = [f"{yid}_{start:06d}_{end:06d}", yid, f"{yid}_{start}_{end}"]
            label = row["label"].strip() if "label" in fields and row["label"] is not None else None
            rows.append((stems, label or None, (row.get("split") or "").strip() or None))
    return rows


def _mmaction_rows(path: Path) -> list[tuple[str, str | int]]:
    """(relative path, label) for each line of an mmaction video list."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'relative/path.mp4 label_index', got {line!r}")
            rel, label = parts
            rows.append((rel, int(label) if label.lstrip("-").isdigit() else label))
    return rows


def read_class_file(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (line i is class i)."""
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


def _folder_records(folder: Path) -> tuple[list[VideoRecord], list[str]]:
    records, classes = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(scan_videos(class_dir).by_name.items())
        paths = [p for _, ps in files for p in ps]
        if paths:
            classes.append(class_dir.name)
            records.extend(VideoRecord(p, class_dir.name) for p in sorted(paths))
    return records, classes


def _annotation_kind(annotations: Path) -> str:
    if annotations.is_dir():
        return "folders"
    with open(annotations, encoding="utf-8") as f:
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
            raise ValueError(f"{annotations}: no class folders with video files")
        return Annotations(records, [], classes, str(annotations))
    root = Path(root) if root is not None else annotations.parent
    index = scan_videos(root)
    records: list[VideoRecord] = []
    missing: list[str] = []
    if kind == "kinetics":
        rows = _kinetics_rows(annotations)
        classes = _labels_to_classes([label for _, label, _ in rows])
        for stems, label, split in rows:
            found = next((index.by_stem[s] for s in stems if s in index.by_stem), None)
            if found is None:
                missing.append(stems[0] + ".mp4")
            else:
                records.append(VideoRecord(_pick(found, split), label))
    else:
        rows = _mmaction_rows(annotations)
        class_file = annotations.parent / "classes.txt"
        if class_file.is_file() and class_file != annotations:
            classes = read_class_file(class_file)
        else:
            classes = _labels_to_classes([label for _, label in rows])
        for rel, label in rows:
            direct = root / rel
            name = os.path.basename(rel)
            found = index.by_name.get(name) or index.by_stem.get(os.path.splitext(name)[0])
            if direct.is_file():
                records.append(VideoRecord(str(direct.resolve()), label))
            elif found:
                records.append(VideoRecord(found[0], label))
            else:
                missing.append(rel)
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
        return sorted(p.name for p in annotations.iterdir() if p.is_dir())
    if kind == "kinetics":
        return sorted({label for _, label, _ in _kinetics_rows(annotations) if label is not None})
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
        ValueError: A label is not in ``classes``; the message names it.
    """
    lookup = {name: i for i, name in enumerate(classes)}
    labels = []
    for record in records:
        label = record.label
        if label is None:
            labels.append(-1)
        elif isinstance(label, int):
            if not 0 <= label < len(classes):
                raise ValueError(
                    f"label index {label} ({record.path}) in {source} is outside the {len(classes)} training classes"
                )
            labels.append(label)
        elif label in lookup:
            labels.append(lookup[label])
        else:
            raise ValueError(
                f"label {label!r} ({record.path}) in {source} is not one of the {len(classes)} training classes"
            )
    return labels


def build_classes(annotations: Annotations, classes: Sequence[str] | str | Path | None = None) -> list[str]:
    """The class list: the given names (or a file of them, one per line), else the annotations' own."""
    if isinstance(classes, (str, Path)):
        return read_class_file(classes)
    if classes is not None:
        if len(set(classes)) != len(classes):
            raise ValueError("duplicate class names")
        return list(classes)
    return list(annotations.classes)
