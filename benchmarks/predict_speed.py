"""``predict`` speed: videos/s of the serial one-video-at-a-time loop against the batched DataLoader path.

On the demo validation videos (``video-swin make-demo-data``: 200 short
clips), with ``demo.yaml``'s model (random weights, seeded: speed does not
depend on the values; ``--weights`` takes a trained ``model.safetensors``
instead), the same views for every path:

* serial: the loop ``predict`` had before batching (``engine/predict.py``
  before issue 18): the test dataset read in this process one video at a
  time, each video's views scored in one forward;
* batched, no workers: :func:`~video_swin.engine.predict.iter_predictions`
  with ``--batch-size`` videos per forward, decoding in this process;
* batched + workers: the same with ``--workers`` DataLoader processes
  decoding ahead (``video-swin predict``'s default: ``min(4, CPUs)`` workers,
  ``eval.batch_size`` videos, here set by ``--batch-size``).

The paths run interleaved in each repetition (so load from other processes
hits them alike); the median over ``--reps`` is reported, with the load
average before and after, since a shared machine changes the figures.

Examples:
    python benchmarks/predict_speed.py --data data/demo
    python benchmarks/predict_speed.py --data data/demo --videos 100 --reps 5 --views 1x1
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from video_swin.models.kernels.machine import cpu_model


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


@torch.inference_mode()
def serial(model, cfg, classes, videos, views) -> int:
    """The pre-batching loop: one video decoded and scored at a time, in this process. Returns videos scored."""
    from video_swin.data import clips_to_float
    from video_swin.engine.build import build_test_dataset
    from video_swin.engine.evaluate import score_views

    dataset = build_test_dataset(cfg, classes, views, videos=videos)
    done = 0
    for i in range(len(dataset)):
        sample = dataset[i]
        if not sample["valid"]:
            continue
        clips = clips_to_float(sample["video"][None])  # (1, V, 3, T, S, S)
        scores = score_views(model, clips, cfg.eval.max_views_per_forward, cfg.eval.average)[0]  # (K,)
        scores.topk(min(5, len(classes)))
        done += 1
    return done


def batched(model, cfg, classes, videos, views, batch_size, workers) -> int:
    from video_swin.engine.predict import iter_predictions

    return sum(r.error is None for r in iter_predictions(model, cfg, classes, videos, views=views,
                                                         batch_size=batch_size, workers=workers, device="cpu"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/demo", help="demo data folder (its val/ is read; default data/demo)")
    parser.add_argument("--weights", default=None, help="a model.safetensors of a demo run (default: random weights)")
    parser.add_argument("--videos", type=int, default=0, help="first N validation videos (default: all)")
    parser.add_argument("--views", default="4x3", help="CLIPSxCROPS (default 4x3, demo.yaml's eval.views)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward of the batched paths (default 4)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the batched path (default: predict's, min(4, CPUs))")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, interleaved (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (default: torch's); 1 avoids spinning OpenMP threads "
                             "on a machine busy with other processes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from video_swin.config import load_config, parse_views
    from video_swin.data import DEMO_CLASSES
    from video_swin.engine.build import for_device, model_from_config
    from video_swin.engine.predict import default_workers, find_videos, load_predictor

    workers = default_workers() if args.workers is None else args.workers
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs), torch threads {torch.get_num_threads()}, "
          f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"load average at start: {load_average()}", flush=True)
    videos = find_videos([Path(args.data) / "val"])
    videos = videos[: args.videos] if args.videos else videos
    views = parse_views(args.views, key="--views")
    if args.weights:
        model, cfg, classes = load_predictor(args.weights)
    else:
        cfg = load_config("demo.yaml")
        classes = list(DEMO_CLASSES)
        torch.manual_seed(0)
        model = model_from_config(cfg, len(classes))
    model = for_device(model.eval(), "cpu")
    paths = {
        "serial (before: one video at a time, no workers)": lambda: serial(model, cfg, classes, videos, views),
        f"batched {args.batch_size}, no workers": lambda: batched(model, cfg, classes, videos, views,
                                                                  args.batch_size, 0),
        f"batched {args.batch_size} + {workers} workers (after: predict's default)": lambda: batched(
            model, cfg, classes, videos, views, args.batch_size, workers),
    }
    serial(model, cfg, classes, videos[:2], views)  # warm-up: first forwards, decoder start-up
    print(f"{len(videos)} videos, views {views}, {args.reps} interleaved repetitions", flush=True)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for rep in range(args.reps):
        for name, run in paths.items():
            start = time.perf_counter()
            scored = run()
            seconds = time.perf_counter() - start
            times[name].append(seconds)
            print(f"  rep {rep + 1}/{args.reps}  {name}: {seconds:.1f} s ({scored} scored), "
                  f"load {load_average()}", flush=True)
    print(f"\nload average at end: {load_average()}")
    print("| path | median wall time | videos/s |\n|---|---:|---:|")
    base = statistics.median(times[next(iter(paths))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.1f} s | {len(videos) / med:.1f} ({base / med:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
