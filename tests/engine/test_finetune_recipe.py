"""The shipped finetune.yaml end to end: `video-swin train --config finetune.yaml --set data.root=FOLDERS`.

A tiny model and clip stand in for Swin-T at 32x224x224, and a local file for
the registry weights (nothing is downloaded): everything else is the recipe,
class folders, the validation split it writes and ``train.batch_size: auto``.
"""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from video_swin.checkpoints import save_checkpoint
from video_swin.cli import main
from video_swin.config import ConfigError, check_paths, load_config, to_dict
from video_swin.data.annotations import clear_scan_cache
from video_swin.engine import build, trainer
from video_swin.engine.batch_plan import planner_for
from video_swin.engine.plan import GIB, HEADROOM

CLASSES = ["fading in", "fading out", "moving down", "moving up"]  # 2 training videos each in tiny_data
TINY = {
    "data.clip_len": 4, "data.crop_size": 32, "data.train_short_side": 36, "data.test_short_side": 32,
    "data.num_workers": 0, "model.embed_dim": 8, "model.depths": "[1,1]", "model.num_heads": "[1,2]",
    "model.window_size": "[2,4,4]", "model.drop_path_rate": 0.0, "model.head_dropout": 0.0,
    "train.mixed_precision": '"no"', "train.global_batch": 4, "train.max_steps": 4, "train.save_every_steps": 2,
    "train.log_every_steps": 1, "eval.views": "1x1", "eval.batch_size": 2, "eval.every_epochs": 0,
    "eval.final": "false",
}  # fmt: skip


@pytest.fixture
def folders(tiny_data, tmp_path):
    """A class-per-folder tree: 4 classes of 3 videos (the 2 training and 1 validation video of each)."""
    root = tmp_path / "my_videos"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for video in [*(tiny_data / "train" / c).iterdir(), *(tiny_data / "val" / c).iterdir()]:
            shutil.copy(video, root / c / video.name)
    clear_scan_cache()
    return root


def pretrained(tmp_path):
    """Tiny weights with a 7-class head, standing in for swin3d_t.k400 (400 classes)."""
    cfg = load_config("finetune.yaml", ["data.root=unused", *[f"{k}={v}" for k, v in TINY.items()]])
    torch.manual_seed(3)
    return save_checkpoint(build.model_from_config(cfg, 7), tmp_path / "pre.safetensors", config=to_dict(cfg))


def train(root, out, weights, *extra):
    sets = [f"{k}={v}" for k, v in TINY.items()] + [f"output_dir={out}", f"model.pretrained_video={weights}"]
    return main(["train", "--config", "finetune.yaml", "--set", f"data.root={root}", *sets, *extra])


def listed(path):
    return sorted(line.rsplit(maxsplit=1)[0] for line in path.read_text().splitlines())


def test_one_command_trains_on_class_folders_with_a_split_of_them(folders, tmp_path, monkeypatch, capsys):
    read = []
    original = build.build_video_dataset
    monkeypatch.setattr(build, "build_video_dataset", lambda ann, root, **kw: read.append((str(ann), kw["mode"]))
                        or original(ann, root, **kw))  # fmt: skip
    out = tmp_path / "run"
    assert train(folders, out, pretrained(tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "validation split: 4 of 12 videos held out" in printed
    assert "head: shape (7, 16) != (4, 16); left freshly initialised" in printed  # a new head for the folders' classes
    split = out / "split"
    assert (split / "classes.txt").read_text().split("\n")[:-1] == CLASSES
    train_list, val_list = listed(split / "train.txt"), listed(split / "val.txt")
    assert len(train_list) == 8 and len(val_list) == 4 and not set(train_list) & set(val_list)
    assert sorted({p.split("/")[0] for p in val_list}) == CLASSES  # one of each class's 3 held out
    # the training and validation sets are read from the written lists, not from the folders
    train_file, val_file = str(split / "train.txt"), str(split / "val.txt")
    assert read == [(train_file, "train"), (val_file, "val"), (val_file, "test")]
    assert load_file(out / "model.safetensors")["head.weight"].shape == (4, 16)
    saved = (out / "config.yaml").read_text()
    assert "val_annotations: null" in saved and "classes_found: 4" in saved
    # evaluating the run with the same command line scores its held-out videos
    sets = [f"{k}={v}" for k, v in TINY.items()] + [f"output_dir={out}", f"data.root={folders}"]
    assert main(["evaluate", "--config", "finetune.yaml", "--set", *sets, "--checkpoint",
                 str(out / "model.safetensors"), "--views", "1x1", "--out", str(tmp_path / "eval")]) == 0
    scored = (tmp_path / "eval" / "predictions.csv").read_text()
    assert all(path.split("/")[-1] in scored for path in val_list) and len(scored.splitlines()) == 1 + 4


def test_resume_reuses_the_split_and_the_batch_plan_and_reaches_the_uninterrupted_weights(folders, tmp_path, capsys):
    weights = pretrained(tmp_path)
    full = tmp_path / "full"
    assert train(folders, full, weights) == 0
    cut = tmp_path / "cut"  # the same run killed after its state of step 2
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_4")
    for name in ("model.safetensors", "model.json"):
        (cut / name).unlink()
    written = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (cut / "split").iterdir()}
    capsys.readouterr()
    assert train(folders, cut, weights, "--resume") == 0
    printed = capsys.readouterr().out
    assert f"validation split: reusing {cut / 'split'}" in printed
    assert f"reused from {cut / 'batch_plan.json'}" in printed and "resumed from" in printed
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (cut / "split").iterdir()} == written
    a, b = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_warns_about_added_videos_and_refuses_removed_ones(folders, tmp_path, capsys, caplog, monkeypatch):
    weights = pretrained(tmp_path)
    out = tmp_path / "run"
    assert train(folders, out, weights, "train.max_steps=2") == 0
    extra = folders / "moving up" / "new_clip.mp4"
    shutil.copy(next((folders / "fading in").iterdir()), extra)
    clear_scan_cache()
    with caplog.at_level(logging.WARNING):
        assert train(folders, out, weights, "train.max_steps=2", "--resume") == 0
    assert "1 video(s)" in caplog.text and "new_clip.mp4" in caplog.text and "are not used" in caplog.text
    assert "new_clip.mp4" not in (out / "split" / "train.txt").read_text() + (out / "split" / "val.txt").read_text()

    gone = sorted((folders / "fading out").iterdir())[0]
    gone.unlink()
    clear_scan_cache()
    monkeypatch.setattr(trainer, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    capsys.readouterr()
    assert train(folders, out, weights, "train.max_steps=2", "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no longer among the training videos" in err and gone.name in err


def test_auto_batch_with_accumulation_trains_the_planned_batch(folders, tmp_path, capsys, monkeypatch):
    """``train.memory`` between the planner's peaks for 2 and 4 clips: 2 clips x 2 accumulation steps."""
    cfg = load_config("finetune.yaml", [f"data.root={folders}", *[f"{k}={v}" for k, v in TINY.items()]])
    peaks = planner_for(cfg, 1, torch.device("cpu"))
    two, four = peaks(2, False).peak, peaks(4, False).peak
    memory = (two + four) / 2 / (1 - HEADROOM) / GIB
    batches = []
    original = trainer._forward_backward
    monkeypatch.setattr(trainer, "_forward_backward", lambda run, batch, *rest: batches.append(
        (batch["video"].shape[0], run.accelerator.gradient_accumulation_steps)) or original(run, batch, *rest))
    out = tmp_path / "run"
    assert train(folders, out, pretrained(tmp_path), f"train.memory={memory}") == 0
    assert ("train.batch_size auto: 2 clips per device x 1 process(es) x 2 accumulation step(s) = 4 clips per "
            "optimizer step; activation checkpointing off") in capsys.readouterr().out
    plan = json.loads((out / "batch_plan.json").read_text())
    assert (plan["batch_size"], plan["grad_accum_steps"], plan["use_checkpoint"]) == (2, 2, False)
    saved = (out / "config.yaml").read_text()
    assert "batch_size: 2\n" in saved and "grad_accum_steps: 2\n" in saved  # what the run trained with
    assert batches == [(2, 2)] * 8  # 4 optimizer steps of 2 batches of 2 clips
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the recipe's 2 repeats: the split's 8 training videos twice an epoch, 16 clips = 4 steps of 4
    assert [(r["step"], r["epoch"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 0)]


def test_the_recipe_as_shipped_passes_the_checks_with_a_registry_name(folders):
    """`--set data.root=FOLDERS` alone: the registry name is accepted as it is (fetched when the model is built)."""
    cfg = load_config("finetune.yaml", [f"data.root={folders}"])
    check_paths(cfg)
    assert cfg.model.pretrained_video == "swin3d_t.k400" and cfg.model.num_classes is None
    assert (cfg.data.train_annotations, cfg.data.val_annotations) == (str(folders), None)
    assert (cfg.train.batch_size, cfg.train.global_batch) == ("auto", 64)


def test_overwrite_draws_a_new_split(folders, tmp_path):
    weights = pretrained(tmp_path)
    out = tmp_path / "run"
    assert train(folders, out, weights, "train.max_steps=2") == 0
    first = listed(out / "split" / "val.txt")
    assert train(folders, out, weights, "train.max_steps=2", "data.split_seed=1", "--overwrite") == 0
    second = listed(out / "split" / "val.txt")
    assert first != second and len(first) == len(second) == 4


def test_evaluating_without_val_annotations_needs_the_runs_split(folders, tmp_path):
    cfg = load_config("finetune.yaml", [f"data.root={folders}", f"output_dir={tmp_path / 'no_run'}"])
    with pytest.raises(ConfigError, match=r"data.val_annotations: null, and .*split/val.txt .* does not exist"):
        check_paths(cfg, evaluation=True)
