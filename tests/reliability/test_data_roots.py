"""Hostile data roots and annotation files through the command line: loops, BOMs, ambiguity, a mistyped root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, tiny_overrides


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "video_swin.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    err = result.stderr
    assert result.returncode == code and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, err[-3000:]
    return lines[-1]


@pytest.mark.slow
def test_evaluate_on_a_root_with_link_loops_and_a_bom_crlf_csv(tiny_data, tiny_checkpoint, tmp_path):
    path, sets = tiny_checkpoint  # made from tiny_data
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    os.symlink(".", root / "self")  # measured: each file indexed 31 times
    os.symlink("..", root / "train" / "up")  # measured (with links beside each other): the scan never ended
    os.symlink("..", root / "val" / "up")
    os.symlink("..", root / "up")
    text = (root / "val.csv").read_text()
    (root / "val.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())  # measured: 0 classes
    moved = {"data.root": root, "data.train_annotations": root / "train.csv", "data.val_annotations": root / "val.csv"}
    sets = [s for s in sets if s.split("=", 1)[0] not in moved] + [f"{k}={v}" for k, v in moved.items()]
    result = _cli(["evaluate", "--config", "demo.yaml", "--checkpoint", str(path), "--views", "1x1",
                   "--out", str(tmp_path / "eval"), "--set", *sets])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_videos"] == 10 and report["num_failed"] == 0
    assert report["top1"] == 100.0  # the checkpoint names every val video: every label was read


def _ambiguous(root: Path) -> str:
    first = next((root / "val").rglob("*.mp4"))
    copy = root / "backup" / "val" / first.name  # both under a "val" folder: the row's split does not decide
    copy.parent.mkdir(parents=True)
    shutil.copyfile(first, copy)
    return first.name


def _unlabelled(root: Path) -> str:
    lines = (root / "train.csv").read_text().splitlines()
    rows = [",".join(["", *line.split(",")[1:]]) for line in lines[1:]]
    (root / "train.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return "the label column is empty in every row"


@pytest.mark.slow
@pytest.mark.parametrize("make, expected", [
    (_ambiguous, "row(s) match several files under"),
    (_unlabelled, None),
], ids=["ambiguous_id", "empty_labels"])  # fmt: skip
def test_train_stops_with_one_line_on_unusable_annotations(tiny_data, tmp_path, make, expected):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    words = make(root)
    line = _one_error_line(_cli(["train", "--config", "demo.yaml", "--set", *tiny_overrides(root, tmp_path / "run")]))
    assert (expected or words) in line and (words in line), line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_generate_demo_refuses_a_mistyped_root_that_holds_other_files(tmp_path):
    typo = tmp_path / "datasets"  # meant: datasets/demo
    (typo / "k400").mkdir(parents=True)
    (typo / "k400" / "clip.mp4").write_bytes(b"x")
    sets = [f"output_dir={tmp_path / 'run'}", f"data.root={typo}", f"data.train_annotations={typo}/train.csv",
            f"data.val_annotations={typo}/val.csv"]
    line = _one_error_line(_cli(["train", "--config", "demo.yaml", "--set", *sets]))
    assert f"demo data folder {typo} is not empty and holds no demo data" in line, line
    assert [p.name for p in typo.iterdir()] == ["k400"]  # nothing written into it


@pytest.mark.slow
def test_generate_demo_refuses_a_mistyped_root_outside_the_annotations(tmp_path):
    demo, typo = tmp_path / "data" / "demo", tmp_path / "data" / "dmeo"
    sets = [f"output_dir={tmp_path / 'run'}", f"data.root={typo}", f"data.train_annotations={demo}/train.csv",
            f"data.val_annotations={demo}/val.csv"]
    line = _one_error_line(_cli(["train", "--config", "demo.yaml", "--set", *sets]))
    assert f"into {typo}, but the annotations {demo}/train.csv are not in that folder" in line, line
    assert not typo.exists()  # measured: 1,200 demo videos written there, then trained on
