"""benchmarks/gpu_speed.py keeps running (a CPU smoke run of every part; speed is never asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_speed.py"


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip


def test_cpu_smoke_run_of_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    done = run("--device", "cpu", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["train"]["ours"] > 0 and figures["train"]["theirs"] > 0
    assert figures["train"]["train_tflop_per_step"] > 0
    assert figures["mfu"]["mfu"] is None and figures["mfu"]["peak_source"] == "no GPU"
    assert figures["batch"] == {"plain": 2, "checkpointing": 2}  # nothing runs out of memory on CPU: the cap


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_no_gpu_is_a_one_line_error():
    done = run("--parts", "train", timeout=120)
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr and "Traceback" not in done.stderr
