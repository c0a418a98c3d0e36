"""Data-pipeline speed: clips/s in one process on Kinetics-400-shaped videos.

Compares, on the same videos and the same training recipe (one clip of 32
frames every 2, short side 256, random resized crop to 224, flip, normalise):

* ours: ``VideoDataset`` in train mode (decord, one ``get_batch`` of the clip's frames);
* pytorchvideo: its ``LabeledVideoDataset`` + random clip sampler (PyAV) with the same transforms;
* bare decode: decord reading exactly the frames our dataset reads, nothing else.

The videos are written first: 340x256, 10 s at 30 fps, a keyframe every 2 s,
H.264 (crf 23), with moving texture so the bitrate is realistic. Measurements
are interleaved (ours, bare, pytorchvideo in every repetition), each clip is
dropped as soon as it is made, and the median over repetitions is reported,
as wall-clock and as process CPU time (steadier on a shared machine).
``--keep-freed-memory`` stops glibc from unmapping large freed blocks, which
removes most page faults from all three pipelines.

Example:
    python benchmarks/data_speed.py --videos 6 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from video_swin.data import VideoDataset
from video_swin.data.demo import write_video
from video_swin.data.pytorchvideo_pipeline import PytorchvideoDataset
from video_swin.data.sampling import train_clip_indices

CLIP = {"clip_len": 32, "frame_interval": 2, "crop_size": 224}


def make_k400_like(
    path: Path, seed: int, seconds: int = 10, fps: int = 30, width: int = 340, height: int = 256
) -> None:
    """A moving blocky texture with a moving disc and sensor noise, H.264 with a keyframe every 2 s."""
    rng = np.random.default_rng(seed)
    texture = np.kron(rng.integers(0, 256, (height // 8 + 8, width // 8 + 8, 3)), np.ones((8, 8, 1))).astype(np.int16)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((seconds * fps, height, width, 3), np.uint8)
    for i in range(len(frames)):
        frame = np.roll(texture, (i // 3, i), axis=(0, 1))[:height, :width].copy()
        cx, cy = width / 2 + 100 * np.sin(i / 20), height / 2 + 60 * np.cos(i / 15)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 40**2
        frame[disc] = 255 - frame[disc]
        frame += rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
        frames[i] = np.clip(frame, 0, 255)
    write_video(path, frames, fps, crf=23, gop=2 * fps)


def run_ours(dataset: VideoDataset, epoch: int) -> None:
    """One clip per video; each sample is dropped at once, as a consumer would (and as the others do)."""
    dataset.set_epoch(epoch)
    for i in range(len(dataset)):
        dataset[i]


def bare_decode(dataset: VideoDataset, epoch: int) -> None:
    """decord alone, reading the frames ``dataset`` reads in this epoch (same seeds, same indices)."""
    import decord  # noqa: PLC0415

    for i, record in enumerate(dataset.records):
        reader = decord.VideoReader(record.path, ctx=decord.cpu(0), num_threads=1)
        rng = np.random.default_rng([dataset.seed, epoch, i, 0, 0])
        indices = train_clip_indices(len(reader), CLIP["clip_len"], CLIP["frame_interval"], rng)
        reader.get_batch(sorted(set(indices.tolist()))).asnumpy()
        del reader


def keep_freed_memory() -> None:
    """Tells glibc malloc to serve large blocks from its heap and not return freed memory to the OS.

    Every clip allocates tens of MB (decoded frames, the float output); by
    default glibc maps and unmaps them each time, so every clip pays page faults.
    """
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 512 * 2**20)
    libc.mallopt(m_trim_threshold, 1024 * 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=6, help="videos to write (default: 6)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions; one clip per video each (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--keep-freed-memory", action="store_true", help="glibc: no mmap/trim for large blocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(args.videos):
            (root / f"class {k % 2}").mkdir(exist_ok=True)
            make_k400_like(root / f"class {k % 2}" / f"video{k:03d}.mp4", seed=k)
        ours = VideoDataset(root, **CLIP)
        ptv = PytorchvideoDataset(root, **CLIP, shuffle=False)
        runs = {"ours": lambda rep: run_ours(ours, rep),
                "bare decode": lambda rep: bare_decode(ours, rep),
                "pytorchvideo": lambda rep: sum(1 for _ in ptv)}  # fmt: skip
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(args.reps + 1):  # repetition 0 warms up caches and is dropped
            for name, run in runs.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                run(rep)
                if rep:
                    wall[name].append(time.perf_counter() - start_wall)
                    cpu[name].append(time.process_time() - start_cpu)
    clips = len(ours)
    print(f"{args.videos} videos 340x256, 10 s, 30 fps, gop 60; clip 32x2, crop 224; "
          f"median of {args.reps} reps; torch threads {args.threads}; keep freed memory: {args.keep_freed_memory}\n")
    print("| pipeline | clips/s (wall) | ms/clip (wall) | ms/clip (CPU) |\n|---|---:|---:|---:|")
    ms = {}
    for name in runs:
        w, c = statistics.median(wall[name]) / clips, statistics.median(cpu[name]) / clips
        ms[name] = (w, c)
        print(f"| {name} | {1 / w:.1f} | {1000 * w:.1f} | {1000 * c:.1f} |")
    for i, kind in enumerate(("wall", "CPU")):
        print(f"\n{kind}: ours / pytorchvideo speed {ms['pytorchvideo'][i] / ms['ours'][i]:.2f}x, "
              f"decode share of our time {ms['bare decode'][i] / ms['ours'][i]:.0%}")


if __name__ == "__main__":
    main()
