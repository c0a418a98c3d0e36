"""Fine-tuning recipe on data nobody tuned to: the demo model into new classes, each regulariser on and off.

A second synthetic set, made here with motions, sizes and frame rates the demo
dataset does not have: six classes in three time-reversed pairs (moving
diagonally down-right / up-left, down-left / up-right, spiralling in / out),
frames 144x96, 128x128 and 176x80 at 10 or 25 fps; ``--train`` videos per class
for training and ``--val`` per class held out (class folders, ``data.val_annotations``
pointing at the val folders, so every run scores the same videos).

Every run is ``video-swin train --config finetune.yaml --set ...`` (the
recipe, with the demo model's architecture and clip size set, since the
pretrained model is the demo's), for the same number of optimizer steps:

* ``recipe``: ``model.pretrained_video=<the demo model>`` and the recipe's regularisers;
* ``recipe - X``: the same with one regulariser off (mixup/cutmix, label smoothing,
  layer-wise lr decay, repeated augmentation);
* ``recipe + EMA``: with an EMA of the weights (its own 4x3 score is reported);
* ``no regularisers``: the pretrained start with every regulariser off;
* ``linear probe``: the pretrained backbone frozen, only the head trained;
* ``scratch``: the recipe without ``model.pretrained_video`` (and without its regularisers).

Reported: top-1 of the final 4x3-view evaluation on the held-out videos, and
wall time per run (process start and evaluation included). The CPU is named.

Example (after the Quick start's demo training):
    python benchmarks/finetune_recipe.py --pretrained runs/demo/model.safetensors --epochs 12
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timeline_speed import cpu_description  # noqa: E402

from video_swin.data import demo  # noqa: E402

CLASSES = (("moving down-right", "moving up-left", (1.0, 1.0)), ("moving down-left", "moving up-right", (-1.0, 1.0)),
           ("spiralling in", "spiralling out", None))  # fmt: skip
SIZES = ((144, 96), (128, 128), (176, 80))  # (W, H): none of the demo's sizes
FPS = (10, 25)


def render(rng: np.random.Generator, direction, backward: bool) -> tuple[np.ndarray, int]:
    """Frames (N, H, W, 3) uint8 of one clip of the new set, and its frame rate."""
    w, h = SIZES[rng.integers(len(SIZES))]
    fps = int(FPS[rng.integers(len(FPS))])
    n = int(rng.integers(40, 65))
    texture = demo._texture(rng)
    speed, spin, growth = rng.uniform(0.8, 1.4), rng.uniform(0.015, 0.025), rng.uniform(0.010, 0.016)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx -= (w - 1) / 2
    yy -= (h - 1) / 2
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        t = n - 1 - i if backward else i
        if direction is None:  # spiralling in: turning clockwise while shrinking towards the centre
            a, scale = -spin * t, math.exp(growth * t)
            x = (xx * math.cos(a) - yy * math.sin(a)) * scale
            y = (xx * math.sin(a) + yy * math.cos(a)) * scale
        else:
            step = speed / math.sqrt(2)
            x, y = xx - direction[0] * step * t, yy - direction[1] * step * t
        frame = texture(x, y) + rng.normal(0, 3, (h, w, 1))
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames, fps


def make_set(root: Path, train: int, val: int, seed: int) -> None:
    for split, count in (("train", train), ("val", val)):
        for pair, (fwd, back, direction) in enumerate(CLASSES):
            for backward, label in ((False, fwd), (True, back)):
                folder = root / split / label
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(count):
                    rng = np.random.default_rng([seed, split == "val", pair, backward, k])
                    frames, fps = render(rng, direction, backward)
                    demo.write_video(folder / f"{k:03d}.mp4", frames, fps)


DEMO_MODEL = ["model.embed_dim=32", "model.depths=[1,1,2,1]", "model.num_heads=[1,2,4,8]", "model.window_size=[4,4,4]",
              "data.clip_len=8", "data.frame_interval=4", "data.crop_size=32", "data.train_short_side=36",
              "data.test_short_side=32", "data.decoder=pyav", "data.output=float", "train.mixed_precision='no'",
              "data.flip=false"]  # fmt: skip  (flip off: the pairs are mirror images in time, and up-left vs up-right in space)
RECIPE = ["train.mixup=0.8", "train.cutmix=1.0", "train.label_smoothing=0.1", "optim.layer_decay=0.75",
          "data.repeated_aug=2"]  # fmt: skip
OFF = {"mixup/cutmix": ["train.mixup=0", "train.cutmix=0"], "label smoothing": ["train.label_smoothing=0"],
       "layer decay": ["optim.layer_decay=null"], "repeated aug": ["data.repeated_aug=1"]}  # fmt: skip


def run(name: str, sets: list[str], args, data: Path, out: Path) -> dict:
    folder = out / name.replace(" ", "_").replace("/", "_")
    cmd = [sys.executable, "-m", "video_swin.cli", "train", "--config", "finetune.yaml", "--set",
           f"output_dir={folder}", f"data.root={data / 'train'}", f"data.train_annotations={data / 'train'}",
           f"data.val_annotations={data / 'val'}", f"seed={args.seed}", f"train.max_steps={args.steps}",
           "train.batch_size=8", "train.global_batch=null", "eval.every_epochs=0", "train.save_every_steps=100000",
           f"data.num_workers={args.workers}", f"model.pretrained_video={args.pretrained}",
           f"optim.lr={args.lr}", "sched.warmup_epochs=1", *DEMO_MODEL, *sets]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    ema = folder / "eval_ema" / "metrics.json"
    result = {"run": name, "top1": metrics["top1"], "seconds": seconds}
    if ema.exists():
        result["ema_top1"] = json.loads(ema.read_text())["top1"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default="runs/demo/model.safetensors", help="the demo model (Quick start)")
    p.add_argument("--train", type=int, default=16, help="training videos per class (default: 16)")
    p.add_argument("--val", type=int, default=12, help="held-out videos per class (default: 12)")
    p.add_argument("--steps", type=int, default=240, help="optimizer steps of 8 clips per run (default: 240)")
    p.add_argument("--lr", type=float, default=1e-3, help="the head's learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per run (default: 1)")
    p.add_argument("--workers", type=int, default=1, help="loader workers per run (default: 1)")
    p.add_argument("--only", default=None, help="comma-separated run names to do (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    runs = [("recipe", RECIPE), *[(f"recipe - {k}", RECIPE + v) for k, v in OFF.items()],
            ("recipe + EMA", RECIPE + ["train.ema_decay=0.99"]), ("no regularisers", sum(OFF.values(), [])),
            ("linear probe", sum(OFF.values(), []) + ["train.freeze_backbone=true"]),
            ("scratch", RECIPE + ["model.pretrained_video=null"]),
            ("scratch without regularisers", sum(OFF.values(), []) + ["model.pretrained_video=null"])]  # fmt: skip
    if args.only:
        keep = set(args.only.split(","))
        runs = [r for r in runs if r[0] in keep]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        make_set(data, args.train, args.val, args.data_seed)
        print(f"new set: 6 classes x ({args.train} train + {args.val} val) videos in {time.perf_counter() - t:.0f} s; "
              f"{args.steps} steps of 8 clips per run, lr {args.lr:g}, seed {args.seed}")
        results = []
        for name, sets in runs:
            r = run(name, sets, args, data, Path(tmp) / "runs")
            results.append(r)
            ema = f"  (EMA weights {r['ema_top1']:.1f} %)" if "ema_top1" in r else ""
            print(f"  {name:<28} top-1 {r['top1']:5.1f} %  {r['seconds']:5.0f} s{ema}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
