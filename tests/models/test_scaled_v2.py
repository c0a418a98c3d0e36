"""Swin V2 scaled up: the L/H/G presets (counted on the meta device) and the main-branch LayerNorm."""

import pytest
import torch
from torch import nn

import video_swin
from video_swin.models import SwinBlock, model_config, num_params

TINY = {"embed_dim": 8, "num_classes": 5}


def official_v2_count(embed_dim, depths, num_heads, num_classes, extra_norm_period=0):
    """Parameters of Microsoft's SwinTransformerV2 (models/swin_transformer_v2.py), module by module, 2D.

    An independent count: patch embedding Conv2d(3, C, 4) + LayerNorm; per block
    norm1, qkv without bias + q_bias + v_bias, logit_scale (nH), cpb_mlp
    Linear(2, 512) -> Linear(512, nH, no bias), proj, norm2, MLP 4C; merging
    Linear(4C, 2C, no bias) + LayerNorm(2C); final LayerNorm and head. Plus one
    LayerNorm(C) per main-branch norm (blocks N, 2N, ... of each stage).
    """
    count = 3 * 16 * embed_dim + embed_dim + 2 * embed_dim
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c = embed_dim * 2**i
        attention = 3 * c * c + 2 * c + heads + (2 * 512 + 512 + 512 * heads) + c * c + c
        mlp = c * 4 * c + 4 * c + 4 * c * c + c
        count += depth * (attention + mlp + 2 * 2 * c)
        count += (depth // extra_norm_period if extra_norm_period else 0) * 2 * c
        if i < len(depths) - 1:
            count += 4 * c * 2 * c + 2 * 2 * c
    last = embed_dim * 2 ** (len(depths) - 1)
    return count + 2 * last + last * num_classes + num_classes


# Published sizes with 1000 classes: SwinV2-L 197M (Microsoft's MODELHUB.md, the released
# swinv2_large_* models); SwinV2-H 658M and SwinV2-G 3.0B (the Swin V2 paper, arXiv 2111.09883).
@pytest.mark.parametrize("name, published, unit", [("swinv2_l", 197, 1e6), ("swinv2_h", 658, 1e6),
                                                   ("swinv2_g", 30, 1e8)])  # fmt: skip
def test_scaled_image_presets_have_the_published_parameter_counts(name, published, unit):
    with torch.device("meta"):  # no memory: 3B parameters would take 12 GB
        model = video_swin.create_model(name, num_classes=1000)
    assert all(p.is_meta for p in model.parameters())
    config = model_config(name, num_classes=1000)
    count = num_params(model)
    assert count == official_v2_count(
        config["embed_dim"], config["depths"], config["num_heads"], 1000, config.get("extra_norm_period", 0)
    )
    assert round(count / unit) == published


def test_scaled_presets_2d_and_3d_share_the_architecture():
    for size, period in (("l", None), ("h", 6), ("g", 6)):
        image, video = model_config(f"swinv2_{size}"), model_config(f"swinv2_3d_{size}")
        for key in ("embed_dim", "depths", "num_heads", "attention", "position_bias", "norm"):
            assert image[key] == video[key], (size, key)
        assert image.get("extra_norm_period") == video.get("extra_norm_period") == period
        assert video["patch_size"] == [2, 4, 4] and image["patch_size"] == [4, 4]
    assert model_config("swinv2_g")["depths"] == [2, 2, 42, 4] and model_config("swinv2_h")["embed_dim"] == 352


def main_norm_blocks(model):
    return [(i, j) for i, stage in enumerate(model.layers) for j, b in enumerate(stage.blocks)
            if isinstance(b.norm3, nn.LayerNorm)]  # fmt: skip


def test_main_norm_every_n_blocks_of_each_stage():
    model = video_swin.create_model("swinv2_3d_t", **TINY, depths=(2, 7), num_heads=(1, 2), extra_norm_period=3)
    assert main_norm_blocks(model) == [(1, 2), (1, 5)]
    assert "layers.1.blocks.2.norm3.weight" in model.state_dict()
    plain = video_swin.create_model("swinv2_3d_t", **TINY, depths=(2, 7), num_heads=(1, 2))
    assert main_norm_blocks(plain) == [] and not any("norm3" in k for k in plain.state_dict())
    with torch.device("meta"):
        huge = video_swin.create_model("swinv2_3d_h")
    assert main_norm_blocks(huge) == [(2, 5), (2, 11), (2, 17)]


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_main_norm_normalises_the_block_output(norm):
    torch.manual_seed(0)
    kw = {"attention": "cosine", "position_bias": "cpb"} if norm == "post" else {}
    with_norm = SwinBlock(16, 2, (2, 4, 4), main_norm=True, norm=norm, **kw)
    without = SwinBlock(16, 2, (2, 4, 4), norm=norm, **kw)
    without.load_state_dict(with_norm.state_dict(), strict=False)
    with torch.no_grad():
        with_norm.norm3.weight.uniform_(0.5, 2.0), with_norm.norm3.bias.normal_()
        for block in (with_norm, without):
            block.norm1.weight.fill_(1.0), block.norm2.weight.fill_(1.0)  # post-norms start at zero
    x = torch.randn(2, 2, 8, 8, 16) * 5 + 3
    out = with_norm(x, (2, 4, 4), (0, 0, 0), None)
    torch.testing.assert_close(out, with_norm.norm3(without(x, (2, 4, 4), (0, 0, 0), None)))
    normalised = (out - with_norm.norm3.bias) / with_norm.norm3.weight
    torch.testing.assert_close(normalised.mean(-1), torch.zeros(2, 2, 8, 8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [-1, 1.5, "6"])
def test_bad_extra_norm_period_is_named(bad):
    with pytest.raises(ValueError, match="extra_norm_period"):
        video_swin.create_model("swinv2_3d_t", **TINY, depths=(2, 2), num_heads=(1, 2), extra_norm_period=bad)
