"""Resumable states on disk: half-written folders are never picked, failed saves prune nothing."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from video_swin.engine import ResumeError, TrainingError
from video_swin.engine import state as states


def _state(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / states.TRAINER_STATE).write_text(json.dumps({"step": step}))
    return folder


def test_only_complete_states_are_picked_and_leftovers_are_logged(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    _state(ckpts / "step_2", 2)
    (ckpts / ".tmp_step_4").mkdir()  # killed while writing: no trainer_state.json yet
    (ckpts / ".tmp_step_4" / "model.safetensors").write_bytes(b"\0" * 10)
    _state(ckpts / ".old_step_6", 6)  # set aside while re-saving a step
    (ckpts / "step_8").mkdir()  # not written by us / emptied
    _state(ckpts / "step_10", 10)
    (ckpts / "step_10" / states.TRAINER_STATE).write_text('{"step": 1')  # torn JSON
    # The newest state is unreadable: an error naming it and the readable one before, never a silent fall-back.
    with pytest.raises(ResumeError, match=r"step_10/trainer_state.json: the newest training state cannot be read "
                                          r"\(JSONDecodeError.*--resume \S*step_2$"):
        states.latest_state(ckpts)
    shutil.rmtree(ckpts / "step_10")
    (ckpts / "step_8").rename(ckpts / "step_1")  # an unreadable state older than the newest readable one
    with caplog.at_level(logging.INFO, logger="video_swin.engine.state"):
        assert states.latest_state(ckpts) == ckpts / "step_2"
    logged = caplog.text
    assert "ignoring incomplete state" in logged and ".tmp_step_4" in logged
    assert "ignoring unreadable state" in logged and "step_1" in logged
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="video_swin.engine.state"):
        removed = states.remove_incomplete(ckpts)
    assert [p.name for p in removed] == [".old_step_6", ".tmp_step_4"]
    assert sum("interrupted save" in r.getMessage() for r in caplog.records) == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_1", "step_2"]  # others untouched


@pytest.fixture
def prepared(tmp_path):
    """A prepared accelerator, model and optimizer after one step, and the counters of step 2."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return accelerator, model, {"step": 2, "epoch": 0, "batches_in_epoch": 2, "nonfinite_steps": 0}


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "somewhere")

    return fail


@pytest.mark.parametrize("phase", ["mkdir", "save_state", "rng", "trainer_state", "rename"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_save_raises_one_line_and_prunes_nothing(prepared, tmp_path, monkeypatch, phase, code):
    accelerator, model, counters = prepared
    ckpts = tmp_path / "checkpoints"
    first = states.save_state(accelerator, ckpts, counters, keep_last=1)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    targets = {
        "mkdir": (Path, "mkdir"),
        "save_state": (accelerator, "save_state"),
        "rng": (states, "save_file"),
        "trainer_state": (Path, "write_text"),
        "rename": (Path, "rename"),
    }
    monkeypatch.setattr(*targets[phase], _fail_with(code))
    with pytest.raises(TrainingError) as info:
        states.save_state(accelerator, ckpts, {**counters, "step": 4}, keep_last=1)
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and message.startswith("could not save the training state of step 4")
    assert f"{os.strerror(code)} [{errno.errorcode[code]}] (somewhere)" in message
    assert f"earlier states are kept (step_2 in {ckpts})" in message
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2"]  # no half-written folder, step_2 not pruned
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert states.latest_state(ckpts) == first


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_checkpoints_folder_stops_the_save(prepared, tmp_path):
    accelerator, model, counters = prepared
    ckpts = tmp_path / "checkpoints"
    states.save_state(accelerator, ckpts, counters, keep_last=1)
    ckpts.chmod(0o555)
    try:
        with pytest.raises(TrainingError, match="Permission denied|Read-only"):
            states.save_state(accelerator, ckpts, {**counters, "step": 4}, keep_last=1)
    finally:
        ckpts.chmod(0o755)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2"]


def test_a_saved_state_restores_exactly(prepared, tmp_path):
    accelerator, model, counters = prepared
    folder = states.save_state(accelerator, tmp_path / "checkpoints", counters, keep_last=2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.rand(5)
    assert states.load_state(accelerator, folder) == counters
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    shutil.rmtree(folder)
