"""Evaluation-style reads from one long video: each exact decoder against bare decord.

Writes a long H.264 file (default 120 s, 640x360, 30 fps, a keyframe every
2 s) and reads the official test views' frames (4 clips of 32 frames every 2,
evenly spread) with each decoder, interleaved, after one warm-up read each
(which also builds the frame index). Reports median process CPU time and wall
time per read, and the ratio to bare decord.

Example:
    python benchmarks/long_read.py --seconds 120 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from video_swin.data import get_decoder
from video_swin.data.decoders import DecordDecoder, torchcodec_available
from video_swin.data.sampling import eval_clip_indices
from video_swin.models.kernels.machine import cpu_model


def write_long(path: Path, seconds: int, fps: int = 30, width: int = 640, height: int = 360) -> None:
    """A moving noise texture, written in chunks of one second so memory stays small."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height + 64, width + 64, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.options = {"crf": "28", "g": str(2 * fps), "preset": "ultrafast", "threads": "1"}
        for i in range(seconds * fps):
            frame = base[i % 64 : i % 64 + height, (2 * i) % 64 : (2 * i) % 64 + width]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=120, help="length of the video (default: 120)")
    parser.add_argument("--reps", type=int, default=5, help="timed reads per decoder (default: 5)")
    args = parser.parse_args()
    names = ["decord", "pyav"] + (["torchcodec"] if torchcodec_available() else [])
    decoders = {"bare decord": DecordDecoder(exact=False), **{n: get_decoder(n) for n in names}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.mp4"
        write_long(path, args.seconds)
        n = decoders["pyav"].num_frames(path)
        wanted = eval_clip_indices(n, clip_len=32, frame_interval=2, num_clips=4).reshape(-1)
        cpu: dict[str, list[float]] = {k: [] for k in decoders}
        wall: dict[str, list[float]] = {k: [] for k in decoders}
        for rep in range(args.reps + 1):
            for name, decoder in decoders.items():
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                decoder.get_frames(path, wanted)
                if rep:
                    cpu[name].append(time.process_time() - start_cpu)
                    wall[name].append(time.perf_counter() - start_wall)
    print(f"{cpu_model()}; {args.seconds} s 640x360 30 fps ({n} frames), 4 clips x 32 frames every 2; "
          f"medians of {args.reps}\n")
    print("| decoder | ms per read (CPU) | ms per read (wall) | CPU vs bare decord |\n|---|---:|---:|---:|")
    ref = statistics.median(cpu["bare decord"])
    for name in decoders:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"| {name} | {1000 * c:.0f} | {1000 * w:.0f} | {c / ref:.2f}x |")


if __name__ == "__main__":
    main()
