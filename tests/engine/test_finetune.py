"""Fine-tuning through the config: ``model.pretrained_video`` into a model with another class count."""

import csv

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from video_swin.checkpoints import save_checkpoint
from video_swin.cli import main
from video_swin.config import load_config, to_dict
from video_swin.engine.build import build_model, model_from_config

from .conftest import tiny_overrides


def pretrained_file(tiny_data, tmp_path, num_classes):
    """A tiny model of ``num_classes`` classes with random weights (head too), saved as a run saves it."""
    cfg = load_config("demo.yaml", tiny_overrides(tiny_data, tmp_path / "pre"))
    torch.manual_seed(1)
    model = model_from_config(cfg, num_classes)
    with torch.no_grad():
        model.head.bias.uniform_(-1, 1)  # not the fresh head's zeros
    return save_checkpoint(model, tmp_path / f"pre_{num_classes}.safetensors", config=to_dict(cfg))


def test_other_class_count_loads_the_backbone_and_resets_the_head_with_a_report(tiny_data, tmp_path, capsys):
    path = pretrained_file(tiny_data, tmp_path, num_classes=10)
    saved = load_file(path)
    cfg = load_config("demo.yaml", tiny_overrides(tiny_data, tmp_path / "ft",
                                                 **{"model.pretrained_video": str(path)}))
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(2)
    fresh_head = model_from_config(cfg, 4).head.state_dict()  # what the same seed draws for a 4-class head
    torch.manual_seed(2)
    model = build_model(cfg, 4, accelerator)
    state = model.state_dict()
    backbone = [k for k in saved if not k.startswith("head.")]
    assert backbone and all(k in state for k in backbone)
    for k in backbone:
        torch.testing.assert_close(state[k], saved[k], rtol=0, atol=0, msg=k)
    assert state["head.weight"].shape == (4, saved["head.weight"].shape[1]) and state["head.bias"].shape == (4,)
    torch.testing.assert_close(state["head.weight"], fresh_head["weight"])  # freshly initialised, not copied
    torch.testing.assert_close(state["head.bias"], fresh_head["bias"])
    out = capsys.readouterr().out
    assert f"loaded {path}" in out
    assert "head.weight (head: shape (10, 16) != (4, 16); left freshly initialised)" in out
    assert "head.bias (head: shape (10,) != (4,); left freshly initialised)" in out


def test_same_class_count_loads_the_head_too(tiny_data, tmp_path, capsys):
    path = pretrained_file(tiny_data, tmp_path, num_classes=10)
    saved = load_file(path)
    cfg = load_config("demo.yaml", tiny_overrides(tiny_data, tmp_path / "ft",
                                                 **{"model.pretrained_video": str(path)}))
    state = build_model(cfg, 10, Accelerator(cpu=True)).state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)
    out = capsys.readouterr().out
    assert "missing: 0" in out and "skipped: 0" in out and "freshly initialised" not in out


def test_train_command_fine_tunes_on_a_class_subset(tiny_data, tmp_path, capsys):
    """``video-swin train --set model.pretrained_video=FILE`` on 4 of the 10 classes: runs and says the head is new."""
    path = pretrained_file(tiny_data, tmp_path, num_classes=10)
    keep = {"fading in", "fading out", "zooming in", "zooming out"}
    for split in ("train", "val"):
        rows = list(csv.reader((tiny_data / f"{split}.csv").read_text().splitlines()))
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([rows[0], *[r for r in rows[1:] if r[0] in keep]])
    overrides = tiny_overrides(tiny_data, tmp_path / "run", **{
        "model.pretrained_video": str(path), "data.train_annotations": tmp_path / "train.csv",
        "data.val_annotations": tmp_path / "val.csv", "train.max_steps": 2, "eval.final": "false"})
    assert main(["train", "--config", "demo.yaml", "--set", *overrides]) == 0
    out = capsys.readouterr().out
    assert "head.weight (head: shape (10, 16) != (4, 16); left freshly initialised)" in out
    final = load_file(tmp_path / "run" / "model.safetensors")
    assert final["head.weight"].shape == (4, 16)
