"""benchmarks/model_speed.py keeps running: its quick mode, every part, on tiny sizes.

Performance itself is never asserted here (timings on shared machines are
noise); only that the script runs, compares the same weights and reports.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "model_speed.py"


def test_quick_run_reports_every_part(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--parts", "train,infer,memory,scaling,micro",
           "--memory-modes", "train", "--allocators", "default", "--threads", "1", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for part in ("train", "infer"):
        assert figures[part]["ours_wall"] > 0 and figures[part]["theirs_wall"] > 0
    assert figures["infer"]["logits_rel_diff"] < 1e-4  # the same weights give the same logits
    memory = figures["memory_train_default"]
    assert memory["ours"]["step_mib"] > 0 and memory["theirs"]["step_mib"] > 0
    assert [row["size"] for row in figures["scaling"]] == ["base", "2x H, 2x W", "2x T"]
    assert "| train | 1x3x2x224x224 |" in done.stdout and "| ours, inference |" in done.stdout
    assert [row["ours"] for row in figures["micro"]] == ["oneDNN", "oneDNN", "torch.mm (ATen)", "oneDNN GEMM, then gelu_",
                                                   "gather_bias", "chunked bmm", "reorder_tokens"]
