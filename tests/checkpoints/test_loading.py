"""Our checkpoint format, safe loading and clear refusals."""

import json
import os

import pytest
import torch
import torchvision

import video_swin
from video_swin.checkpoints import CheckpointError, load_checkpoint, load_model, save_checkpoint

TINY = {"embed_dim": 8, "depths": (2, 2), "num_heads": (1, 2), "num_classes": 3}


def test_save_and_load_model_roundtrip(tmp_path):
    model = video_swin.create_model("swin3d_t", **TINY).eval()
    path = save_checkpoint(model, tmp_path / "model.safetensors", classes=["a", "b", "c"])
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["classes"] == ["a", "b", "c"] and meta["model"]["name"] == "swin3d_t"
    loaded, meta = load_model(path)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "evil": _Evil()}, path)
    model = video_swin.create_model("swin3d_t", **TINY)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(model, path)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_image_checkpoint_into_video_model_points_to_inflation():
    image = torchvision.models.swin_t().state_dict()
    with pytest.raises(CheckpointError, match="inflate_image_checkpoint"):
        load_checkpoint(video_swin.create_model("swin3d_t"), image)


def test_video_checkpoint_into_image_model_points_to_video_model():
    video = video_swin.create_model("swin3d_t", **TINY).state_dict()
    with pytest.raises(CheckpointError, match="video.*load_checkpoint"):
        load_checkpoint(video_swin.create_model("swin_t", **TINY), video)


def test_resnet_is_refused_with_what_it_is():
    with pytest.raises(CheckpointError, match="ResNet"):
        load_checkpoint(video_swin.create_model("swin3d_t"), torchvision.models.resnet18().state_dict())


def test_wrong_architecture_is_refused():
    small = video_swin.create_model("swin3d_t", **TINY).state_dict()
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(video_swin.create_model("swin3d_t", **{**TINY, "embed_dim": 16}), small)


def test_head_of_other_class_count_is_skipped_and_reported():
    state = video_swin.create_model("swin3d_t", **TINY).state_dict()
    report = load_checkpoint(video_swin.create_model("swin3d_t", **{**TINY, "num_classes": 7}), state)
    assert report.missing == ["head.weight", "head.bias"]
    assert any("head" in s for s in report.skipped)


def test_truncated_and_empty_files(tmp_path):
    model = video_swin.create_model("swin3d_t", **TINY)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save(model.state_dict(), tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:1000])
    for name in ["cut.safetensors", "empty.pth", "cut.pth", "missing.pth"]:
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(model, tmp_path / name)


def test_non_finite_weights_are_named():
    model = video_swin.create_model("swin3d_t", **TINY)
    state = model.state_dict()
    state["layers.0.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="mlp.fc1.weight"):
        load_checkpoint(model, state)
    with pytest.raises(CheckpointError, match="non-finite"):
        model.layers[0].blocks[0].mlp.fc1.weight.data[0, 0] = float("inf")
        save_checkpoint(model, "/tmp/never_written.safetensors")
