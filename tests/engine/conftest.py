import os
import subprocess
import sys
from pathlib import Path

import pytest

from video_swin.data import make_demo_data

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small demo dataset: 10 classes x (2 train + 1 val) videos."""
    root = tmp_path_factory.mktemp("demo") / "data"
    make_demo_data(root, seed=0, train_per_class=2, val_per_class=1)
    return root


def tiny_overrides(root, out, **extra):
    sets = {
        "output_dir": out,
        "data.root": root,
        "data.train_annotations": f"{root}/train.csv",
        "data.val_annotations": f"{root}/val.csv",
        "data.generate_demo": "false",
        "data.clip_len": 4,
        "data.crop_size": 32,
        "data.train_short_side": 36,
        "data.test_short_side": 32,
        "data.num_workers": 0,
        "model.embed_dim": 8,
        "model.depths": "[1,1]",
        "model.num_heads": "[1,2]",
        "model.window_size": "[2,4,4]",
        "model.drop_path_rate": 0.0,
        "model.head_dropout": 0.0,
        "train.batch_size": 4,
        "train.log_every_steps": 1,
        "train.save_every_steps": 2,
        "train.max_steps": 6,
        "eval.views": "1x1",
        "eval.every_epochs": 0,
        "eval.batch_size": 2,
        "sched.warmup_epochs": 0.5,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def run_train(sets, *, launcher=(), resume=False, check=True, popen=False):
    cmd = [*launcher, str(REPO / "scripts" / "train.py"), "--config", "demo.yaml", "--set", *sets]
    if not launcher:
        cmd.insert(0, sys.executable)
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
