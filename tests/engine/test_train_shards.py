"""Training and evaluation from WebDataset shards (``data.shards``): a run killed mid-epoch and resumed ends
bitwise where an uninterrupted one does; evaluation from shards scores every video as evaluation from files does."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.reliability.conftest import (
    assert_same_training,
    free_port,
    metrics_rows,
    run_faulty,
)
from video_swin.data.prepare import prepare

from .conftest import ACCELERATE, REPO, tiny_overrides

EVALUATE = str(REPO / "scripts" / "evaluate.py")
# 20 training videos, batches of 4: 5 steps an epoch; a state every 3 steps, so the state of step 3
# falls in the middle of epoch 0 and the one of step 6 in epoch 1. Two workers, drop path on.
SHARD_RUN = {"train.max_steps": 8, "train.save_every_steps": 3, "train.keep_last": 3, "data.num_workers": 2,
             "model.drop_path_rate": 0.2, "eval.final": "false", "data.shuffle_buffer": 3}


@pytest.fixture(scope="module")
def shards(tiny_data, tmp_path_factory):
    """The tiny demo data sharded as it is (``--no-reencode``): the shards hold the very files the CSVs name."""
    out = tmp_path_factory.mktemp("shards_out")
    prepare(tiny_data, out, reencode=False, jobs=2, shards=True, shard_size=4)
    return f"{out}/shards/{{split}}-*.tar"


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_from_shards_gives_the_uninterrupted_run_bitwise(tiny_data, shards, tmp_path):
    sets = {**SHARD_RUN, "data.shards": shards}
    reference = tmp_path / "reference"
    run_faulty(tiny_overrides(tiny_data, reference, **sets))
    out = tmp_path / "run"
    run_faulty(tiny_overrides(tiny_data, out, **sets), "kill_at_step:5", expect=-9)
    state = json.loads((out / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == (0, 3)  # resumed in the middle of an epoch
    assert state["data_shards"]["world"] == 1 and state["data_shards"]["num_workers"] == 2
    result = run_faulty(tiny_overrides(tiny_data, out, **sets), resume=True)
    assert "resumed from" in result.stdout + result.stderr
    assert_same_training(reference, out)
    assert [r["step"] for r in metrics_rows(out) if "loss" in r] == list(range(1, 9))
    # mid-epoch with other loader workers: refused in one line
    result = run_faulty(tiny_overrides(tiny_data, tmp_path / "other", **sets), "kill_at_step:5", expect=-9)
    refused = run_faulty(tiny_overrides(tiny_data, tmp_path / "other", **{**sets, "data.num_workers": 1}),
                         resume=True, expect=None)
    assert refused.returncode != 0
    assert "num_workers 2 -> 1" in refused.stderr, refused.stderr[-2000:]


def run_eval(args, processes=1):
    launcher = [sys.executable]
    if processes > 1:
        launcher = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--main_process_port",
                    str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, EVALUATE, *args], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def scores_by_path(folder, root=None):
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {os.path.relpath(r["path"], root) if root else r["path"]: (r["label"], r["pred"], r["score"], r["top5"])
            for r in rows}


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_evaluation_from_shards_equals_evaluation_from_files(tiny_data, tiny_checkpoint, shards, tmp_path, processes):
    path, sets = tiny_checkpoint
    common = ["--config", "demo.yaml", "--checkpoint", str(path), "--views", "2x3"]
    eval_sets = ["eval.batch_size=2", "eval.max_views_per_forward=5", "data.num_workers=2"]
    files, sharded = tmp_path / "files", tmp_path / "shards"
    run_eval([*common, "--out", str(files), "--set", *sets, *eval_sets])
    run_eval([*common, "--out", str(sharded), "--set", *sets, *eval_sets, f"data.shards={shards}"], processes)
    a, b = scores_by_path(files, tiny_data), scores_by_path(sharded)
    assert len(a) == 10 and a == b  # every video once, the same scores to the printed digit
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in (files, sharded))
    assert mb["num_processes"] == processes and mb["num_videos"] == 10
    for key in ("top1", "top5", "mean_class_accuracy"):
        assert ma[key] == mb[key], key


def test_training_from_shards_reads_no_annotation_files(tiny_data, shards, tmp_path):
    """With data.shards the CSVs are not needed: labels and paths come from the shards."""
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **{"data.shards": shards, "train.max_steps": 2, "eval.final": "true",
                                             "data.train_annotations": tmp_path / "none.csv",
                                             "data.val_annotations": tmp_path / "none.csv"})
    run_faulty(sets)
    assert load_file(out / "model.safetensors")
    summary = json.loads((out / "eval" / "metrics.json").read_text())
    assert summary["num_videos"] == 10
