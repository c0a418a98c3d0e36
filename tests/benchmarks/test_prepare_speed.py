"""benchmarks/prepare_speed.py keeps running end to end at a toy size (speed is never asserted)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_toy_size(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "prepare_speed.py"), "--videos", "2", "--val-videos", "1",
           "--size", "96x64", "--seconds", "1", "--fps", "16", "--gop", "8", "--no-audio", "--jobs", "1",
           "--workers", "0", "--batch-size", "1", "--reps", "1", "--clip", "4x2", "--crop", "32",
           "--work", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "load average" in out and "| prepare (defaults) | 3 |" in out and "| prepare --shards | 3 |" in out
    for row in ("| (a) raw sources, VideoDataset |", "| (b) prepared files, VideoDataset |",
                "| (c) shards, ShardDataset |"):  # fmt: skip
        assert row in out
    assert "(b) / (a):" in out and "(c) / (a):" in out and "issue 19 target" in out
    assert "loader rep 1/1" in done.stderr  # progress goes to stderr
    # the layout prepare read, and what it wrote
    assert (tmp_path / "src" / "annotations" / "train.csv").is_file()
    assert len(list((tmp_path / "out-shards" / "shards").glob("train-*.tar"))) == 1


def test_bad_clip_is_one_line_error():
    cmd = [sys.executable, str(REPO / "benchmarks" / "prepare_speed.py"), "--clip", "32"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--clip" in done.stderr and "Traceback" not in done.stderr
