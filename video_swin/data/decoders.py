"""Video decoders behind one small interface: frames by index, uint8 RGB.

Two backends: decord (the default, what the official Video Swin recipe uses)
and PyAV. Both open the file inside the call and release it before returning,
so nothing is opened before a DataLoader forks its workers, and decord's
readers, which are known to grow memory across ``get_batch`` calls, never live
longer than one video. decord is imported lazily, the first time it is used.

A frame index is the position of the frame in presentation order, as decord
counts it. The PyAV backend seeks to the keyframe before the first wanted frame
and maps timestamps to indices at the stream's average rate, which is exact for
constant-frame-rate video (Kinetics, the demo data); it decodes from the start,
counting frames, whenever the seek does not land before the wanted frame.

The interface (:class:`~video_swin.data.decoder_base.Decoder`) lives in its own
module, which the helper-process wrapper (:mod:`~video_swin.data.isolated`)
also builds on; :func:`get_decoder` composes a backend with that wrapper.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.utils.dlpack

from .decoder_base import DecodeError, Decoder, IndexSelector
from .isolated import isolate

logger = logging.getLogger(__name__)

_decord: ModuleType | None = None


def _import_decord() -> ModuleType:
    global _decord
    if _decord is None:
        import decord  # noqa: PLC0415  (lazy: importing loads native libraries)

        _decord = decord
    return _decord


def decord_available() -> bool:
    """Whether the decord package can be imported on this machine."""
    try:
        _import_decord()
    except Exception:  # ImportError, or a broken native library
        return False
    return True


def _check_file(path: str | Path) -> None:
    if not os.path.isfile(path):
        if os.path.islink(path):
            raise DecodeError(path, f"dangling symbolic link (its target {os.readlink(path)} does not exist)")
        raise DecodeError(path, "file not found" if not os.path.exists(path) else "not a regular file")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")


def _check_indices(path: str | Path, indices: np.ndarray, num_frames: int) -> None:
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"{path}: expected a non-empty 1-D list of frame indices, got shape {indices.shape}")
    if indices.min() < 0 or indices.max() >= num_frames:
        raise ValueError(
            f"{path}: frame indices must lie in [0, {num_frames}), got {int(indices.min())}..{int(indices.max())}"
        )


class DecordDecoder(Decoder):
    """decord ``VideoReader`` opened per call, one ``get_batch`` of the unique indices.

    Args:
        num_threads: Decoding threads per reader (decord's 0 means automatic).
    """

    name = "decord"

    def __init__(self, num_threads: int = 1) -> None:
        self.num_threads = num_threads

    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        decord = _import_decord()
        _check_file(path)
        try:
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.num_threads)
        except Exception as exc:
            raise DecodeError(path, f"decord cannot open it: {_first_line(exc)}") from exc
        try:
            num_frames = len(reader)
            if num_frames <= 0:
                raise DecodeError(path, "no video frames")
            indices = np.asarray(select(num_frames), dtype=np.int64)
            _check_indices(path, indices, num_frames)
            unique, inverse = np.unique(indices, return_inverse=True)
            try:
                batch = reader.get_batch(unique.tolist())
            except Exception as exc:
                raise DecodeError(path, f"decord failed to decode: {_first_line(exc)}") from exc
        finally:
            del reader  # releases the demuxer and decoder now, not at some later GC
        frames = torch.utils.dlpack.from_dlpack(batch.to_dlpack())  # (U, H, W, 3), no copy
        if frames.ndim != 4 or frames.shape[0] != unique.size or frames.shape[-1] != 3:
            raise DecodeError(path, f"decord returned frames of shape {tuple(frames.shape)} for {unique.size} indices")
        if unique.size != indices.size or not np.array_equal(unique, indices):
            frames = frames[torch.from_numpy(inverse.reshape(-1))]  # (len(indices), H, W, 3)
        return frames, indices


class PyAVDecoder(Decoder):
    """PyAV (FFmpeg) decoder: seek to the keyframe before the first wanted frame, decode to the last.

    Args:
        thread_type: FFmpeg threading for the codec ("AUTO", "FRAME", "SLICE", "NONE").
        thread_count: Decoding threads (0 lets FFmpeg choose).
    """

    name = "pyav"

    def __init__(self, thread_type: str = "AUTO", thread_count: int = 1) -> None:
        self.thread_type = thread_type
        self.thread_count = thread_count

    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        import av  # noqa: PLC0415  (keeps `import video_swin.data` light)

        _check_file(path)
        try:
            container = av.open(str(path), metadata_errors="ignore")
        except Exception as exc:
            raise DecodeError(path, f"PyAV cannot open it: {_first_line(exc)}") from exc
        with container:
            if not container.streams.video:
                raise DecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = self.thread_type
            stream.codec_context.thread_count = self.thread_count
            try:
                num_frames = stream.frames or _count_packets(container, stream)
            except Exception as exc:
                raise DecodeError(path, f"PyAV cannot read the stream: {_first_line(exc)}") from exc
            if num_frames <= 0:
                raise DecodeError(path, "no video frames")
            indices = np.asarray(select(num_frames), dtype=np.int64)
            _check_indices(path, indices, num_frames)
            unique = np.unique(indices)
            try:
                decoded = _decode_indices(container, stream, unique.tolist())
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(path, f"PyAV failed to decode: {_first_line(exc)}") from exc
        missing = [i for i in unique.tolist() if i not in decoded]
        if missing:
            raise DecodeError(
                path, f"stream ends early: frames {missing[0]}..{missing[-1]} of {num_frames} could not be decoded"
            )
        frames = torch.from_numpy(np.stack([decoded[i] for i in indices.tolist()]))  # (len(indices), H, W, 3)
        return frames, indices


def _count_packets(container, stream) -> int:
    """Frame count by demuxing (for containers without a sample table, e.g. webm)."""
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def _decode_indices(container, stream, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decodes the sorted unique frame indices ``wanted``; returns {index: (H, W, 3) uint8}."""
    rate = stream.average_rate or stream.guessed_rate
    time_base = stream.time_base
    start_pts = stream.start_time or 0
    first = wanted[0]
    if first > 0 and rate and time_base:
        target = start_pts + int(Fraction(first) / Fraction(rate) / Fraction(time_base))
        container.seek(target, stream=stream, backward=True, any_frame=False)
        out = _decode_from(container, stream, wanted, Fraction(rate) * Fraction(time_base), start_pts)
        if out is not None:
            return out
        container.seek(start_pts, stream=stream, backward=True, any_frame=False)  # seek overshot: start over
    return _decode_from(container, stream, wanted, None, start_pts) or {}


def _decode_from(container, stream, wanted: list[int], frames_per_tick, start_pts: int) -> dict[int, np.ndarray] | None:
    """Decodes forward from the current position.

    With ``frames_per_tick`` the first frame's index comes from its timestamp
    (after a seek); without it, decoding starts at frame 0. Later frames are
    counted. Returns None when, after a seek, the first frame is already past
    the first wanted index.
    """
    out: dict[int, np.ndarray] = {}
    pending = iter(wanted)
    target = next(pending)
    index = -1
    for frame in container.decode(stream):
        if index < 0 and frames_per_tick is not None:
            if frame.pts is None:
                return None
            index = round((frame.pts - start_pts) * frames_per_tick)
            if index > target:
                return None
        else:
            index += 1
        if index < target:
            continue
        out[index] = frame.to_ndarray(format="rgb24")  # (H, W, 3)
        target = next(pending, None)
        if target is None:
            break
    return out


class FallbackDecoder(Decoder):
    """Tries decoders in order; the first that succeeds wins.

    Args:
        decoders: Decoders to try, e.g. ``[DecordDecoder(), PyAVDecoder()]``.
    """

    def __init__(self, decoders: Sequence[Decoder]) -> None:
        if not decoders:
            raise ValueError("FallbackDecoder needs at least one decoder")
        self.decoders = list(decoders)
        self.name = "+".join(d.name for d in self.decoders)
        self._warned = False

    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        failures: list[tuple[str, str]] = []
        for decoder in self.decoders:
            try:
                result = decoder.read(path, select)
            except DecodeError as exc:
                failures.append((decoder.name, exc.reason))
                continue
            if failures:
                log = logger.debug if self._warned else logger.warning
                log("%s: %s failed (%s); decoded with %s instead (warned once per process)",
                    path, *failures[0], decoder.name)  # fmt: skip
                self._warned = True
            return result
        reasons = {reason for _, reason in failures}
        if len(reasons) == 1:  # e.g. "file not found": say it once
            raise DecodeError(path, reasons.pop())
        raise DecodeError(path, "; ".join(f"{name}: {reason}" for name, reason in failures))


def get_decoder(
    name: str = "decord", *, fallback: bool = True, num_threads: int = 1, timeout: float | None = None
) -> Decoder:
    """Builds a decoder by name.

    Args:
        name: "decord" or "pyav".
        fallback: With "decord", fall back to PyAV for files decord cannot read,
            and use PyAV alone (logging a warning) when decord is not installed.
        num_threads: Decoding threads per video.
        timeout: Seconds per video; decode in a helper process that a crash or
            hang cannot take down with it (:class:`~video_swin.data.isolated.IsolatedDecoder`).
            None decodes in the calling process.

    Returns:
        The decoder.
    """
    if timeout is not None:
        return isolate(get_decoder(name, fallback=fallback, num_threads=num_threads), timeout)
    if name == "pyav":
        return PyAVDecoder(thread_count=num_threads)
    if name != "decord":
        raise ValueError(f"unknown decoder {name!r}; expected 'decord' or 'pyav'")
    if not decord_available():
        if not fallback:
            raise ImportError("decoder 'decord' was requested but decord cannot be imported")
        logger.warning("decord is not available; decoding with PyAV instead")
        return PyAVDecoder(thread_count=num_threads)
    primary = DecordDecoder(num_threads=num_threads)
    return FallbackDecoder([primary, PyAVDecoder(thread_count=num_threads)]) if fallback else primary


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
