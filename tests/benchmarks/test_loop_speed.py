"""benchmarks/loop_speed.py keeps running: its quick mode on tiny sizes, one setting per size.

Performance itself is never asserted here (timings on shared machines are
noise); only that both models train in the real loop and the report comes out.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "loop_speed.py"


def test_quick_run_reports_both_models(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--sizes", "demo", "--workers", "1", "--threads", "auto",
           "--hog", "0", "--data-root", str(tmp_path / "demo"), "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    (row,) = figures["rows"]
    assert row["ours_clips_s"] > 0 and row["theirs_clips_s"] > 0 and row["workers"] == 1
    assert row["threads"] == max(1, figures["cores"] - 1)  # train.threads: auto, applied by make_accelerator
    assert "| demo | 2x3x8x32x32 | 0 | 1 | auto |" in done.stdout


def test_help():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0 and "--hog" in done.stdout
