"""accelerate_cpu: the same model, logits and gradients with the CPU fast paths as without; nothing else knows."""

import ast
import copy
import inspect
import json
from pathlib import Path

import pytest
import torch

import video_swin
from video_swin.checkpoints import load_model, save_checkpoint
from video_swin.models import SwinBlock, SwinTransformer, kernels
from video_swin.models.attention import WindowAttention
from video_swin.models.kernels import (
    FastLinear,
    FastSwinBlock,
    FastWindowAttention,
    accelerate_cpu,
    reference,
    switches,
)
from video_swin.models.kernels import attention as fused_attention

MODELS = Path(video_swin.__file__).parent / "models"
TINY = dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=7, head_dropout=0.0)


def counted(fn):
    """``fn`` that counts its calls in ``.calls``."""

    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        return fn(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def rel_diff(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def perturbed(model, seed=0):
    """Random weights that make every part matter (V2 res-post-norms start at zero: blocks would be identities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("logit_scale"):
                p.copy_(1.0 + noise.abs())
            else:
                p.add_(0.05 * noise)
    return model


# name, overrides, input shape: 2D and 3D, V1 and V2 (and V2 options alone), shifted blocks with
# padding, odd sizes, T smaller than the window
CASES = {
    "3d_v1_pad": ("swin3d_t", dict(window_size=(8, 4, 4)), (2, 3, 7, 36, 44)),
    "3d_v1_even": ("swin3d_t", dict(window_size=(2, 4, 4)), (2, 3, 8, 32, 32)),
    "3d_v2_pad": ("swinv2_3d_t", dict(window_size=(2, 4, 4)), (1, 3, 6, 36, 44)),
    "3d_v2_main_norm": ("swinv2_3d_t", {"window_size": (2, 4, 4), "extra_norm_period": 2}, (1, 3, 4, 32, 40)),
    "3d_cosine_only": ("swin3d_t", dict(window_size=(2, 4, 4), attention="cosine"), (2, 3, 4, 32, 40)),
    "3d_cpb_only": ("swin3d_t", dict(window_size=(2, 4, 4), position_bias="cpb"), (2, 3, 4, 32, 40)),
    "2d_v1_pad": ("swin_t", {}, (2, 3, 60, 76)),
    "2d_v2": ("swinv2_t", dict(window_size=(4, 4)), (2, 3, 64, 64)),
}


def both(name, overrides, **kw):
    torch.manual_seed(0)
    ref = perturbed(video_swin.create_model(name, **{**TINY, **overrides, **kw}))
    fast = accelerate_cpu(copy.deepcopy(ref))
    return ref, fast


def step(model, x, mode, seed=1):
    """Logits and (outside no_grad) every parameter's gradient of one forward/backward."""
    model.train(mode == "train")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout and stochastic-depth draws in both models
    if mode == "no_grad":
        with torch.inference_mode():
            return model(x), {}
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["train", "eval", "no_grad"])
@pytest.mark.parametrize("case", list(CASES))
def test_accelerated_model_equals_reference(case, mode):
    name, overrides, shape = CASES[case]
    ref, fast = both(name, overrides, drop_path_rate=0.2)
    assert isinstance(fast.layers[0].blocks[0], FastSwinBlock)
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = torch.randn(shape)
    out_ref, grads_ref = step(ref, x, mode)
    out, grads = step(fast, x, mode)
    assert rel_diff(out, out_ref) < 1e-5
    assert grads.keys() == grads_ref.keys()
    for key, g in grads.items():
        assert g is not None and rel_diff(g, grads_ref[key]) < 1e-4, key


def test_dropout_falls_back_and_matches():
    """Attention and MLP dropout: the fast modules take the reference paths, with the same random draws."""
    ref, fast = both("swin3d_t", dict(window_size=(2, 4, 4)), drop_rate=0.1, attn_drop_rate=0.1)
    x = torch.randn(2, 3, 4, 32, 32)
    (out_ref, grads_ref), (out, grads) = step(ref, x, "train"), step(fast, x, "train")
    assert rel_diff(out, out_ref) < 1e-5
    for key, g in grads.items():
        assert rel_diff(g, grads_ref[key]) < 1e-4, key


@pytest.mark.parametrize("attention", ["chunked", "flash"])  # the bf16 attention forward each machine chooses from
def test_bf16_autocast_close_to_reference(attention, monkeypatch):
    ref, fast = both("swin3d_t", dict(window_size=(2, 4, 4)), drop_path_rate=0.0)
    monkeypatch.setattr(fused_attention, f"{attention}_forward", counted(getattr(fused_attention, f"{attention}_forward")))
    x = torch.randn(2, 3, 8, 32, 32)
    results = []
    for model in (ref, fast):
        model.train().zero_grad(set_to_none=True)
        # after accelerate_cpu (in both()), which set the machine's own choice
        with torch.autocast("cpu", dtype=torch.bfloat16), switches.machine_choices(bf16_attention=attention):
            out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        assert all(g is not None and g.dtype == torch.float32 for g in grads.values())
        results.append((out.float(), grads))
    assert getattr(fused_attention, f"{attention}_forward").calls > 0
    (out_ref, g_ref), (out, g) = results
    assert rel_diff(out, out_ref) < 5e-2
    for key in ("layers.0.blocks.1.attn.relative_position_bias_table", "layers.1.blocks.0.mlp.fc1.weight",
                "layers.0.blocks.0.attn.qkv.weight", "patch_embed.proj.weight"):  # fmt: skip
        assert rel_diff(g[key], g_ref[key]) < 1e-1, key


def test_float64_and_compiling_take_the_reference_attention(monkeypatch):
    ref, fast = both("swin3d_t", dict(window_size=(2, 4, 4)), drop_path_rate=0.0)
    ref.double(), fast.double()
    x = torch.randn(1, 3, 4, 32, 32, dtype=torch.float64)
    (out_ref, grads_ref), (out, grads) = step(ref, x, "train"), step(fast, x, "train")
    assert rel_diff(out, out_ref) < 1e-12
    for key, g in grads.items():
        assert rel_diff(g, grads_ref[key]) < 1e-10, key
    calls = []
    fused = fused_attention._WindowAttention
    monkeypatch.setattr(fused, "apply", lambda *a, f=fused.apply: calls.append(1) or f(*a))
    attn, windows = fast.float().layers[0].blocks[0].attn, torch.randn(4, 32, 32)
    out = attn(windows, (2, 4, 4))
    assert len(calls) == 1  # float32 on CPU: the fused kernel
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(attn(windows, (2, 4, 4)), out, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1  # under torch.compile: the reference


def test_reference_undoes_and_options_change():
    model = video_swin.create_model("swinv2_3d_t", **TINY)
    classes = [type(m) for m in model.modules()]
    accelerate_cpu(model, recompute_mlp=False, recompute_qkv=False)
    block, attn = model.layers[0].blocks[0], model.layers[0].blocks[0].attn
    assert (type(block), type(attn), type(attn.qkv), type(block.mlp.fc1)) == (
        FastSwinBlock, FastWindowAttention, FastLinear, FastLinear)  # fmt: skip
    assert type(model.layers[0].downsample.reduction) is FastLinear
    assert type(model.head) is torch.nn.Linear and type(attn.cpb_mlp[0]) is torch.nn.Linear  # not the core's
    assert not block.recompute_mlp and not attn.recompute_qkv
    accelerate_cpu(model)
    assert block.recompute_mlp and attn.recompute_qkv
    assert kernels.is_accelerated(model)
    assert reference(model) is model and not kernels.is_accelerated(model)
    assert [type(m) for m in model.modules()] == classes
    assert not {"recompute_mlp", "order_cache"} & set(vars(block)) and "recompute_qkv" not in vars(attn)
    assert accelerate_cpu(model, enabled=False) is model and type(block) is SwinBlock


def test_order_cache_per_shape():
    model = accelerate_cpu(video_swin.create_model("swin3d_t", window_size=(2, 4, 4), **TINY)).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        model(x)
        block = model.layers[0].blocks[1]
        first = dict(block.order_cache)
        model(x)
    assert len(first) == 1 and all(block.order_cache[k] is v for k, v in first.items())


def test_no_speed_switch_in_constructors_config_or_checkpoint(tmp_path):
    for cls in (SwinTransformer, SwinBlock, WindowAttention):
        assert not {"recompute_mlp", "recompute_qkv"} & set(inspect.signature(cls).parameters), cls
    model = video_swin.create_model("swin3d_t", **TINY)
    assert not any(k.startswith("recompute") for k in model.config)
    with pytest.raises(ValueError, match="recompute_mlp"):
        video_swin.create_model("swin3d_t", recompute_mlp=False)
    # A sidecar written before the switches left the model still loads.
    path = save_checkpoint(accelerate_cpu(model), tmp_path / "old.safetensors")
    sidecar = next(p for p in tmp_path.iterdir() if p.suffix == ".json")
    meta = json.loads(sidecar.read_text())
    assert not any(k.startswith("recompute") for k in meta["model"])
    meta["model"].update(recompute_mlp=False, recompute_qkv=True)
    sidecar.write_text(json.dumps(meta))
    rebuilt, _ = load_model(path)
    assert type(rebuilt.layers[0].blocks[0]) is SwinBlock
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_model_files_import_no_kernels():
    for name in ("swin.py", "attention.py", "windows.py"):
        tree = ast.parse((MODELS / name).read_text())
        imported = [
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        ] + [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not any("kernels" in module for module in imported), (name, imported)
