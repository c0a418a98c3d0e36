"""Swin V2 options: parity with timm's swinv2 on random weights, 3D numerics, window changes, gradients."""

import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import video_swin
from video_swin.checkpoints import CheckpointError, load_checkpoint, load_model, save_checkpoint
from video_swin.models import PatchMerging, SwinTransformer, model_config, num_params
from video_swin.models.attention import LOGIT_SCALE_MAX, WindowAttention
from video_swin.models.windows import log_spaced_coords, relative_coords_table, shift_mask

TINY = {"embed_dim": 8, "depths": (2, 2), "num_heads": (1, 2), "num_classes": 5}
V2 = {"attention": "cosine", "position_bias": "cpb", "norm": "post"}


def rel_diff(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def perturbed_v2(model, seed=0):
    """Random weights that make every V2 part matter (timm and ours use the same names inside blocks).

    Default init hides mistakes: res-post-norms start at zero (blocks are the
    identity) and a small CPB MLP gives a near-constant bias of 8. Here norms
    are around 1, the MLP spreads the bias over (0, 16), and some logit scales
    lie above the clamp.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(p):
        return torch.randn(p.shape, generator=gen)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) * 5.0 + 1.0)  # exp: 2.7 .. 403, clamped at 100
            elif ".cpb_mlp.0." in name:
                p.copy_(randn(p))
            elif ".cpb_mlp.2." in name:
                p.copy_(randn(p) * 0.1)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * randn(p))
            elif p.ndim == 1:
                p.copy_(0.1 * randn(p))
            else:
                p.add_(0.02 * randn(p))
    return model.eval()


def official_v2_layout(timm_state, window=8):
    """timm swinv2 keys rewritten by hand into the official Microsoft Swin V2 layout, saved buffers included."""
    out = {}
    for key, value in timm_state.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else key.replace("head.fc.", "head.")
        out[key] = value
        m = re.match(r"(layers\.\d+\.blocks\.(\d+)\.)attn\.logit_scale", key)
        if m:  # the official code persists these buffers; a loader must drop them
            n = window * window
            out[m.group(1) + "attn.relative_coords_table"] = torch.zeros(1, 2 * window - 1, 2 * window - 1, 2)
            out[m.group(1) + "attn.relative_position_index"] = torch.zeros(n, n, dtype=torch.long)
            if int(m.group(2)) % 2:
                out[m.group(1) + "attn_mask"] = torch.zeros(64, n, n)
    return {"model": out}


def tiny(name, **kw):
    torch.manual_seed(0)
    return video_swin.create_model(name, **{**TINY, **kw})


# -- presets and options ----------------------------------------------------------------------------


def test_v2_presets():
    names = set(video_swin.list_models())
    for size in "tsb":
        assert {f"swinv2_{size}", f"swinv2_3d_{size}"} <= names
    image, video = model_config("swinv2_t"), model_config("swinv2_3d_t")
    assert image["patch_size"] == [4, 4] and image["window_size"] == [8, 8]
    assert video["patch_size"] == [2, 4, 4] and video["window_size"] == [8, 7, 7]
    for config in (image, video):
        assert {k: config[k] for k in V2} == V2
    for name in ("swin_t", "swin3d_t"):  # V1 presets keep the V1 defaults
        model = tiny(name)
        attn = model.layers[0].blocks[0].attn
        assert (attn.attention, attn.position_bias_kind) == ("dot", "table") and not model.layers[0].blocks[0].post_norm


@pytest.mark.parametrize(
    "option, present, absent",
    [
        ({"attention": "cosine"}, ["attn.logit_scale", "attn.q_bias", "attn.v_bias", "relative_position_bias_table"],
         ["attn.qkv.bias", "cpb_mlp"]),
        ({"position_bias": "cpb"}, ["attn.cpb_mlp.0.weight", "attn.cpb_mlp.2.weight", "attn.qkv.bias"],
         ["relative_position_bias_table", "logit_scale"]),
        ({"norm": "post"}, ["attn.qkv.bias", "relative_position_bias_table"], ["logit_scale", "cpb_mlp"]),
    ],
)
def test_each_option_alone_on_a_v1_model(option, present, absent):
    model = tiny("swin3d_t", **option)
    names = list(model.state_dict())
    for part in present:
        assert any(part in n for n in names), part
    for part in absent:
        assert not any(part in n for n in names), part
    # Hooks on the one core: the same classes, whatever the options.
    assert isinstance(model, SwinTransformer) and type(model.layers[0].blocks[0].attn) is WindowAttention
    merge_norm = model.layers[0].downsample.norm.weight.shape[0]
    assert merge_norm == (16 if option.get("norm") == "post" else 32)  # LayerNorm(2C) after / (4C) before reduction
    x = torch.randn(2, 3, 4, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    cpb = model.layers[0].blocks[0].attn.cpb_mlp[0].weight.shape if "position_bias" in option else None
    assert cpb in (None, (512, 3))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="attention"):
        tiny("swin3d_t", attention="cos")
    with pytest.raises(ValueError, match="position_bias"):
        tiny("swin3d_t", position_bias="relative")
    with pytest.raises(ValueError, match="norm"):
        tiny("swin3d_t", norm="sandwich")
    with pytest.raises(ValueError, match="pretrained_window_size.*'cpb' only"):
        tiny("swin3d_t", pretrained_window_size=(8, 7, 7))
    with pytest.raises(ValueError, match="pretrained_window_size"):
        tiny("swinv2_3d_t", pretrained_window_size=(8, 7))
    with pytest.raises(ValueError, match="one per stage"):
        tiny("swinv2_3d_t", pretrained_window_size=[(8, 7, 7)] * 3)


def test_per_stage_pretrained_windows():
    model = tiny("swinv2_t", pretrained_window_size=[(12, 12), None])
    assert model.layers[0].blocks[0].attn.pretrained_window_size == (12, 12)
    assert model.layers[1].blocks[1].attn.pretrained_window_size is None
    model = tiny("swinv2_t", pretrained_window_size=(12, 12))
    assert all(b.attn.pretrained_window_size == (12, 12) for s in model.layers for b in s.blocks)


def test_no_weight_decay_covers_v2_parameters():
    names = tiny("swinv2_3d_t").no_weight_decay()
    assert {"layers.0.blocks.0.attn.logit_scale", "layers.0.blocks.0.attn.cpb_mlp.0.weight",
            "layers.0.blocks.0.attn.cpb_mlp.2.weight", "layers.0.blocks.0.attn.q_bias"} <= names
    assert "layers.0.blocks.0.attn.qkv.weight" not in names


def test_v2_patch_merging_reduces_then_normalises_in_official_order():
    merge = PatchMerging(1, norm="post")
    seen = {}
    merge.reduction.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    merge.norm.register_forward_hook(lambda m, i, o: seen.update(normed=i[0]))
    x = torch.tensor([[1.0, 3.0], [2.0, 4.0]]).view(1, 2, 2, 1)  # x[h, w]: (0,0)=1 (1,0)=2 (0,1)=3 (1,1)=4
    out = merge(x)
    assert seen["x"].flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert torch.equal(seen["normed"], seen["y"]) and out.shape == (1, 1, 1, 2)


# -- numerics -----------------------------------------------------------------------------------------


def test_log_spaced_coords_hand_computed_3d():
    coords = log_spaced_coords((2, 3, 1))  # offsets: t in {-1,0,1} / 1, h in {-2..2} / 2, w in {0}
    assert coords.shape == (3 * 5 * 1, 3)
    f = lambda d: math.copysign(math.log2(1 + 8 * abs(d)) / 3, d) if d else 0.0  # noqa: E731
    expected = [[f(t), f(h / 2), 0.0] for t in (-1, 0, 1) for h in (-2, -1, 0, 1, 2)]
    torch.testing.assert_close(coords, torch.tensor(expected), rtol=0, atol=1e-6)
    edge = math.log2(9) / 3  # the window's edge sits at +-8 before the log
    assert coords[:, 0].abs().max() == pytest.approx(edge) and coords[:, 1].abs().max() == pytest.approx(edge)
    # Scaled by a pretraining window of 4, offset 3 of a 7-window sits where the 4-window's edge did.
    bigger = log_spaced_coords((7,), (4,))
    torch.testing.assert_close(bigger[6 + 3], torch.tensor([edge]))


def test_log_spaced_coords_equal_timm_2d():
    attn = timm.models.swin_transformer_v2.WindowAttention(8, (8, 8), 2)
    ref = attn.relative_coords_table.reshape(-1, 2)  # (15*15, 2), same row order as our table
    torch.testing.assert_close(log_spaced_coords((8, 8)), ref, rtol=0, atol=0)
    attn = timm.models.swin_transformer_v2.WindowAttention(8, (12, 12), 2, pretrained_window_size=(8, 8))
    torch.testing.assert_close(log_spaced_coords((12, 12), (8, 8)), attn.relative_coords_table.reshape(-1, 2))


def test_cosine_cpb_attention_equals_the_formula_in_3d(seam):
    """Explicit softmax(cos(q, k) * min(exp(s), 100) + 16 sigmoid(MLP(coords)) + mask) v, shifted 3D windows."""
    torch.manual_seed(0)
    window, heads, dim = (2, 3, 3), 2, 8
    attn = seam(perturbed_v2(WindowAttention(dim, window, heads, attention="cosine", position_bias="cpb")))
    with torch.no_grad():
        attn.logit_scale.copy_(torch.tensor([1.0, 6.0]).view(2, 1, 1))  # head 1 above the clamp
    mask = shift_mask((4, 6, 6), window, (1, 1, 1))  # (nW, N, N)
    nw, n = mask.shape[0], math.prod(window)
    x = torch.randn(2 * nw, n, dim)
    with torch.no_grad():
        out = attn(x, window, mask)
        qkv = F.linear(x, attn.qkv.weight, torch.cat([attn.q_bias, torch.zeros(dim), attn.v_bias]))
        q, k, v = qkv.view(2 * nw, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logits = logits * torch.tensor([math.e, 100.0]).view(1, 2, 1, 1)
        coords = relative_coords_table(window).float() / torch.tensor([1.0, 2.0, 2.0]) * 8
        coords = torch.sign(coords) * torch.log2(coords.abs() + 1) / 3
        table = attn.cpb_mlp(coords)  # (rows, nH)
        rel = relative_coords_table(window)  # row r holds offset r; find the row of every token pair
        grid = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij"), -1).view(n, 3)
        pair = grid[:, None] - grid[None, :]  # (N, N, 3)
        rows = (pair[:, :, None, :] == rel[None, None]).all(-1).float().argmax(-1)  # (N, N)
        bias = 16 * torch.sigmoid(table[rows]).permute(2, 0, 1)  # (nH, N, N)
        logits = logits.view(2, nw, heads, n, n) + bias + mask[None, :, None]
        expected = (logits.softmax(-1).view(2 * nw, heads, n, n) @ v).transpose(1, 2).reshape(2 * nw, n, dim)
        expected = attn.proj(expected)
    assert rel_diff(out, expected) < 1e-5


def test_logit_scale_is_clamped_at_log_100(seam):
    attn = seam(perturbed_v2(WindowAttention(8, (2, 2), 2, attention="cosine", position_bias="cpb")))
    x = torch.randn(3, 4, 8)
    outs = []
    for value in (LOGIT_SCALE_MAX, 10.0):
        with torch.no_grad():
            attn.logit_scale.fill_(value)
            outs.append(attn(x, (2, 2)))
    assert LOGIT_SCALE_MAX == pytest.approx(math.log(100))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_cpb_inputs_built_once_per_window_and_device():
    model = tiny("swinv2_3d_t").eval()
    attn = model.layers[0].blocks[0].attn
    full = attn.relative_coords_table
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 32, 32))  # T' = 2 < 8: the window in use is (2, 7, 7)
        first = dict(attn.coords_cache)
        model(torch.randn(1, 3, 4, 32, 32))
    assert list(first) == [((2, 7, 7), torch.device("cpu"))]
    assert attn.coords_cache[((2, 7, 7), torch.device("cpu"))] is first[((2, 7, 7), torch.device("cpu"))]
    assert attn.relative_coords_table is full and "relative_coords_table" not in model.state_dict()
    # Coordinates of the window in use are normalised by that window, as the official code does.
    torch.testing.assert_close(first[((2, 7, 7), torch.device("cpu"))], log_spaced_coords((2, 7, 7)))


# -- parity with timm (2D) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_v2():
    torch.manual_seed(0)
    ref = perturbed_v2(timm.create_model("swinv2_tiny_window8_256", pretrained=False))
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        return ref.state_dict(), x, ref(x)


@pytest.mark.parametrize("layout", ["timm", "official"])
def test_swinv2_t_logits_match_timm(layout, timm_v2, tmp_path, seam):
    state, x, expected = timm_v2
    source = state
    if layout == "official":
        source = tmp_path / "swinv2_tiny_patch4_window8_256.pth"
        torch.save(official_v2_layout(state), source)
    model = seam(video_swin.create_model("swinv2_t", num_classes=1000).eval())
    report = load_checkpoint(model, source)
    assert report.layout == ("timm" if layout == "timm" else "ours")
    assert not report.missing and not report.unexpected and not report.converted
    assert bool(report.dropped_buffers) == (layout == "official")
    with torch.no_grad():
        assert rel_diff(model(x), expected) < 1e-4


def test_v1_and_v2_weights_do_not_mix(timm_v2):
    with pytest.raises(CheckpointError, match="attention='cosine'.*position_bias='cpb'.*swinv2"):
        load_checkpoint(video_swin.create_model("swin_t", window_size=(8, 8), num_classes=1000), timm_v2[0])
    v1 = video_swin.create_model("swin3d_t", **TINY).state_dict()
    with pytest.raises(CheckpointError, match="norm='pre'"):
        load_checkpoint(tiny("swin3d_t", attention="cosine", position_bias="cpb", norm="post"), v1)


# -- window change after training and gradients ---------------------------------------------------------


def test_window_change_after_training(tmp_path):
    source = perturbed_v2(tiny("swinv2_3d_t", window_size=(8, 7, 7)))
    path = save_checkpoint(source, tmp_path / "k400_window877.safetensors")
    x = torch.randn(1, 3, 32, 56, 56)  # first stage 16 x 14 x 14: the (16, 14, 14) window is used whole
    for pretrained in (None, (8, 7, 7)):
        model = tiny("swinv2_3d_t", window_size=(16, 14, 14), pretrained_window_size=pretrained).eval()
        report = load_checkpoint(model, path)
        assert report.missing == [] and report.unexpected == [] and report.converted == []
        assert len(report.loaded) == len(source.state_dict())
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, 5) and torch.isfinite(out).all()
    # With pretrained_window_size every offset the old window had keeps its bias;
    # the new, longer offsets extrapolate in log space.
    old, new = source.layers[0].blocks[0].attn, model.layers[0].blocks[0].attn
    with torch.no_grad():
        old_bias, new_bias = old.bias_table((8, 7, 7)), new.bias_table((16, 14, 14))
    new_offsets = relative_coords_table((16, 14, 14))
    inside = (new_offsets.abs() <= torch.tensor([7, 6, 6])).all(-1)
    torch.testing.assert_close(new_bias[inside], old_bias, rtol=1e-6, atol=1e-6)
    # The same through load_model, the path a fine-tuning run takes.
    rebuilt, _ = load_model(path, window_size=(16, 14, 14), pretrained_window_size=(8, 7, 7))
    assert rebuilt.layers[1].blocks[1].attn.window_size == (16, 14, 14)


def test_gradients_reach_logit_scale_and_cpb_mlp():
    model = tiny("swinv2_3d_t", drop_path_rate=0.0).train()
    x, y = torch.randn(2, 3, 8, 32, 32), torch.tensor([1, 3])
    attn_params = [n for n, _ in model.named_parameters() if n.endswith(("logit_scale", "cpb_mlp.0.weight",
                                                                           "cpb_mlp.0.bias", "cpb_mlp.2.weight"))]
    assert len(attn_params) == 4 * 4
    # Official init: res-post-norms start at zero, so a first step reaches the norms only ...
    F.cross_entropy(model(x), y).backward()
    grads = dict(model.named_parameters())
    assert all(not grads[n].grad.any() for n in attn_params)
    assert grads["layers.0.blocks.0.norm1.weight"].grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.zero_grad()
    # ... and from the second on, every logit scale and CPB MLP learns.
    F.cross_entropy(model(x), y).backward()
    for name in attn_params:
        assert grads[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("name, count", [("swinv2_s", 49_728_418), ("swinv2_b", 87_918_816)])
def test_larger_image_presets_have_timm_parameter_counts(name, count):
    # timm's swinv2_{small,base}_window8_256 (1000 classes); swinv2_t is pinned by the logits test.
    assert num_params(video_swin.create_model(name, num_classes=1000)) == count
