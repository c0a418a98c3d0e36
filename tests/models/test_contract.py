"""Contract over every registered model, with tiny overrides so it runs fast."""

import pytest
import torch

import video_swin
from video_swin.models import PatchMerging

TINY = {"embed_dim": 8, "depths": (2, 2), "num_heads": (1, 2), "num_classes": 5}


def tiny(name, **kw):
    torch.manual_seed(0)
    return video_swin.create_model(name, **{**TINY, **kw})


def clip(model, *spatial, batch=2):
    return torch.randn(batch, 3, *spatial)


def test_presets_named_in_architecture_exist():
    names = set(video_swin.list_models())
    for n in ["swin3d_t", "swin3d_s", "swin3d_b", "swin3d_l", "swin_t", "swin_s", "swin_b", "swin_l"]:
        assert n in names


@pytest.mark.parametrize("name", video_swin.list_models())
def test_forward_backward_and_shapes(name):
    model = tiny(name)
    video = model.ndim == 3
    size = (4, 32, 32) if video else (32, 32)
    x = clip(model, *size)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
    feats = model.eval().forward_features(x)
    expected = (2, 16, 2, 4, 4) if video else (2, 16, 4, 4)  # C_last = 8 * 2, spatial / 4 / 2
    assert feats.shape == expected


@pytest.mark.parametrize("name", video_swin.list_models())
def test_odd_sizes_and_small_inputs(name):
    model = tiny(name).eval()
    sizes = [(5, 37, 45), (3, 9, 11), (1, 1, 1)] if model.ndim == 3 else [(37, 45), (9, 11), (1, 1)]
    for size in sizes:
        with torch.no_grad():
            out = model(clip(model, *size, batch=1))
        assert out.shape == (1, 5) and torch.isfinite(out).all(), size


@pytest.mark.parametrize("name", video_swin.list_models())
def test_eval_is_deterministic_and_batch_independent(name):
    model = tiny(name, drop_path_rate=0.5, head_dropout=0.5).eval()
    x = clip(model, *((4, 24, 24) if model.ndim == 3 else (24, 24)))
    with torch.no_grad():
        a, b, single = model(x), model(x), model(x[:1])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[:1], rtol=1e-4, atol=1e-5)


def test_time_smaller_than_window():
    model = tiny("swin3d_t", window_size=(8, 7, 7)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 3, 28, 28)).shape == (1, 5)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(3, 8, 32, 32), "4 dims"),
        (torch.randn(1, 4, 8, 32, 32), "4 channels"),
        (torch.randn(1, 3, 0, 32, 32), "size >= 1"),
        (torch.zeros(1, 3, 8, 32, 32, dtype=torch.uint8), "dtype"),
    ],
)
def test_bad_input_raises_value_error_with_expected_shape(x, match):
    model = tiny("swin3d_t")
    with pytest.raises(ValueError, match=match) as err:
        model(x)
    assert "(B, C, T, H, W)" in str(err.value)


def test_image_model_states_its_shape():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tiny("swin_t")(torch.randn(1, 3, 4, 32, 32))


def test_patch_merging_channel_order_is_official():
    merge = PatchMerging(1)
    seen = {}
    merge.norm.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    x = torch.tensor([[1.0, 3.0], [2.0, 4.0]]).view(1, 2, 2, 1)  # x[h, w]: (0,0)=1 (1,0)=2 (0,1)=3 (1,1)=4
    merge(x)
    assert seen["x"].flatten().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_merging_halves_h_w_never_t():
    model = tiny("swin3d_t").eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 8, 64, 64)).shape == (1, 16, 4, 8, 8)


def test_shift_mask_is_computed_once_per_shape():
    model = tiny("swin3d_t", window_size=(2, 4, 4)).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        model(x)
        first = {k: v for k, v in model.layers[0].mask_cache.items()}
        model(x)
    assert len(first) == 1
    (key, mask), = model.layers[0].mask_cache.items()
    assert mask is first[key]


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 32, 32)
    grads = []
    for use_checkpoint in (False, True):
        model = tiny("swin3d_t", drop_path_rate=0.0, use_checkpoint=use_checkpoint).train()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_drop_path_and_head_dropout_active_in_training():
    model = tiny("swin3d_t", drop_path_rate=0.5, head_dropout=0.5).train()
    x = torch.randn(2, 3, 4, 32, 32)
    assert not torch.equal(model(x), model(x))


def test_no_weight_decay_names():
    model = tiny("swin3d_t")
    names = model.no_weight_decay()
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in names
    assert "layers.0.blocks.0.norm1.weight" in names and "head.bias" in names
    assert "layers.0.blocks.0.attn.qkv.weight" not in names


def test_bias_table_size_is_2p_1_2m_1_squared():
    model = video_swin.create_model("swin3d_t")
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (15 * 13 * 13, 3)


def test_unknown_preset_or_option_is_named():
    with pytest.raises(ValueError, match="swin3d_x"):
        video_swin.create_model("swin3d_x")
    with pytest.raises(ValueError, match="windw_size"):
        video_swin.create_model("swin3d_t", windw_size=(8, 7, 7))
