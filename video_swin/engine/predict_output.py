"""Writing predictions as they come: a CSV or JSONL table, and each video's pooled (and per-stage) features.

Both writers take :class:`~video_swin.engine.predict.VideoPrediction` results
one at a time, so a long run keeps nothing but the current batch in memory
(except the single-file safetensors features, which are written at the end).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO

import numpy as np
import torch

from ..errors import ConfigError
from ..outputs import check_file_destination, check_folder_destination, temporary_beside
from .predict import VideoPrediction

TABLE_SUFFIXES = (".csv", ".jsonl")
PARTIAL_SUFFIX = ".partial"  # what a run stopped early had written: <destination>.partial


def check_destinations(out: str | os.PathLike | None, features: str | os.PathLike | None) -> None:
    """``--out FILE`` and ``--features DIR|FILE.safetensors`` checked before anything is scored.

    Raises:
        ConfigError: a table suffix other than .csv/.jsonl, a folder where a
            file is needed or a file where a folder is, a read-only destination,
            or both options naming the same path.
    """
    if out is not None:
        check_file_destination(out, "--out")
        if Path(out).suffix.lower() not in TABLE_SUFFIXES:
            raise ConfigError(f"--out: expected a .csv or .jsonl file, got {str(out)!r}")
    if features is not None:
        if Path(features).suffix == ".safetensors":
            check_file_destination(features, "--features")
        else:
            check_folder_destination(features, "--features")
    if out is not None and features is not None and os.path.abspath(out) == os.path.abspath(features):
        raise ConfigError(f"--out and --features name the same path {str(out)!r}; give each its own")


class PredictionTable:
    """``--out FILE``: one row per video, CSV or JSON Lines by the file's extension.

    CSV columns: ``path, error, class_1, probability_1, ..., class_K, probability_K``
    (empty cells for a file that could not be read). JSONL: one
    :meth:`VideoPrediction.to_dict` object a line.
    """

    def __init__(self, path: str | os.PathLike, top_k: int) -> None:
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        check_destinations(self.path, None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_beside(self.path)  # renamed to path by close(): never a half-written table there
        self._rows = 0
        self._file: IO[str] = open(self._tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._csv = None
        if self.kind == ".csv":
            self._csv = csv.writer(self._file)
            ranks = range(1, top_k + 1)
            self._csv.writerow(["path", "error", *[f"{c}_{i}" for i in ranks for c in ("class", "probability")]])

    def write(self, r: VideoPrediction) -> None:
        if self._csv is not None:
            self._csv.writerow([r.path, r.error or "", *[v for name, p in r.top for v in (name, f"{p:.6f}")]])
        else:
            self._file.write(json.dumps(r.to_dict()) + "\n")
        self._file.flush()
        self._rows += 1

    def close(self) -> None:
        """The complete table, moved into place."""
        self._file.close()
        os.replace(self._tmp, self.path)
        self._rows = -1  # done: nothing for abort()

    def abort(self) -> Path | None:
        """After a run stopped early: the rows written so far as ``<path>.partial`` (returned), or nothing."""
        self._file.close()
        if self._rows < 0:
            return None
        if not self._rows:
            self._tmp.unlink(missing_ok=True)
            return None
        partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        os.replace(self._tmp, partial)
        return partial


def stage_key(video: str, stage: int) -> str:
    """The safetensors key of a video's stage-``stage`` features: ``"<video path>#stage<i>"``."""
    return f"{video}#stage{stage}"


class FeatureWriter:
    """``--features DIR``: each video's pooled features, Tensor[C_last] float32 averaged over its views.

    A folder gets one ``.npy`` per video, at the video's path relative to the
    common folder of all the videos with ``.npy`` in place of its extension
    (``a/b/clip.mp4`` -> ``DIR/a/b/clip.npy``); a path ending in
    ``.safetensors`` gets one file whose keys are the videos' paths. Videos
    that could not be read get no features.

    Per-stage features (``--feature-stages``, :attr:`VideoPrediction.stage_features`:
    stage i's map average-pooled over T, H, W, Tensor[C_i]) go beside them:
    ``DIR/a/b/clip.stage<i>.npy``, or the key ``"<video path>#stage<i>"`` in the
    single file. Stage i is the output of its blocks before the final norm
    (:meth:`~video_swin.models.SwinTransformer.forward_intermediates`), so the
    last stage's features differ from the pooled ones, which are normed.

    Features arrive in float32 whatever ``--precision`` computed them
    (:func:`~video_swin.engine.predict.iter_predictions` returns them so);
    the single file's metadata records that ``precision`` when given.
    """

    def __init__(self, out: str | os.PathLike, videos: list[str], precision: str | None = None) -> None:
        self.out = Path(out)
        self.precision = precision  # the single file's metadata records it ("fp32", "bf16"); features are float32
        self.single = self.out.suffix == ".safetensors"
        self._tensors: dict[str, torch.Tensor] = {}
        parents = [os.path.dirname(os.path.abspath(v)) for v in videos]
        self._base = os.path.commonpath(parents) if parents else os.getcwd()
        check_destinations(None, self.out)
        (self.out.parent if self.single else self.out).mkdir(parents=True, exist_ok=True)

    def file_for(self, video: str) -> Path:
        relative = os.path.relpath(os.path.abspath(video), self._base)
        return self.out / Path(relative).with_suffix(".npy")

    def write(self, r: VideoPrediction) -> None:
        if r.features is None:
            return
        stages = r.stage_features or {}
        if self.single:
            self._tensors[r.path] = r.features.contiguous()
            self._tensors.update({stage_key(r.path, i): t.contiguous() for i, t in stages.items()})
            return
        target = self.file_for(r.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _save_npy(target, r.features)
        for i, t in stages.items():
            _save_npy(target.with_suffix(f".stage{i}.npy"), t)

    def close(self) -> None:
        """The single file written and moved into place (the .npy files are each in place already)."""
        if self.single and self._tensors:
            self._save(self.out)
            self._tensors = {}  # done: nothing for abort()

    def abort(self) -> Path | None:
        """After a run stopped early: the single file's features so far as ``<file>.partial`` (returned);
        a folder keeps the .npy files already written (each whole)."""
        if not (self.single and self._tensors):
            return None
        partial = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self._save(partial)
        return partial

    def _save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tmp = temporary_beside(path)
        metadata = {"content": "pooled features averaged over views; '<path>#stage<i>': stage i's map of "
                               "forward_intermediates (before the final norm) average-pooled over T, H, W"}
        if self.precision:
            metadata["precision"] = self.precision  # the model's dtype when computed
        try:
            save_file(self._tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _save_npy(path: Path, t: torch.Tensor) -> None:
    """One .npy, written under a temporary name and moved into place whole."""
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, t.numpy())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
