"""The memory planner: traced peaks against peaks measured on the CPU allocator, and the plan's arithmetic.

Measuring: the PyTorch profiler with ``profile_memory=True`` receives every
allocation and free of c10's CPU allocator (the one all CPU tensors come
from) with its size; the running sum of those sizes, in time order, is the
live tensor memory, and its maximum the step's peak above what existed
before. This is the allocator itself, independent of the planner's
dispatch-level bookkeeping on fake tensors.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import video_swin
from video_swin.cli import main
from video_swin.engine.plan import GIB, plan_memory, trace_step

TINY = {"num_classes": 10, "drop_path_rate": 0.1, "head_dropout": 0.0}
# fmt: off
CASES = {
    # V2 with a main-branch norm in every block, maps padded to windows (24 and 12 to multiples of 5)
    "v2": ("swinv2_3d_t", {"embed_dim": 48, "depths": (2, 2), "num_heads": (2, 4), "window_size": (4, 5, 5),
                           "extra_norm_period": 1}, (1, 3, 8, 96, 96)),
    "v1": ("swin3d_t", {"embed_dim": 32, "depths": (2, 4), "num_heads": (2, 4), "window_size": (2, 7, 7)},
           (2, 3, 8, 56, 56)),
    "2d": ("swinv2_t", {"embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4), "window_size": (8, 8)},
           (4, 3, 128, 128)),
}
# fmt: on


def allocated_peak(fn):
    """Peak bytes above the start that c10's CPU allocator handed out while ``fn`` ran (see the module docstring)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())  # fmt: skip
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def measured_step(name, overrides, shape, freeze_bias=False):
    """Peak of a real CPU training step (forward, backward, AdamW, zero_grad) above params, states and input."""
    torch.manual_seed(0)
    model = video_swin.create_model(name, **{**TINY, **overrides}).train()
    if freeze_bias:
        frozen = [p for n, p in model.named_parameters() if "cpb_mlp" in n or "relative_position_bias" in n]
        for p in frozen:
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))

    def step():
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW states and the model's mask caches exist from here on, as in a running training
    return allocated_peak(step), x.nbytes


@pytest.mark.parametrize("case", list(CASES))
def test_planned_peak_within_15_percent_of_measured(case):
    name, overrides, shape = CASES[case]
    plan = plan_memory(name, shape[2:], batch=shape[0], precision="fp32", attention="cpu", **TINY, **overrides)
    for checkpointing in (False, True):
        measured, input_bytes = measured_step(name, {**overrides, "use_checkpoint": checkpointing}, shape)
        # One device: no DDP buckets. What the planner adds above parameters and AdamW states is what
        # was measured; the input clip, which the trace allocates itself, counts in neither.
        row = next(r for r in plan.rows if r.strategy == "DDP" and r.checkpointing == checkpointing)
        planned = row.peak - row.params - row.optimizer - input_bytes
        assert abs(planned / measured - 1) < 0.15, (checkpointing, planned, measured)
        assert row.activations > 2 * row.params  # activation-bound models: the check is about activations


def test_fused_attention_stand_in_keeps_what_a_fused_kernel_keeps():
    """With the position bias frozen, the CPU runs PyTorch's fused (flash) attention kernel: the stand-in must agree.

    The planner's default, ``attention="fused"``, replaces attention by a stand-in
    keeping what a fused kernel keeps for backward. The CPU's flash kernel keeps
    the same tensors, but takes no learnable bias, hence the frozen bias here.
    """
    name, overrides, shape = CASES["v2"]
    measured, input_bytes = measured_step(name, overrides, shape, freeze_bias=True)
    trace = trace_step(_meta(name, overrides, frozen=True), shape, attention="fused")
    trainable = sum(p.numel() for p in _meta(name, overrides, frozen=True).parameters() if p.requires_grad)
    planned = trace.peak(4 * trainable) - input_bytes
    assert abs(planned / measured - 1) < 0.15, (planned, measured)
    # PyTorch's own flash kernel, traced on fake tensors, keeps what the stand-in keeps ...
    flash = trace_step(_meta(name, overrides, frozen=True), shape, attention="cpu")
    assert abs(flash.activations() / trace.activations() - 1) < 0.02
    # ... and the math path, which the CPU takes while the bias learns, keeps far more.
    assert trace_step(_meta(name, overrides), shape, attention="cpu").activations() > 1.1 * trace.activations()


def _meta(name, overrides, frozen=False):
    """The model on the meta device; ``frozen``: its V2 position-bias MLPs take no gradient."""
    with torch.device("meta"):
        model = video_swin.create_model(name, **{**TINY, **overrides})
    for n, p in model.named_parameters():
        if frozen and "cpb_mlp" in n:
            p.requires_grad_(False)
    return model


def test_bf16_autocast_within_15_percent_of_measured():
    name, overrides, shape = CASES["v1"]
    torch.manual_seed(0)
    model = video_swin.create_model(name, **{**TINY, **overrides}).train()
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        model.zero_grad(set_to_none=True)

    step()
    measured = allocated_peak(step)
    params = sum(p.numel() for p in model.parameters())
    trace = trace_step(_meta(name, overrides), shape, precision="bf16", attention="cpu")
    planned = trace.peak(4 * params) - x.nbytes
    assert abs(planned / measured - 1) < 0.15, (planned, measured)


def test_plan_rows_shard_and_checkpointing_saves():
    plan = plan_memory("swinv2_3d_t", (8, 64, 64), gpus=4, gpu_memory=1.0, batch=2, embed_dim=32,
                       depths=(2, 2), num_heads=(2, 4))  # fmt: skip
    rows = {r.name: r for r in plan.rows}
    assert list(rows) == ["DDP", "DDP + checkpointing", "FSDP", "FSDP + checkpointing"]
    ddp, fsdp = rows["DDP"], rows["FSDP"]
    assert fsdp.params * 4 == ddp.params and fsdp.optimizer * 4 == ddp.optimizer == 2 * ddp.params
    assert ddp.buffers == ddp.params  # DDP's buckets: one more copy of the gradients
    assert rows["DDP + checkpointing"].activations < ddp.activations / 2
    assert rows["FSDP + checkpointing"].peak < fsdp.peak < ddp.peak
    assert all(r.fits == (r.peak <= 0.9 * GIB) for r in plan.rows)


def test_plan_command(capsys):
    args = ["plan", "--model", "swinv2_3d_t", "--clip", "8x64x64", "--gpus", "2", "--gpu-memory", "16",
            "--precision", "fp32"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "swinv2_3d_t" in out and "2 GPUs of 16 GiB" in out
    for row in ("DDP", "DDP + checkpointing", "FSDP", "FSDP + checkpointing"):
        assert any(line.startswith(row + " ") and line.endswith("yes") for line in out.splitlines()), row


@pytest.mark.parametrize("args, message", [
    (["--model", "swinv2_3d_t", "--clip", "224x224"], "TxHxW"),
    (["--model", "swinv2_3d_x", "--clip", "8x64x64"], "swinv2_3d_x"),
    (["--model", "swinv2_3d_t", "--clip", "8x64x64", "--gpus", "0"], "gpus"),
    (["--model", "swinv2_3d_t", "--clip", "8by64"], "--clip"),
])  # fmt: skip
def test_plan_command_mistakes_are_one_line(args, message, capsys):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
