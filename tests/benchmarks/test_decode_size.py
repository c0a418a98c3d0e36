"""benchmarks/decode_size.py runs and reports both sources (timings are never asserted)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_decode_size_runs():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "decode_size.py"), "--reps", "1"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 340x256 |" in done.stdout and "| 1280x720 |" in done.stdout and "455x256" in done.stdout
