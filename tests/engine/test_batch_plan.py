"""``train.batch_size: auto``: the memory planner's batch, accumulation and checkpointing for a global batch."""

import time

import pytest
import torch

from video_swin.cli import main
from video_swin.config import ConfigError, load_config
from video_swin.engine import batch_plan, trainer
from video_swin.engine.batch_plan import choose_batch, plan_batch, planner_for
from video_swin.engine.plan import GIB, HEADROOM, plan_memory

from .conftest import tiny_overrides

TINY_MODEL = ["data.clip_len=4", "data.crop_size=32", "data.train_short_side=36", "model.embed_dim=8",
              "model.depths=[1,1]", "model.num_heads=[1,2]", "model.window_size=[2,4,4]"]  # fmt: skip


class FakeAccelerator:
    """What plan_batch asks of an accelerator, for one process on a GPU that is not there."""

    num_processes, is_main_process, gradient_accumulation_steps = 1, True, 1
    device = torch.device("cuda", 0)

    def __init__(self):
        self.printed = []

    def print(self, line):
        self.printed.append(line)


def test_16_and_80_gib_gpus_get_the_planners_batch_and_keep_the_global_batch(monkeypatch, tmp_path):
    """The shipped recipe (swin3d_t, 32x224x224, fp16, 64 clips per step) on one GPU of 16 or 80 GiB."""
    cfg = load_config("finetune.yaml", ["data.root=unused", f"output_dir={tmp_path}"])
    chosen = {}
    for gib in (16, 80):
        monkeypatch.setattr(batch_plan, "free_memory_gib", lambda device, gib=gib: (gib, f"free memory of {device}"))
        accelerator = FakeAccelerator()
        resolved, plan = plan_batch(cfg, accelerator, resume=False)
        t = resolved.train
        assert t.batch_size * t.grad_accum_steps == plan.global_batch == 64  # one process
        assert accelerator.gradient_accumulation_steps == t.grad_accum_steps
        assert resolved.model.use_checkpoint is plan.use_checkpoint is False
        assert accelerator.printed == [plan.line()] and f"({gib:.2f} GiB, free memory of cuda:0)" in plan.line()
        chosen[gib] = t.batch_size, t.grad_accum_steps
    assert chosen == {16: (16, 4), 80: (64, 1)}
    # the planner itself (what `video-swin plan` prints): 16 clips fit 16 GiB and 32 do not; 64 fit 80 GiB
    rows = {(b, gib): plan_memory("swin3d_t", (32, 224, 224), batch=b, gpu_memory=gib, precision="bf16",
                                  checkpointing=(False,), drop_path_rate=0.1, head_dropout=0.5).rows[0]
            for b, gib in ((16, 16), (32, 16), (64, 80))}  # fmt: skip
    assert rows[16, 16].fits and not rows[32, 16].fits and rows[64, 80].fits


def tiny_peaks(processes=1):
    cfg = load_config("finetune.yaml", ["data.root=unused", "train.mixed_precision='no'", *TINY_MODEL])
    return planner_for(cfg, processes, torch.device("cpu"))


def usable_between(low, high):
    """A device size (GiB) whose usable part lies between two peaks (bytes)."""
    return (low + high) / 2 / (1 - HEADROOM) / GIB


def test_checkpointing_only_where_one_clip_does_not_fit_without_it():
    peaks = tiny_peaks()
    with_ckpt, without = peaks(1, True).peak, peaks(1, False).peak
    assert with_ckpt < without
    plan = choose_batch(peaks, global_batch=8, processes=1, memory_gib=usable_between(with_ckpt, without),
                        memory_source="test")  # fmt: skip
    assert plan.use_checkpoint and plan.batch_size * plan.grad_accum_steps == 8
    plan = choose_batch(peaks, global_batch=8, processes=1, memory_gib=usable_between(without, peaks(2, False).peak),
                        memory_source="test")  # fmt: skip
    assert (plan.batch_size, plan.grad_accum_steps, plan.use_checkpoint) == (1, 8, False)


def test_a_global_batch_the_processes_do_not_divide_trains_the_nearest_below():
    plan = choose_batch(tiny_peaks(3), global_batch=64, processes=3, memory_gib=64.0, memory_source="test")
    assert plan.global_batch == 63 == plan.batch_size * 3 * plan.grad_accum_steps and plan.batch_size == 21
    assert "train.global_batch 64 is not a multiple of 3 processes" in plan.line()
    with pytest.raises(ConfigError, match="train.global_batch: 2 clips cannot be shared by 3 processes"):
        choose_batch(tiny_peaks(3), global_batch=2, processes=3, memory_gib=64.0, memory_source="test")


def test_one_clip_too_large_is_a_one_line_error_before_the_model_is_built(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batch_plan, "free_memory_gib", lambda device: (1e-4, "available RAM"))
    monkeypatch.setattr(trainer, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **{"train.batch_size": "auto", "train.global_batch": 8})
    assert main(["train", "--config", "demo.yaml", "--set", *sets]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.batch_size auto: one clip (4x32x32, swin3d_t, fp32) needs")
    assert err.count("\n") == 1
    assert "even with activation checkpointing, more than the 0.0 GiB usable of 0.0 GiB (available RAM)" in err
    assert not out.exists()  # refused before the run folder, the data and the model


def test_planning_a_tiny_model_is_quick():
    batch_plan._ROWS.clear()
    start = time.perf_counter()
    plan = choose_batch(tiny_peaks(), global_batch=64, processes=1, memory_gib=16.0, memory_source="test")
    seconds = time.perf_counter() - start
    assert (plan.batch_size, plan.grad_accum_steps) == (64, 1)
    assert seconds < 8, seconds  # 4 fake-tensor traces: about 2 s on 2 busy cores, mostly FakeTensor dispatch


@pytest.mark.parametrize("sets, message", [
    (["train.batch_size=auto"], "train.batch_size: auto needs train.global_batch"),
    (["train.batch_size=auto", "train.global_batch=0"], "train.global_batch: must be > 0"),
    (["train.batch_size=0"], "train.batch_size: must be > 0"),
    (["train.batch_size=many"], "train.batch_size: must be int or one of ['auto']"),
    (["train.memory=0"], "train.memory: must be a size in GiB > 0"),
    (["data.val_fraction=1.0"], "data.val_fraction: must be in (0, 1)"),
])  # fmt: skip
def test_config_mistakes_name_the_key(sets, message):
    with pytest.raises(ConfigError) as e:
        load_config("demo.yaml", sets)
    assert message in str(e.value)
