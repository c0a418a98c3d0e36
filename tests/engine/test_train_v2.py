"""The Swin V2 demo config: it loads, and trains a V2 video model through scripts/train.py."""

import json
import math
import os
import subprocess
import sys

import pytest

from video_swin.checkpoints import load_model
from video_swin.config import load_config

from .conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow


def test_demo_v2_config_names_a_v2_video_model():
    cfg = load_config("demo_v2.yaml")
    assert cfg.model.name == "swinv2_3d_t" and cfg.output_dir == "runs/demo_v2"


def test_two_steps_train_a_v2_model(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **{"train.max_steps": 2, "eval.final": "false"})
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", "demo_v2.yaml", "--set", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    model, _ = load_model(out / "model.safetensors")
    assert model.config["name"] == "swinv2_3d_t" and model.config["attention"] == "cosine"
    attn = model.layers[0].blocks[0].attn
    assert attn.position_bias_kind == "cpb" and model.layers[0].blocks[0].post_norm
    assert list(model.config["window_size"]) == [2, 4, 4]  # the tiny override reached the V2 model
