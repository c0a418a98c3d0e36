"""The real training loop's clips/s: our model against torchvision's, loader workers on, by thread count.

Issue 20's ``loop`` part. Each setting (clip size, ``data.num_workers``,
``train.threads``, with or without one extra busy process) runs in a fresh
child process that builds what ``video-swin train`` builds, from the demo
recipe with ``--set``-style overrides: the accelerator (which applies
``train.threads``), the training set and its loader (``EpochSampler``, the
data collate, ``accelerator.prepare``), and our model through the kernel
seam (``build_model``). torchvision's ``SwinTransformer3d`` of the same
shape gets the same weights (loaded into ours with ``load_checkpoint``) and
its own AdamW. Both train through the trainer's own step
(``trainer._forward_backward``: ``accumulate``, autocast, cross-entropy,
backward, gradient clipping, LR, optimizer step) on batches from one
running loader, so the workers decode while the model trains.

Timing: blocks of ``--steps`` optimizer steps, one model per block, the
order alternating (AB BA AB ...; the first ``--warmup`` pairs untimed);
clips/s = clips of the block / wall seconds of the block, waits for the
loader included; the figure is the median over ``--repeats`` blocks. The
ratio is ours / theirs (above 1: ours trains faster in the same loop).
Every block starts with whatever the workers decoded ahead during the
block before it (at most 2 batches per worker), alike for both models.

Sizes (``--sizes``):

* ``demo``: the demo recipe as it is (its small model, batches of 8 clips
  of 3x8x32x32; torchvision's ``SwinTransformer3d`` with the same
  embed_dim, depths, heads and window).
* ``k400``: ``swin3d_t`` (the k400_swin_t recipe's model) on K400-sized
  crops: batches of 2 clips of 3x8x224x224 by default (``--k400-clip-len``;
  the recipe trains 32 frames, which is 4x the time per step on 2 cores).
  The videos are the demo set's (small files, upscaled to a 256 short side,
  then cropped): the decoding is cheaper than Kinetics' 340x256 files, the
  resizing is not.

Examples:
    python benchmarks/loop_speed.py                                   # both sizes, workers 0,1,2, threads CORES,1,auto
    python benchmarks/loop_speed.py --sizes demo --workers 2 --threads 2,1 --hog 0,1
    python benchmarks/loop_speed.py --quick                           # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "demo": [],
    "k400": ["model.embed_dim=96", "model.depths=[2,2,6,2]", "model.num_heads=[3,6,12,24]",
             "model.window_size=[8,7,7]", "model.drop_path_rate=0.1", "data.crop_size=224",
             "data.train_short_side=256", "data.test_short_side=224", "data.frame_interval=2", "train.batch_size=2"],
}  # fmt: skip


def overrides(size: str, args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides of the demo recipe for ``size``."""
    out = list(SIZES[size])
    if size == "k400":
        out.append(f"data.clip_len={args.k400_clip_len}")
    if args.quick:  # the smallest run that still goes through every piece
        out += ["train.batch_size=2"] + (["data.crop_size=64", "data.train_short_side=72", "data.test_short_side=64",
                                          "data.clip_len=4",
                                          "model.window_size=[2,7,7]"] if size == "k400" else [])  # fmt: skip
    return out


# -- the child: one setting ------------------------------------------------------------------------------


def theirs_like(cfg, num_classes: int) -> torch.nn.Module:
    """torchvision's ``SwinTransformer3d`` with the shape of ``cfg.model`` (patch 2x4x4, as swin3d_t)."""
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    m = cfg.model
    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=m.embed_dim, depths=list(m.depths),
                             num_heads=list(m.num_heads), window_size=list(m.window_size),
                             stochastic_depth_prob=m.drop_path_rate, num_classes=num_classes)  # fmt: skip


def child(spec: dict) -> dict:
    """Builds the training pieces of ``spec``'s config and times blocks of steps of both models."""
    from video_swin.checkpoints import load_checkpoint
    from video_swin.config import load_config
    from video_swin.engine import trainer
    from video_swin.engine.build import build_datasets, build_model, make_accelerator
    from video_swin.engine.optim import build_optimizer

    cfg = load_config("demo.yaml", spec["overrides"])
    accelerator = make_accelerator(cfg)  # applies train.threads
    train_ds, _, _ = build_datasets(cfg)
    num_classes = len(train_ds.classes)
    torch.manual_seed(0)
    theirs = theirs_like(cfg, num_classes)
    ours = build_model(cfg, num_classes, accelerator)
    report = load_checkpoint(ours, theirs.state_dict())
    if report.missing or report.unexpected:
        raise RuntimeError(f"torchvision weights did not map onto ours: {report}")
    o = cfg.optim
    optimizers = [build_optimizer(m, o.lr, o.weight_decay, o.backbone_lr_mult, tuple(o.betas), o.eps)
                  for m in (ours, theirs)]  # fmt: skip
    loader = trainer._train_loader(train_ds, cfg)
    ours, opt_ours, theirs, opt_theirs, loader = accelerator.prepare(ours, optimizers[0], theirs, optimizers[1], loader)
    schedule = trainer.Schedule.of(cfg, len(loader))
    runs = {name: trainer.Run(cfg, accelerator, Path(cfg.output_dir), list(train_ds.classes), num_classes, train_ds,
                              None, model, opt, loader, None, None, schedule, trainer.MetricsLog(Path(), False))
            for name, model, opt in (("ours", ours, opt_ours), ("theirs", theirs, opt_theirs))}  # fmt: skip

    def batches():
        for epoch in count():
            train_ds.set_epoch(epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            yield from loader

    stream, stats = batches(), trainer._StepStats()
    for model in (ours, theirs):
        model.train()
    rates: dict[str, list[float]] = {"ours": [], "theirs": []}
    step_s: dict[str, list[float]] = {"ours": [], "theirs": []}
    for rep in range(spec["warmup"] + spec["repeats"]):
        for name in ("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours"):
            clips, start = 0, time.perf_counter()
            for _ in range(spec["steps"]):
                batch = next(stream)
                trainer._forward_backward(runs[name], batch, stats)
                clips += batch["video"].shape[0]
            wall = time.perf_counter() - start
            if rep >= spec["warmup"]:
                rates[name].append(clips / wall)
                step_s[name].append(wall / spec["steps"])
    out = {f"{name}_clips_s": statistics.median(r) for name, r in rates.items()}
    out.update({f"{name}_step_s": statistics.median(s) for name, s in step_s.items()})
    out["ratio"] = out["ours_clips_s"] / out["theirs_clips_s"]
    out["pair_ratio"] = statistics.median(o / t for o, t in zip(rates["ours"], rates["theirs"]))
    out["threads"] = torch.get_num_threads()
    out["batch"] = shape_of(cfg)
    return out


def shape_of(cfg) -> str:
    d = cfg.data
    return f"{cfg.train.batch_size}x3x{d.clip_len}x{d.crop_size}x{d.crop_size}"


# -- the parent: every setting, each in a fresh process ----------------------------------------------------


def run_setting(spec: dict, hog: int) -> dict:
    """``spec`` in a child process, with ``hog`` busy processes on the side for its duration."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hog)]
    try:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # else auto keeps it
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                              text=True, env=env, check=False)  # fmt: skip
    finally:
        for p in hogs:
            p.kill()
            p.wait()
    if done.returncode:
        raise RuntimeError(f"setting {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="demo,k400", help="comma-separated subset of demo,k400 (default: both)")
    parser.add_argument("--workers", default="0,1,2", help="data.num_workers values (default: 0,1,2)")
    parser.add_argument("--threads",
                        help="train.threads values; auto rows that resolve to a count already listed are "
                             "skipped (default: CORES,1,auto; CORES is torch's default count)")  # fmt: skip
    parser.add_argument("--hog", default="0,1", help="extra busy processes during a setting (default: 0,1)")
    parser.add_argument("--steps", type=int, default=0,
                        help="optimizer steps per timed block (default: 12 for demo, 2 for k400)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per model (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed block pairs first (default: 1)")
    parser.add_argument("--k400-clip-len", type=int, default=8, help="frames per clip at the k400 size (default: 8)")
    parser.add_argument("--data-root", type=Path, help="demo dataset folder, made if missing (default: a temporary one)")
    parser.add_argument("--videos-per-class", type=int, default=40,
                        help="training videos per class of a new demo set (default: 40; 2 with --quick)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one block: a smoke run")
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    from video_swin.data import ensure_demo_data
    from video_swin.engine.build import torch_threads, usable_cores
    from video_swin.models.kernels.machine import cpu_model

    sizes = parse_list(args.sizes)
    if set(sizes) - set(SIZES):
        parser.error(f"unknown size(s) {sorted(set(sizes) - set(SIZES))}")
    if args.quick:
        args.repeats, args.warmup = 1, 0
    tmp = tempfile.TemporaryDirectory()
    root = args.data_root or Path(tmp.name) / "demo"
    per_class = 2 if args.quick else args.videos_per_class
    ensure_demo_data(root, seed=0, train_per_class=per_class, val_per_class=max(1, per_class // 5))
    cores = usable_cores()
    args.threads = args.threads or f"{cores},1,auto"
    results = {"cpu": cpu_model(), "cores": cores, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "torch": torch.__version__, "load_before": os.getloadavg(), "rows": []}  # fmt: skip
    for size in sizes:
        steps = args.steps or (1 if args.quick else 12 if size == "demo" else 2)
        for hog in map(int, parse_list(args.hog)):
            for workers in map(int, parse_list(args.workers)):
                seen: set[int] = set()
                for threads in parse_list(args.threads):
                    resolved = torch_threads(threads, cores, workers, cpu=True)
                    if resolved in seen:
                        continue
                    seen.add(resolved)
                    spec = {"overrides": [f"output_dir={Path(tmp.name) / 'run'}", f"data.root={root}",
                                          f"data.train_annotations={root / 'train.csv'}",
                                          f"data.val_annotations={root / 'val.csv'}", f"data.num_workers={workers}",
                                          f"train.threads={threads}", *overrides(size, args)],
                            "steps": steps, "repeats": args.repeats, "warmup": args.warmup}  # fmt: skip
                    row = {"size": size, "hog": hog, "workers": workers, "threads_setting": threads,
                           **run_setting(spec, hog), "load": os.getloadavg()[0]}  # fmt: skip
                    results["rows"].append(row)
                    print(f"{size} hog={hog} workers={workers} threads={threads}->{row['threads']}: "
                          f"ours {row['ours_clips_s']:.2f} clips/s, theirs {row['theirs_clips_s']:.2f} "
                          f"({row['ratio']:.2f}x)", file=sys.stderr, flush=True)  # fmt: skip
    results["load_after"] = os.getloadavg()
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    tmp.cleanup()


def print_report(results: dict) -> None:
    load = ", ".join(f"{v:.1f}" for v in results["load_before"])
    print(f"{results['cpu']}, {results['cores']} usable cores, torch {results['torch']}, {results['date']}, "
          f"load average before {load} (1, 5, 15 min)")  # fmt: skip
    print("clips/s: median over timed blocks, loader waits included; ratio ours / theirs\n")
    print("| size | batch | extra busy processes | workers | train.threads | torch threads | ours clips/s "
          "| theirs clips/s | ours / theirs | ours s/step | theirs s/step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['size']} | {r['batch']} | {r['hog']} | {r['workers']} | {r['threads_setting']} | {r['threads']} "
              f"| {r['ours_clips_s']:.2f} | {r['theirs_clips_s']:.2f} | {r['ratio']:.2f}x | {r['ours_step_s']:.2f} "
              f"| {r['theirs_step_s']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
