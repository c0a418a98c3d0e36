"""A model over long videos: class probabilities and features of windows at a fixed stride.

:func:`timeline` ("which action happens when") and :func:`extract_features`
(one feature vector per window, the input of temporal action localization
tools) share :func:`iter_windows`: each video is decoded once, front to back
(:class:`~video_swin.data.long_video.WindowStream`), by a thread of this
process or by DataLoader worker processes, while the model scores the windows
already decoded, ``batch_size`` at a time. A window is one evaluation clip (the weights' ``clip_len`` x
``frame_interval``) with the test crop(s), so a window's probabilities are what
``predict`` gives for a file holding just that window's frames.

Results come back per video, in input order, as :class:`VideoWindows`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import Config, ConfigError
from ..errors import first_line
from ..data import clips_to_float
from ..data.long_video import Stride, WindowPlan, WindowStream, _items, default_decode_threads, parse_stride
from ..data.processes import worker_context
from ..data.transforms import ClipTransform
from .build import for_device, set_torch_threads
from .predict import PRECISIONS, _score_and_pool, _warn_emulated_bf16, find_videos, load_predictor

log = logging.getLogger(__name__)


@dataclass
class VideoWindows:
    """The windows of one video and what the model made of them.

    Attributes:
        path: the video file, as given.
        classes: class names, index i = probability column i.
        plan: where the windows lie (frames, seconds); None when the file could not be read at all.
        probs: ``float32 (W, K)``: each window's class probabilities (averaged over its crops).
        features: ``float32 (W, C)``: each window's pooled last-stage features (with ``features=True``).
        stage_features: ``{stage: float32 (W, C_i)}`` (with ``feature_stages``).
        error: None, or why the video could not be read, or where its stream broke: the
            windows before the break are kept (W is then less than ``len(plan)``).
        top_k: how many classes :meth:`top` and :meth:`rows` list by default.
    """

    path: str
    classes: list[str]
    plan: WindowPlan | None = None
    probs: torch.Tensor | None = field(default=None, repr=False)
    features: torch.Tensor | None = field(default=None, repr=False)
    stage_features: dict[int, torch.Tensor] | None = field(default=None, repr=False)
    error: str | None = None
    top_k: int = 5

    @property
    def num_windows(self) -> int:
        """Windows scored (those before a break, if any)."""
        return 0 if self.probs is None else int(self.probs.shape[0])

    @property
    def note(self) -> str:
        return self.plan.note if self.plan is not None else ""

    @property
    def start_frame(self) -> np.ndarray:
        return self.plan.start_frame[: self.num_windows] if self.plan else np.zeros(0, np.int64)

    @property
    def end_frame(self) -> np.ndarray:
        return self.plan.end_frame[: self.num_windows] if self.plan else np.zeros(0, np.int64)

    @property
    def start_sec(self) -> np.ndarray:
        return self.plan.start_sec[: self.num_windows] if self.plan else np.zeros(0)

    @property
    def end_sec(self) -> np.ndarray:
        return self.plan.end_sec[: self.num_windows] if self.plan else np.zeros(0)

    def top(self, k: int | None = None) -> list[list[tuple[str, float]]]:
        """Per window, the ``k`` (default :attr:`top_k`) likeliest ``(class, probability)`` pairs, likeliest first."""
        if not self.num_windows:
            return []
        values, indices = self.probs.topk(min(k or self.top_k, len(self.classes)), dim=1)
        return [[(self.classes[j], float(p)) for p, j in zip(v.tolist(), i.tolist())]
                for v, i in zip(values, indices)]  # fmt: skip

    def rows(self, top_k: int | None = None) -> list[dict]:
        """One dict per window: ``start_frame, end_frame, start_sec, end_sec, top`` (and ``note`` if any)."""
        return [{"start_frame": int(a), "end_frame": int(b), "start_sec": float(s), "end_sec": float(e),
                 "top": [{"class": c, "probability": p} for c, p in top]}
                for a, b, s, e, top in zip(self.start_frame, self.end_frame, self.start_sec, self.end_sec,
                                           self.top(top_k))]  # fmt: skip


def _resolve(model_or_weights: nn.Module | str | os.PathLike, cfg: Config | None,
             classes: Sequence[str] | str | os.PathLike | None) -> tuple[nn.Module, Config, list[str]]:
    if isinstance(model_or_weights, nn.Module):
        if cfg is None:
            raise ConfigError("a model object needs cfg= (its data settings: clip_len, frame_interval, crop_size, "
                              "test_short_side); or pass the weights by registry name or file")
        model = model_or_weights
        if isinstance(classes, (str, os.PathLike)):
            from ..data.annotations import read_class_file  # noqa: PLC0415  (only for a class file)

            classes = read_class_file(classes)
        names = list(classes or getattr(model, "classes", None) or [])
    else:
        model, cfg, names = load_predictor(model_or_weights, cfg=cfg, classes=classes)
    k = model.head.out_features
    if names and len(names) != k:
        raise ConfigError(f"{len(names)} class names for a head of {k} classes")
    return model.eval(), cfg, names or [str(i) for i in range(k)]


def window_transform(cfg: Config, crops: int) -> ClipTransform:
    """The evaluation's test-mode views of a window (uint8, normalised where the model runs)."""
    d = cfg.data
    return ClipTransform("test", d.crop_size, d.test_short_side, num_crops=crops, output="uint8")


def default_stride(cfg: Config) -> Stride:
    """One window's span: windows side by side, no overlap."""
    return Stride(float(cfg.data.clip_len * cfg.data.frame_interval), "f")


class _Video:
    """What arrives for one video while it is being read."""

    def __init__(self, plan: WindowPlan) -> None:
        self.plan = plan
        self.probs: list[torch.Tensor] = []
        self.pooled: list[torch.Tensor] = []
        self.stages: list[list[torch.Tensor]] = []


@torch.inference_mode()
def iter_windows(
    model: nn.Module,
    cfg: Config,
    classes: Sequence[str],
    paths: Sequence[str | os.PathLike],
    *,
    stride: Stride | str | int | None = None,
    crops: int = 1,
    batch_size: int = 8,
    features: bool = False,
    feature_stages: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    workers: int = 0,
    decode_threads: int | None = None,
    precision: str = "fp32",
    progress: bool = False,
) -> Iterator[VideoWindows]:
    """Every window of each video scored, one :class:`VideoWindows` per path, in input order.

    Args:
        model: a video classifier (``forward_features``, ``forward_head``, ``head``).
        cfg: data settings: ``data.clip_len``, ``frame_interval``, ``crop_size``,
            ``test_short_side``; ``eval.average`` and ``eval.max_views_per_forward``.
        classes: class names, one per output.
        paths: video files.
        stride: between window starts: frames (``16``, ``"16f"``) or seconds (``"1s"``);
            default one window's span.
        crops: views per window: 1 (centre) or 3 (along the long side).
        batch_size: windows per forward.
        features: also keep each window's pooled last-stage features.
        feature_stages: also keep these stages' maps average-pooled over T, H, W.
        device: where the model runs; default CUDA if available.
        workers: decoding processes, each reading whole videos (isolated: an
            FFmpeg crash costs one video); 0 (the default): one decoding thread in
            this process, which starts at once (a process takes about 3 s to start).
        decode_threads: FFmpeg threads per video (default
            :func:`~video_swin.data.long_video.default_decode_threads`).
        precision: ``"fp32"`` or ``"bf16"`` (as :func:`~.predict.iter_predictions`).
        progress: a progress bar of windows (shown on a terminal only).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if crops not in (1, 3):
        raise ConfigError(f"crops: 1 or 3, got {crops}")
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    stride = default_stride(cfg) if stride is None else parse_stride(stride, key="stride")
    dtype = PRECISIONS[precision]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = for_device(model.to(device=device, dtype=dtype).eval(), device)
    if dtype == torch.bfloat16 and device.type == "cpu":
        _warn_emulated_bf16()
    paths = [str(p) for p in paths]
    workers = min(workers, len(paths))
    set_torch_threads(cfg, cpu=device.type == "cpu", workers=max(workers, 1))  # a decoding thread takes a core too
    stages = sorted({i % len(model.layers) for i in feature_stages}) if feature_stages else None
    stream = WindowStream(paths, cfg.data.clip_len, cfg.data.frame_interval, stride, window_transform(cfg, crops),
                          batch_size, default_decode_threads() if decode_threads is None else decode_threads)
    done: dict[int, VideoWindows] = {}  # finished, waiting for the videos before them
    finished: set[int] = set()
    reading: dict[int, _Video] = {}
    emitted = 0
    remaining = list(range(len(paths)))
    with tqdm(total=0, unit="window", desc="windows", leave=False, disable=None if progress else True) as bar:
        while remaining:
            try:
                for item in _items_of(stream, remaining, workers):
                    i = item["video"]
                    if "error" in item:
                        done[i] = VideoWindows(paths[i], list(classes), error=item["error"])
                    elif "plan" in item:
                        reading[i] = _Video(item["plan"])
                        bar.total += len(item["plan"])
                        bar.refresh()
                    elif "clips" in item:
                        _score(model, cfg, reading[i], item["clips"], device, dtype, features, stages)
                        bar.update(len(item["clips"]))
                    else:  # "end"
                        done[i] = _finish(paths[i], classes, reading.pop(i), item["end"], features, stages)
                    if i in done:
                        finished.add(i)
                        bar.set_postfix_str(f"videos {len(finished)}/{len(paths)}", refresh=False)
                    while emitted in done:
                        yield done.pop(emitted)
                        emitted += 1
                remaining = []
            except RuntimeError as e:  # a decoding process died (FFmpeg crashed on a file): that file, not the run
                if "DataLoader worker" not in str(e) or not workers:
                    raise
                reason = f"the decoding process died on it ({first_line(e)})"
                culprits = list(reading)
                if not culprits and workers == 1:  # died before the plan came: the next file in order
                    culprits = [min(i for i in remaining if i not in finished)]
                for i in culprits:
                    video = reading.pop(i, None)
                    done[i] = (_finish(paths[i], classes, video, reason, features, stages) if video
                               else VideoWindows(paths[i], list(classes), error=reason))
                    finished.add(i)
                remaining = [i for i in remaining if i not in finished]
                workers = 1  # in order from here on, so that a further crash names its file
                while emitted in done:
                    yield done.pop(emitted)
                    emitted += 1


def _score(model: nn.Module, cfg: Config, video: _Video, clips: torch.Tensor, device: torch.device,
           dtype: torch.dtype, features: bool, stages: Sequence[int] | None) -> None:
    """Scores a batch of windows (uint8 ``Tensor[B, V, 3, T, S, S]``) into ``video``'s lists."""
    clips = clips_to_float(clips.to(device, non_blocking=True)).to(dtype)
    scores, pooled, per_stage = _score_and_pool(model, clips, cfg.eval.max_views_per_forward, cfg.eval.average,
                                                stages)
    video.probs.append((scores if cfg.eval.average == "prob" else scores.softmax(-1)).cpu())
    if features:
        video.pooled.append(pooled.cpu())
    if stages:
        video.stages.append([s.cpu() for s in per_stage])


def _items_of(stream: WindowStream, ids: list[int], workers: int) -> Iterator[dict]:
    """The stream's items for the videos ``ids`` (global numbers), from ``workers`` processes, or from a
    thread of this process when ``workers`` is 0."""
    part = WindowStream([stream.paths[i] for i in ids], stream.clip_len, stream.frame_interval, stream.stride,
                        stream.transform, stream.batch_size, stream.threads)
    if workers:
        items: Iterator[dict] = iter(DataLoader(part, batch_size=None, num_workers=workers, collate_fn=_items,
                                                multiprocessing_context=worker_context()))
    else:
        items = _in_thread(iter(part))
    for item in items:
        item["video"] = ids[item["video"]]
        yield item


def _in_thread(items: Iterator[dict], ahead: int = 2) -> Iterator[dict]:
    """``items`` produced by a thread of this process, at most ``ahead`` waiting: decoding (PyAV and the
    crops release the GIL) overlaps the model without a process to start (about 3 s saved per run,
    docs/LONG_VIDEOS.md). An exception in the thread is raised here."""
    box: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(end)
        except BaseException as e:  # noqa: BLE001  (handed to the consumer)
            box.put(e)

    thread = threading.Thread(target=produce, name="video-swin-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _finish(path: str, classes: Sequence[str], video: _Video, error: str | None, features: bool,
            stages: Sequence[int] | None) -> VideoWindows:
    k = len(classes)
    probs = torch.cat(video.probs) if video.probs else torch.zeros(0, k)
    pooled = torch.cat(video.pooled) if features and video.pooled else None
    per_stage = None
    if stages and video.stages:
        per_stage = {s: torch.cat(parts) for s, parts in zip(stages, zip(*video.stages))}
    if error is not None:
        error = f"{error}; kept the {probs.shape[0]} windows before it" if probs.shape[0] else error
    return VideoWindows(path, list(classes), video.plan, probs, pooled, per_stage, error)


def _run(model_or_weights, paths, cfg, classes, **kwargs) -> list[VideoWindows]:
    model, cfg, names = _resolve(model_or_weights, cfg, classes)
    return list(iter_windows(model, cfg, names, paths, **kwargs))


def timeline(
    model_or_weights: nn.Module | str | os.PathLike,
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    stride: Stride | str | int | None = None,
    crops: int = 1,
    batch_size: int = 8,
    top_k: int = 5,
    cfg: Config | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    **kwargs,
) -> VideoWindows | list[VideoWindows]:
    """Class probabilities of a long video's windows: which action happens when.

    Args:
        model_or_weights: a registry name (``"swin3d_t.k400"``), a trained
            model file (its config and classes saved beside it), or a model
            object (then ``cfg`` is needed).
        path: one video (returns one :class:`VideoWindows`) or a list (returns a list).
        stride: between window starts: frames (``16``, ``"16f"``) or seconds
            (``"1s"``); default the window's own span.
        crops: views per window (1 centre, 3 along the long side).
        batch_size: windows per forward.
        top_k: classes :meth:`VideoWindows.top` and :meth:`VideoWindows.rows` list by default.
        cfg: data settings for a model object, or to replace a file's saved ones.
        classes: class names (or a file of them) instead of the weights' own.
        **kwargs: see :func:`iter_windows` (``device``, ``workers``, ``precision``, ``progress``, ...).

    Example:
        >>> tl = video_swin.timeline("swin3d_t.k400", "match.mp4", stride="1s")
        >>> for row, top in zip(tl.start_sec, tl.top(1)): print(f"{row:7.1f}s {top[0][0]}")
    """
    single = isinstance(path, (str, os.PathLike))
    results = _run(model_or_weights, [path] if single else path, cfg, classes, stride=stride, crops=crops,
                   batch_size=batch_size, **kwargs)
    for r in results:
        r.top_k = top_k
    return results[0] if single else results


def extract_features(
    model_or_weights: nn.Module | str | os.PathLike,
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    stride: Stride | str | int | None = None,
    stages: Sequence[int] | None = None,
    crops: int = 1,
    batch_size: int = 8,
    cfg: Config | None = None,
    **kwargs,
) -> VideoWindows | list[VideoWindows]:
    """Features of a long video's windows at a fixed stride: ``result.features`` is ``float32 (W, C)``.

    The windows are :func:`timeline`'s (same arguments); the features are the
    pooled last stage after the final norm (what the head sees), averaged over
    the crops; ``stages`` adds per-stage maps average-pooled over T, H, W
    (``result.stage_features``), as ``predict --features`` does per video.
    """
    single = isinstance(path, (str, os.PathLike))
    results = _run(model_or_weights, [path] if single else path, cfg, None, stride=stride, crops=crops,
                   batch_size=batch_size, features=True, feature_stages=stages, **kwargs)
    return results[0] if single else results


def expand_videos(inputs: Sequence[str | os.PathLike], key: str = "VIDEO") -> list[tuple[str, str]]:
    """``(video file, its name relative to what was given)`` for files, folders (searched) and glob patterns.

    The relative name drops the suffix: ``FOLDER/a/b.mp4`` -> ``a/b``; a file
    given by itself -> its stem.

    Raises:
        ConfigError: a path that does not exist, a folder without videos, or two
            videos that would get the same name.
    """
    out: list[tuple[str, str]] = []
    for item in map(str, inputs):
        if os.path.isdir(item):
            for video in find_videos([item]):
                out.append((video, str(Path(os.path.relpath(video, item)).with_suffix(""))))
        elif os.path.isfile(item):
            out.append((item, Path(item).stem))
        else:
            matches = find_videos([item]) if any(c in item for c in "*?[") else []
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise ConfigError(f"{key}: no such file or folder: {item}")
            out += [(m, Path(m).stem) for m in matches]
    seen: dict[str, str] = {}
    for video, name in out:
        if name in seen and os.path.abspath(seen[name]) != os.path.abspath(video):
            raise ConfigError(f"{seen[name]} and {video} would both be written as {name!r}; "
                              f"give them separately or rename one")
        seen[name] = video
    unique = {os.path.abspath(v): (v, n) for v, n in out}  # a file named twice is read once
    return list(unique.values())

