"""A decoding test corpus written with FFmpeg's encoders through PyAV.

Every frame carries its own index, painted as a 12-bit code of black and white
cells that survives lossy coding, so a decoded frame names its position in
presentation order whatever the decoder did. :data:`ENCODINGS` lists the kinds
of file users meet: H.264 with B-frames, open GOP in Matroska, variable frame
rate, a long file with sparse keyframes, sizes that are not multiples of 16,
MPEG-4 Part 2 in AVI with and without B-frames, HEVC, VP9 in WebM, AV1 and a
phone-style rotation tag. :data:`VARIANTS` adds the encoder settings a rule
about "known bad" files would have to foresee: x264 with open GOP plus scene-cut
and adaptive B-frames (x264's defaults otherwise), B-pyramid, weighted
prediction, periodic intra refresh, and MPEG-4 ASP with B-frames, each in MP4
and Matroska.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

BITS = 12
ROWS, COLS = 3, 4  # ROWS * COLS == BITS cells


def paint_index(index: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 frame whose cells spell ``index`` in binary (bit 0 top left)."""
    bits = (index >> np.arange(BITS)) & 1
    cells = np.where(bits.reshape(ROWS, COLS) == 1, 235, 16).astype(np.uint8)
    ys = np.minimum(np.arange(height) * ROWS // height, ROWS - 1)
    xs = np.minimum(np.arange(width) * COLS // width, COLS - 1)
    gray = cells[ys[:, None], xs[None, :]]
    return np.repeat(gray[:, :, None], 3, axis=2)


def read_index(frame: np.ndarray | torch.Tensor) -> int:
    """Inverse of :func:`paint_index` for one decoded (H, W, 3) frame: the centre of each cell."""
    frame = np.asarray(frame, dtype=np.float32).mean(axis=2)
    height, width = frame.shape
    value = 0
    for bit in range(BITS):
        row, col = divmod(bit, COLS)
        y0, y1 = row * height // ROWS, (row + 1) * height // ROWS
        x0, x1 = col * width // COLS, (col + 1) * width // COLS
        dy, dx = max((y1 - y0) // 4, 0), max((x1 - x0) // 4, 0)
        if frame[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean() > 125:
            value |= 1 << bit
    return value


def read_indices(frames: torch.Tensor) -> list[int]:
    """:func:`read_index` of every frame of a (T, H, W, 3) batch (all frames at once)."""
    gray = frames.float().mean(dim=3)  # (T, H, W)
    _, height, width = gray.shape
    values = torch.zeros(gray.shape[0], dtype=torch.int64)
    for bit in range(BITS):
        row, col = divmod(bit, COLS)
        y0, y1 = row * height // ROWS, (row + 1) * height // ROWS
        x0, x1 = col * width // COLS, (col + 1) * width // COLS
        dy, dx = max((y1 - y0) // 4, 0), max((x1 - x0) // 4, 0)
        lit = gray[:, y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean(dim=(1, 2)) > 125
        values |= lit.long() << bit
    return values.tolist()


@dataclass(frozen=True)
class Encoding:
    """How one corpus file is written."""

    name: str
    suffix: str
    codec: str
    num_frames: int = 96
    size: tuple[int, int] = (48, 64)  # (height, width) as stored
    rate: int = 25
    options: dict[str, str] = field(default_factory=dict)
    b_frames: int | None = None
    vfr: bool = False  # irregular timestamps
    rotation: int = 0  # display rotation tag, degrees counter-clockwise
    noise: int = 0  # +-amplitude of seeded per-pixel noise over the painted cells (busier content)


X264 = {"preset": "veryfast", "threads": "1", "x264-params": "mbtree=0:bframes=3:b-adapt=0"}

ENCODINGS: tuple[Encoding, ...] = (
    Encoding("h264_bframes", ".mp4", "libx264", options={**X264, "g": "12"}),
    Encoding("h264_open_gop", ".mkv", "libx264",
             options={**X264, "g": "24", "x264-params": "mbtree=0:bframes=3:b-adapt=0:open-gop=1:scenecut=0"}),
    Encoding("h264_vfr", ".mp4", "libx264", vfr=True, options={**X264, "g": "16"}),
    Encoding("h264_long", ".mp4", "libx264", num_frames=2400, size=(32, 32), options={**X264, "g": "300"}),
    Encoding("h264_odd_size", ".mp4", "libx264", size=(38, 72), options={**X264, "g": "20"}),
    Encoding("mpeg4_avi", ".avi", "mpeg4", options={"g": "12", "qscale": "4"}, b_frames=0),
    Encoding("mpeg4_bframes_avi", ".avi", "mpeg4", options={"g": "12", "qscale": "4"}, b_frames=2),
    Encoding("hevc", ".mp4", "libx265", options={"preset": "ultrafast", "x265-params": "log-level=error:bframes=3:keyint=24:pools=1:frame-threads=1"}),
    Encoding("vp9", ".webm", "libvpx-vp9", options={"g": "24", "deadline": "realtime", "cpu-used": "8", "threads": "1"}),
    Encoding("av1", ".mkv", "libsvtav1", size=(64, 64), options={"g": "24", "preset": "12"}),
    Encoding("h264_rotated", ".mp4", "libx264", rotation=90, options={**X264, "g": "12"}),
)  # fmt: skip



def _both_containers(name: str, codec: str, **kwargs) -> tuple[Encoding, Encoding]:
    return Encoding(f"{name}_mp4", ".mp4", codec, **kwargs), Encoding(f"{name}_mkv", ".mkv", codec, **kwargs)


# x264 at its own defaults (preset medium: scene-cut on, adaptive B-frames, B-pyramid,
# weighted prediction) except where a variant says otherwise; one thread, so files are reproducible.
VARIANTS: tuple[Encoding, ...] = (
    # The file of issue 28: open GOP with x264's scene-cut and b-adapt, keyframe interval 30.
    *_both_containers("x264_open_gop_scenecut", "libx264", num_frames=120, noise=40,
                      options={"threads": "1", "g": "30", "x264-params": "open-gop=1"}),
    *_both_containers("x264_open_gop_plain", "libx264", num_frames=120,
                      options={"threads": "1", "g": "30", "x264-params": "open-gop=1"}),
    *_both_containers("x264_bpyramid", "libx264", num_frames=96, noise=20,
                      options={"threads": "1", "g": "24", "x264-params": "bframes=3:b-pyramid=normal:b-adapt=2"}),
    *_both_containers("x264_weightp", "libx264", num_frames=96, noise=20,
                      options={"threads": "1", "g": "24", "x264-params": "weightp=2:weightb=1:open-gop=1"}),
    *_both_containers("x264_intra_refresh", "libx264", num_frames=96, noise=20,
                      options={"threads": "1", "g": "30", "x264-params": "intra-refresh=1"}),
    # MPEG-4 Part 2 Advanced Simple Profile: B-frames and quarter-pel motion. (Packed B-frames,
    # the DivX/Xvid AVI trick, cannot be written: FFmpeg only has the filter that unpacks them.)
    *_both_containers("mpeg4_asp", "mpeg4", num_frames=96, noise=20, b_frames=2,
                      options={"g": "12", "qscale": "4", "flags": "+qpel"}),
)  # fmt: skip

BY_NAME = {e.name: e for e in (*ENCODINGS, *VARIANTS)}


def frame_times(enc: Encoding) -> list[Fraction]:
    """Presentation time of each frame in seconds (irregular for ``vfr``)."""
    if not enc.vfr:
        return [Fraction(i, enc.rate) for i in range(enc.num_frames)]
    # Steps of 1, 2 and 3 frame durations in a fixed irregular pattern, like a phone
    # camera that drops its rate in low light.
    steps = [1, 1, 3, 1, 2, 1, 1, 1, 2, 3]
    times, t = [], 0
    for i in range(enc.num_frames):
        times.append(Fraction(t, enc.rate))
        t += steps[i % len(steps)]
    return times


def write(enc: Encoding, folder: Path) -> Path:
    """Writes ``enc`` into ``folder``; frame i shows :func:`paint_index` ``(i)``."""
    import av  # noqa: PLC0415

    path = folder / f"{enc.name}{enc.suffix}"
    height, width = enc.size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(enc.codec, rate=enc.rate)
        stream.height, stream.width = height, width
        stream.pix_fmt = "yuv420p"
        stream.options = dict(enc.options)
        if enc.b_frames is not None:
            stream.codec_context.max_b_frames = enc.b_frames
        time_base = Fraction(1, enc.rate * 60) if enc.vfr else Fraction(1, enc.rate)
        stream.codec_context.time_base = time_base
        if enc.vfr:
            stream.time_base = Fraction(1, 90000)
        if enc.rotation:
            stream.set_display_rotation(enc.rotation)
        for i, t in enumerate(frame_times(enc)):
            image = paint_index(i, height, width)
            if enc.noise:  # the cells' means stay far from the threshold of read_index
                grain = rng.integers(-enc.noise, enc.noise + 1, image.shape)
                image = np.clip(image.astype(np.int16) + grain, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame = frame.reformat(format="yuv420p", threads=1)  # see decoders._rgb
            frame.pts = int(t / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def expected_frames(enc: Encoding, indices: list[int]) -> list[int]:
    """The painted index of each wanted frame: the frame's own position."""
    return list(indices)


def sequential_indices(path: Path) -> list[int]:
    """Painted indices of a full sequential PyAV decode, rotation not applied (the ground truth)."""
    import av  # noqa: PLC0415

    with av.open(str(path)) as container:
        return [read_index(f.to_ndarray(format="rgb24", threads=1)) for f in container.decode(video=0)]


def write_all(folder: Path, encodings: tuple[Encoding, ...] = ENCODINGS) -> dict[str, Path]:
    """Writes ``encodings`` (by default :data:`ENCODINGS`) in a fresh Python process; returns {name: path}.

    A separate process because once decord is loaded (it brings its own FFmpeg
    libraries), PyAV's libvpx-vp9 encoder fails to open in the same process.
    """
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = {**os.environ, "SVT_LOG": "1"}  # SVT-AV1 prints a banner otherwise
    subprocess.run([sys.executable, __file__, str(folder), *(e.name for e in encodings)], check=True, env=env)
    return {enc.name: folder / f"{enc.name}{enc.suffix}" for enc in encodings}


if __name__ == "__main__":
    import sys

    for name in sys.argv[2:] or [e.name for e in ENCODINGS]:
        write(BY_NAME[name], Path(sys.argv[1]))
