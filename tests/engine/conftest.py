import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video_swin.checkpoints import save_checkpoint
from video_swin.config import Views, load_config, to_dict
from video_swin.data import class_names, make_demo_data

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small demo dataset: 10 classes x (2 train + 1 val) videos."""
    root = tmp_path_factory.mktemp("demo") / "data"
    make_demo_data(root, seed=0, train_per_class=2, val_per_class=1)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    """A tiny model whose head is fitted to the val videos' single-view features, saved as a run would save it.

    So it names the class of every val video at 1x1 views, without training.
    Returns ``(path of model.safetensors, the config overrides it was built with)``.
    """
    from video_swin.engine.build import build_test_dataset, model_from_config

    out = tmp_path_factory.mktemp("tiny_ckpt")
    sets = tiny_overrides(tiny_data, out)
    cfg = load_config("demo.yaml", sets)
    classes = class_names(cfg.data.train_annotations)
    torch.manual_seed(0)
    model = model_from_config(cfg, len(classes)).eval()
    val = build_test_dataset(cfg, classes, Views(1, 1))
    with torch.no_grad():
        feats = torch.cat([model.forward_head(model.forward_features(val[i]["video"]), pre_logits=True)
                           for i in range(len(val))]).double()  # (N, C)
    x = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)  # (N, C + 1)
    target = 8.0 * torch.nn.functional.one_hot(torch.tensor(val.labels), len(classes)).double()  # (N, K)
    w = torch.linalg.pinv(x) @ target  # (C + 1, K): exact, N <= C + 1 features in general position
    with torch.no_grad():
        model.head.weight.copy_(w[:-1].T)
        model.head.bias.copy_(w[-1])
    path = save_checkpoint(model, out / "model.safetensors", classes=classes, step=0, config=to_dict(cfg))
    return path, sets


def tiny_overrides(root, out, **extra):
    sets = {
        "output_dir": out,
        "data.root": root,
        "data.train_annotations": f"{root}/train.csv",
        "data.val_annotations": f"{root}/val.csv",
        "data.generate_demo": "false",
        "data.clip_len": 4,
        "data.frame_interval": 2,
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
