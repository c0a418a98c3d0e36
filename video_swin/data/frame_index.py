"""The frame index of a video: every frame's timestamp in presentation order, and its keyframes.

A frame index is a position in presentation order, whatever the frame rate. The
decoders read frames *by timestamp* through this index, so variable frame rate,
B-frames, open GOPs and containers that store no presentation timestamps
cannot shift a clip by a frame without anyone noticing.

The index comes from one demux pass with PyAV: packets are read, not decoded,
except for the first frame (its rotation tag and size, and a check that the
codec can be decoded at all). Where the packets carry no usable presentation
timestamps (missing or repeated, e.g. AVI with packed B-frames), the frames
are decoded once and their timestamps recorded; where even those are missing,
the index counts frames and reads decode from the start.

Indexes are cached: in memory per process, and on disk in a folder keyed by
the file's resolved path, size and modification time, written atomically (a
temporary file renamed into place), so any number of DataLoader workers and
processes on shared storage can build and read them at once.

An index also carries the *verdicts* of the fast backends on its file
(:func:`~video_swin.data.decoders.verify_backend`: whether decord's or
TorchCodec's frames at probe positions equal the exact path's), so a file is
verified once and not on every read. Format 2 stores them; format-1 files
(caches and ``prepare``'s sidecars written before) still load, without
verdicts, and are verified again on first use.
``VIDEO_SWIN_INDEX_CACHE`` sets the folder (default ``$VIDEO_SWIN_CACHE/frame-index``,
``~/.cache/video-swin/frame-index``); ``VIDEO_SWIN_INDEX_CACHE=off`` keeps them
in memory only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import DecodeError, first_line

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # 1: before verdicts
_MEMORY_ENTRIES = 4096  # indexes kept per process (a few KB each for Kinetics clips)


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Timestamps of every frame of a video's first video stream, in presentation order.

    Attributes:
        pts: ``int64 (N,)``, strictly increasing, in ``time_base`` units; with
            ``timestamps=False`` simply ``0..N-1``.
        keyframes: ``int64 (K,)``, sorted positions (into ``pts``) of the frames
            a decoder can start from.
        time_base: Seconds per ``pts`` unit.
        rotation: Display rotation in degrees counter-clockwise (0, 90, 180, 270),
            applied by every backend.
        timestamps: Whether decoded frames can be identified by their timestamp
            (and so be reached by seeking). False: decode from the start, counting.
        open_gop: Some keyframe is followed, in decode order, by frames shown
            before it (leading pictures), which naive seeking decodes wrongly.
        reordered: Decode order differs from presentation order (B-frames).
        codec: FFmpeg's codec name, e.g. "h264".
        container: FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
        height: Coded height of the frames (before rotation).
        width: Coded width (before rotation).
        verdicts: ``{backend key: ""}`` where a fast backend was verified exact on this
            file, ``{backend key: reason}`` where it was not; filled on first use and
            stored with the index (see :func:`store_verdicts`).
    """

    pts: np.ndarray
    keyframes: np.ndarray
    time_base: Fraction
    rotation: int
    timestamps: bool
    open_gop: bool
    reordered: bool
    codec: str
    container: str
    height: int
    width: int
    verdicts: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.pts.size)

    def keyframe_before(self, position: int) -> int:
        """Position of the last keyframe at or before ``position`` (0 when there is none)."""
        k = int(np.searchsorted(self.keyframes, position, side="right")) - 1
        return int(self.keyframes[k]) if k >= 0 else 0

    def position_of(self, pts: int | None) -> int:
        """Position of the frame with timestamp ``pts``; -1 when no frame has it."""
        if pts is None:
            return -1
        k = int(np.searchsorted(self.pts, pts))
        return k if k < self.pts.size and int(self.pts[k]) == pts else -1

    def seconds(self, positions: np.ndarray) -> np.ndarray:
        """Presentation times of ``positions`` in seconds (float64)."""
        return self.pts[positions].astype(np.float64) * float(self.time_base)

    # -- storage: npz with plain arrays and a JSON header, loaded without pickle --
    def save(self, path: str | Path, video_size: int | None = None) -> None:
        """Writes the index to ``path`` (``.npz``) atomically; ``video_size`` marks a sidecar's video."""
        header = {"video_size": video_size,
            "version": FORMAT_VERSION, "time_base": [self.time_base.numerator, self.time_base.denominator],
            "rotation": self.rotation, "timestamps": self.timestamps, "open_gop": self.open_gop,
            "reordered": self.reordered, "codec": self.codec, "container": self.container,
            "height": self.height, "width": self.width, "verdicts": dict(self.verdicts),
        }  # fmt: skip
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, pts=self.pts, keyframes=self.keyframes, header=np.frombuffer(
                    json.dumps(header).encode(), dtype=np.uint8))  # fmt: skip
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> FrameIndex:
        """Reads an index written by :meth:`save` (this format or format 1); ValueError for others."""
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(data["header"].tobytes().decode())
            if header.get("version") not in _READABLE_VERSIONS:
                raise ValueError(f"frame index format {header.get('version')}, expected {FORMAT_VERSION}")
            pts, keyframes = data["pts"].astype(np.int64), data["keyframes"].astype(np.int64)
        num, den = header.pop("time_base")
        del header["version"]
        header.pop("video_size", None)
        verdicts = header.pop("verdicts", None) or {}
        header["verdicts"] = {str(k): str(v) for k, v in verdicts.items()} if isinstance(verdicts, dict) else {}
        return cls(pts=pts, keyframes=keyframes, time_base=Fraction(num, den), **header)


def build_frame_index(path: str | Path) -> FrameIndex:
    """Builds the index of ``path`` with PyAV (one demux pass; a decode pass only where needed).

    Raises:
        DecodeError: No video stream, a codec FFmpeg cannot decode, no frames.
    """
    import av  # noqa: PLC0415  (keeps `import video_swin.data` light)

    path = str(path)
    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:
        raise DecodeError(path, f"cannot open it as a video ({first_line(exc)})") from exc
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise DecodeError(path, f"no video stream (it has: {', '.join(kinds)})")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        try:
            first = next(iter(container.decode(stream)), None)
        except Exception as exc:
            raise DecodeError(path, f"cannot decode its {codec} video ({first_line(exc)})") from exc
        if first is None:
            raise DecodeError(path, "no video frames")
        rotation = int(round(first.rotation or 0)) % 360
        container.seek(0)
        try:
            packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size > 0]
        except Exception as exc:
            raise DecodeError(path, f"the container is damaged ({first_line(exc)})") from exc
        declared = stream.frames or 0  # the container's own count, where it keeps one
        if declared and len(packets) < declared:
            raise DecodeError(path, f"truncated: the container lists {declared} frames, only {len(packets)} are present")
        pts_list = [p for p, _ in packets]
        usable = bool(packets) and None not in pts_list and len(set(pts_list)) == len(pts_list)
        if usable:
            decode_pts = np.asarray(pts_list, dtype=np.int64)
            keys = np.asarray([k for _, k in packets], dtype=bool)
        else:  # timestamps from the frames themselves
            container.seek(0)
            try:
                frames = [(f.pts, f.key_frame) for f in container.decode(stream)]
            except Exception as exc:
                raise DecodeError(path, f"cannot decode its {codec} video ({first_line(exc)})") from exc
            frame_pts = [p for p, _ in frames]
            usable = bool(frames) and None not in frame_pts and len(set(frame_pts)) == len(frame_pts)
            decode_pts = np.asarray(frame_pts if usable else range(len(frames)), dtype=np.int64)
            keys = np.asarray([k for _, k in frames], dtype=bool)
        if decode_pts.size == 0:
            raise DecodeError(path, "no video frames")
        order = np.argsort(decode_pts, kind="stable")
        pts = decode_pts[order]
        keyframes = np.flatnonzero(keys[order]).astype(np.int64)
        # Open GOP: a keyframe with a later packet (decode order) that is shown before it.
        later_min = np.minimum.accumulate(decode_pts[::-1])[::-1]  # min pts from each packet on
        key_at = np.flatnonzero(keys[:-1])
        open_gop = bool(np.any(later_min[key_at + 1] < decode_pts[key_at]))
        return FrameIndex(
            pts=pts, keyframes=keyframes if keyframes.size else np.zeros(1, np.int64),
            time_base=Fraction(stream.time_base) if stream.time_base else Fraction(1, 1),
            rotation=rotation, timestamps=usable, open_gop=open_gop,
            reordered=bool(np.any(np.diff(decode_pts) < 0)), codec=codec,
            container=container.format.name, height=first.height, width=first.width,
        )  # fmt: skip


class FrameIndexCache:
    """Indexes by file: in memory (LRU), then on disk, then built.

    Args:
        folder: Where indexes are stored; None keeps them in memory only.
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: OrderedDict[tuple, FrameIndex] = OrderedDict()

    def get(self, path: str | Path) -> FrameIndex:
        """The index of ``path``, built on first use. Raises DecodeError for unreadable files."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError as exc:
            raise DecodeError(path, f"cannot read it ({exc.strerror or exc})") from exc
        key = (real, st.st_size, st.st_mtime_ns)
        index = self._memory.get(key)
        if index is not None:
            self._memory.move_to_end(key)
            return index
        stored = self._file(key)
        index = None
        if stored is not None and stored.exists():  # first: it holds the verdicts found here
            try:
                index = FrameIndex.load(stored)
            except Exception as exc:  # a stale format or a damaged file: build it again
                logger.debug("frame index %s unreadable (%s); rebuilding", stored, exc)
        if index is None:
            index = _sidecar(real, st.st_size)
        if index is None:
            index = build_frame_index(path)
            if stored is not None:
                try:
                    index.save(stored)
                except OSError as exc:  # a full or read-only cache costs speed, never the read
                    logger.warning("cannot store the frame index in %s (%s); continuing without", stored.parent, exc)
        self._memory[key] = index
        if len(self._memory) > _MEMORY_ENTRIES:
            self._memory.popitem(last=False)
        return index

    def store(self, path: str | Path, index: FrameIndex) -> None:
        """Saves ``index`` (e.g. with new verdicts) to the disk cache of ``path``; never raises for the disk."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return
        stored = self._file((real, st.st_size, st.st_mtime_ns))
        if stored is None:
            return
        try:
            index.save(stored)
        except OSError as exc:
            logger.debug("cannot store the frame index in %s (%s)", stored.parent, exc)

    def _file(self, key: tuple) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256("\0".join(map(str, key)).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npz"


SIDECAR_SUFFIX = ".index.npz"


def save_sidecar(index: FrameIndex, video: str | Path) -> None:
    """Stores ``index`` beside ``video`` (``<video>.index.npz``, as ``video-swin prepare`` does).

    A sidecar travels with the data (other machines, other mount points) and is
    used instead of the cache while the video keeps its size.
    """
    index.save(f"{video}{SIDECAR_SUFFIX}", video_size=os.path.getsize(video))


def _sidecar(video: str, size: int) -> FrameIndex | None:
    path = f"{video}{SIDECAR_SUFFIX}"
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(data["header"].tobytes().decode()).get("video_size") != size:
                return None  # the video changed since: build the index again
        return FrameIndex.load(path)
    except Exception as exc:  # a damaged sidecar is ignored, never trusted
        logger.debug("sidecar %s unreadable (%s)", path, exc)
        return None


def default_cache_folder() -> Path | None:
    """The disk cache from the environment (see the module's docstring); None when off."""
    folder = os.environ.get("VIDEO_SWIN_INDEX_CACHE")
    if folder is not None:
        return None if folder.strip().lower() in ("", "off", "none", "0") else Path(folder).expanduser()
    root = os.environ.get("VIDEO_SWIN_CACHE") or "~/.cache/video-swin"
    return Path(root).expanduser() / "frame-index"


_CACHES: dict[Path | None, FrameIndexCache] = {}


def _process_cache() -> FrameIndexCache:
    folder = default_cache_folder()
    cache = _CACHES.get(folder)
    if cache is None:
        cache = _CACHES[folder] = FrameIndexCache(folder)
    return cache


def get_frame_index(path: str | Path) -> FrameIndex:
    """The frame index of ``path`` from the process's cache (see the module's docstring)."""
    return _process_cache().get(path)


def store_verdicts(path: str | Path, index: FrameIndex) -> None:
    """Writes ``index`` with its (new) verdicts to the process's disk cache, so other processes reuse them."""
    _process_cache().store(path, index)

