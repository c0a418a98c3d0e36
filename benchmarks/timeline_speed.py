"""Long videos: is a timeline as fast as its slower half, and does its memory stay flat?

On a generated H.264 video (default 10 minutes, 640x360, 30 fps, B-frames),
with a model of random weights, measures in one run:

* **decode pass**: the sequential reader alone (one decode of every frame,
  RGB conversion and crop of the frames the windows use), in this process;
* **model alone**: the model over the same windows, already decoded and
  cropped, with the thread count the timeline gives it;
* **timeline**: ``video_swin.timeline`` (decoding in a thread while the model
  scores; also with a decoding process, ``workers=1``), its ratio to
  max(decode pass, model alone) (1.0 = perfect overlap);
* **random access**: what cutting the video into windows and reading each with
  the exact decoder costs (seek to the keyframe before, decode forward), timed
  on ``--random-windows`` windows spread over the video and scaled to all;
  frames decoded per window from the frame index;
* **peak memory** (``--memory``): peak RSS of the timeline (sampled every 20 ms,
  the process and any children) on a 1-minute cut and on the whole video, each
  in a fresh process.

Example (the figures of docs/BENCHMARKS.md):
    python benchmarks/timeline_speed.py --minutes 10 --memory
    python benchmarks/timeline_speed.py --minutes 0.2 --size 160x90   # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_description() -> str:
    """Model name, family/model numbers and the vector flags that decide the fast paths' speed."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    flags = set(info.get("flags", "").split())
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags] or ["no AVX2"]
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}; "
            f"{', '.join(vector)}), {os.cpu_count()} CPUs")


def write_video(path: Path, seconds: float, width: int, height: int, fps: int) -> Path:
    """A moving texture with a cut every 7 s, H.264 (x264 veryfast, B-frames, keyframe every 2 s)."""
    import av

    rng = np.random.default_rng(0)
    frames = int(round(seconds * fps))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps), "threads": "2"}
        texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
        for i in range(frames):
            if i % (7 * fps) == 0:
                texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
                texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)
            dy, dx = (i * 2) % height, (i * 3) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[dy : dy + height, dx : dx + width]),
                                               format="rgb24").reformat(format="yuv420p", threads=1)  # fmt: skip
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def cut(src: Path, dst: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``src``, packets copied (no re-encoding)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        limit = seconds / float(inp.streams.video[0].time_base)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None or packet.pts is None:
                continue
            if packet.is_keyframe and packet.pts >= limit:
                break
            packet.stream = stream
            out.mux(packet)
    return dst


def model_and_cfg(args):
    from video_swin.config import config_from_dict
    from video_swin.engine.build import model_from_config

    cfg = config_from_dict({
        "model": {"name": args.model, "embed_dim": args.embed_dim, "depths": args.depths, "num_heads": args.heads,
                  "window_size": args.window},
        "data": {"clip_len": args.clip_len, "frame_interval": args.frame_interval, "crop_size": args.crop,
                 "test_short_side": args.crop},
    })  # fmt: skip
    torch.manual_seed(0)
    return model_from_config(cfg, 400).eval(), cfg


def measure(args, video: Path) -> dict:
    from video_swin import timeline
    from video_swin.data.frame_index import get_frame_index
    from video_swin.data.long_video import parse_stride, read_windows, video_plan
    from video_swin.engine.build import for_device, set_torch_threads
    from video_swin.engine.long_video import window_transform
    from video_swin.data import clips_to_float, get_decoder

    model, cfg = model_and_cfg(args)
    stride = parse_stride(args.stride) if args.stride else parse_stride(args.clip_len * args.frame_interval)
    t = time.perf_counter()
    index, plan = video_plan(video, args.clip_len, args.frame_interval, stride)
    index_s = time.perf_counter() - t
    threads_timeline = set_torch_threads(cfg, cpu=True, workers=1)  # as the timeline sets them
    out: dict = {"video": str(video), "frames": plan.num_frames, "windows": len(plan), "index_s": index_s,
                 "torch_threads": threads_timeline}

    # decode pass alone: the reader, one thread, as the worker runs it
    torch.set_num_threads(1)
    tf = window_transform(cfg, 1)
    t = time.perf_counter()
    clips = [c for item in read_windows(video, plan, index, tf, args.batch_size) if isinstance(item, tuple)
             for c in [item[1]]]  # fmt: skip
    out["decode_s"] = time.perf_counter() - t

    # plain FFmpeg decode of every frame (no conversion): the floor of any sequential reader
    import av

    t = time.perf_counter()
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        s.thread_type, s.codec_context.thread_count = "SLICE", 1
        for _ in c.decode(s):
            pass
    out["ffmpeg_decode_s"] = time.perf_counter() - t

    # the model alone on the decoded windows, with the timeline's threads
    torch.set_num_threads(threads_timeline)
    fast = for_device(model, "cpu")
    with torch.inference_mode():
        fast(clips_to_float(clips[0][:, 0]))  # warm-up (the CPU paths' first-call checks)
        t = time.perf_counter()
        for batch in clips:
            fast(clips_to_float(batch[:, 0]))
        out["model_s"] = time.perf_counter() - t
    del clips

    # the timeline: decoding in a thread (the default), overlapped with the model; and in a worker process
    for key, workers in (("timeline_s", 0), ("timeline_process_s", 1)):
        t = time.perf_counter()
        tl = timeline(model, video, cfg=cfg, stride=stride, batch_size=args.batch_size, workers=workers)
        out[key] = time.perf_counter() - t
        assert tl.num_windows == len(plan) and tl.error is None

    # random access: each window read on its own by the exact decoder (PyAV: seek, decode forward)
    decoder = get_decoder("pyav")
    pick = np.unique(np.linspace(0, len(plan) - 1, min(args.random_windows, len(plan))).astype(int))
    t = time.perf_counter()
    for w in pick:
        decoder.get_frames(video, plan.indices[w])
    per_window = (time.perf_counter() - t) / len(pick)
    out["random_access_s"] = per_window * len(plan)
    key_before = np.array([index.keyframe_before(int(plan.indices[w, 0])) for w in range(len(plan))])
    out["random_frames_per_window"] = float(np.mean(plan.indices[:, -1] - key_before + 1))
    out["sequential_frames_per_window"] = plan.num_frames / len(plan)
    out["overlap_ratio"] = out["timeline_s"] / max(out["decode_s"], out["model_s"])
    return out


def _sampled_peak(run) -> float:
    """Peak of (RSS of this process + its descendants: the forkserver and the decoding worker) while ``run()``
    runs, sampled every 20 ms, in MiB."""
    import threading

    import psutil

    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run()
    finally:
        stop.set()
        thread.join()
    return peak[0] / 2**20


def peak_memory(args, video: Path) -> float:
    """Peak RSS in MiB of a timeline over ``video`` in a fresh process (itself plus its decoding worker)."""
    code = (
        "import sys, json; sys.path.insert(0, %r); import timeline_speed as b;"
        "a = b.parse(json.loads(sys.argv[1])); m, cfg = b.model_and_cfg(a); from video_swin import timeline;"
        "run = lambda: timeline(m, sys.argv[2], cfg=cfg, stride=a.stride or a.clip_len * a.frame_interval,"
        " batch_size=a.batch_size);"
        "print(json.dumps(b._sampled_peak(run)))"
    ) % str(ROOT / "benchmarks")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args.argv), str(video)], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the generated video (default: 10)")
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the video (default: 640x360)")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--workdir", default=None, help="where the videos are kept between runs (default: a temp folder)")
    p.add_argument("--model", default="swin3d_t")
    p.add_argument("--embed-dim", type=int, default=32, help="the demo model's size by default")
    p.add_argument("--depths", default="[1,1,2,1]")
    p.add_argument("--heads", default="[1,2,4,8]")
    p.add_argument("--window", default="[4,7,7]")
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--frame-interval", type=int, default=4)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--stride", default=None, help="default: one window's span")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--random-windows", type=int, default=24, help="windows timed with random access (default: 24)")
    p.add_argument("--memory", action="store_true", help="also peak memory of a 1-minute cut and the whole video")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    a.argv = list(argv) if argv is not None else sys.argv[1:]
    a.depths, a.heads, a.window = json.loads(a.depths), json.loads(a.heads), json.loads(a.window)
    return a


def main() -> None:
    args = parse()
    width, height = map(int, args.size.lower().split("x"))
    print(f"CPU: {cpu_description()}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        video = work / f"long_{args.minutes:g}min_{width}x{height}_{args.fps}.mp4"
        if not video.exists():
            t = time.perf_counter()
            write_video(video.with_suffix(".tmp.mp4"), args.minutes * 60, width, height, args.fps).rename(video)
            print(f"wrote {video.name} in {time.perf_counter() - t:.0f} s")
        r = measure(args, video)
        span = args.clip_len * args.frame_interval
        print(f"video: {r['frames']} frames ({args.minutes:g} min, {width}x{height}, {args.fps} fps, H.264 with "
              f"B-frames); model {args.model} embed {args.embed_dim}, window {args.clip_len}x{args.frame_interval} "
              f"frames ({span}), crop {args.crop}; {r['windows']} windows; torch threads {r['torch_threads']} + "
              f"1 decoding thread")
        rows = [("frame index (demux pass)", r["index_s"]), ("FFmpeg decode of every frame, no conversion",
                r["ffmpeg_decode_s"]), ("decode pass: the sequential reader alone", r["decode_s"]),
                ("model alone on the decoded windows", r["model_s"]),
                ("timeline: decoding thread (default)", r["timeline_s"]),
                ("timeline: decoding process (--workers 1)", r["timeline_process_s"]),
                ("per-window random access reads (scaled)", r["random_access_s"])]  # fmt: skip
        for name, s in rows:
            print(f"  {name:<46} {s:8.1f} s  {r['windows'] / s:8.1f} windows/s")
        print(f"  timeline / max(decode pass, model alone) = {r['overlap_ratio']:.3f} (thread), "
              f"{r['timeline_process_s'] / max(r['decode_s'], r['model_s']):.3f} (process)")
        print(f"  frames decoded per window: sequential {r['sequential_frames_per_window']:.1f}, "
              f"random access {r['random_frames_per_window']:.1f}")
        if args.memory:
            short = cut(video, work / "cut_1min.mp4", 60.0)
            mems = {"1 min": peak_memory(args, short), "whole": peak_memory(args, video)}
            r["peak_rss_mib"] = mems
            print(f"  peak RSS (main + worker): 1-minute cut {mems['1 min']:.0f} MiB, "
                  f"whole video {mems['whole']:.0f} MiB, ratio {mems['whole'] / mems['1 min']:.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
