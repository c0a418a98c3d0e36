"""Data-pipeline speed: clips/s in one process on Kinetics-400-shaped videos.

Compares, on the same videos and the same training recipe (one clip of 32
frames every 2, short side 256, random resized crop to 224, flip, normalise):

* ours: ``VideoDataset`` in train mode (decord, one ``get_batch`` of the clip's frames);
* pytorchvideo: its ``LabeledVideoDataset`` + random clip sampler (PyAV) with the same transforms;
* bare decode: decord reading exactly the frames our dataset reads, nothing else;
* exact decode: each ``--decoders`` name through the frame index (what the
  dataset does), the same frames; the index is built in the warm-up repetition.

The videos are written first: 340x256, 10 s at 30 fps, a keyframe every 2 s,
H.264 (crf 23), with moving texture so the bitrate is realistic. Measurements
are interleaved (ours, bare, pytorchvideo in every repetition), each clip is
dropped as soon as it is made, and the median over repetitions is reported,
as wall-clock and as process CPU time (steadier on a shared machine).
``--keep-freed-memory`` stops glibc from unmapping large freed blocks, which
removes most page faults from all three pipelines.

``--workers 1,2`` then measures how a ``torch.utils.data.DataLoader`` over our
dataset scales (batch size 1, each clip dropped when it arrives), with torch's
default collate and with :class:`~video_swin.data.SharedRingCollate` (reused
shared-memory segments, what the trainer uses): steady-state clips/s with
each number of worker processes (from the ``2N+1``-th clip on, so the start-up
of the workers is left out), its ratio to one worker, and the CPU time per clip
of the main process and of the workers. Next to it, N forked processes each
reading its share of the clips on its own (no DataLoader, nothing sent): what
this machine allows N processes at most. ``--uint8`` adds the ring with the
dataset's ``output="uint8"``, once normalising each clip in the main process
as it arrives (as the trainer does without a GPU) and once not (what the main
process does when a GPU normalises).

Examples:
    python benchmarks/data_speed.py --videos 6 --reps 5
    python benchmarks/data_speed.py --videos 6 --reps 3 --workers 0,1,2 --loader-passes 20 --uint8
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from video_swin.data import ClipTransform, VideoDataset, get_decoder
from video_swin.data.collate import SharedRingCollate, collate
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


def exact_decode(dataset: VideoDataset, epoch: int, decoder) -> None:
    """``decoder`` (exact, through the frame index) reading the frames ``bare_decode`` reads."""
    for i, record in enumerate(dataset.records):
        rng = np.random.default_rng([dataset.seed, epoch, i, 0, 0])

        def select(n: int, rng=rng) -> list[int]:
            return sorted(set(train_clip_indices(n, CLIP["clip_len"], CLIP["frame_interval"], rng).tolist()))

        decoder.read(record.path, select)


def index_costs(paths: list[str], reps: int) -> tuple[float, float, float]:
    """Median ms to build a frame index, to load it from the disk cache, and its size in bytes."""
    from video_swin.data.frame_index import FrameIndex, build_frame_index  # noqa: PLC0415

    build, load, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for k, path in enumerate(paths):
                start = time.perf_counter()
                index = build_frame_index(path)
                build.append(time.perf_counter() - start)
                stored = Path(tmp) / f"{k}.npz"
                index.save(stored)
                start = time.perf_counter()
                FrameIndex.load(stored)
                load.append(time.perf_counter() - start)
                sizes.append(stored.stat().st_size)
    return 1000 * statistics.median(build), 1000 * statistics.median(load), statistics.median(sizes)


class _Repeated(torch.utils.data.Dataset):
    """``dataset`` read ``times`` over (index i is clip i % len): enough clips per worker to time."""

    def __init__(self, dataset: VideoDataset, times: int) -> None:
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, i: int) -> dict:
        return self.dataset[i % len(self.dataset)]


@dataclass
class LoaderRun:
    """Medians of one DataLoader variant: steady-state clips/s and CPU per clip in the main process and the workers."""

    rate: float
    main_ms: float
    workers_ms: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _steady_rate(stamps: list[float], skip: int) -> float:
    """Clips/s between the ``skip``-th clip and the last: worker start-up and the first fill of the queue left out.

    ``stamps`` are the start and the time each clip arrived; with too few
    clips to leave ``skip`` out (a smoke run) every clip counts.
    """
    skip = skip if len(stamps) > skip + 2 else 0
    return (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])


def loader_scaling(
    dataset: VideoDataset, workers: list[int], reps: int, times: int, variants: dict[str, dict]
) -> dict[tuple[str, int], LoaderRun]:
    """Each DataLoader variant with each worker count over ``dataset`` read ``times`` over, interleaved.

    A variant is ``{"output": "float"|"uint8", "ring": bool, "normalise": bool}``:
    the dataset's output dtype, :class:`SharedRingCollate` or torch's default
    collate, and whether uint8 clips are normalised in this process as they
    arrive (what the trainer does on a CPU-only machine; with a GPU it happens
    there). The rate counts clips from the ``2 x workers + 1``-th on, so the
    workers' start-up and the first fill of the prefetch queue are left out;
    CPU time counts everything, start-up included, per clip.
    """
    from torch.utils.data import DataLoader  # noqa: PLC0415

    from video_swin.data import clips_to_float  # noqa: PLC0415

    data = _Repeated(dataset, times)
    float_transform = dataset.transform
    transforms = {"float": float_transform, "uint8": ClipTransform("train", CLIP["crop_size"], output="uint8")}
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for rep in range(reps + 1):  # repetition 0 warms up and is dropped
        order = [(name, n) for n in workers for name, v in variants.items() if n or not v["ring"]]
        for name, n in order if rep % 2 == 0 else order[::-1]:
            variant = variants[name]
            dataset.transform = transforms[variant["output"]]
            dataset.set_epoch(rep)  # forked workers take the dataset as it is now
            collate_fn = SharedRingCollate() if variant["ring"] else collate
            stamps = [time.perf_counter()]
            main_cpu, workers_cpu = time.process_time(), _children_cpu()
            loader = DataLoader(data, batch_size=1, num_workers=n, prefetch_factor=2 if n else None,
                                collate_fn=collate_fn)  # fmt: skip
            for batch in loader:
                if variant["normalise"] and batch["video"].dtype == torch.uint8:
                    clips_to_float(batch["video"])
                del batch
                stamps.append(time.perf_counter())
            del loader  # workers joined: their CPU time is in RUSAGE_CHILDREN
            main_cpu, workers_cpu = time.process_time() - main_cpu, _children_cpu() - workers_cpu
            if rep:
                runs.setdefault((name, n), []).append(
                    (_steady_rate(stamps, 2 * n + 1), 1000 * main_cpu / len(data), 1000 * workers_cpu / len(data))
                )
    dataset.transform = float_transform
    return {key: LoaderRun(*(statistics.median(r[i] for r in rs) for i in range(3))) for key, rs in runs.items()}


def _read_clips(dataset: VideoDataset, count: int, skip: int, results: Any) -> None:
    stamps = [time.perf_counter()]
    for i in range(count):
        dataset[i % len(dataset)]
        stamps.append(time.perf_counter())
    results.put(_steady_rate(stamps, skip))


def independent_processes(dataset: VideoDataset, workers: list[int], reps: int, times: int) -> dict[int, float]:
    """Median clips/s of N forked processes each reading its share of the clips on its own, no DataLoader.

    What the machine allows N processes at most: each process reads
    ``len(dataset) x times / N`` clips (as a worker would) and counts its own
    rate from its 3rd clip on (start-up left out, as for the DataLoader); the
    processes run side by side, so their rates add up.
    """
    import multiprocessing  # noqa: PLC0415

    context = multiprocessing.get_context("fork")
    rates: dict[int, list[float]] = {n: [] for n in workers if n > 0}
    for rep in range(reps + 1):
        for n in rates:
            dataset.set_epoch(rep)
            results = context.Queue()
            count = max(1, len(dataset) * times // n)
            procs = [context.Process(target=_read_clips, args=(dataset, count, 2, results)) for _ in range(n)]
            for proc in procs:
                proc.start()
            done = [results.get() for _ in procs]
            for proc in procs:
                proc.join()
            if rep:  # the processes run side by side: their rates add up
                rates[n].append(sum(done))
    return {n: statistics.median(r) for n, r in rates.items()}


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
    parser.add_argument("--workers", default="", metavar="N,N,...",
                        help="also time a DataLoader with these worker counts, e.g. 1,2 (default: skip)")
    parser.add_argument("--uint8", action="store_true",
                        help="DataLoader part: also output='uint8' through the ring, normalised here and not")
    parser.add_argument("--loader-passes", type=int, default=4,
                        help="DataLoader part: passes over the videos per repetition (default: 4)")
    parser.add_argument("--decoders", default="decord,auto", type=lambda v: v.split(","),
                        help="exact decoders to time, the first also in the full pipeline (default: decord,auto)")
    args = parser.parse_args()
    try:
        workers = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--workers expects comma-separated integers, got {args.workers!r}")
    if any(n < 0 for n in workers):
        parser.error("--workers: worker counts must be >= 0")
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(args.videos):
            (root / f"class {k % 2}").mkdir(exist_ok=True)
            make_k400_like(root / f"class {k % 2}" / f"video{k:03d}.mp4", seed=k)
        ours = VideoDataset(root, decoder=args.decoders[0], **CLIP)
        ptv = PytorchvideoDataset(root, **CLIP, shuffle=False)
        runs = {f"ours ({args.decoders[0]})": lambda rep: run_ours(ours, rep),
                "bare decode (decord)": lambda rep: bare_decode(ours, rep)}  # fmt: skip
        for name in args.decoders:
            runs[f"exact decode ({name})"] = lambda rep, d=get_decoder(name): exact_decode(ours, rep, d)
        runs["pytorchvideo"] = lambda rep: sum(1 for _ in ptv)
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(args.reps + 1):  # repetition 0 warms up caches and is dropped
            for name, run in runs.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                run(rep)
                if rep:
                    wall[name].append(time.perf_counter() - start_wall)
                    cpu[name].append(time.process_time() - start_cpu)
        variants = {"float32, default collate": {"output": "float", "ring": False, "normalise": False},
                    "float32, ring": {"output": "float", "ring": True, "normalise": False}}
        if args.uint8:
            variants["uint8, ring, normalised here"] = {"output": "uint8", "ring": True, "normalise": True}
            variants["uint8, ring"] = {"output": "uint8", "ring": True, "normalise": False}
        build_ms, load_ms, size = index_costs([r.path for r in ours.records], args.reps)
        loader = loader_scaling(ours, workers, args.reps, args.loader_passes, variants) if workers else {}
        ceiling = independent_processes(ours, workers, args.reps, args.loader_passes) if workers else {}
    clips = len(ours)
    print(f"{args.videos} videos 340x256, 10 s, 30 fps, gop 60; clip 32x2, crop 224; "
          f"median of {args.reps} reps; torch threads {args.threads}; keep freed memory: {args.keep_freed_memory}\n")
    print("| pipeline | clips/s (wall) | ms/clip (wall) | ms/clip (CPU) |\n|---|---:|---:|---:|")
    ms = {}
    for name in runs:
        w, c = statistics.median(wall[name]) / clips, statistics.median(cpu[name]) / clips
        ms[name] = (w, c)
        print(f"| {name} | {1 / w:.1f} | {1000 * w:.1f} | {1000 * c:.1f} |")
    first, bare = f"ours ({args.decoders[0]})", "bare decode (decord)"
    for i, kind in enumerate(("wall", "CPU")):
        print(f"\n{kind}: ours / pytorchvideo speed {ms['pytorchvideo'][i] / ms[first][i]:.2f}x, "
              f"decode share of our time {ms[bare][i] / ms[first][i]:.0%}; exact / bare decode: " + ", ".join(
                  f"{name} {ms[f'exact decode ({name})'][i] / ms[bare][i]:.2f}x" for name in args.decoders))
    print(f"\nframe index per video (300 frames): built in {build_ms:.1f} ms, loaded from the disk cache "
          f"in {load_ms:.2f} ms, {size / 1024:.1f} KiB on disk (medians)")

    if loader:
        print(f"\nDataLoader over ours, batch 1, {len(ours) * args.loader_passes} clips per repetition, "
              f"steady state; and as many independent processes reading their share ({os.cpu_count()} CPUs)\n")
        names = list(variants)
        print("| workers | independent processes clips/s | " + " | ".join(f"{v} clips/s | vs 1 worker" for v in names)
              + " |\n|---:|---:|" + "---:|---:|" * len(names))
        for n in workers:
            free = f"{ceiling[n]:.1f} ({ceiling[n] / ceiling[1]:.2f}x)" if n in ceiling and 1 in ceiling else "-"
            cells = []
            for v in names:
                run, one = loader.get((v, n)), loader.get((v, 1))
                cells.append(f"{run.rate:.1f} | {run.rate / one.rate:.2f}x" if run and one and n else
                             f"{run.rate:.1f} | -" if run else "- | -")
            print(f"| {n} | {free} | " + " | ".join(cells) + " |")
        print("\nCPU per clip, ms: main process / workers (start-up included)\n")
        print("| workers | " + " | ".join(names) + " |\n|---:|" + "---:|" * len(names))
        for n in workers:
            cells = [f"{r.main_ms:.1f} / {r.workers_ms:.1f}" if (r := loader.get((v, n))) else "-" for v in names]
            print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
