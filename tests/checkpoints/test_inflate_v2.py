"""Inflating 2D Swin V2 weights (timm and official layouts) into a V2 video model."""

import re

import pytest
import timm
import torch

import video_swin
from video_swin.checkpoints import CheckpointError, inflate_image_checkpoint
from video_swin.checkpoints.inflate import inflate_cpb_input
from video_swin.models.windows import relative_coords_table

TINY = {"embed_dim": 8, "depths": (2, 2), "num_heads": (1, 2), "num_classes": 3}


def rel_diff(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def perturbed_v2(model):
    """Weights under which every V2 part matters: post-norms near 1 (not 0), a CPB bias spread over (0, 16),
    logit scales on both sides of the clamp (the defaults make blocks the identity and the bias constant)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("logit_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) * 5.0 + 1.0)
            elif ".cpb_mlp." in name:
                p.copy_(noise * (1.0 if ".cpb_mlp.0." in name else 0.1))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.add_(noise * (0.1 if p.ndim == 1 else 0.02))
    return model.eval()


def official_v2_layout(timm_state):
    """timm swinv2 keys rewritten by hand into the official Microsoft V2 layout, with its saved buffers."""
    out = {}
    for key, value in timm_state.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else key.replace("head.fc.", "head.")
        out[key] = value
        if key.endswith("attn.logit_scale"):
            out[key.replace("logit_scale", "relative_coords_table")] = torch.zeros(1, 15, 15, 2)
            out[key.replace("logit_scale", "relative_position_index")] = torch.zeros(64, 64, dtype=torch.long)
    return {"model": out}


@pytest.fixture(scope="module")
def timm_v2():
    torch.manual_seed(0)
    ref = perturbed_v2(timm.create_model("swinv2_tiny_window8_256", pretrained=False))
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        return ref.state_dict(), image, ref.forward_features(image)  # (1, 8, 8, 768)


@pytest.mark.parametrize("layout, init", [("timm", "average"), ("official", "center")])
def test_static_clip_reproduces_timm_v2_features(layout, init, timm_v2, tmp_path):
    state, image, expected = timm_v2
    source = state
    if layout == "official":
        source = tmp_path / "swinv2_tiny_patch4_window8_256.pth"
        torch.save(official_v2_layout(state), source)
    model = video_swin.create_model("swinv2_3d_t", window_size=(8, 8, 8)).eval()
    report = inflate_image_checkpoint(model, source, temporal_init=init)
    assert report.missing == ["head.weight", "head.bias"] and report.unexpected == []
    assert len(report.converted) == 1 + 12  # patch kernel + one CPB input layer per block
    assert all("zero time column" in c for c in report.converted if "cpb_mlp" in c)
    assert bool(report.dropped_buffers) == (layout == "official")
    clip = image.unsqueeze(2).expand(-1, -1, 8, -1, -1)  # (1, 3, T=8, 256, 256)
    with torch.no_grad():
        out = model.forward_features(clip)  # (1, 768, 4, 8, 8)
    assert out.shape == (1, 768, 4, 8, 8)
    for t in range(4):
        assert rel_diff(out[:, :, t].permute(0, 2, 3, 1), expected) < 1e-4, f"time step {t}"


def test_cpb_input_gains_a_zero_time_column():
    w = torch.randn(512, 2)
    out = inflate_cpb_input(w)
    assert out.shape == (512, 3) and not out[:, 0].any() and torch.equal(out[:, 1:], w)


def test_inflated_bias_is_equal_at_every_time_offset(timm_v2):
    model = video_swin.create_model("swinv2_3d_t", window_size=(8, 7, 7)).eval()
    inflate_image_checkpoint(model, timm_v2[0])
    attn = model.layers[1].blocks[1].attn
    assert torch.equal(attn.cpb_mlp[0].weight[:, 1:], timm_v2[0]["layers.1.blocks.1.attn.cpb_mlp.0.weight"])
    with torch.no_grad():
        table = attn.bias_table((8, 7, 7)).view(15, 13 * 13, -1)  # (2P-1, (2M-1)^2, nH), dt slowest
    assert all(torch.equal(table[dt], table[7]) for dt in range(15))
    assert table[7].std() > 0.5  # the spatial bias is not flat: the test above means something
    assert relative_coords_table((8, 7, 7))[7 * 169].tolist() == [0, -6, -6]  # row order assumed above


def test_v1_image_weights_are_refused_by_a_v2_video_model():
    v1 = video_swin.create_model("swin_t", **TINY).state_dict()
    with pytest.raises(CheckpointError, match="attention='dot'.*position_bias='table'"):
        inflate_image_checkpoint(video_swin.create_model("swinv2_3d_t", **TINY), v1)
    v2 = video_swin.create_model("swinv2_t", **TINY).state_dict()
    with pytest.raises(CheckpointError, match="attention='cosine'"):
        inflate_image_checkpoint(video_swin.create_model("swin3d_t", **TINY), v2)
