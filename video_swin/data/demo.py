"""The demo dataset: small synthetic H.264 videos of ten motion classes, in Kinetics layout.

The classes come in five time-reversed pairs (moving right/left, down/up,
rotating clockwise/counterclockwise, zooming in/out, fading in/out): each
video of the second class of a pair is drawn from the same distribution as
the first and played backwards, so no single frame tells the pair apart and a
model has to use time. The whole scene moves, as under a moving camera, so
every part of the frame carries the motion. Textures, colours, speeds, frame
sizes (portrait too), frame rates and lengths vary per video.

Layout, as the official Kinetics downloads::

    <out>/train.csv, <out>/val.csv            label,youtube_id,time_start,time_end,split
    <out>/{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4

Every video has its own generator seeded by (seed, split, class, number), so
the output depends only on the seed and the counts (x264 runs single-threaded
for the same reason). A folder of demo data holds a marker file,
``.video-swin-demo``; :func:`ensure_demo_data` (what ``data.generate_demo``
runs) generates only into an empty or absent folder, or one with that marker,
so a mistyped ``data.root`` stops the run instead of filling a wrong folder.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .annotations import clear_scan_cache
from .processes import worker_context

logger = logging.getLogger(__name__)

# (class played forward, class played backward, motion)
_PAIRS = (
    ("moving right", "moving left", "move_x"),
    ("moving down", "moving up", "move_y"),
    ("rotating clockwise", "rotating counterclockwise", "rotate"),
    ("zooming in", "zooming out", "zoom"),
    ("fading in", "fading out", "fade"),
)
DEMO_CLASSES = tuple(sorted(name for pair in _PAIRS for name in pair[:2]))
# (W, H). No width 72: decord 0.6 fails on it ("DECORDArrayCopyFromTo: The size must exactly match").
_SIZES = ((96, 64), (112, 64), (128, 72), (96, 72), (80, 80), (64, 96), (64, 112), (80, 128))
_FPS = (12, 15, 20, 24, 30)
_MIN_FRAMES = 32
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
DEMO_MARKER = ".video-swin-demo"  # in every folder of generated demo data


def _texture(rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A random smooth two-colour texture defined on the whole plane: ``f(x, y) -> (H, W, 3)`` float.

    A few plane waves of random direction and wavelength, summed and sharpened
    into blobs with soft edges. Wavelengths stay well above the largest
    displacement between two sampled frames, so motion never aliases.
    """
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(c0 - c1).mean() < 80:  # enough contrast to see the blobs move
        c1 = rng.uniform(0, 255, 3)
    k = 5
    theta = rng.uniform(0, math.pi, k)
    freq = 2 * math.pi / rng.uniform(16, 40, k)
    phase = rng.uniform(0, 2 * math.pi, k)
    kx, ky = (freq * np.cos(theta)).astype(np.float32), (freq * np.sin(theta)).astype(np.float32)

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        field = sum(np.sin(kx[j] * x + ky[j] * y + phase[j]) for j in range(k)) / math.sqrt(k / 2)
        t = 0.5 + 0.5 * np.tanh(2.0 * field)
        return c0 + (c1 - c0) * t[..., None]

    return f


def _render(rng: np.random.Generator, motion: str, backward: bool) -> tuple[np.ndarray, int]:
    """Frames ``(N, H, W, 3)`` uint8 and the frame rate of one demo video.

    The whole scene moves (as under a moving camera), so every part of the
    frame carries the motion: a textured plane slides sideways or up/down,
    turns about the frame centre, grows or shrinks about it, or fades in from
    black. Speeds are steady and large enough that any 32-frame window shows
    the motion plainly.
    """
    w, h = _SIZES[rng.integers(len(_SIZES))]
    fps = int(_FPS[rng.integers(len(_FPS))])
    n = int(rng.integers(_MIN_FRAMES + 8, 2 * _MIN_FRAMES + 1))
    texture = _texture(rng)
    speed = rng.uniform(0.8, 1.5)  # pixels per frame
    spin = rng.uniform(0.012, 0.025)  # radians per frame
    growth = rng.uniform(0.012, 0.02)  # log-scale per frame
    noise_seed = int(rng.integers(2**31))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx -= (w - 1) / 2
    yy -= (h - 1) / 2
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        t = n - 1 - i if backward else i  # frames since the start of the forward motion
        x, y, gain = xx, yy, 1.0
        if motion == "move_x":  # content moves to +x (right)
            x = xx - speed * t
        elif motion == "move_y":  # content moves to +y (down)
            y = yy - speed * t
        elif motion == "rotate":  # y points down: a growing angle turns clockwise on screen
            a = -spin * t
            x, y = xx * math.cos(a) - yy * math.sin(a), xx * math.sin(a) + yy * math.cos(a)
        elif motion == "zoom":  # content grows about the centre
            scale = math.exp(-growth * t)
            x, y = xx * scale, yy * scale
        else:  # fades in from black
            gain = 0.1 + 0.9 * t / (n - 1)
        frame = texture(x, y) * gain
        frame += np.random.default_rng([noise_seed, i]).normal(0, 3, (h, w, 1))
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames, fps


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 -> planar yuv420p ``(H * 3 / 2, W)`` uint8 (BT.601, limited range).

    Done in numpy because FFmpeg's converter, as PyAV calls it, gave slightly
    different output from run to run, and demo files must be identical for a seed.
    """
    rgb = frame.astype(np.float32)
    y = 16 + rgb @ np.array([65.481, 128.553, 24.966], np.float32) / 255
    h, w = frame.shape[:2]
    pooled = rgb.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))  # (H/2, W/2, 3)
    u = 128 + pooled @ np.array([-37.797, -74.203, 112.0], np.float32) / 255
    v = 128 + pooled @ np.array([112.0, -93.786, -18.214], np.float32) / 255
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int | Fraction,
    crf: int = 18,
    gop: int | None = None,
    faststart: bool = False,
) -> None:
    """Writes frames as H.264/yuv420p mp4 with PyAV, reproducibly (same frames, same bytes).

    Args:
        path: Output file.
        frames: ``(N, H, W, 3)`` uint8 RGB, H and W even.
        fps: Frame rate.
        crf: x264 constant rate factor (0 = lossless).
        gop: Keyframe interval (default: one second).
        faststart: Put the index (moov atom) before the frames.
    """
    import av  # noqa: PLC0415

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # One thread and no macroblock tree: x264's mbtree made the output differ from
        # run to run here, and a seed must always give the same files.
        stream.options = {"crf": str(crf), "g": str(gop or round(fps)), "preset": "veryfast",
                          "threads": "1", "x264-params": "mbtree=0"}  # fmt: skip
        for frame in frames:
            yuv = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())


def _make_one(job: tuple[str, int, str, int, int, int, str, bool]) -> list[str]:
    out, seed, split, split_id, class_id, number, motion, backward = job
    label = DEMO_CLASSES[class_id]
    rng = np.random.default_rng([seed, split_id, class_id, number])
    youtube_id = "".join(_ID_CHARS[i] for i in rng.integers(len(_ID_CHARS), size=11))
    start = int(rng.integers(0, 290))
    frames, fps = _render(rng, motion, backward)
    folder = Path(out) / split / label
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4", frames, fps)
    return [label, youtube_id, str(start), str(start + 10), split]


def make_demo_data(
    out: str | Path = "data/demo",
    seed: int = 0,
    train_per_class: int = 100,
    val_per_class: int = 20,
    workers: int | None = None,
) -> Path:
    """Writes the demo dataset (videos first, the two CSVs last).

    Args:
        out: Output folder.
        seed: Seed; the output depends only on it and the counts.
        train_per_class: Training videos per class.
        val_per_class: Validation videos per class.
        workers: Processes (default: up to 2, by CPU count).

    Returns:
        ``out``.

    Raises:
        ConfigError: ``out`` is a non-empty folder that holds no demo data
            (its ``train.csv``/``val.csv`` would be replaced).
    """
    out = Path(out)
    if out.is_dir() and not (out / DEMO_MARKER).is_file() and any(out.iterdir()):
        found = _names(sorted(p.name for p in out.iterdir()))
        raise ConfigError(f"demo data folder {out} is not empty and holds no demo data (found: {found}); "
                          f"choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text(f"demo data written by video_swin.data.make_demo_data, seed {seed}\n")
    jobs = []
    for split_id, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for forward, backward, motion in _PAIRS:
            for label, reverse in ((forward, False), (backward, True)):
                class_id = DEMO_CLASSES.index(label)
                jobs += [(str(out), seed, split, split_id, class_id, k, motion, reverse) for k in range(count)]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
            rows = list(pool.map(_make_one, jobs, chunksize=8))
    else:
        rows = [_make_one(job) for job in jobs]
    for split in ("train", "val"):
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(r for r in rows if r[4] == split)
    clear_scan_cache()
    logger.info("wrote %d demo videos to %s", len(rows), out)
    return out


def ensure_demo_data(
    root: str | Path = "data/demo",
    seed: int = 0,
    *,
    annotations: Iterable[str | Path | None] = (),
    **kwargs,
) -> Path:
    """Generates the demo dataset at ``root`` unless its ``train.csv`` and ``val.csv`` are there.

    Writes only into a folder that is absent, empty, or marked as demo data
    (:data:`DEMO_MARKER`, which every generated folder holds), and only when
    the annotation files the run will read lie in ``root``: a mistyped root
    stops here instead of being filled with demo videos and trained on.

    Safe to call from several processes at once: each builds in a temporary
    sibling folder and the first to rename it into place wins.

    Args:
        root: Dataset folder.
        seed: Seed for generation.
        annotations: The annotation files the run will read (e.g. the config's
            ``data.train_annotations`` and ``data.val_annotations``; None entries
            are skipped); each must lie in ``root``.
        **kwargs: ``train_per_class``, ``val_per_class``, ``workers`` for :func:`make_demo_data`.

    Returns:
        ``root``.

    Raises:
        ConfigError: An annotation file outside ``root``, or ``root`` a non-empty
            folder without the demo CSVs and without the marker, or marked but
            holding files the generator did not write (nothing is removed then).
    """
    root = Path(root)
    check_demo_annotations(root, annotations)
    if (root / "train.csv").is_file() and (root / "val.csv").is_file():
        return root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"demo data folder {root} is a file; check data.root")
    if root.is_dir() and any(root.iterdir()):
        if not (root / DEMO_MARKER).is_file():
            raise ConfigError(
                f"demo data folder {root} is not empty and holds no demo data (no train.csv/val.csv, "
                f"no {DEMO_MARKER}); refusing to generate the demo dataset into it: check data.root"
            )
        foreign = foreign_demo_entries(root)
        if foreign:
            raise ConfigError(
                f"demo data folder {root} has lost its CSVs and also holds files the demo generator did not "
                f"write ({_names(foreign)}); move them out to have the demo data generated again (nothing was removed)"
            )
        logger.warning("%s: demo data without its CSVs; generating it again", root)
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    logger.info("generating the demo dataset in %s", root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        make_demo_data(tmp, seed=seed, **kwargs)
        try:
            os.replace(tmp, root)  # atomic; replaces an empty folder, fails if another process finished first
        except OSError:
            if not (root / "val.csv").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    clear_scan_cache()
    return root


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def foreign_demo_entries(root: str | Path) -> list[str]:
    """The entries of a demo data folder (relative paths, sorted) that :func:`make_demo_data` did not write.

    It writes the marker, ``train.csv``, ``val.csv`` and ``{train,val}/<class>/*.mp4``
    (frame index sidecars ``*.mp4.index.npz`` may lie beside the videos); links are never its own.
    """
    root, found = Path(root), []
    for path in sorted(root.iterdir()):
        if path.is_symlink() or (path.is_file() and path.name not in (DEMO_MARKER, "train.csv", "val.csv")):
            found.append(path.name)
        elif path.is_dir() and path.name in ("train", "val"):
            for folder in sorted(path.iterdir()):
                if folder.is_symlink() or not folder.is_dir() or folder.name not in DEMO_CLASSES:
                    found.append(f"{path.name}/{folder.name}")
                    continue
                found += [f"{path.name}/{folder.name}/{f.name}" for f in sorted(folder.iterdir())
                          if f.is_symlink() or not f.is_file() or not f.name.endswith((".mp4", ".mp4.index.npz"))]
        elif not path.is_file():
            found.append(path.name)
    return found


def check_demo_annotations(root: str | Path, annotations: Iterable[str | Path | None]) -> None:
    """Raises ConfigError naming the first annotation file that does not lie in the demo folder ``root``."""
    folder = Path(root).resolve()
    for path in annotations:
        if path is not None and folder not in Path(path).resolve().parents:
            raise ConfigError(
                f"data.generate_demo would write the demo data into {root}, but the annotations {path} "
                f"are not in that folder; check data.root and the annotation paths"
            )
