"""The fast subclasses override only what they accelerate: the model's meaning is written once, in the reference files."""

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import video_swin
from video_swin.models import SwinBlock
from video_swin.models.attention import WindowAttention
from video_swin.models.kernels import FastSwinBlock, FastWindowAttention, accelerate_cpu

KERNELS = Path(video_swin.__file__).parent / "models" / "kernels"
TINY = dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2), num_classes=5, head_dropout=0.0, drop_path_rate=0.0,
            window_size=(2, 4, 4))  # fmt: skip


def test_fast_block_keeps_the_reference_forward_and_norm_placement():
    for name in ("forward", "branch", "norms_around"):
        assert name not in FastSwinBlock.__dict__, name
    for name in ("scaled_qk", "qk_as_projected", "qkv_bias", "temperature", "position_bias"):
        assert name not in FastWindowAttention.__dict__, name
    # The meaning's own words appear in the reference files only.
    source = "\n".join(p.read_text() for p in KERNELS.glob("*.py"))
    for word in (r"\.post_norm\b", r"F\.normalize", r"\.temperature\(", r"\.q_bias\b", r"\.v_bias\b", r"\.norm3\b"):
        assert not re.search(word, source), word


def _logits_and_grads(model, x):
    model.train().zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["swin3d_t", "swinv2_3d_t"])
def test_a_model_change_made_once_reaches_the_fast_paths(name, monkeypatch):
    """Changing the cosine normalisation and the norm placement in the reference classes changes the
    accelerated model alike: its logits and gradients still equal the reference's."""
    normalize = F.normalize
    # The dot attention's q and k too: the reference says so once (qk_as_projected), the fast path follows.
    monkeypatch.setattr(WindowAttention, "qk_as_projected", lambda self: False)
    monkeypatch.setattr(WindowAttention, "scaled_qk", lambda self, q, k: (normalize(q, dim=-1) * 3.0, k, 0.5))
    monkeypatch.setattr(SwinBlock, "norms_around", lambda self, norm: (norm, norm))  # a norm both sides
    torch.manual_seed(0)
    ref = video_swin.create_model(name, **TINY)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = accelerate_cpu(copy.deepcopy(ref))
    x = torch.randn(2, 3, 4, 32, 32)
    (want, want_grads), (got, grads) = _logits_and_grads(ref, x), _logits_and_grads(fast, x)
    scale = want.abs().max()
    assert ((got - want).abs().max() / scale).item() < 1e-5
    for key, g in want_grads.items():
        if g is None:  # logit_scale: the changed normalisation has no temperature
            assert grads[key] is None, key
            continue
        assert ((grads[key] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() < 1e-4, key
    with torch.no_grad():
        assert torch.allclose(fast.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-6)
