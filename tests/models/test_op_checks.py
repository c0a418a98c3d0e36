"""The private ops of the CPU fast paths are checked once: a missing or wrong one turns its path off, one line each."""

import copy
import logging
import types

import pytest
import torch

import video_swin
from video_swin.models.kernels import accelerate_cpu, checks
from video_swin.models.kernels import attention as fused_attention

TINY = dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2), num_classes=5, head_dropout=0.0, drop_path_rate=0.0,
            window_size=(2, 4, 4))
LOGGER = checks.__name__


@pytest.fixture
def fresh_checks():
    """Verdicts computed anew in the test, and again after it (with torch as it really is)."""
    checks._VERDICTS.clear()
    yield
    checks._VERDICTS.clear()


def logits_and_grads(model, x):
    model.train().zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def rel_diff(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


class _WrongSoftmax:
    """``aten._softmax`` whose ``.out`` overload writes a result 10% off (as a changed kernel might)."""

    def __init__(self, real):
        self.real = real

    def out(self, *args, **kwargs):
        return self.real.out(*args, **kwargs).mul_(1.1)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_all_paths_pass_on_this_torch(fresh_checks, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        verdicts = checks.check_ops()
    assert set(verdicts) == set(checks.PATHS)
    if torch.backends.mkldnn.is_available():
        assert verdicts == dict.fromkeys(checks.PATHS), verdicts
    assert not caplog.records


def test_missing_and_wrong_ops_turn_their_paths_off(fresh_checks, monkeypatch, caplog):
    torch.manual_seed(0)
    ref = video_swin.create_model("swin3d_t", **TINY)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 4, 32, 32)
    want = logits_and_grads(ref, x)

    # oneDNN's linear op gone (a torch without it, or renamed), and the softmax the attention
    # kernel calls computing something else.
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
    monkeypatch.setattr(torch.ops.aten, "_softmax", _WrongSoftmax(torch.ops.aten._softmax))
    flash_calls = []
    flash = fused_attention.flash_forward
    monkeypatch.setattr(fused_attention, "flash_forward", lambda *a: flash_calls.append(1) or flash(*a))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fast = accelerate_cpu(copy.deepcopy(ref))
        got = logits_and_grads(fast, x)
        logits_and_grads(fast, x)  # a second step: nothing checked or logged again

    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 2, lines
    linear_line = next(line for line in lines if "'linear'" in line)
    attention_line = next(line for line in lines if "'attention'" in line)
    assert "mkldnn._linear_pointwise" in linear_line and "AttributeError" in linear_line
    assert "aten._softmax.out" in attention_line and "differs from the reference" in attention_line
    verdicts = checks.check_ops()
    assert verdicts["linear"] and verdicts["attention"] and verdicts["fc1_gelu_fused"]
    assert verdicts["mlp"] is None  # its ops are fine: that path still runs
    assert not flash_calls  # the attention fast path did not run

    assert rel_diff(got[0], want[0]) < 1e-5  # the reference's logits and gradients, as tests/models/test_seam.py
    for key, g in want[1].items():
        assert rel_diff(got[1][key], g) < 1e-4, key


def test_flash_kernel_with_new_arguments_is_off(fresh_checks, monkeypatch, caplog):
    """An op whose signature changed (TypeError/RuntimeError on the old call) counts as unusable, never raises."""

    def changed(*args, **kwargs):
        raise RuntimeError("_scaled_dot_product_flash_attention_for_cpu() got an unexpected keyword 'attn_mask'")

    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", changed)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert not checks.usable("attention")
        assert checks.usable("mlp")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "_scaled_dot_product_flash_attention_for_cpu" in line and "RuntimeError" in line
    assert fused_attention.fused_dtype(torch.zeros(1)) is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the per-device functions, called on a newer torch
@pytest.mark.parametrize("by_device", [True, False])  # torch >= 2.4 asks autocast by device type; older ones per device
def test_autocast_dtype_on_either_torch_api(by_device, monkeypatch):
    from video_swin.models.kernels import switches

    if by_device and not hasattr(torch, "get_autocast_dtype"):
        pytest.skip("this torch has no autocast API by device type")
    monkeypatch.setattr(switches, "_AUTOCAST_BY_DEVICE", by_device)
    assert switches.autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert switches.autocast_dtype("cpu") == torch.bfloat16
        assert switches.autocast_dtype("cuda") is None
        assert switches.cpu_compute_dtype(torch.zeros(1)) == torch.bfloat16


class _Scaled:
    """An op packet whose every call (and ``.out``) gives 1.5x its real result: a kernel that changed its meaning."""

    def __init__(self, real):
        self.real = real

    def __call__(self, *args, **kwargs):
        return self.real(*args, **kwargs) * 1.5

    def out(self, *args, **kwargs):
        return self.real.out(*args, **kwargs).mul_(1.5)


@pytest.mark.parametrize("op, path", [("_softmax_backward_data", "attention"), ("gelu_backward", "mlp"),
                                      ("native_layer_norm_backward", "mlp")])  # fmt: skip
def test_wrong_backward_ops_are_caught(op, path, fresh_checks, monkeypatch, caplog):
    real = getattr(torch.ops.aten, op)
    if op == "native_layer_norm_backward":
        monkeypatch.setattr(torch.ops.aten, op, lambda *a: tuple(t * 1.5 for t in real(*a)))
    else:
        monkeypatch.setattr(torch.ops.aten, op, _Scaled(real))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert not checks.usable(path)
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"aten.{op}" in line and "differs from the reference" in line
