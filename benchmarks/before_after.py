"""The model benchmark on two revisions of the code, interleaved: does a change cost speed?

Checks out ``--before`` (a git revision, default ``HEAD``) into a temporary
worktree and runs ``benchmarks/model_speed.py --parts train,infer`` of each
revision in turn, before/after/before/after..., each in a fresh process that
imports its own revision's package. Every run measures ours against
torchvision's ``swin3d_t`` in the same process, so its ratio (theirs / ours)
is normalised by the machine's load at that moment; the table compares the
medians of those ratios and of our own times. The CPU model is printed.

Example:
    python benchmarks/before_after.py --before HEAD~1 --runs 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from speed.common import machine  # noqa: E402


def run_once(tree: Path, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, str(tree / "benchmarks" / "model_speed.py"), "--parts", "train,infer",
           "--repeats", str(args.repeats), "--warmup", "1", "--train-shape", args.train_shape,
           "--infer-shape", args.infer_shape, "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="git revision to compare the working tree with (default: HEAD)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each revision, interleaved (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per run (default: 3)")
    parser.add_argument("--train-shape", default="2x3x16x224x224")
    parser.add_argument("--infer-shape", default="1x3x32x224x224")
    args = parser.parse_args()
    print(f"machine: {machine()}; before = {args.before}, after = the working tree")
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)  # fmt: skip
        try:
            results: dict[str, list[dict]] = {"before": [], "after": []}
            for i in range(args.runs):
                order = ("before", "after") if i % 2 == 0 else ("after", "before")
                for name in order:
                    tree = before if name == "before" else ROOT
                    results[name].append(run_once(tree, args, Path(tmp) / f"{name}_{i}.json"))
                    print(f"run {i + 1}/{args.runs}: {name} done", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    print(f"\n{'part':6} {'revision':8} {'ours s (median)':>16} {'theirs s':>9} {'ratio theirs/ours per run':>28}")
    for part in ("train", "infer"):
        for name in ("before", "after"):
            runs = [r[part] for r in results[name]]
            ours = statistics.median(r["ours_wall"] for r in runs)
            theirs = statistics.median(r["theirs_wall"] for r in runs)
            ratios = ", ".join(f"{r['ratio_wall']:.2f}x" for r in runs)
            print(f"{part:6} {name:8} {ours:16.3f} {theirs:9.3f} {ratios:>28}")


if __name__ == "__main__":
    main()
