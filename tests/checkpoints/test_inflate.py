"""Inflating image Swin weights into video models, and video windows changed on load."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision

import video_swin
from video_swin.checkpoints import (
    CheckpointError,
    inflate_image_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from video_swin.checkpoints.formats import repeat_over_time
from video_swin.checkpoints.inflate import inflate_bias_table, inflate_patch_kernel

ROOT = Path(__file__).resolve().parents[2]
TINY = {"embed_dim": 8, "depths": (2, 2), "num_heads": (1, 2), "num_classes": 3}
# A small Swin with window 12 at 384 px: stage maps 96/48/24/12 are all window multiples.
W12 = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}


def rel_diff(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def perturbed(model):
    """Random weights everywhere: bias tables large enough that a wrong inflation shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name.endswith("relative_position_bias_table") else 0.02))
    return model.eval()


def official_layout(timm_state):
    """timm keys rewritten by hand into the official Microsoft Swin layout, saved buffers included."""
    out = {}
    for key, value in timm_state.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else key.replace("head.fc.", "head.")
        out[key] = value
        m = re.match(r"(layers\.\d+\.blocks\.(\d+)\.)attn\.relative_position_bias_table", key)
        if m:
            out[m.group(1) + "attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
            if int(m.group(2)) % 2:
                out[m.group(1) + "attn_mask"] = torch.zeros(1, 49, 49)
    return {"model": out}


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return torch.randn(1, 3, 224, 224)


@pytest.fixture(scope="module")
def timm_ref(image):
    model = perturbed(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    with torch.no_grad():
        return model.state_dict(), model.forward_features(image)  # (1, 7, 7, 768)


@pytest.fixture(scope="module")
def torchvision_ref(image):
    model = perturbed(torchvision.models.swin_t())
    with torch.no_grad():
        return model.state_dict(), model.norm(model.features(image))  # (1, 7, 7, 768)


@pytest.fixture(scope="module")
def window12_state():
    torch.manual_seed(2)
    ref = timm.models.swin_transformer.SwinTransformer(img_size=384, window_size=12, num_classes=1000, **W12)
    return ref.state_dict()


# Pairwise coverage of (layout, init, T): every layout meets both inits and both
# clip lengths, and every init both lengths, in 6 forwards instead of 12.
@pytest.mark.parametrize(
    "layout, init, frames",
    [
        ("timm", "average", 8),
        ("timm", "center", 16),
        ("torchvision", "average", 16),
        ("torchvision", "center", 8),
        ("official", "average", 8),
        ("official", "center", 16),
    ],
)
def test_static_clip_reproduces_image_features(layout, init, frames, image, timm_ref, torchvision_ref, tmp_path):
    state, expected = torchvision_ref if layout == "torchvision" else timm_ref
    source = state
    if layout == "official":
        source = tmp_path / "swin_tiny_patch4_window7_224.pth"
        torch.save(official_layout(state), source)
    model = video_swin.create_model("swin3d_t").eval()
    report = inflate_image_checkpoint(model, source, temporal_init=init)
    assert report.missing == ["head.weight", "head.bias"] and report.unexpected == []
    assert len(report.converted) == 1 + 12  # patch kernel + one table per block
    assert bool(report.dropped_buffers) == (layout != "timm")
    clip = image.unsqueeze(2).expand(-1, -1, frames, -1, -1)  # (1, 3, T, 224, 224)
    with torch.no_grad():
        out = model.forward_features(clip)  # (1, 768, T/2, 7, 7)
    assert out.shape == (1, 768, frames // 2, 7, 7)
    for t in range(frames // 2):
        assert rel_diff(out[:, :, t].permute(0, 2, 3, 1), expected) < 1e-4, f"time step {t}"


def test_patch_kernel_inits():
    w = torch.randn(8, 3, 4, 4)
    avg = inflate_patch_kernel(w, 2, "average")
    assert avg.shape == (8, 3, 2, 4, 4) and torch.equal(avg[:, :, 0], avg[:, :, 1])
    assert torch.allclose(avg[:, :, 0], w / 2)
    center = inflate_patch_kernel(w, 3, "center")
    assert torch.equal(center[:, :, 1], w) and not center[:, :, 0].any() and not center[:, :, 2].any()
    with pytest.raises(ValueError, match="temporal_init"):
        inflate_patch_kernel(w, 2, "middle")


def test_bias_table_is_repeated_over_time_offsets_per_head():
    table = torch.randn(13 * 13, 3)
    out = inflate_bias_table(table, (7, 7), (8, 7, 7)).view(15, 13 * 13, 3)  # (2P-1, (2M-1)^2, nH)
    assert all(torch.equal(out[dt], table) for dt in range(15))
    constant = torch.arange(4.0).expand(23 * 23, 4)  # head h holds h everywhere
    resized = inflate_bias_table(constant, (12, 12), (2, 7, 7))
    assert resized.shape == (3 * 13 * 13, 4)
    assert torch.allclose(resized, torch.arange(4.0).expand_as(resized), atol=1e-5)


def test_window12_checkpoint_inflates_into_window7(window12_state):
    model = video_swin.create_model("swin3d_t", **W12).eval()
    report = inflate_image_checkpoint(model, window12_state)
    assert report.missing == ["head.weight", "head.bias"] and report.unexpected == []
    tables = [c for c in report.converted if "relative_position_bias_table" in c]
    assert len(tables) == 8 and all("(12, 12) -> (8, 7, 7)" in c for c in tables)
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.shape == (15 * 13 * 13, 1)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 4, 64, 64))
    assert logits.shape == (1, 400) and torch.isfinite(logits).all()


def test_head_kept_only_when_asked_and_class_count_matches(window12_state):
    model = video_swin.create_model("swin3d_t", num_classes=1000, **W12)
    report = inflate_image_checkpoint(model, window12_state, keep_head=True)
    assert report.missing == [] and "head.weight" in report.loaded
    assert torch.equal(model.head.weight, window12_state["head.fc.weight"])
    report = inflate_image_checkpoint(video_swin.create_model("swin3d_t", **W12), window12_state, keep_head=True)
    assert report.missing == ["head.weight", "head.bias"] and any("(1000, 256)" in s for s in report.skipped)


def test_partial_match_is_loud_and_a_dropped_head_is_not(window12_state, caplog):
    with caplog.at_level(logging.WARNING):
        inflate_image_checkpoint(video_swin.create_model("swin3d_t", **W12), window12_state)
    assert "partial load" not in caplog.text
    partial = {k: v for k, v in window12_state.items() if not k.startswith("layers.3.blocks.1.")}
    with pytest.raises(CheckpointError, match=r"leaves \d+ weights of the model missing: layers\.3\.blocks\.1\."):
        inflate_image_checkpoint(video_swin.create_model("swin3d_t", **W12), partial)  # strict by default
    with caplog.at_level(logging.WARNING):
        report = inflate_image_checkpoint(video_swin.create_model("swin3d_t", **W12), partial, strict=False)
    assert "partial load" in caplog.text and "layers.3.blocks.1.mlp.fc1.weight" in report.missing


def test_swin_t_weights_into_swin3d_s_are_refused_naming_the_file(tmp_path):
    """Swin-T's third stage has 6 blocks, swin3d_s's 18: an error naming the file's real layout, unless asked for."""
    torch.save({"model": timm.create_model("swin_tiny_patch4_window7_224").state_dict()}, tmp_path / "t.pth")
    args = [sys.executable, "-m", "video_swin.cli", "inflate", "--image-checkpoint", str(tmp_path / "t.pth"),
            "--model", "swin3d_s", "--num-classes", "5", "--out", str(tmp_path / "s.safetensors")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "a 2D (image) Swin checkpoint in the timm layout with depths (2, 2, 6, 2)" in done.stderr
    missing = int(re.search(r"leaves (\d+) weights of the model missing: layers\.2\.blocks\.6\.", done.stderr)[1])
    assert missing == 12 * 13 and not (tmp_path / "s.safetensors").exists()  # 12 blocks of 13 tensors each
    done = subprocess.run([*args, "--allow-missing"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and f"missing: {missing + 2}," in done.stdout  # the head too, not requested
    assert (tmp_path / "s.safetensors").exists()


def test_non_swin_and_wrong_kinds_are_refused():
    model = video_swin.create_model("swin3d_t", **TINY)
    with pytest.raises(CheckpointError, match="ResNet.*not a Swin"):
        inflate_image_checkpoint(model, torchvision.models.resnet18().state_dict())
    text = {"embeddings.word_embeddings.weight": torch.zeros(9, 4), "encoder.layer.0.output.dense.weight": torch.eye(4)}
    with pytest.raises(CheckpointError, match="text.*not a Swin"):
        inflate_image_checkpoint(model, text)
    with pytest.raises(CheckpointError, match="already a video.*load_checkpoint"):
        inflate_image_checkpoint(model, video_swin.create_model("swin3d_t", **TINY).state_dict())
    image_model = video_swin.create_model("swin_t", **TINY)
    with pytest.raises(CheckpointError, match="needs a video model"):
        inflate_image_checkpoint(image_model, image_model.state_dict())
    with pytest.raises(CheckpointError, match="shape"):  # a 2D Swin of another width
        inflate_image_checkpoint(model, video_swin.create_model("swin_t", **{**TINY, "embed_dim": 16}).state_dict())
    with pytest.raises(ValueError, match="temporal_init"):
        inflate_image_checkpoint(model, {}, temporal_init="middle")


@pytest.mark.parametrize("with_sidecar", [True, False])
def test_video_checkpoint_into_longer_temporal_window(with_sidecar, tmp_path):
    source = video_swin.create_model("swin3d_t", **TINY)
    spatial = torch.randn(13 * 13, 1)
    with torch.no_grad():  # constant over time offsets, so the resized table is known exactly
        source.layers[0].blocks[0].attn.relative_position_bias_table.copy_(repeat_over_time(spatial, 8))
    path = save_checkpoint(source, tmp_path / "k400.safetensors") if with_sidecar else source.state_dict()
    model = video_swin.create_model("swin3d_t", window_size=(16, 7, 7), **TINY).eval()
    report = load_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == []
    assert len(report.converted) == 4 and all("(8, 7, 7) -> (16, 7, 7)" in c for c in report.converted)
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (31 * 13 * 13, 1)
    assert torch.allclose(table, repeat_over_time(spatial, 16), atol=1e-6)
    assert torch.equal(model.layers[1].blocks[0].mlp.fc1.weight, source.layers[1].blocks[0].mlp.fc1.weight)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 20, 32, 32))).all()


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "inflate.py"), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


def test_script_end_to_end(timm_ref, tmp_path):
    image_file, out = tmp_path / "swin_t.pth", tmp_path / "swin3d_t.safetensors"
    torch.save(official_layout(timm_ref[0]), image_file)
    done = run_script("--image-checkpoint", image_file, "--model", "swin3d_t", "--out", out,
                      "--temporal-init", "center", "--num-classes", "7")
    assert done.returncode == 0, done.stderr
    assert "missing: 2" in done.stdout and "converted: 13" in done.stdout
    model, meta = load_model(out)
    assert meta["temporal_init"] == "center" and meta["inflated_from"] == str(image_file)
    assert model.num_classes == 7 and json.loads(out.with_suffix(".json").read_text())["model"]["name"] == "swin3d_t"
    kernel = inflate_patch_kernel(timm_ref[0]["patch_embed.proj.weight"], 2, "center")
    assert torch.equal(model.patch_embed.proj.weight, kernel)
    assert torch.equal(model.norm.weight, timm_ref[0]["norm.weight"])


def test_script_refuses_a_resnet_in_one_line(tmp_path):
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    done = run_script("--image-checkpoint", resnet, "--out", tmp_path / "x.safetensors")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "ResNet" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.safetensors").exists()
