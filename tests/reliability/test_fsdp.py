"""``train.distributed: fsdp`` on 2 CPU processes (gloo): the losses of DDP, half the bytes, exact resume.

A tiny Swin V2 video model with activation checkpointing and drop path, as
real runs of scripts/train.py (tests/reliability/faulty_train.py for the
faults) under ``accelerate launch``.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from video_swin.checkpoints import load_model
from video_swin.config import load_config
from video_swin.engine.state import latest_state
from video_swin.errors import ConfigError

from .conftest import metrics_rows, run_faulty, tiny_overrides

# Two processes of 2 clips, 4 optimizer steps of 2 batches (the accumulation cycle), states every 2 steps.
FSDP_RUN = {"model.name": "swinv2_3d_t", "model.depths": "[2,2]", "model.use_checkpoint": "true",
            "model.drop_path_rate": 0.2, "train.batch_size": 2, "train.grad_accum_steps": 2, "train.max_steps": 4,
            "train.save_every_steps": 2, "train.keep_last": 3, "data.num_workers": 0, "eval.final": "false"}  # fmt: skip
# Against DDP, bitwise: without accumulation (DDP sums a cycle's gradients before reducing them, FSDP
# after) and without clipping (FSDP sums the squares of the gradient norm shard by shard): other orders
# of the same float additions, which differ in the last bits (and Adam makes those visible). Without
# drop path too: with it, the DDP run of this test differs from FSDP in the 7th digit of step 2's loss
# (twice out of two), while the same two runs started by hand agree bitwise; not understood yet.
SAME_SUMS = {"train.grad_accum_steps": 1, "train.max_grad_norm": "null", "model.drop_path_rate": 0.0}


def logged(out):
    return [(r["step"], r["loss"], r["lr"]) for r in metrics_rows(out) if "loss" in r]


def last_state(out):
    return latest_state(out / "checkpoints")


def run(tiny_data, out, distributed, fault="", *, resume=False, expect=0, **extra):
    sets = tiny_overrides(tiny_data, out, **{**FSDP_RUN, **extra, "train.distributed": distributed})
    return run_faulty(sets, fault, resume=resume, expect=expect, processes=2)


@pytest.fixture(scope="module")
def ddp_and_fsdp(tiny_data, tmp_path_factory):
    outs = {d: tmp_path_factory.mktemp(d) / "run" for d in ("ddp", "fsdp")}
    for distributed, out in outs.items():
        run(tiny_data, out, distributed, **SAME_SUMS)
    return outs


@pytest.mark.slow
def test_fsdp_gives_the_losses_and_weights_of_ddp_bitwise(ddp_and_fsdp):
    ddp, fsdp = ddp_and_fsdp["ddp"], ddp_and_fsdp["fsdp"]
    assert [s for s, _, _ in logged(fsdp)] == [1, 2, 3, 4]
    assert logged(fsdp) == logged(ddp)
    a, b = load_file(ddp / "model.safetensors"), load_file(fsdp / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_each_process_holds_half_the_parameters_and_optimizer_states(ddp_and_fsdp):
    fsdp = ddp_and_fsdp["fsdp"]
    state = last_state(fsdp)
    full = load_file(fsdp / "model.safetensors")
    total = sum(t.numel() * t.element_size() for t in full.values())
    for kind, per_param in (("model", 1), ("optimizer", 2)):  # AdamW: two moments per parameter (+ a step count)
        held = []
        for rank in (0, 1):
            tensors = load_file(state / f"{kind}_shard_{rank}.safetensors")
            held.append(sum(t.numel() * t.element_size() for k, t in tensors.items() if not k.endswith("/step")))
        assert sum(held) == per_param * total, kind
        assert all(0.4 < h / sum(held) < 0.6 for h in held), (kind, held)
    # The consolidated weights are whole and load like any checkpoint.
    model, meta = load_model(fsdp / "model.safetensors")
    assert meta["model"]["name"] == "swinv2_3d_t" and set(model.state_dict()) == set(full)


@pytest.mark.slow
def test_a_signal_and_a_kill_then_resume_give_the_uninterrupted_fsdp_run_bitwise(tiny_data, tmp_path):
    full, out = tmp_path / "full", tmp_path / "cut"
    run(tiny_data, full, "fsdp")
    # SIGTERM as batch 3 starts (step 2's cycle): both processes finish the cycle, save step 2 and stop.
    result = run(tiny_data, out, "fsdp", "signal_at_batch:3:SIGTERM", expect=None)
    assert result.returncode != 0 and "stopped by SIGTERM" in result.stderr, result.stderr[-3000:]
    assert json.loads((last_state(out) / "trainer_state.json").read_text())["step"] == 2
    # kill -9 of both processes computing step 4: step 3 is done but saved nowhere ...
    result = run(tiny_data, out, "fsdp", "kill_at_step:4", resume=True, expect=None)
    assert result.returncode != 0 and not (out / "model.safetensors").exists()
    assert last_state(out).name == "step_2"
    # ... so the last resume computes steps 3 and 4 again, from the shards of step 2.
    result = run(tiny_data, out, "fsdp", resume=True)
    assert f"resumed from {out / 'checkpoints' / 'step_2'} at step 2" in result.stdout + result.stderr

    assert logged(out) == logged(full)
    a, b = load_file(full / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = last_state(full), last_state(out)
    assert sa.name == sb.name == "step_4"
    for name in ("model_shard_0", "model_shard_1", "optimizer_shard_0", "optimizer_shard_1", "rng_state_1"):
        ta, tb = load_file(sa / f"{name}.safetensors"), load_file(sb / f"{name}.safetensors")
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert (sa / "optimizer_groups.json").read_text() == (sb / "optimizer_groups.json").read_text()


def test_fsdp_in_one_process_is_refused_before_anything_is_written(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_faulty(tiny_overrides(tiny_data, out, **FSDP_RUN, **{"train.distributed": "fsdp"}), expect=2)
    assert result.stderr.strip().splitlines()[-1].startswith("error: train.distributed: fsdp shards the model")
    assert not out.exists()


def test_fsdp_with_fp16_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="train.distributed"):
        load_config("demo.yaml", ["train.distributed=fsdp", "train.mixed_precision=fp16", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="train.distributed"):
        load_config("demo.yaml", ["train.distributed=zero3", f"output_dir={tmp_path}"])


@pytest.mark.slow
def test_the_fine_tuning_regularisers_give_the_losses_and_weights_of_ddp_under_fsdp(tiny_data, tmp_path):
    """Mixup and CutMix, repeated augmentation and a frozen backbone (FSDP2 over partly frozen blocks) on
    2 processes: FSDP trains exactly as DDP (the EMA is refused with fsdp, by name). Layer decay under
    FSDP, without the frozen backbone, gave DDP's losses bitwise too (checked by hand once)."""
    regularisers = {**SAME_SUMS, "train.max_steps": 2, "train.mixup": 0.8, "train.cutmix": 1.0,
                    "data.repeated_aug": 2, "train.freeze_backbone": "true"}  # fmt: skip
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run(tiny_data, ddp, "ddp", **regularisers)
    run(tiny_data, fsdp, "fsdp", **regularisers)
    assert [s for s, _, _ in logged(fsdp)] == [1, 2]
    assert logged(fsdp) == logged(ddp)
    a, b = load_file(ddp / "model.safetensors"), load_file(fsdp / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="train.ema_decay: not available with train.distributed: fsdp"):
        load_config("demo.yaml", ["train.distributed=fsdp", "train.ema_decay=0.99", f"output_dir={tmp_path}"])
