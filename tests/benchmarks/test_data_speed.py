"""benchmarks/data_speed.py keeps running, DataLoader part included (tiny sizes; speed is never asserted)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_with_workers():
    cmd = [sys.executable, str(REPO / "benchmarks" / "data_speed.py"), "--videos", "2", "--reps", "1",
           "--workers", "0,1", "--loader-passes", "1", "--uint8"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| ours (decord) |" in done.stdout and "| pytorchvideo |" in done.stdout
    assert "exact decode (decord)" in done.stdout and "frame index per video" in done.stdout
    assert "float32, ring clips/s" in done.stdout and "uint8, ring clips/s" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 4  # clips/s with 0 and 1 worker, then CPU per clip
    assert rows[1].count("| 1.00x |") == 4  # each variant against its own 1 worker


def test_bad_worker_list_is_one_line_error():
    cmd = [sys.executable, str(REPO / "benchmarks" / "data_speed.py"), "--workers", "two"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--workers" in done.stderr and "Traceback" not in done.stderr
