"""The demo model over a long video made of demo-class segments: does the timeline say which action is when?

Renders ``--segments`` new demo videos (the demo generator with a seed the
demo dataset never uses, so the model has not seen them), all at one size and
frame rate, concatenates them into one H.264 file, runs ``video_swin.timeline``
with the trained demo model and reports:

* the share of windows lying wholly inside one segment whose leading class is
  that segment's class (the windows across a cut are ambiguous and left out);
* how many of the true cuts ``merge_segments`` finds within one stride, and
  the median distance in frames;
* a plot (``--plot``), the picture in the README.

Example (after the Quick start's demo training):
    python benchmarks/timeline_demo.py --weights runs/demo/model.safetensors --plot docs/images/timeline_demo.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timeline_speed import cpu_description  # noqa: E402

from video_swin import timeline  # noqa: E402
from video_swin.data import demo  # noqa: E402
from video_swin.engine.long_video_output import merge_segments, plot_timeline  # noqa: E402


def render_segments(count: int, seed: int, size: tuple[int, int]) -> tuple[np.ndarray, list[str], list[int]]:
    """``count`` demo clips of random classes at ``size`` (W, H): frames, their classes, each one's first frame."""
    rng = np.random.default_rng(seed)
    pairs = [(fwd, back, motion) for fwd, back, motion in demo._PAIRS]
    frames, labels, starts, at, draw = [], [], [], 0, 0
    while len(labels) < count:
        fwd, back, motion = pairs[int(rng.integers(len(pairs)))]
        backward = bool(rng.integers(2))
        label = back if backward else fwd
        if labels and labels[-1] == label:
            continue  # neighbours differ, so every cut is a change of class
        while True:  # the generator draws its own size: keep the draws of the wanted size
            draw += 1
            clip, _ = demo._render(np.random.default_rng([seed, draw]), motion, backward)
            if clip.shape[2] == size[0] and clip.shape[1] == size[1]:
                break
        frames.append(clip)
        labels.append(label)
        starts.append(at)
        at += len(clip)
    return np.concatenate(frames), labels, starts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="runs/demo/model.safetensors")
    p.add_argument("--segments", type=int, default=24, help="demo clips to concatenate (default: 24)")
    p.add_argument("--seed", type=int, default=20261208, help="render seed (the demo data uses 0)")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--stride", type=int, default=8, help="frames between window starts (default: 8)")
    p.add_argument("--plot", default=None, help="write the timeline plot here")
    p.add_argument("--plot-seconds", type=float, default=20.0, help="seconds shown in the plot (default: 20)")
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    frames, labels, starts = render_segments(args.segments, args.seed, (96, 64))
    bounds = [*starts, len(frames)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo_segments.mp4"
        demo.write_video(path, frames, args.fps)
        t = time.perf_counter()
        tl = timeline(args.weights, path, stride=args.stride, workers=1)
        seconds = time.perf_counter() - t
        inside = right = 0
        for w, top in enumerate(tl.top(1)):
            a, b = int(tl.start_frame[w]), int(tl.end_frame[w])
            k = int(np.searchsorted(bounds, a, side="right")) - 1
            if b <= bounds[k + 1]:
                inside += 1
                right += top[0][0] == labels[k]
        found = merge_segments(tl, threshold=0.5)
        cuts = [s.start_frame for s in found[1:]]
        distances = [min((abs(c - b) for c in cuts), default=10**9) for b in bounds[1:-1]]
        within = sum(d <= args.stride for d in distances)
        print(f"{len(frames)} frames ({len(frames) / args.fps:.0f} s at {args.fps} fps, 96x64), {args.segments} "
              f"segments of {min(np.diff(bounds))}-{max(np.diff(bounds))} frames; window "
              f"{int(tl.end_frame[0] - tl.start_frame[0])} frames, stride {args.stride}: {tl.num_windows} windows "
              f"in {seconds:.1f} s")
        print(f"windows inside one segment: {right}/{inside} = {right / inside:.1%} in that segment's class")
        print(f"cuts found within one stride by merge_segments (threshold 0.5): {within}/{len(distances)}; "
              f"median distance {statistics.median(distances)} frames; {len(found)} segments for "
              f"{args.segments} true ones")
        if args.plot:
            shown = tl.start_sec + (tl.end_sec - tl.start_sec) / 2 <= args.plot_seconds
            part = type(tl)(tl.path, tl.classes, tl.plan, tl.probs[: int(shown.sum())])
            plot_timeline(args.plot, [part], threshold=0.5)
            print(f"wrote {args.plot} (the first {args.plot_seconds:g} s)")


if __name__ == "__main__":
    main()
