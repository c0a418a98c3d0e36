"""Video decoders behind one small interface: frames by index, uint8 RGB, exactly.

Frame i is the i-th frame in presentation order, whatever the file: every read
goes through the video's frame index (:mod:`~video_swin.data.frame_index`,
timestamps of all frames and the keyframes, built once per file and cached),
and every backend is either exact for a file or not used for it:

* **PyAV** reads by timestamp: seek to the keyframe at or before the first
  wanted frame, decode forward, keep frames whose timestamps are wanted; a
  wanted frame past the next keyframe gets its own seek, so clips far apart
  never decode everything between them. Right for every encoding in the test
  corpus (``tests/data/corpus.py``) and the fallback of the others.
* **decord** (the default, as in the official recipe) is fast but seeks wrongly
  on some files without an error. It is used only where it was measured exact:
  MP4/MOV, Matroska/WebM, no open GOP, no rotation tag, and its frame count
  must equal the index's. Other files go to the next backend, silently.
* **TorchCodec** (``decoder: torchcodec``, ``pip install video-swin[torchcodec]``
  plus FFmpeg's shared libraries) reads by index with ``seek_mode="exact"``;
  used where its frame count equals the index's, except AVI with B-frames,
  where it was measured off by one or failing.
* ``auto`` takes, per file, the first of TorchCodec, decord and PyAV that is
  installed and exact for it (the fastest first: on Kinetics-shaped files
  TorchCodec took 0.78x decord's CPU time per clip, docs/BENCHMARKS.md).

The rules above only recognise the encodings met so far; the next encoder
variant may slip past them. So a fast backend (decord, TorchCodec) is also
**verified** on each file before it is trusted with it, once per file
(:func:`verify_backend`): it reads probe frames around a few keyframes spread
over the file (the last frame before each, the keyframe and the frame after,
reached by seeks and by decoding on across a keyframe) and the file's
first and last frames; they must equal the frames PyAV gives by timestamp.
Where they differ, the file is read by the next backend (PyAV at the end),
with a line at INFO level; the verdict is kept with the file's frame index
(memory and disk cache). This holds for a backend named explicitly too:
``get_decoder("decord")`` falls back to PyAV on such a file, and a bare
:class:`DecordDecoder` raises DecodeError rather than return another frame.

Rotation tags (phone video) are applied by every backend the same way: the
frames come out as a player shows them.

Every backend opens the file inside the call and releases it before
returning, so nothing is open when a DataLoader forks its workers. decord and
TorchCodec are imported lazily, the first time they are used.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.utils.dlpack

from ..errors import first_line
from .decoder_base import DecodeError, Decoder, IndexSelector
from .frame_index import FrameIndex, get_frame_index, store_verdicts
from .isolated import isolate

logger = logging.getLogger(__name__)

DECODER_NAMES = ("decord", "pyav", "torchcodec", "auto")

_MP4_FAMILY = "mov,mp4,m4a,3gp,3g2,mj2"
_MATROSKA = "matroska,webm"
_SEEK_RETRIES = 3  # earlier keyframes tried when a seek lands past the wanted frame
_PROBED_KEYFRAMES = 3  # keyframes (besides the first) around which a fast backend is verified
_CANNOT_READ = "cannot read the probe frames: "  # a verdict of a backend that failed, not one that differed
_PROBE_TOLERANCE = 3.0  # mean |difference| (0-255) a probe frame may have from the exact one (colour conversion)

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


def torchcodec_available() -> bool:
    """Whether TorchCodec imports and finds FFmpeg's shared libraries."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401, PLC0415
    except Exception:  # ImportError, or RuntimeError when libavcodec is missing
        return False
    return True


def _check_file(path: str | Path) -> None:
    if not os.path.isfile(path):
        if os.path.islink(path) and not os.path.exists(path):
            raise DecodeError(path, f"dangling symbolic link (its target {os.readlink(path)} does not exist)")
        if not os.path.exists(path):
            raise DecodeError(path, "file not found")
        target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise DecodeError(path, f"not a regular file{target}: a device, folder, pipe or socket")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")


def _check_indices(path: str | Path, indices: np.ndarray, num_frames: int) -> None:
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"{path}: expected a non-empty 1-D list of frame indices, got shape {indices.shape}")
    if indices.min() < 0 or indices.max() >= num_frames:
        raise ValueError(
            f"{path}: frame indices must lie in [0, {num_frames}), got {int(indices.min())}..{int(indices.max())}"
        )


def _rotate(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Frames (N, H, W, 3) as shown: turned ``rotation`` degrees counter-clockwise."""
    k = (rotation // 90) % 4
    return torch.rot90(frames, k, dims=(1, 2)).contiguous() if k else frames


class Backend(Decoder):
    """One decoding library, exact for the files :meth:`unsuitable` does not refuse."""

    #: Whether its frames are checked against the exact path (PyAV) before a file is trusted to it.
    verified: bool = True

    def unsuitable(self, index: FrameIndex) -> str | None:
        """Why this backend is not exact for a file with ``index``; None when it is."""
        return None

    def verdict_key(self) -> str:
        """What a stored verdict is filed under: the backend and its version."""
        return self.name

    def probe(self, path: str | Path, index: FrameIndex, calls: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Frames of each sorted position array in ``calls``, read in that order (one decoder where possible)."""
        return [self.decode(path, index, positions) for positions in calls]

    @abc.abstractmethod
    def decode(self, path: str | Path, index: FrameIndex, positions: np.ndarray) -> torch.Tensor:
        """Frames at the sorted unique ``positions``: uint8 ``(len(positions), H, W, 3)``, rotation applied."""

    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        return _read_exact(path, select, [self])


class ExactDecoder(Decoder):
    """Reads each file with the first backend that is exact for it (the last one takes the rest).

    Args:
        backends: In order of preference; the last should be :class:`PyAVDecoder`.
        name: What logs and errors call this decoder.
    """

    def __init__(self, backends: Sequence[Backend], name: str | None = None) -> None:
        if not backends:
            raise ValueError("ExactDecoder needs at least one backend")
        self.backends = list(backends)
        self.name = name or self.backends[0].name

    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        return _read_exact(path, select, self.backends)


_warned = False


def _read_exact(path: str | Path, select: IndexSelector, backends: Sequence[Backend]) -> tuple[torch.Tensor, np.ndarray]:
    global _warned
    _check_file(path)
    index = get_frame_index(path)
    indices = np.asarray(select(len(index)), dtype=np.int64)
    _check_indices(path, indices, len(index))
    unique, inverse = np.unique(indices, return_inverse=True)
    failures: list[str] = []
    broke = False  # a backend that should have read the file failed (not one its rules or verdict ruled out)
    for backend in backends:
        reason = backend.unsuitable(index)
        if reason is None and backend.verified:
            reason = verify_backend(path, index, backend)
            broke = broke or (reason or "").startswith(_CANNOT_READ)
        if reason is not None:
            failures.append(f"{backend.name}: {reason}")
            continue
        try:
            frames = backend.decode(path, index, unique)
        except DecodeError as exc:
            failures.append(f"{backend.name}: {exc.reason}")
            broke = True
            continue
        expected = (unique.size, *_shown_size(index), 3)
        if tuple(frames.shape) != expected:
            failures.append(f"{backend.name}: frames of shape {tuple(frames.shape)}, expected {expected}")
            broke = True
            continue
        if broke:
            # a backend that should have read the file failed: say so (once per process)
            log = logger.debug if _warned else logger.warning
            log("%s: %s; decoded with %s instead (warned once per process)", path, failures[-1], backend.name)
            _warned = True
        if unique.size != indices.size or not np.array_equal(unique, indices):
            frames = frames[torch.from_numpy(inverse.reshape(-1))]
        return frames, indices
    raise DecodeError(path, "; ".join(failures))


def probe_calls(index: FrameIndex) -> list[np.ndarray]:
    """The reads a fast backend is verified with, in order: each a sorted array of positions.

    The last frame alone (a seek into the last GOP); then, for up to
    ``_PROBED_KEYFRAMES`` keyframes spread over the file, last first: the frame
    after the keyframe alone, the keyframe alone, and the last frame before it
    together with both (a seek into the GOP before, decoding on across the
    keyframe); then the first frames. Every read starts with a seek backwards, and
    the costly ones (a GOP decoded) number one per keyframe probed plus one.
    """
    n = len(index)
    keys = [int(k) for k in index.keyframes if 0 < k < n]
    if len(keys) > _PROBED_KEYFRAMES:
        spread = np.linspace(0, len(keys) - 1, _PROBED_KEYFRAMES).round().astype(int)
        keys = [keys[i] for i in spread]
    calls = [[n - 1]]
    for k in reversed(keys):
        calls += [[k + 1]] if k + 1 < n else []
        calls += [[k], list(range(k - 1, min(k + 2, n)))]
    calls += [[1], [0, 1]] if n > 1 else [[0]]
    return [np.asarray(c, dtype=np.int64) for c in calls]


def verify_backend(path: str | Path, index: FrameIndex, backend: Backend) -> str | None:
    """Whether ``backend`` gives the exact frames of ``path``: None when it does, else why not.

    Once per file and backend: the verdict is stored in ``index.verdicts`` and in the
    frame index's disk cache. The probe reads (:func:`probe_calls`) are compared
    with PyAV's frames by timestamp: each probe frame must be within ``_PROBE_TOLERANCE`` of the
    exact frame and no nearer to another probed frame. Where PyAV cannot read the
    probes either, nothing is stored and the backend is used as its rules allow.
    """
    key = backend.verdict_key()
    verdict = index.verdicts.get(key)
    if verdict is None:
        verdict = _compare_with_exact(path, index, backend)
        if verdict is None:  # no reference: unverified, not stored
            return None
        index.verdicts[key] = verdict
        store_verdicts(path, index)
        if verdict and not verdict.startswith(_CANNOT_READ):  # a failure is reported by the caller
            logger.info("%s: %s; reading it with the exact path instead", path, verdict)
    return verdict or None


def _compare_with_exact(path: str | Path, index: FrameIndex, backend: Backend) -> str | None:
    """"" when ``backend`` matches PyAV at the probes, the difference when not, None without a reference."""
    calls = probe_calls(index)
    positions = np.unique(np.concatenate(calls))
    try:
        reference = PyAVDecoder().decode(path, index, positions)
    except DecodeError as exc:
        logger.debug("%s: cannot verify %s (PyAV: %s)", path, backend.name, exc.reason)
        return None
    try:
        got = backend.probe(path, index, calls)
    except DecodeError as exc:
        return _CANNOT_READ + exc.reason
    slot = {int(p): i for i, p in enumerate(positions.tolist())}
    small_reference = _thumbnails(reference)
    for call, frames in zip(calls, got, strict=True):
        if tuple(frames.shape) != (call.size, *reference.shape[1:]):
            return f"{backend.name} gives frames of shape {tuple(frames.shape)} at the probe frames"
        small = _thumbnails(frames)
        for i, position in enumerate(call.tolist()):
            own = float((frames[i].float() - reference[slot[position]].float()).abs().mean())
            # which exact probe frame it resembles most (on thumbnails: cheap on large frames)
            distances = (small_reference - small[i]).abs().flatten(1).mean(1)
            nearest = int(positions[int(distances.argmin())])
            if own > _PROBE_TOLERANCE or float(distances.min()) < float(distances[slot[position]]):
                return (f"{backend.name} returns another frame than the exact path at frame {position} "
                        f"(nearest exact frame: {nearest}, mean difference {own:.1f})")  # fmt: skip
    return ""


def _thumbnails(frames: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> float (N, 3, h, w), block means, at most 32 x 32."""
    x = frames.permute(0, 3, 1, 2).float()
    return torch.nn.functional.adaptive_avg_pool2d(x, (min(x.shape[2], 32), min(x.shape[3], 32)))


def _shown_size(index: FrameIndex) -> tuple[int, int]:
    quarter_turn = (index.rotation // 90) % 2 == 1
    return (index.width, index.height) if quarter_turn else (index.height, index.width)


def open_pyav(path: str | Path, thread_type: str, thread_count: int):
    """``(container, its first video stream)`` opened by PyAV with FFmpeg's threading set; DecodeError if it
    cannot be opened. The caller closes the container (``with container:``)."""
    import av  # noqa: PLC0415  (keeps `import video_swin.data` light)

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except Exception as exc:
        raise DecodeError(path, f"PyAV cannot open it: {first_line(exc)}") from exc
    stream = container.streams.video[0]
    stream.thread_type = thread_type
    stream.codec_context.thread_count = thread_count
    return container, stream


class PyAVDecoder(Backend):
    """PyAV (FFmpeg): by timestamp through the frame index, one seek per group of nearby frames.

    Args:
        thread_type: FFmpeg threading for the codec ("AUTO", "FRAME", "SLICE", "NONE").
        thread_count: Decoding threads (0 lets FFmpeg choose).
    """

    name = "pyav"
    verified = False  # the exact path itself

    def __init__(self, thread_type: str = "AUTO", thread_count: int = 1) -> None:
        self.thread_type = thread_type
        self.thread_count = thread_count

    def decode(self, path: str | Path, index: FrameIndex, positions: np.ndarray) -> torch.Tensor:
        wanted = positions.tolist()
        container, stream = open_pyav(path, self.thread_type, self.thread_count)
        with container:
            try:
                if index.timestamps:
                    out = _decode_by_timestamp(path, container, stream, index, wanted)
                else:
                    out = _decode_counting(container, stream, wanted)
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(path, f"PyAV failed to decode: {first_line(exc)}") from exc
        missing = [i for i in wanted if i not in out]
        if missing:
            raise DecodeError(
                path, f"stream ends early: frames {missing[0]}..{missing[-1]} of {len(index)} could not be decoded"
            )
        frames = torch.from_numpy(np.stack([out[i] for i in wanted]))
        return _rotate(frames, index.rotation)


def _decode_by_timestamp(path, container, stream, index: FrameIndex, wanted: list[int]) -> dict[int, np.ndarray]:
    """Frames at the sorted ``wanted`` positions, identified by their timestamps."""
    out: dict[int, np.ndarray] = {}
    wanted_set = set(wanted)
    i = 0
    while i < len(wanted):
        target = wanted[i]
        key = index.keyframe_before(target)
        for attempt in range(_SEEK_RETRIES + 2):
            if attempt == _SEEK_RETRIES + 1:
                key = int(index.keyframes[0])  # last resort: the first keyframe
            container.seek(int(index.pts[key]), stream=stream, backward=True, any_frame=False)
            # after a failed seek, decode straight through the keyframe that failed (periodic
            # intra refresh: a flagged frame the decoder cannot start from)
            i, overshot = _decode_run(container, stream, index, key, wanted, wanted_set, i, out, jump=attempt == 0)
            if not overshot:
                break
            k = int(np.searchsorted(index.keyframes, key)) - 1  # the keyframe before this one
            key = int(index.keyframes[max(k, 0)])
        else:
            raise DecodeError(path, f"frame {target} never came out of the decoder after {attempt} seeks")
        if i < len(wanted) and wanted[i] == target:
            break  # the stream ended before the target: reported as missing
    return out


def _decode_run(container, stream, index, key, wanted, wanted_set, i, out, jump=True) -> tuple[int, bool]:
    """Decodes forward from a seek to keyframe ``key``.

    ``jump``: stop where a later keyframe comes before the next wanted frame (the
    caller seeks to it); False decodes on instead.
    Returns the next wanted slot and whether the seek landed past the wanted frame.
    """
    for frame in container.decode(stream):
        pos = index.position_of(frame.pts)
        if pos < key:  # unknown timestamp, or shown before the keyframe (open GOP's leading pictures)
            continue
        target = wanted[i]
        if pos > target:
            return i, True
        if pos in wanted_set and pos not in out:
            out[pos] = _rgb(frame)  # (H, W, 3)
        while i < len(wanted) and wanted[i] in out:
            i += 1
        if i == len(wanted):
            return i, False
        if jump and index.keyframe_before(wanted[i]) > pos:  # a keyframe comes first: seek to it
            return i, False
    return i, False


_scalers: dict[tuple[int, int], Any] = {}  # (process, thread) -> PyAV VideoReformatter


def _rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8 of a decoded frame, converted by a scaler of this process and thread, on this thread.

    ``frame.to_ndarray(format=...)`` reuses a scaler that PyAV shares across
    calls, with FFmpeg's slice threads by default; a process forked after that
    (a DataLoader worker, by torch's default) inherits the scaler without its
    threads and deadlocks in their teardown on its first frame, whatever the
    caller's own code did before (PyAV 18.1, FFmpeg 8). A scaler created in
    this process and thread, run with ``threads=1``, never touches one that
    another process started.
    """
    key = (os.getpid(), threading.get_ident())
    scaler = _scalers.get(key)
    if scaler is None:
        from av.video.reformatter import VideoReformatter  # noqa: PLC0415  (keeps `import video_swin.data` light)

        if any(pid != key[0] for pid, _ in _scalers):
            _scalers.clear()  # a forked copy: the parent's scalers are not ours to use
        scaler = _scalers[key] = VideoReformatter()
    return scaler.reformat(frame, format="rgb24", threads=1).to_ndarray()


def _decode_counting(container, stream, wanted: list[int]) -> dict[int, np.ndarray]:
    """For files without usable timestamps: decode from the start, counting frames."""
    out: dict[int, np.ndarray] = {}
    wanted_set, last = set(wanted), wanted[-1]
    for position, frame in enumerate(container.decode(stream)):
        if position in wanted_set:
            out[position] = _rgb(frame)
        if position >= last:
            break
    return out


class DecordDecoder(Backend):
    """decord ``VideoReader`` opened per call, one ``get_batch`` of the wanted frames.

    Used only for files where decord was measured exact (see the module's docstring).

    Args:
        num_threads: Decoding threads per reader (decord's 0 means automatic).
        exact: False reads every file with decord, counting frames as decord does
            and never consulting the frame index (only for speed comparisons).
    """

    name = "decord"

    def __init__(self, num_threads: int = 1, exact: bool = True) -> None:
        self.num_threads = num_threads
        self.exact = exact

    def unsuitable(self, index: FrameIndex) -> str | None:
        if index.container not in (_MP4_FAMILY, _MATROSKA):
            return f"decord is not exact for {index.container} files"
        if index.open_gop:
            return "open GOP (decord seeks to the wrong frame)"
        if index.rotation:
            return "rotation tag (decord fails on some rotated sizes)"
        if index.codec not in ("h264", "mpeg4", "vp8", "vp9", "hevc"):
            return f"decord cannot decode {index.codec}"
        if not index.timestamps:
            return "no usable timestamps"
        return None

    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        if self.exact:
            return super().read(path, select)
        _check_file(path)
        with self._open(path) as reader:
            indices = np.asarray(select(len(reader)), dtype=np.int64)
            _check_indices(path, indices, len(reader))
            unique, inverse = np.unique(indices, return_inverse=True)
            frames = self._batch(path, reader.reader, unique)
        return frames[torch.from_numpy(inverse.reshape(-1))], indices

    def verdict_key(self) -> str:
        return f"decord {getattr(_import_decord(), '__version__', '?')}"

    def decode(self, path: str | Path, index: FrameIndex, positions: np.ndarray) -> torch.Tensor:
        return self.probe(path, index, [positions])[0]

    def probe(self, path: str | Path, index: FrameIndex, calls: Sequence[np.ndarray]) -> list[torch.Tensor]:
        with self._open(path) as reader:
            if len(reader) != len(index):
                raise DecodeError(path, f"decord counts {len(reader)} frames, the frame index {len(index)}")
            return [self._batch(path, reader.reader, positions) for positions in calls]

    def _open(self, path: str | Path) -> _DecordReader:
        decord = _import_decord()
        try:
            return _DecordReader(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.num_threads))
        except Exception as exc:
            raise DecodeError(path, f"decord cannot open it: {first_line(exc)}") from exc

    @staticmethod
    def _batch(path: str | Path, reader, positions: np.ndarray) -> torch.Tensor:
        try:
            batch = reader.get_batch(positions.tolist())
        except Exception as exc:
            raise DecodeError(path, f"decord failed to decode: {first_line(exc)}") from exc
        frames = torch.utils.dlpack.from_dlpack(batch.to_dlpack())  # (U, H, W, 3), no copy
        if frames.ndim != 4 or frames.shape[0] != positions.size or frames.shape[-1] != 3:
            raise DecodeError(path, f"decord returned frames of shape {tuple(frames.shape)} for {positions.size}")
        return frames


class _DecordReader:
    """Releases decord's reader (demuxer and decoder) when the block ends, not at some later GC."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __enter__(self) -> _DecordReader:
        return self

    def __exit__(self, *exc) -> None:
        del self.reader


class TorchCodecDecoder(Backend):
    """TorchCodec's ``VideoDecoder`` (``seek_mode="exact"``), opened per call.

    Args:
        num_threads: FFmpeg decoding threads (0 lets FFmpeg choose).
    """

    name = "torchcodec"

    def __init__(self, num_threads: int = 1) -> None:
        self.num_threads = num_threads

    def unsuitable(self, index: FrameIndex) -> str | None:
        if index.container == "avi" and index.reordered:
            return "AVI with B-frames (TorchCodec is off by one or fails there)"
        if not index.timestamps:
            return "no usable timestamps"
        return None

    def verdict_key(self) -> str:
        import torchcodec  # noqa: PLC0415

        return f"torchcodec {getattr(torchcodec, '__version__', '?')}"

    def decode(self, path: str | Path, index: FrameIndex, positions: np.ndarray) -> torch.Tensor:
        return self.probe(path, index, [positions])[0]

    def probe(self, path: str | Path, index: FrameIndex, calls: Sequence[np.ndarray]) -> list[torch.Tensor]:
        from torchcodec.decoders import VideoDecoder  # noqa: PLC0415

        try:
            decoder = VideoDecoder(str(path), seek_mode="exact", dimension_order="NHWC",
                                   num_ffmpeg_threads=self.num_threads)  # fmt: skip
            count = decoder.metadata.num_frames
            if count != len(index):
                raise DecodeError(path, f"TorchCodec counts {count} frames, the frame index {len(index)}")
            # (U, H, W, 3) per call
            return [decoder.get_frames_at(positions.tolist()).data.contiguous() for positions in calls]
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(path, f"TorchCodec failed: {first_line(exc)}") from exc


def get_decoder(name: str | Decoder = "decord", *, num_threads: int = 1, timeout: float | None = None) -> Decoder:
    """Builds a decoder by name: "decord", "pyav", "torchcodec" or "auto" (a Decoder is taken as it is).

    Every name gives exact frames: the named backend reads the files it is exact
    for and PyAV the others (see the module's docstring).

    Args:
        name: The preferred backend; "auto" picks per file the fastest installed one
            that is exact for it. A :class:`Decoder` instance is used as it is
            (behind the helper process when ``timeout`` is set).
        num_threads: Decoding threads per video.
        timeout: Seconds per video; decode in a helper process that a crash or
            hang cannot take down with it (:class:`~video_swin.data.isolated.IsolatedDecoder`).
            None decodes in the calling process.

    Returns:
        The decoder.

    Raises:
        ValueError: Unknown name.
        ImportError: "torchcodec" was named and cannot be imported.
    """
    if isinstance(name, Decoder):
        return isolate(name, timeout)
    if timeout is not None:
        return isolate(get_decoder(name, num_threads=num_threads), timeout)
    if name not in DECODER_NAMES:
        raise ValueError(f"unknown decoder {name!r}; expected one of {', '.join(DECODER_NAMES)}")
    pyav = PyAVDecoder(thread_count=num_threads)
    if name == "pyav":
        return ExactDecoder([pyav])
    if name == "torchcodec":
        if not torchcodec_available():
            raise ImportError(
                "decoder 'torchcodec' needs `pip install 'video-swin[torchcodec]'` and FFmpeg's shared libraries "
                "(major version 4 or newer, e.g. `apt-get install libavcodec59 libavformat59 libavutil57 "
                "libswscale6 libswresample4 libavdevice59 libavfilter8` on Debian 12)"
            )
        return ExactDecoder([TorchCodecDecoder(num_threads), pyav])
    if name == "auto":  # fastest first, as measured on Kinetics-shaped files (docs/BENCHMARKS.md)
        backends: list[Backend] = [TorchCodecDecoder(num_threads)] if torchcodec_available() else []
        if decord_available():
            backends.append(DecordDecoder(num_threads))
        return ExactDecoder([*backends, pyav], name="auto")
    if not decord_available():
        logger.warning("decord is not available; decoding with PyAV instead")
        return ExactDecoder([pyav])
    return ExactDecoder([DecordDecoder(num_threads), pyav])

