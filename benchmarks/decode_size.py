"""Decoding at a reduced size inside the decoder: decord's ``VideoReader(width=, height=)`` vs full size.

Writes a 4 s clip at each source size (the moving texture of ``data_speed.py``),
then times, interleaved, the CPU seconds of opening the video and reading one
32-frame clip (every 2nd frame) into a NumPy array, at full size and with the
short side reduced to 256 inside the decoder. Medians of ``--reps``.

Example:
    PYTHONPATH=. python benchmarks/decode_size.py --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_speed import make_k400_like  # noqa: E402

SOURCES = {"340x256": (340, 256), "1280x720": (1280, 720)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions after one warm-up (default: 5)")
    parser.add_argument("--short-side", type=int, default=256, help="reduced short side (default: 256)")
    args = parser.parse_args()
    import decord  # noqa: PLC0415

    indices = list(range(10, 74, 2))
    print("| source | full size (ms CPU) | reduced in the decoder (ms CPU) | reduced to | saving |\n|---|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (w, h) in SOURCES.items():
            path = str(Path(tmp) / f"{name}.mp4")
            make_k400_like(Path(path), 0, seconds=4, width=w, height=h)
            short = args.short_side
            size = (round(w * short / h), short) if h <= w else (short, round(h * short / w))  # (width, height)
            times: dict[str, list[float]] = {"full": [], "reduced": []}
            for rep in range(args.reps + 1):
                for mode in ("full", "reduced"):
                    kwargs = {} if mode == "full" else {"width": size[0], "height": size[1]}
                    start = time.process_time()
                    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **kwargs)
                    reader.get_batch(indices).asnumpy()
                    if rep:
                        times[mode].append(time.process_time() - start)
            full, reduced = (1e3 * statistics.median(times[m]) for m in ("full", "reduced"))
            print(f"| {name} | {full:.1f} | {reduced:.1f} | {size[0]}x{size[1]} | {full / reduced:.2f}x |")


if __name__ == "__main__":
    main()
