"""A long video read once, front to back, as windows of frames at a fixed stride.

A *window* is what one clip of the evaluation is: ``clip_len`` frames taken
every ``frame_interval`` frames, spanning ``clip_len * frame_interval`` frames
of the video. Windows start every ``stride`` frames (or every ``stride``
seconds of the frames' timestamps, which keeps variable-frame-rate files
right). Frame numbers are those of the frame index
(:mod:`~video_swin.data.frame_index`), as everywhere in the project.

The file is decoded in one sequential pass with PyAV; each decoded frame is
matched to its position by its timestamp (the exact decoders' rule), and only
the frames some window uses are converted to RGB and cropped. A window leaves
as soon as its last frame has been decoded, and frames no later window needs
are dropped, so memory holds about one window's frames whatever the video's
length. A frame that the decoder skips (a damaged stream) ends the video
there: the windows before it are kept and the break is reported.

:class:`WindowStream` runs this in a DataLoader worker process, so decoding
the next windows overlaps the model scoring the current ones
(:mod:`video_swin.engine.long_video`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError, DecodeError, first_line
from .decoders import _check_file, _rgb, _rotate, open_pyav
from .frame_index import FrameIndex, get_frame_index
from .sampling import eval_clip_indices
from .transforms import ClipTransform

_STRIDE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(f|frames?|s|sec|seconds?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Stride:
    """The step between window starts: ``value`` frames (``unit="f"``) or seconds (``unit="s"``)."""

    value: float
    unit: str = "f"

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit}"


def parse_stride(text: str | int | float | Stride, key: str = "--stride") -> Stride:
    """``"16f"``, ``"16"`` or ``16`` (frames), ``"1s"``/``"0.5s"`` (seconds) -> :class:`Stride`.

    Raises:
        ConfigError: zero, negative, a fraction of a frame, or anything else.
    """
    if isinstance(text, Stride):
        stride = text
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        stride = Stride(float(text), "f")
    else:
        m = _STRIDE.match(str(text))
        if not m:
            raise ConfigError(f"{key}: expected frames like 16f or seconds like 1s, got {text!r}")
        stride = Stride(float(m.group(1)), "s" if (m.group(2) or "f").lower().startswith("s") else "f")
    if not math.isfinite(stride.value) or stride.value <= 0:
        raise ConfigError(f"{key}: must be more than zero, got {text!r}")
    if stride.unit == "f" and stride.value != int(stride.value):
        raise ConfigError(f"{key}: a stride in frames is a whole number, got {text!r} (seconds: add 's')")
    return stride


@dataclass
class WindowPlan:
    """Where the windows of one video lie.

    Attributes:
        indices: ``int64 (W, clip_len)``: the frames each window gives the model.
        start_frame: ``int64 (W,)``: each window's first frame.
        end_frame: ``int64 (W,)``: one past each window's last frame (``start + clip_len * frame_interval``,
            at most the frame count).
        times: ``float64 (N,)``: every frame's presentation time in seconds, from the first frame's.
        num_frames: frames in the video (N).
        fps: frames per second on average over the video.
        note: "" or why the windows are not the usual ones (a video shorter than one window).
    """

    indices: np.ndarray
    start_frame: np.ndarray
    end_frame: np.ndarray
    times: np.ndarray
    num_frames: int
    fps: float
    note: str = ""

    def __len__(self) -> int:
        return int(self.start_frame.size)

    def seconds(self, frames: np.ndarray | int) -> np.ndarray:
        """Time in seconds of frame numbers in ``[0, N]``; frame N is the end of the last frame."""
        frames = np.asarray(frames, dtype=np.int64)
        return np.where(frames < self.num_frames, self.times[np.minimum(frames, self.num_frames - 1)],
                        self.end_time)  # fmt: skip

    @property
    def end_time(self) -> float:
        """When the last frame stops being shown: its time plus the step before it (1/fps for one frame)."""
        t = self.times
        step = float(t[-1] - t[-2]) if t.size > 1 else 1.0 / self.fps
        return float(t[-1] + step)

    @property
    def start_sec(self) -> np.ndarray:
        return self.seconds(self.start_frame)

    @property
    def end_sec(self) -> np.ndarray:
        return self.seconds(self.end_frame)


def frame_times(index: FrameIndex, rate: float | None = None) -> np.ndarray:
    """Presentation time of every frame in seconds from the first frame (float64, N).

    Files without usable timestamps (the index counts frames) take ``rate``
    frames per second (the stream's average rate; 25 when unknown).
    """
    if index.timestamps:
        pts = index.pts - index.pts[0]
        return pts.astype(np.float64) * float(index.time_base)
    return np.arange(len(index), dtype=np.float64) / (rate or 25.0)


def plan_windows(times: np.ndarray, clip_len: int, frame_interval: int, stride: Stride) -> WindowPlan:
    """The windows of a video whose frames are shown at ``times`` (seconds, from :func:`frame_times`).

    Windows start at frame 0 and then every ``stride`` (frames; or the first
    frame at or after each multiple of a stride in seconds) while the whole
    window fits; frames after the last window that fits are not covered. A
    video shorter than one window gets one window, sampled as the evaluation
    samples short videos (the frames loop), and a note saying so.
    """
    if clip_len < 1 or frame_interval < 1:
        raise ConfigError(f"window: clip_len and frame_interval must be >= 1, got {clip_len} and {frame_interval}")
    n = int(times.size)
    span = clip_len * frame_interval
    rate = (n - 1) / float(times[-1]) if n > 1 and times[-1] > 0 else 0.0
    offsets = np.arange(clip_len, dtype=np.int64) * frame_interval
    if n < span:
        indices = eval_clip_indices(n, clip_len, frame_interval, 1)  # (1, clip_len), looping
        note = f"short video: {n} frames, fewer than one window of {span}; its frames loop"
        return WindowPlan(indices, np.zeros(1, np.int64), np.full(1, n, np.int64), times, n, rate, note)
    last = n - span  # the last start whose window fits
    if stride.unit == "f":
        starts = np.arange(0, last + 1, int(stride.value), dtype=np.int64)
    else:
        marks = np.arange(0.0, float(times[last]) + 1e-9, stride.value)
        starts = np.unique(np.searchsorted(times, marks - 1e-9, side="left")).astype(np.int64)
        starts = starts[starts <= last]
    indices = starts[:, None] + offsets[None, :]
    return WindowPlan(indices, starts, starts + span, times, n, rate)


def _stream_rate(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def read_windows(
    path: str | Path,
    plan: WindowPlan,
    index: FrameIndex,
    transform: ClipTransform,
    batch_size: int,
    *,
    threads: int = 1,
) -> Iterator[tuple[int, torch.Tensor] | str | None]:
    """Decodes ``path`` once and yields its windows as they complete.

    Yields:
        ``(first window number, Tensor[B, V, 3, T, S, S])`` uint8 batches of
        consecutive windows (``transform``'s views, ``output="uint8"``), then one
        last item: None when every window was read, else the reason the stream
        stopped early (the windows before are all yielded).
    """
    needed = np.unique(plan.indices)  # sorted positions that some window uses
    last_needed = plan.indices.max(axis=1)  # (W,)
    first_needed = plan.indices.min(axis=1)
    store: dict[int, torch.Tensor] = {}  # position -> (V, 3, S, S) uint8
    batch: list[torch.Tensor] = []
    first_window = next_window = 0
    slot = 0  # next entry of ``needed`` to come
    reason: str | None = None

    def complete(upto: int) -> Iterator[tuple[int, torch.Tensor]]:
        nonlocal next_window, first_window, batch
        while next_window < len(plan) and last_needed[next_window] <= upto:
            frames = [store[i] for i in plan.indices[next_window].tolist()]
            batch.append(torch.stack(frames, dim=2))  # (V, 3, T, S, S)
            next_window += 1
            if next_window < len(plan):
                keep_from = int(first_needed[next_window])  # windows start in order: earlier frames are done
                for position in [p for p in store if p < keep_from]:
                    del store[position]
            if len(batch) == batch_size:
                yield first_window, torch.stack(batch)
                first_window, batch = next_window, []

    container, stream = open_pyav(path, "AUTO" if threads > 1 else "SLICE", threads)
    with container:
        counted = 0
        try:
            for frame in container.decode(stream):
                position = index.position_of(frame.pts) if index.timestamps else counted
                counted += 1
                if slot == needed.size:
                    break  # every window is out: the rest of the file is not needed
                if position < needed[slot]:
                    continue  # a frame no window uses (or one the index does not list: position -1)
                if position > needed[slot]:
                    reason = (f"frame {int(needed[slot])} of {plan.num_frames} never came out of the decoder "
                              f"(the stream jumps from there to frame {position}: damaged?)")
                    break
                rgb = torch.from_numpy(_rgb(frame))[None]  # (1, H, W, 3)
                view = transform(_rotate(rgb, index.rotation)[None])  # (V, 3, 1, S, S)
                store[position] = view[:, :, 0]
                slot += 1
                yield from complete(position)
        except Exception as exc:  # a damaged packet: the windows so far stand
            reason = f"decoding stopped at frame {int(needed[min(slot, needed.size - 1)])}: {first_line(exc)}"
    if reason is None and next_window < len(plan):
        reason = (f"the stream ended after {counted} decoded frames; frame {int(needed[slot])} of "
                  f"{plan.num_frames} (in the frame index) never came")
    if batch:
        yield first_window, torch.stack(batch)
    yield reason


def video_plan(path: str | Path, clip_len: int, frame_interval: int, stride: Stride) -> tuple[FrameIndex, WindowPlan]:
    """The frame index and window plan of ``path``.

    Raises:
        DecodeError: a missing, empty or unreadable file.
    """
    _check_file(path)
    index = get_frame_index(path)
    rate = None
    if not index.timestamps:
        import av  # noqa: PLC0415

        with av.open(str(path), metadata_errors="ignore") as container:
            rate = _stream_rate(container.streams.video[0])
    return index, plan_windows(frame_times(index, rate), clip_len, frame_interval, stride)


class WindowStream(IterableDataset):
    """The windows of many videos, for a DataLoader with ``batch_size=None``.

    Each worker takes every ``num_workers``-th video and yields, per video, in
    order: ``{"video": i, "plan": WindowPlan}`` (or ``{"video": i, "error":
    reason}`` for a file that cannot be read at all), then ``{"video": i,
    "first": w, "clips": uint8 Tensor[B, V, 3, T, S, S]}`` batches, then
    ``{"video": i, "end": reason or None}``.

    Args:
        paths: the video files.
        clip_len, frame_interval: the window's sampling.
        stride: the step between window starts.
        transform: the test-mode views (``output="uint8"``).
        batch_size: windows per item.
        threads: FFmpeg decoding threads per video.
    """

    def __init__(self, paths: Sequence[str], clip_len: int, frame_interval: int, stride: Stride,
                 transform: ClipTransform, batch_size: int, threads: int = 1) -> None:
        super().__init__()
        if transform.output != "uint8" or transform.mode == "train":
            raise ValueError("WindowStream needs a test/val ClipTransform with output='uint8'")
        self.paths = list(paths)
        self.clip_len, self.frame_interval, self.stride = clip_len, frame_interval, stride
        self.transform, self.batch_size, self.threads = transform, batch_size, threads

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(worker, len(self.paths), workers):
            yield from self.video(i)

    def video(self, i: int) -> Iterator[dict]:
        """The items of video ``i`` (see the class docstring); never raises for a bad file."""
        path = self.paths[i]
        try:
            index, plan = video_plan(path, self.clip_len, self.frame_interval, self.stride)
        except DecodeError as e:
            yield {"video": i, "error": e.reason}
            return
        except (OSError, ValueError) as e:
            yield {"video": i, "error": first_line(e)}
            return
        yield {"video": i, "plan": plan}
        try:
            for item in read_windows(path, plan, index, self.transform, self.batch_size, threads=self.threads):
                if isinstance(item, tuple):
                    yield {"video": i, "first": item[0], "clips": item[1]}
                else:
                    yield {"video": i, "end": item}
        except DecodeError as e:
            yield {"video": i, "end": e.reason}


def _items(item: dict) -> dict:
    """The DataLoader's collate for :class:`WindowStream`: items as they are (no numpy-to-tensor conversion)."""
    return item


def default_decode_threads() -> int:
    """FFmpeg threads for the sequential pass: 2 where there are 4 CPUs or more, else 1 (the model needs them)."""
    return 2 if (os.cpu_count() or 1) >= 4 else 1


__all__ = ["Stride", "WindowPlan", "WindowStream", "frame_times", "parse_stride", "plan_windows", "read_windows",
           "video_plan"]
