"""kill -9 at any step or in the middle of a save, then --resume: the run ends where an uninterrupted one does."""

from __future__ import annotations

import os
import random

import pytest
import torch
from safetensors.torch import load_file

from .conftest import RESUME_RUN, assert_same_training, metrics_rows, run_faulty, tiny_overrides

pytestmark = pytest.mark.slow


def kill_points(seed: int) -> list[int]:
    """Four random steps of the 12 (states every 3, 5 steps an epoch): before the first save,
    around the end of epoch 0, in the middle of epoch 1, in the last steps."""
    rng = random.Random(seed)
    return [rng.randint(1, 2), rng.randint(4, 6), rng.randint(7, 9), rng.randint(10, 12)]


def test_kill_at_random_steps_then_resume_gives_the_uninterrupted_run_bitwise(tiny_data, uninterrupted, tmp_path):
    seed = int(os.environ.get("VIDEO_SWIN_KILL_SEED", "0"))
    points = kill_points(seed)
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **RESUME_RUN)
    for i, step in enumerate(points):
        result = run_faulty(sets, f"kill_at_step:{step}", resume=i > 0, expect=-9)
        assert not (out / "model.safetensors").exists(), f"seed {seed}: the run ended before step {step}"
        done = [r["step"] for r in metrics_rows(out) if "loss" in r] if (out / "metrics.jsonl").exists() else []
        assert max(done, default=0) == step - 1, (seed, step, done, result.stderr[-2000:])
    run_faulty(sets, resume=True)
    assert_same_training(uninterrupted, out)


def test_kill_during_save_resumes_from_the_previous_complete_state(tiny_data, uninterrupted, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **RESUME_RUN)
    run_faulty(sets, "kill_in_save:6", expect=-9)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp_step_6", "step_3"]
    half = ckpts / ".tmp_step_6"
    assert (half / "model.safetensors").is_file() and not (half / "trainer_state.json").exists()
    result = run_faulty(sets, resume=True)
    err = result.stdout + result.stderr
    assert f"removing {half}: an interrupted save left it incomplete" in err
    assert f"resumed from {ckpts / 'step_3'} at step 3" in err
    assert not half.exists()
    assert_same_training(uninterrupted, out)


def test_disk_full_during_save_stops_with_one_line_and_keeps_earlier_states(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **{**RESUME_RUN, "train.keep_last": 1})
    result = run_faulty(sets, "oserror_in_save:6:ENOSPC", expect=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.stderr and len(errors) == 1
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert errors[0].startswith("error: could not save the training state of step 6") and "No space left" in errors[0]
    assert "step_3" in errors[0] and "--resume" in errors[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3"]  # nothing pruned, nothing half-written
    assert not (out / "model.safetensors").exists()


def test_a_save_failing_in_one_of_two_processes_stops_both(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **{**RESUME_RUN, "train.batch_size": 2, "data.num_workers": 0})
    result = run_faulty(sets, "oserror_in_save:6:ENOSPC:1", processes=2, expect=None, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: could not save")]
    # Both stop (none waits at a barrier); the launcher may end the second before it prints.
    assert errors, result.stderr[-3000:]
    for line in errors:
        assert "(writing in process 1): No space left on device [ENOSPC]" in line, line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3"]


def test_non_finite_losses_skip_steps_then_stop_with_the_last_state_intact(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **{**RESUME_RUN, "train.max_nonfinite_steps": 3})
    result = run_faulty(sets, "nan_loss:2-2,nan_loss:6-99", expect=1)
    text = result.stdout + result.stderr
    assert "step 2: non-finite loss, step skipped (1 in a row)" in text
    assert "step 7: non-finite loss, step skipped (2 in a row)" in text
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 3 optimizer steps in a row had a non-finite loss; stopping")
    rows = {r["step"]: r["nonfinite_steps"] for r in metrics_rows(out) if "loss" in r}
    assert rows == {1: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 3}  # step 8 raised before it was logged
    state = out / "checkpoints" / "step_6"
    weights = load_file(state / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())  # skipped steps never touch the weights
