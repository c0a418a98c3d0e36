"""Writing what :mod:`.long_video` computes: timeline tables, segments, a plot, per-video feature files.

Every file is written under a temporary name and moved into place whole, so a
stopped run never leaves a half-written table or feature file where a
finished one is expected.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.long_video import Stride, parse_stride
from ..errors import ConfigError
from ..outputs import check_file_destination, check_folder_destination, temporary_beside
from .long_video import VideoWindows, iter_windows
from .predict import parse_feature_stages

log = logging.getLogger(__name__)

TIMELINE_SUFFIXES = (".csv", ".json")
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
SIDECAR_FORMAT = 1


def check_timeline_destinations(out: str | None, segments: str | None, plot: str | None) -> None:
    """``--out``, ``--segments`` and ``--plot`` checked before any model is loaded (one-line ConfigErrors)."""
    named: dict[str, str] = {}
    for key, path, suffixes in (("--out", out, TIMELINE_SUFFIXES), ("--segments", segments, (".csv",)),
                                ("--plot", plot, PLOT_SUFFIXES)):  # fmt: skip
        if path is None:
            continue
        check_file_destination(path, key)
        if Path(path).suffix.lower() not in suffixes:
            raise ConfigError(f"{key}: expected a {' or '.join(suffixes)} file, got {path!r}")
        same = named.get(os.path.abspath(path))
        if same:
            raise ConfigError(f"{same} and {key} name the same file {path!r}; give each its own")
        named[os.path.abspath(path)] = key


def _write_atomically(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def timeline_header(top_k: int) -> list[str]:
    ranks = range(1, top_k + 1)
    return ["video", "start_frame", "end_frame", "start_sec", "end_sec",
            *[f"{c}{i}" for i in ranks for c in ("top", "score")], "note"]  # fmt: skip


def timeline_rows(result: VideoWindows, top_k: int) -> list[list]:
    """CSV rows of one video: one per window; a video without windows (or with a break) adds a row saying why."""
    rows = []
    for row in result.rows(top_k):
        cells = [v for t in row["top"] for v in (t["class"], f"{t['probability']:.6f}")]
        cells += [""] * (2 * top_k - len(cells))
        rows.append([result.path, row["start_frame"], row["end_frame"], f"{row['start_sec']:.3f}",
                     f"{row['end_sec']:.3f}", *cells, result.note])  # fmt: skip
    if result.error:
        rows.append([result.path, "", "", "", "", *[""] * (2 * top_k), f"error: {result.error}"])
    return rows


def write_timeline(path: str | os.PathLike, results: Sequence[VideoWindows], top_k: int, about: dict) -> None:
    """``--out``: CSV (columns of :func:`timeline_header`) or JSON (``about`` and each video's windows)."""
    if Path(path).suffix.lower() == ".csv":
        def write(f):
            w = csv.writer(f)
            w.writerow(timeline_header(top_k))
            for r in results:
                w.writerows(timeline_rows(r, top_k))
    else:
        def write(f):
            videos = [{"video": r.path, "num_frames": r.plan.num_frames if r.plan else None,
                       "fps": r.plan.fps if r.plan else None, "note": r.note, "error": r.error,
                       "windows": r.rows(top_k)} for r in results]  # fmt: skip
            json.dump({**about, "videos": videos}, f, indent=1)
    _write_atomically(path, write)


@dataclass
class Segment:
    """A stretch of video whose windows agree on their leading class."""

    start_frame: int
    end_frame: int  # one past the last frame
    start_sec: float
    end_sec: float
    label: str
    score: float  # mean leading-class probability of its windows
    windows: int


def merge_segments(result: VideoWindows, threshold: float = 0.5) -> list[Segment]:
    """Consecutive windows whose leading class is the same, with a probability of at least ``threshold``.

    Each window stands for the frames nearer its centre than any other
    window's (the boundary between two windows lies half-way between their
    centres; the first window reaches back to frame 0, the last to its own
    end), so a change of action between two window centres is placed within
    half a stride of where the windows change their mind. Windows below the
    threshold belong to no segment.
    """
    n = result.num_windows
    if not n:
        return []
    probs, labels = result.probs.max(dim=1)
    centres = (result.start_frame + result.end_frame) / 2.0
    cuts = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2.0, [float(result.end_frame[-1])]])
    cuts = np.round(cuts).astype(np.int64)
    if result.note:  # one looping window: the whole short video
        cuts = np.array([0, result.plan.num_frames])
    segments: list[Segment] = []
    i = 0
    while i < n:
        if float(probs[i]) < threshold:  # in no segment
            i += 1
            continue
        j = i
        while j + 1 < n and int(labels[j + 1]) == int(labels[i]) and float(probs[j + 1]) >= threshold:
            j += 1
        start, end = int(cuts[i]), int(cuts[j + 1])
        segments.append(Segment(start, end, float(result.plan.seconds(start)), float(result.plan.seconds(end)),
                                result.classes[int(labels[i])], float(probs[i : j + 1].mean()), j - i + 1))
        i = j + 1
    return segments


def write_segments(path: str | os.PathLike, results: Sequence[VideoWindows], threshold: float) -> None:
    """``--segments``: ``video, start_frame, end_frame, start_sec, end_sec, label, score, windows`` rows."""
    def write(f):
        w = csv.writer(f)
        w.writerow(["video", "start_frame", "end_frame", "start_sec", "end_sec", "label", "score", "windows"])
        for r in results:
            for s in merge_segments(r, threshold):
                w.writerow([r.path, s.start_frame, s.end_frame, f"{s.start_sec:.3f}", f"{s.end_sec:.3f}", s.label,
                            f"{s.score:.6f}", s.windows])  # fmt: skip
    _write_atomically(path, write)


def plot_timeline(path: str | os.PathLike, results: Sequence[VideoWindows], threshold: float = 0.5,
                  classes_shown: int = 5) -> None:
    """``--plot``: per video, the probabilities of the classes that lead some window over time (the
    ``classes_shown`` leading most windows drawn solid, up to ten in all), segments shaded and labelled."""
    import matplotlib  # noqa: PLC0415  (only when a plot is asked for)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    shown = [r for r in results if r.num_windows]
    fig, axes = plt.subplots(max(len(shown), 1), 1, figsize=(11, 2.6 * max(len(shown), 1)), squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, r in zip(axes[:, 0], shown):
        centres = (r.start_sec + r.end_sec) / 2.0
        counts = torch.bincount(r.probs.argmax(1), minlength=len(r.classes))
        leading = [int(c) for c in counts.argsort(descending=True) if counts[c] > 0][:10]  # most windows first
        colour = {c: palette(k % 10) for k, c in enumerate(leading)}
        width = float(r.end_sec[-1]) or 1.0
        for seg in merge_segments(r, threshold):
            c = r.classes.index(seg.label)
            ax.axvspan(seg.start_sec, seg.end_sec, color=colour.get(c, "0.8"), alpha=0.18, lw=0)
            if (seg.end_sec - seg.start_sec) / width > 0.06:  # room for its name
                ax.text((seg.start_sec + seg.end_sec) / 2, 1.02, seg.label, ha="center", va="bottom", fontsize=7,
                        clip_on=False)  # fmt: skip
        for c in leading[:classes_shown]:
            ax.plot(centres, r.probs[:, c].numpy(), color=colour[c], lw=1.4, label=r.classes[c])
        for c in leading[classes_shown:]:
            ax.plot(centres, r.probs[:, c].numpy(), color=colour[c], lw=1.0, ls="--", label=r.classes[c])
        ax.axhline(threshold, color="0.5", lw=0.6, ls=":")
        ax.set_ylim(0, 1)
        ax.set_xlim(0, width)
        ax.set_ylabel("probability")
        ax.set_title(os.path.basename(r.path) + (f"  ({r.error})" if r.error else ""), fontsize=9, loc="left",
                     pad=14)  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, framealpha=0.8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".").lower())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureFolder:
    """``extract --out DIR``: ``DIR/<name>.npy`` (float32, windows x C) and ``DIR/<name>.json`` per video.

    ``<name>`` is the video's path under the folder it was found in, without
    its suffix (a file given by itself: its stem), so DIR mirrors the inputs.
    With stages, ``DIR/<name>.stage<i>.npy`` too. The JSON sidecar, written
    last, says what the arrays are (``settings``: model, weights and their
    sha256, window, stride, crops; the video's size and modification time) and
    where each window lies; a video whose sidecar matches the current
    settings and whose arrays have the shapes it states is complete, and
    :meth:`complete` says so (a rerun skips it).
    """

    def __init__(self, out: str | os.PathLike, settings: dict) -> None:
        self.out = check_folder_destination(out, "--out")
        self.settings = settings

    def paths(self, name: str) -> tuple[Path, Path]:
        base = self.out / name
        return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")

    def stage_path(self, name: str, stage: int) -> Path:
        base = self.out / name
        return base.with_name(f"{base.name}.stage{stage}.npy")

    def _video_settings(self, video: str) -> dict:
        st = os.stat(video)
        return {**self.settings, "video_size": st.st_size, "video_mtime_ns": st.st_mtime_ns}

    def complete(self, video: str, name: str) -> dict | None:
        """The sidecar of a finished video whose files match the current settings, else None."""
        npy, sidecar = self.paths(name)
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("format") != SIDECAR_FORMAT or meta.get("settings") != self._video_settings(video):
                return None
            arrays = [(npy, meta["dim"])] + [(self.stage_path(name, int(s)), d) for s, d in meta["stage_dims"].items()]
            for path, dim in arrays:
                a = np.load(path, mmap_mode="r", allow_pickle=False)
                if a.dtype != np.float32 or a.shape != (meta["num_windows"], dim):
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return meta

    def write(self, result: VideoWindows, name: str) -> None:
        """The video's arrays, then its sidecar (so a sidecar always describes whole arrays)."""
        npy, sidecar = self.paths(name)
        npy.parent.mkdir(parents=True, exist_ok=True)
        features = result.features if result.features is not None else torch.zeros(0, 0)
        _save_npy(npy, features)
        stage_dims = {}
        for stage, t in (result.stage_features or {}).items():
            _save_npy(self.stage_path(name, stage), t)
            stage_dims[str(stage)] = int(t.shape[1])
        plan = result.plan
        meta = {
            "format": SIDECAR_FORMAT, "video": os.path.abspath(result.path), "settings": self._video_settings(result.path),
            "num_windows": result.num_windows, "dim": int(features.shape[1]), "stage_dims": stage_dims,
            "num_frames": plan.num_frames, "fps": plan.fps, "duration_sec": plan.end_time,
            "start_frame": result.start_frame.tolist(), "end_frame": result.end_frame.tolist(),
            "start_sec": [round(float(t), 6) for t in result.start_sec],
            "end_sec": [round(float(t), 6) for t in result.end_sec],
            "note": result.note, "error": result.error,
        }  # fmt: skip
        _write_atomically(sidecar, lambda f: json.dump(meta, f, indent=1))


def _save_npy(path: Path, t: torch.Tensor) -> None:
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, t.float().numpy().astype(np.float32, copy=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_broken(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """``DIR/broken.csv``: ``path, reason`` of each video with no windows or with a break (sorted by path)."""
    def write(f):
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows(sorted(rows))
    _write_atomically(path, write)


def extract_to_folder(
    model: nn.Module,
    cfg: Config,
    weights: str | os.PathLike,
    videos: Sequence[tuple[str, str]],
    out: str | os.PathLike,
    *,
    stride: Stride | str | int,
    crops: int = 1,
    feature_stages: str | None = None,
    batch_size: int = 8,
    workers: int = 1,
    precision: str = "fp32",
) -> bool:
    """``video-swin extract``: each video's window features into ``out`` (see
    :class:`~.long_video_output.FeatureFolder`), resumable, split over the processes of ``accelerate launch``.

    Args:
        videos: ``(file, name under out)`` pairs (:func:`expand_videos`).
        feature_stages: ``--feature-stages`` text (None: the pooled features only).

    Returns:
        True when every video gave at least one window (the exit code's 0).
    """
    from accelerate import PartialState  # noqa: PLC0415  (only extract runs in several processes)

    state = PartialState()
    stride = parse_stride(stride)
    stages = parse_feature_stages(feature_stages, len(model.layers))
    weights_file = Path(weights) if Path(weights).is_file() else None
    if weights_file is None:
        from ..pretrained import weights_path  # noqa: PLC0415  (the cached download of a registry name)

        weights_file = weights_path(str(weights), progress=False)
    d = cfg.data
    settings = {"model": model.config.get("name") if isinstance(getattr(model, "config", None), dict) else None,
                "weights": str(weights), "weights_sha256": file_sha256(weights_file),
                "clip_len": d.clip_len, "frame_interval": d.frame_interval, "crop_size": d.crop_size,
                "short_side": d.test_short_side, "crops": crops, "stride": str(stride), "precision": precision,
                "feature": "pooled last stage after the final norm, averaged over crops",
                "stages": stages or []}  # fmt: skip
    folder = FeatureFolder(out, settings)
    mine = list(videos)[state.process_index :: state.num_processes]
    broken: list[tuple[str, str]] = []
    todo: list[tuple[str, str]] = []
    for video, name in mine:
        meta = folder.complete(video, name) if os.path.isfile(video) else None
        if meta is None:
            todo.append((video, name))
        elif meta.get("error"):
            broken.append((video, meta["error"]))
    skipped = len(mine) - len(todo)
    if skipped and state.is_main_process:
        log.warning("%d of %d videos already done in %s (same settings): skipped", skipped, len(mine), out)
    names = dict(todo)
    ok = True
    results = iter_windows(model, cfg, [str(i) for i in range(model.head.out_features)], [v for v, _ in todo],
                           stride=stride, crops=crops, batch_size=batch_size, features=True, feature_stages=stages,
                           device=state.device, workers=workers, precision=precision,
                           progress=state.is_main_process)  # fmt: skip
    for r in results:
        if r.error:
            broken.append((r.path, r.error))
            log.warning("%s: %s", r.path, r.error)
        if r.num_windows:
            folder.write(r, names[r.path])
        else:
            ok = False
    parts = Path(out) / f".broken.{state.process_index}.csv"
    write_broken(parts, broken)
    state.wait_for_everyone()
    if state.is_main_process:
        rows = []
        for rank in range(state.num_processes):
            part = Path(out) / f".broken.{rank}.csv"
            with open(part, newline="", encoding="utf-8") as f:
                rows += [tuple(row) for row in list(csv.reader(f))[1:]]
            part.unlink()
        write_broken(Path(out) / "broken.csv", rows)
        total = len(videos)
        print(f"{total - len(rows)} of {total} videos complete in {out}"
              + (f"; {len(rows)} listed in {Path(out) / 'broken.csv'}" if rows else ""), file=sys.stderr)
    state.wait_for_everyone()
    return ok
