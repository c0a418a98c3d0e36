"""Fine-tuning on new classes with few videos, against the same budget from scratch, on the demo data.

The demo dataset has ten motion classes in five time-reversed pairs. The
halves keep every pair whole (a pair split across the halves would let the
pretrained model know half of a new pair already):

* new half (``--new-pairs``, default ``move_x,move_y``), 4 classes: moving
  right/left, moving down/up (``--shots`` training videos per class, drawn
  with each seed; all 20 validation videos per class);
* pretraining half, the other 6 classes: rotating clockwise/counterclockwise,
  zooming in/out, fading in/out (all their 100 training videos each).

Why this split: with the halves the other way round (pretraining on the
moving and rotating pairs), pretraining stayed at chance: the training loss
was still about ln 6 = 1.79 after 1,350 of 20 epochs' 1,500 steps (and 8
epochs gave 15 % top-1 on its own validation videos, chance 16.7 %), so
there was nothing to transfer; and 15 epochs on 8 zooming/fading videos per
class reached 64 % after a 3-epoch pretraining that was at chance (12.5 %),
so that half is easy with or without pretraining.

Three runs of ``video-swin train`` (the command users run, with ``--set``
overrides on the shipped ``demo.yaml``; subsets written as CSVs in a temp folder):

(a) pretrain: the demo model from scratch on the pretraining half;
(b) fine-tune: ``model.pretrained_video=<(a)'s model.safetensors>`` into a
    model of the new class count (the head is reset: the load report printed by the run is
    shown), trained on the few videos of the new half;
(c) scratch: the same as (b) (same videos, steps, learning rate, seed)
    without ``model.pretrained_video``.

(b) and (c) are repeated for each ``--seeds`` value (other few-shot videos,
other initialisation). Reported: top-1 of the final multi-view evaluation on
the new half's validation videos, and wall time of each run (including the
process start and the final evaluation).

With ``--seeds 0,1 --threads 1`` (1,500 + 4 x 60 steps of 8 clips, and the
evaluations) it took 10 minutes on 2 cores busy with other processes
(docs/BENCHMARKS.md); each further seed adds about 1.5 minutes. With torch's
default threads on such a busy machine, OpenMP threads wait on each other
and the same steps took about 10x longer there.

Examples:
    python benchmarks/finetune_demo.py --data data/demo --seeds 0,1 --threads 1
    python benchmarks/finetune_demo.py --pretrain-epochs 10 --finetune-epochs 20 --shots 4 --seeds 0
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from video_swin.models.kernels.machine import cpu_model

PAIRS = {"move_x": ("moving right", "moving left"), "move_y": ("moving down", "moving up"),
         "rotate": ("rotating clockwise", "rotating counterclockwise"), "zoom": ("zooming in", "zooming out"),
         "fade": ("fading in", "fading out")}  # video_swin.data.demo's pairs
# lines of a run's output echoed here: the load report, per-epoch validation, the final evaluation
ECHO = ("loaded ", "layout:", "loaded:", "skipped:", "missing:", "unexpected:", "epoch ", "final ", "top-1", "top1")



def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def subsets(data: Path, out: Path, shots: int, seed: int, pretrain: tuple[str, ...], new: tuple[str, ...]
            ) -> dict[str, Path]:
    """The CSVs of the three runs: pretraining classes (train, val), new classes (few-shot train, full val)."""
    header, train = read_rows(data / "train.csv")
    _, val = read_rows(data / "val.csv")
    rng = random.Random(seed)
    few = []
    for label in new:
        rows = [r for r in train if r[0] == label]
        few += rng.sample(rows, shots)
    return {
        "pre_train": write_rows(out / "pretrain_train.csv", header, [r for r in train if r[0] in pretrain]),
        "pre_val": write_rows(out / "pretrain_val.csv", header, [r for r in val if r[0] in pretrain]),
        "new_train": write_rows(out / f"new_train_{shots}shot_seed{seed}.csv", header, few),
        "new_val": write_rows(out / "new_val.csv", header, [r for r in val if r[0] in new]),
    }


def train_run(name: str, out: Path, sets: list[str], log_dir: Path, threads: int | None = None
              ) -> tuple[float, dict, list[str]]:
    """Runs ``video-swin train --config demo.yaml --set ...``; returns (seconds, final metrics, echoed lines)."""
    cmd = [sys.executable, "-m", "video_swin.cli", "train", "--config", "demo.yaml", "--set",
           f"output_dir={out}", *sets]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[2:])}", flush=True)
    echoed = []
    start = time.perf_counter()
    with open(log_dir / f"{name}.log", "w", encoding="utf-8") as log, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TQDM_DISABLE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    ) as proc:
        for line in proc.stdout:
            log.write(line)
            if line.strip().startswith(ECHO):
                echoed.append(line.rstrip())
                print(f"    | {line.rstrip()}", flush=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log_dir / f'{name}.log'}")
    metrics_file = out / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    print(f"    {name}: {seconds:.1f} s, top-1 {metrics.get('top1', float('nan')):.1f}%", flush=True)
    return seconds, metrics, echoed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/demo",
                        help="demo data folder (written with `video-swin make-demo-data` if absent; default data/demo)")
    parser.add_argument("--workdir", default=None, help="where runs and CSVs go (default: a temp folder, removed)")
    parser.add_argument("--pretrain-epochs", type=int, default=20,
                        help="epochs of (a) over 600 videos (default 20, demo.yaml's)")
    parser.add_argument("--finetune-epochs", type=int, default=15,
                        help="epochs of (b) and (c) over the few-shot videos (default 15)")
    parser.add_argument("--shots", type=int, default=8, help="training videos per new class (default 8)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds for (b) and (c) (default 0,1,2)")
    parser.add_argument("--views", default="4x3", help="views of the final evaluations (default 4x3)")
    parser.add_argument("--pretrained", default=None,
                        help="skip (a): use this model.safetensors of an earlier (a) run")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the training processes (default: torch's, one per core); 1 is "
                             "much faster on a machine busy with other processes (no spinning OpenMP threads)")
    parser.add_argument("--new-pairs", default="move_x,move_y",
                        help=f"the pairs of the new half, of {', '.join(PAIRS)} (default move_x,move_y: moving "
                             f"right/left, down/up); the other pairs are pretrained on")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.new_pairs.split(",")
    if not chosen or any(c not in PAIRS for c in chosen) or len(set(chosen)) == len(PAIRS):
        parser.error(f"--new-pairs: expected some (not all) of {', '.join(PAIRS)}")
    new = tuple(label for c in chosen for label in PAIRS[c])
    pretrain = tuple(label for c in PAIRS if c not in chosen for label in PAIRS[c])

    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs), date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"load average at start {load_average()}, OMP_NUM_THREADS of the runs: {args.threads or 'default'}")
    print(f"pretraining half: {', '.join(pretrain)}\nnew half: {', '.join(new)}; "
          f"{args.shots} training videos per class; seeds {seeds}")
    data = Path(args.data)
    if not (data / "train.csv").exists():
        from video_swin.data.demo import ensure_demo_data

        print(f"writing the demo data to {data} ...", flush=True)
        ensure_demo_data(data)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="finetune_demo_")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    common = [f"data.root={data}", "data.generate_demo=false", "eval.every_epochs=0"]
    results = {}
    try:
        if args.pretrained:
            checkpoint, pre_seconds = Path(args.pretrained), None
        else:
            csvs = subsets(data, work, args.shots, seeds[0], pretrain, new)
            pre_seconds, pre_metrics, _ = train_run(
                "a_pretrain", work / "a_pretrain",
                [*common, f"data.train_annotations={csvs['pre_train']}", f"data.val_annotations={csvs['pre_val']}",
                 f"train.epochs={args.pretrain_epochs}", "eval.views=1x1", "seed=0"], work, args.threads)
            checkpoint = work / "a_pretrain" / "model.safetensors"
            results["pretrain"] = {"seconds": pre_seconds, "top1": pre_metrics.get("top1")}
        for seed in seeds:
            csvs = subsets(data, work, args.shots, seed, pretrain, new)
            base = [*common, f"data.train_annotations={csvs['new_train']}",
                    f"data.val_annotations={csvs['new_val']}", f"train.epochs={args.finetune_epochs}", f"eval.views={args.views}",
                    f"seed={seed}"]
            for kind, extra in (("finetune", [f"model.pretrained_video={checkpoint}"]), ("scratch", [])):
                seconds, metrics, echoed = train_run(f"{'b' if kind == 'finetune' else 'c'}_{kind}_seed{seed}",
                                                     work / f"{kind}_seed{seed}", [*base, *extra], work,
                                                     args.threads)
                results.setdefault(kind, []).append({"seed": seed, "seconds": seconds, "top1": metrics.get("top1")})
                if kind == "finetune" and not any("head" in line and "skipped" in line for line in echoed):
                    print("    WARNING: no head reset reported in the load report", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    steps = (len(new) * args.shots + 7) // 8 * args.finetune_epochs  # demo.yaml: batch 8
    print(f"\nload average at end {load_average()}")
    print(f"new half, {len(new)} classes x {args.shots} videos, {args.finetune_epochs} epochs "
          f"(~{steps} steps of 8), final {args.views} evaluation on {len(new) * 20} validation videos:")
    if "pretrain" in results:
        p = results["pretrain"]
        print(f"  (a) pretrain, {len(pretrain)} classes x 100 videos, {args.pretrain_epochs} epochs: {p['seconds']:.0f} s "
              f"(1x1 top-1 on its own half's validation videos {p['top1']:.1f}%)")
    print("  | run | seed | top-1 | wall time |\n  |---|---:|---:|---:|")
    for kind in ("finetune", "scratch"):
        for r in results[kind]:
            print(f"  | ({'b' if kind == 'finetune' else 'c'}) {kind} | {r['seed']} | {r['top1']:.1f}% | "
                  f"{r['seconds']:.0f} s |")
    for kind in ("finetune", "scratch"):
        top = [r["top1"] for r in results[kind]]
        print(f"  {kind}: mean top-1 {statistics.mean(top):.1f}% over {len(top)} seed(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
