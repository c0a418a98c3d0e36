"""The CPU profile: measured choices, cached per machine, applied by accelerate_cpu."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import video_swin
from video_swin.models.kernels import (
    accelerate_cpu,
    linear_backend,
    machine,
    reference,
)
from video_swin.models.kernels.linear import use_onednn
from video_swin.models.kernels.mlp import _fc1_gelu
from video_swin.models.kernels.switches import (
    ONEDNN_LINEAR,
    machine_choice,
    machine_choices,
    set_machine_choices,
)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEO_SWIN_CACHE", str(tmp_path))
    monkeypatch.setattr(machine, "_PROFILE", None)
    with machine_choices():  # accelerate_cpu in these tests sets them
        yield


def test_measured_profile_is_cached_on_disk(fresh, monkeypatch):
    first = machine.cpu_profile()
    assert first.fp32_gflops > 0 and first.bf16_gflops > 0 and first.cpu and first.linear in ("onednn", "aten")
    assert list((machine._cache_file().parent).glob("*.json"))
    monkeypatch.setattr(machine, "_PROFILE", None)
    monkeypatch.setattr(machine, "measure", lambda: pytest.fail("should come from the disk cache"))
    assert machine.cpu_profile() == first


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="needs oneDNN")
def test_choice_follows_the_measurement():
    assert machine.choose_linear(aten_s=1.0, onednn_s=0.8) == "onednn"
    assert machine.choose_linear(aten_s=0.8, onednn_s=1.0) == "aten"
    assert machine.choose_linear(aten_s=0.97, onednn_s=1.0) == "onednn"  # within 5%: keep oneDNN
    assert machine.choose_linear(aten_s=2.0, onednn_s=1.0, forced="aten") == "aten"
    assert machine.keep_unless_faster("fused", 1.0, "separate", 0.9) == "separate"
    assert machine.keep_unless_faster("fused", 1.0, "separate", 0.97) == "fused"


def test_profile_choices_reach_the_fast_paths(fresh, monkeypatch):
    profile = machine.cpu_profile()
    assert profile.weight_grad in ("onednn", "aten") and profile.fc1_gelu in ("fused", "separate")
    assert profile.bf16_attention in ("chunked", "flash")
    assert profile.weight_grad_speedup > 0 and profile.gelu_split_speedup > 0 and profile.bf16_flash_speedup > 0
    for weight_grad, fc1_gelu in (("aten", "fused"), ("onednn", "separate")):
        monkeypatch.setattr(machine, "_PROFILE", dataclasses.replace(profile, weight_grad=weight_grad,
                                                                     fc1_gelu=fc1_gelu))  # fmt: skip
        accelerate_cpu(torch.nn.Sequential())
        assert (machine_choice("weight_grad"), machine_choice("fc1_gelu")) == (weight_grad, fc1_gelu)
    with pytest.raises(ValueError, match="fc1_gelu must be one of"):
        set_machine_choices(fc1_gelu="tanh")


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="needs oneDNN")
def test_fused_and_separate_gelu_agree(fresh):
    torch.manual_seed(0)
    y, w, b = torch.randn(300, 48), torch.randn(192, 48), torch.randn(192)
    out = {}
    for choice in ("fused", "separate"):
        set_machine_choices(fc1_gelu=choice)
        out[choice] = _fc1_gelu(y, w, b, onednn=True)
    torch.testing.assert_close(out["separate"], out["fused"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["fused"], torch.nn.functional.gelu(y @ w.t() + b), rtol=1e-5, atol=1e-5)


def test_accelerate_cpu_applies_the_machine_choice_and_outputs_stay_equal(fresh, monkeypatch):
    torch.manual_seed(0)
    model = video_swin.create_model("swin3d_t", num_classes=5, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                    window_size=(2, 4, 4)).eval()  # fmt: skip
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = model(x)
    outputs = {}
    for choice in ("aten", "onednn"):
        profile = dataclasses.replace(machine.measure(reps=1), linear=choice)
        monkeypatch.setattr(machine, "_PROFILE", profile)
        accelerate_cpu(model)
        assert linear_backend() == (choice if ONEDNN_LINEAR else "aten")
        assert use_onednn(x) == (choice == "onednn" and ONEDNN_LINEAR)
        with torch.no_grad():
            outputs[choice] = model(x)
        reference(model)
    for out in outputs.values():
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_bf16_warning_only_without_bf16_hardware():
    base = machine.CpuProfile(cpu="X", capability="AVX2", bf16_native=False, threads=2, fp32_gflops=100.0,
                              bf16_gflops=10.0, onednn_speedup=1.2, linear="onednn")  # fmt: skip
    assert "10.0x slower" in machine.bf16_warning(base) and "mixed_precision=no" in machine.bf16_warning(base)
    assert machine.bf16_warning(dataclasses.replace(base, bf16_native=True, bf16_gflops=400.0)) is None


def test_processes_starting_together_share_one_measurement(fresh):
    # The processes of one run must make the same choice (their results would differ in the
    # last bits otherwise): one measures under a lock, the others read its result.
    import multiprocessing

    # spawn, not fork: a forked child of a process whose OpenMP pool has run can hang in its first GEMM
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        profiles = pool.map(_profile_in_child, range(3))
    assert profiles[0] == profiles[1] == profiles[2]
    assert len(list(machine._cache_file().parent.glob("*.json"))) == 1


def _profile_in_child(_: int) -> dict:
    machine._PROFILE = None
    return dataclasses.asdict(machine.cpu_profile())


def test_measuring_leaves_the_global_random_state_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    machine.measure(reps=1)
    assert torch.equal(torch.rand(4), expected)
