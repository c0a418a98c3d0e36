"""Preparation and shards (issue 19): ``video-swin prepare`` throughput and the training loader before/after.

1. Writes Kinetics-400-shaped sources with PyAV into ``--work`` (default: a
   temporary folder): ``--seconds`` (10) s clips at 1280x720 (``--hd N`` of
   them at 1920x1080), 30 fps, H.264 (x264 ``veryfast``, crf 23, a keyframe
   every ``--gop`` (250) frames, B-frames), AAC stereo audio unless
   ``--no-audio``; the content is a panning two-scale texture, a moving disc
   and per-frame noise, so it compresses like camera video, not like flat
   colour (about 2 Mbit/s at 720p; the mean bitrate is printed). The layout
   is the Kinetics download one that ``prepare`` reads:
   ``src/annotations/{train,val}.csv`` and the videos in ``src/train`` and
   ``src/val`` named ``<youtube_id>_<start>_<end>.mp4``.
2. Times :func:`video_swin.data.prepare.prepare` (what ``video-swin prepare``
   runs) with the defaults (short side 320, a keyframe every 16 frames) and
   ``--jobs`` worker processes (default: every core), once without and once
   with ``--shards``, into fresh folders: videos/s by wall time, per core
   (divided by ``--jobs``), and per CPU-second of the whole process tree.
3. Times the training loader of ``--config`` (default ``k400_swin_t.yaml``:
   32x2 clips, short side 256, random resized crop 224, flip, uint8 output,
   decord, decoding in a helper process per worker), built as training builds
   it (``build_datasets`` + the trainer's ``_train_loader``), over the train
   split of (a) the raw sources through ``VideoDataset``, (b) the prepared
   files through ``VideoDataset`` and (c) the shards through ``ShardDataset``:
   same decoder, same ``--workers`` and ``--batch-size``. One repetition is
   one epoch of each, interleaved (a, b, c, then c, b, a, ...); repetition 0
   warms up (the raw files' frame indexes are built then, into
   ``WORK/index-cache``) and is dropped; medians over ``--reps``. Each epoch
   starts its workers as training does (start-up included in the wall time).
   Clips/s per core is given two ways: wall clips/s divided by the worker
   count, and clips per CPU-second of the process tree (this process, the
   workers and their decoding helpers: ``RUSAGE_CHILDREN`` once the workers
   are joined), steadier on a shared machine.

Every table row carries the 1-minute load average measured with it; the
header gives the CPU model, the date and the load average.

Examples:
    python benchmarks/prepare_speed.py                      # 12 train + 2 val videos, 3 reps
    python benchmarks/prepare_speed.py --videos 8 --val-videos 1 --reps 5   # docs/BENCHMARKS.md, ~6 min here
    python benchmarks/prepare_speed.py --videos 24 --hd 4 --reps 5 --work /tmp/k400_bench
    python benchmarks/prepare_speed.py --clip 16x4 --batch-size 4
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_speed import _children_cpu

LABELS = ("abseiling", "air drumming", "answering questions", "applauding")


# -- machine ----------------------------------------------------------------------------------------


def load1() -> float:
    return os.getloadavg()[0]


def machine_line() -> str:
    from video_swin.models.kernels.machine import cpu_model

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu_model()}, {cores} cores usable ({os.cpu_count()} CPUs), "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load} (1, 5, 15 min)")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())} load {load1():.2f}] {message}", file=sys.stderr, flush=True)


# -- sources ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: str
    seed: int
    width: int
    height: int
    seconds: int
    fps: int
    gop: int
    audio: bool


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth shapes (random 16-px grid, bicubic) with 20 % fine 4-px detail, three channels, uint8.

    With the noise and motion of :func:`write_source` this encodes at about 2 Mbit/s at 720p (crf 23),
    the range of Kinetics' 720p YouTube files; sharp 16-px blocks instead gave 3.3 Mbit/s.
    """
    from PIL import Image

    grid = (height // 16 + 1, width // 16 + 1)
    small = rng.integers(0, 256, (*grid, 3)).astype(np.uint8)
    coarse = np.asarray(Image.fromarray(small).resize((grid[1] * 16, grid[0] * 16), Image.BICUBIC))
    fine = np.kron(rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)), np.ones((4, 4, 1)))
    return (0.8 * coarse[:height, :width] + 0.2 * fine[:height, :width]).astype(np.uint8)


PAN = (256, 1024)  # how far the camera pans (rows, columns) before it jumps back


def write_source(src: Source) -> tuple[str, int]:
    """One K400-like video (see the module's docstring); returns (path, bytes)."""
    import av

    rng = np.random.default_rng(src.seed)
    h, w = src.height, src.width
    texture = _texture(rng, h + PAN[0], w + PAN[1]).astype(np.int16)
    # sensor noise: a few noisy copies of the scene, cycled (noise that changes every frame)
    scenes = [np.clip(texture + rng.integers(-2, 3, texture.shape[:2] + (1,), dtype=np.int16), 0, 255
                      ).astype(np.uint8) for _ in range(3)]  # fmt: skip
    del texture
    radius = h // 6
    yy, xx = np.mgrid[-radius:radius, -radius:radius]
    disc = xx**2 + yy**2 < radius**2
    tmp = f"{src.path}.tmp"
    with av.open(tmp, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=src.fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"crf": "23", "preset": "veryfast", "g": str(src.gop), "threads": "1"}
        audio = None
        if src.audio:
            audio = container.add_stream("aac", rate=44100, layout="stereo")
        for i in range(src.seconds * src.fps):
            y0, x0 = (i // 2) % PAN[0], (3 * i) % PAN[1]  # the camera pans
            rgb = scenes[i % len(scenes)][y0:y0 + h, x0:x0 + w].copy()
            cy = int(h / 2 + h / 4 * np.cos(i / 15)) - radius  # a moving object
            cx = int(w / 2 + w / 3 * np.sin(i / 20)) - radius
            patch = rgb[cy:cy + 2 * radius, cx:cx + 2 * radius]
            patch[disc] = 255 - patch[disc]
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", threads=1)
            out.pts = i
            container.mux(video.encode(out))
            if audio is not None and i % src.fps == 0:  # one second of a quiet chord with noise
                t = np.arange(44100) / 44100 + i / src.fps
                tone = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.sin(2 * np.pi * 330 * t)
                samples = (tone + 0.01 * rng.standard_normal(44100)).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray(np.stack([samples, samples]), format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = 44100, (i // src.fps) * 44100
                container.mux(audio.encode(chunk))
        container.mux(video.encode())
        if audio is not None:
            container.mux(audio.encode())
    os.replace(tmp, src.path)
    return src.path, os.path.getsize(src.path)


def make_sources(root: Path, train: int, val: int, hd: int, size: tuple[int, int], seconds: int, fps: int,
                 gop: int, audio: bool, jobs: int) -> list[tuple[str, int]]:
    """The Kinetics download layout under ``root``: videos of ``size`` (width, height), the first ``hd``
    train videos at 1920x1080.

    Reuses a finished layout with the same settings (``--work``)."""
    stamp = root / "settings.txt"
    settings = f"{train} {val} {hd} {size} {seconds} {fps} {gop} {audio}"
    if stamp.is_file() and stamp.read_text() == settings:
        progress(f"sources: reusing {root}")
        return [(str(p), p.stat().st_size) for p in sorted(root.glob("*/*.mp4"))]
    shutil.rmtree(root, ignore_errors=True)
    (root / "annotations").mkdir(parents=True)
    sources: list[Source] = []
    for split, count in (("train", train), ("val", val)):
        (root / split).mkdir()
        lines = ["label,youtube_id,time_start,time_end,split"]
        for k in range(count):
            seed = len(sources)
            youtube_id, start = f"k400bench{seed:02d}", 10 * seed
            width, height = (1920, 1080) if split == "train" and k < hd else size
            name = f"{youtube_id}_{start:06d}_{start + seconds:06d}.mp4"
            sources.append(Source(str(root / split / name), seed, width, height, seconds, fps, gop, audio))
            lines.append(f"{LABELS[k % len(LABELS)]},{youtube_id},{start},{start + seconds},{split}")
        (root / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    progress(f"sources: writing {len(sources)} videos with {jobs} processes")
    written = []
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for n, done in enumerate(pool.imap_unordered(write_source, sources), 1):
            written.append(done)
            progress(f"sources: {n}/{len(sources)} {Path(done[0]).name} ({done[1] / 2**20:.1f} MiB)")
    stamp.write_text(settings)
    return sorted(written)


# -- prepare --------------------------------------------------------------------------------------


@dataclass
class PrepareRun:
    wall: float
    cpu: float
    videos: int
    shards: int
    load: float


def time_prepare(src: Path, out: Path, jobs: int, shards: bool, shard_size: int) -> PrepareRun:
    """One ``prepare`` into a fresh ``out``: wall and process-tree CPU seconds."""
    from video_swin.data.prepare import prepare

    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, kids = time.perf_counter(), time.process_time(), _children_cpu()
    counts = prepare(src, out, jobs=jobs, shards=shards, shard_size=shard_size)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu + _children_cpu() - kids  # the pool's workers are joined by now
    if counts["broken"]:
        raise SystemExit(f"prepare listed {counts['broken']} broken videos: see {out}/broken.csv")
    return PrepareRun(wall, cpu, counts["prepared"], counts.get("shards", 0), load1())


# -- the training loader ----------------------------------------------------------------------------


@dataclass
class LoaderRun:
    wall: float
    cpu: float
    clips: int
    load: float


def build_loader(config: str, overrides: list[str]):
    """The training set and loader exactly as training builds them from ``config`` + ``overrides``."""
    from video_swin.config import load_config
    from video_swin.engine.build import build_datasets
    from video_swin.engine.trainer import _train_loader

    cfg = load_config(config, overrides)
    train, _, _ = build_datasets(cfg)
    return train, _train_loader(train, cfg)


def time_epoch(dataset, loader, epoch: int) -> LoaderRun:
    """One epoch of ``loader``, batches dropped as they arrive (as a training step would after its copy)."""
    from video_swin.engine.trainer import EpochSampler

    dataset.set_epoch(epoch)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), EpochSampler):
        loader.sampler.set_epoch(epoch)
    clips = 0
    wall, cpu, kids = time.perf_counter(), time.process_time(), _children_cpu()
    for batch in loader:
        clips += batch["video"].shape[0]
        del batch
    wall = time.perf_counter() - wall
    # the workers exit (and reap their decoding helpers) at the end of the epoch: without persistent
    # workers the DataLoader joins them when it runs out; wait for that before reading their CPU time
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)
    return LoaderRun(wall, time.process_time() - cpu + _children_cpu() - kids, clips, load1())


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=12, help="train videos (default: 12)")
    parser.add_argument("--val-videos", type=int, default=2, help="val videos, prepared too (default: 2)")
    parser.add_argument("--hd", type=int, default=0, help="of the train videos, how many at 1920x1080 (default: 0)")
    parser.add_argument("--size", default="1280x720", metavar="WxH",
                        help="size of the sources other than --hd (default: 1280x720)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each video (default: 10)")
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the sources (default: 30)")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the sources (default: 250)")
    parser.add_argument("--no-audio", action="store_true", help="sources without an audio track")
    parser.add_argument("--jobs", type=int, default=cores, help=f"prepare --jobs (default: the cores, {cores})")
    parser.add_argument("--shard-size", type=int, default=4, help="prepare --shard-size (default: 4)")
    parser.add_argument("--prepare-reps", type=int, default=1,
                        help="prepare runs of each variant, interleaved; medians (default: 1)")
    parser.add_argument("--config", default="k400_swin_t.yaml", help="training recipe (default: k400_swin_t.yaml)")
    parser.add_argument("--clip", default=None, metavar="TxI",
                        help="clip length x frame interval (default: the recipe's, 32x2)")
    parser.add_argument("--crop", type=int, default=None, help="crop size (default: the recipe's, 224)")
    parser.add_argument("--workers", type=int, default=cores, help=f"loader workers (default: the cores, {cores})")
    parser.add_argument("--batch-size", type=int, default=2,
                        help="clips per batch (default: 2; the recipe's 8 would leave few batches per epoch)")
    parser.add_argument("--reps", type=int, default=3, help="loader repetitions (epochs) per variant (default: 3)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep sources and outputs here; sources with the same settings are reused "
                             "(default: a temporary folder)")
    parser.add_argument("--skip-loader", action="store_true", help="time prepare only")
    args = parser.parse_args()
    if args.videos < 1 or args.val_videos < 1 or args.jobs < 1 or args.workers < 0 or args.batch_size < 1:
        parser.error("--videos, --val-videos, --jobs and --batch-size must be >= 1, --workers >= 0")
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) >= 16 and size[0] % 2 == 0 and size[1] % 2 == 0
    except (ValueError, AssertionError):
        parser.error(f"--size expects WxH, even and at least 16 each, such as 1280x720, got {args.size!r}")
    if args.videos % args.batch_size:
        parser.error(f"--videos ({args.videos}) must be a multiple of --batch-size ({args.batch_size}): "
                     "every variant then reads every train video once per epoch")
    overrides = [f"data.num_workers={args.workers}", f"train.batch_size={args.batch_size}",
                 "train.grad_accum_steps=1", "model.pretrained_image=null"]
    if args.clip:
        try:
            clip_len, interval = (int(v) for v in args.clip.lower().split("x"))
        except ValueError:
            parser.error(f"--clip expects TxI such as 32x2, got {args.clip!r}")
        overrides += [f"data.clip_len={clip_len}", f"data.frame_interval={interval}"]
    if args.crop:
        overrides.append(f"data.crop_size={args.crop}")

    import torch

    torch.set_num_threads(1)
    header = machine_line()
    progress(header)
    with tempfile.TemporaryDirectory(prefix="prepare-speed-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["VIDEO_SWIN_INDEX_CACHE"] = str(work / "index-cache")  # the raw files' indexes go here
        src = work / "src"
        files = make_sources(src, args.videos, args.val_videos, args.hd, size, args.seconds, args.fps, args.gop,
                             not args.no_audio, args.jobs)
        mbps = [8 * size / args.seconds / 1e6 for _, size in files]

        prepared: dict[str, list[PrepareRun]] = {"prepare (defaults)": [], "prepare --shards": []}
        for rep in range(args.prepare_reps):
            order = list(prepared) if rep % 2 == 0 else list(prepared)[::-1]
            for name in order:
                shards = name.endswith("--shards")
                progress(f"{name}: run {rep + 1}/{args.prepare_reps}, {len(files)} videos, --jobs {args.jobs}")
                run = time_prepare(src, work / ("out-shards" if shards else "out"), args.jobs, shards, args.shard_size)
                prepared[name].append(run)
                progress(f"{name}: {run.videos} videos in {run.wall:.1f} s ({run.videos / run.wall:.2f} videos/s), "
                         f"CPU {run.cpu:.1f} s")
        out = work / "out-shards"
        prepared_files = sorted(out.glob("train/*/*.mp4")) + sorted(out.glob("val/*/*.mp4"))
        prepared_mbps = [8 * p.stat().st_size / args.seconds / 1e6 for p in prepared_files]
        shard_files = sorted((out / "shards").glob("*.tar"))

        loaders: dict[str, list[LoaderRun]] = {}
        if not args.skip_loader:
            variants = {
                "(a) raw sources, VideoDataset": [f"data.root={src}", f"data.train_annotations={src}/annotations/train.csv",
                                                  f"data.val_annotations={src}/annotations/val.csv"],
                "(b) prepared files, VideoDataset": [f"data.root={out}", f"data.train_annotations={out}/train.csv",
                                                     f"data.val_annotations={out}/val.csv"],
                "(c) shards, ShardDataset": [f"data.shards={out}/shards/{{split}}-*.tar"],
            }  # fmt: skip
            built = {name: build_loader(args.config, overrides + extra) for name, extra in variants.items()}
            loaders = {name: [] for name in variants}
            for rep in range(args.reps + 1):  # repetition 0 warms up and is dropped
                order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
                for name in order:
                    run = time_epoch(*built[name], epoch=rep)
                    progress(f"loader rep {rep}/{args.reps}{' (warm-up)' if rep == 0 else ''} {name}: "
                             f"{run.clips} clips in {run.wall:.1f} s, CPU {run.cpu:.1f} s")
                    if rep:
                        loaders[name].append(run)

    sizes = f"{args.videos - args.hd + args.val_videos} x {args.size}"
    sizes += f" + {args.hd} x 1920x1080" if args.hd else ""
    print(f"# Preparation and shards\n\n{header}\n")
    print(f"Sources: {len(files)} videos ({args.videos} train, {args.val_videos} val; {sizes}), {args.seconds} s at "
          f"{args.fps} fps, H.264 veryfast crf 23, keyframe every {args.gop} frames, "
          f"{'AAC audio' if not args.no_audio else 'no audio'}; mean {statistics.mean(mbps):.2f} Mbit/s. "
          f"Prepared (short side 320, keyframe every 16): mean {statistics.mean(prepared_mbps):.2f} Mbit/s; "
          f"{len(shard_files)} shards of up to {args.shard_size} videos.\n")
    print(f"## prepare, --jobs {args.jobs} (median of {args.prepare_reps})\n")
    print("| run | videos | wall s | videos/s | videos/s per core | CPU s (tree) | videos per CPU-s | load 1 min |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in prepared.items():
        wall, cpu = _median([r.wall for r in runs]), _median([r.cpu for r in runs])
        videos = runs[0].videos
        print(f"| {name} | {videos} | {wall:.1f} | {videos / wall:.3f} | {videos / wall / args.jobs:.3f} | "
              f"{cpu:.1f} | {videos / cpu:.3f} | {_median([r.load for r in runs]):.2f} |")
    if not loaders:
        return
    from video_swin.config import load_config

    d = load_config(args.config, overrides).data
    clip = f"{d.clip_len}x{d.frame_interval}, short side {d.train_short_side}, crop {d.crop_size}, {d.output}, {d.decoder}"
    print(f"\n## training loader: {args.config} (clip {clip}), {args.workers} workers, "
          f"batch {args.batch_size}, one epoch of {args.videos} clips per repetition, median of {args.reps}\n")
    print("| data | clips/s (wall) | clips/s per worker (wall) | CPU ms/clip (tree) | clips per CPU-s | "
          "load 1 min |\n|---|---:|---:|---:|---:|---:|")
    rates: dict[str, tuple[float, float]] = {}
    for name, runs in loaders.items():
        wall = _median([r.clips / r.wall for r in runs])
        cpu = _median([r.clips / r.cpu for r in runs])
        rates[name] = (wall, cpu)
        per_worker = wall / max(1, args.workers)
        print(f"| {name} | {wall:.2f} | {per_worker:.2f} | {1000 / cpu:.0f} | {cpu:.2f} | "
              f"{_median([r.load for r in runs]):.2f} |")
    raw = rates["(a) raw sources, VideoDataset"]
    print()
    for name in list(rates)[1:]:
        wall, cpu = rates[name]
        print(f"{name[:3]} / (a): {wall / raw[0]:.2f}x by wall time, {cpu / raw[1]:.2f}x per CPU-second")
    print(f"\nissue 19 target, prepared >= 3x raw 720p: "
          f"{'met' if min(rates[n][i] / raw[i] for n in list(rates)[1:] for i in (0, 1)) >= 3 else 'NOT met'} "
          f"(all four ratios above)")
    print(f"\nfinished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
