"""Published weights by name: ``list_pretrained()``, ``create_model(name, pretrained=...)``.

The catalog (:mod:`.catalog`) names each file, where it is served and what
its publisher says about it; :mod:`.download` brings it into the cache
(``VIDEO_SWIN_CACHE``, a mirror through ``VIDEO_SWIN_WEIGHTS_URL``, no
network under ``VIDEO_SWIN_OFFLINE``); loading goes through
:func:`video_swin.checkpoints.load_checkpoint`, which checks layout and
shapes; :func:`video_swin.create_model` (:mod:`video_swin.factory`) builds the
model and calls :func:`load_pretrained`. Importing this module does not import
torch (the config checks use :func:`is_pretrained_name`): the functions that
need :mod:`video_swin.checkpoints` (and so torch) import it when they run.
"""

from __future__ import annotations

import difflib
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .catalog import CATALOG, DEFAULT_TAGS, PretrainedWeights
from .download import bad_cache_message, cache_dir, discard_cached, fetch, offline, redownload_bad_cache

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoints import LoadReport


def list_pretrained(model: str | None = None) -> list[str]:
    """All ``MODEL.TAG`` names, sorted; only those of ``model`` when given."""
    return sorted(n for n, e in CATALOG.items() if model is None or e.model == model)


def is_pretrained_name(value: str) -> bool:
    return value in CATALOG


def get_pretrained(name: str, tag: str | bool | None = None) -> PretrainedWeights:
    """The catalog entry for ``"swin3d_t.k400"``, or for a preset and a tag (``"swin3d_t"``, ``"k400"``).

    ``tag=True`` picks the preset's default (``DEFAULT_TAGS``); a full ``MODEL.TAG``
    as the tag must name the same preset.
    """
    if tag is None:
        full = name
    elif tag is True:
        if name not in DEFAULT_TAGS:
            raise CheckpointError(f"no published weights for {name!r}; models with some: {sorted(DEFAULT_TAGS)}")
        full = f"{name}.{DEFAULT_TAGS[name]}"
    elif isinstance(tag, str):
        full = tag if "." in tag else f"{name}.{tag}"
        if full.split(".", 1)[0] != name:
            raise CheckpointError(f"pretrained={tag!r} is for {full.split('.', 1)[0]}, not {name!r}")
    else:
        raise CheckpointError(f"pretrained must be True, a tag or a 'MODEL.TAG' name, not {tag!r}")
    if full not in CATALOG:
        close = difflib.get_close_matches(full, list(CATALOG), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CheckpointError(f"unknown pretrained weights {full!r}{hint}; see video_swin.list_pretrained()")
    return CATALOG[full]


@cache
def read_classes(name: str) -> tuple[str, ...]:
    """A shipped class list (``"kinetics400"``, ``"kinetics600"``, ``"something_something_v2"``), index order."""
    text = resources.files("video_swin").joinpath("labels", f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def weights_path(entry: PretrainedWeights | str, *, progress: bool = True) -> Path:
    """The local file of an entry (or ``MODEL.TAG`` name), downloaded and checked on first use.

    A download enters the cache only when it loads as weights of the entry's
    layout (and size, where the catalog gives one); a cached copy is checked
    without loading (size, header, not an HTML page). See :mod:`.download`.
    """
    entry = get_pretrained(entry) if isinstance(entry, str) else entry
    return fetch(entry.url, entry.file, entry.sha256, progress=progress, size=entry.size,
                 verify=lambda state, url: _check_layout(entry, state, url))


def _check_layout(entry: PretrainedWeights, state: Any, url: str) -> None:
    from ..checkpoints import detect_layout  # imports torch: on use, see the module's docstring

    layout = detect_layout(state)
    if layout != entry.layout:
        raise CheckpointError(f"{url}: layout {layout!r}, but {entry.name} is published as {entry.layout!r}; "
                              f"the file is not the published one, nothing was cached")


def read_pretrained(entry: PretrainedWeights | str, *, progress: bool = True) -> Any:
    """The entry's file read once (a :class:`~video_swin.checkpoints.WeightFile`), downloaded first if absent.

    A cached copy that does not load is named with the command to remove it;
    under ``VIDEO_SWIN_REDOWNLOAD=1`` it is downloaded again, once.
    """
    from ..checkpoints import read_weight_file  # imports torch: on use

    entry = get_pretrained(entry) if isinstance(entry, str) else entry
    path = weights_path(entry, progress=progress)
    try:
        return read_weight_file(path)
    except CheckpointError as e:
        why = str(e).removeprefix(f"{path}: ")
        if not redownload_bad_cache():
            raise CheckpointError(bad_cache_message(path, why)) from None
        discard_cached(path)
    return read_weight_file(weights_path(entry, progress=progress))


def resolve_weights(value: str | os.PathLike) -> Path:
    """A path as given when it exists, else the cached file of a registry name.

    What ``model.pretrained_image``/``model.pretrained_video`` and ``--weights`` accept.
    """
    path = Path(value)
    if path.exists() or str(value) not in CATALOG:
        return path
    return weights_path(str(value))


def load_pretrained(model: nn.Module, entry: PretrainedWeights | str) -> LoadReport:
    """Loads published weights into ``model`` (same preset) and sets ``model.classes`` where known.

    The layout must be the catalog's and every backbone weight must be
    present with its shape; the head is kept when its size matches
    ``model``'s, and left freshly initialised (reported) otherwise.

    Raises:
        CheckpointError: download problems, another layout, missing weights, wrong shapes.
    """
    from ..checkpoints import load_checkpoint  # imports torch: on use

    entry = get_pretrained(entry) if isinstance(entry, str) else entry
    weights = read_pretrained(entry)
    report = load_checkpoint(model, weights)
    if report.layout != entry.layout:
        raise CheckpointError(f"{weights.name}: layout {report.layout!r}, but {entry.name} is published as "
                              f"{entry.layout!r}; the file is not the published one")
    missing = [k for k in report.missing if not k.startswith("head.")]
    if missing:
        raise CheckpointError(f"{weights.name}: {len(missing)} weights of {entry.model} missing, e.g. {missing[:3]}")
    head = getattr(model, "head", None)
    kept_head = head is not None and getattr(head, "out_features", None) == entry.num_classes
    model.classes = list(read_classes(entry.classes)) if entry.classes and kept_head else None
    model.pretrained_weights = entry.name
    return report


__all__ = [
    "CATALOG",
    "PretrainedWeights",
    "cache_dir",
    "get_pretrained",
    "is_pretrained_name",
    "list_pretrained",
    "load_pretrained",
    "offline",
    "read_pretrained",
    "read_classes",
    "resolve_weights",
    "weights_path",
]
