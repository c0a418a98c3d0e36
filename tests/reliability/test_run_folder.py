"""One run per output_dir, resume checks, unreadable states and a really full disk (tmpfs)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.engine.conftest import REPO, tiny_overrides
from video_swin.engine import state as states
from video_swin.engine.run_dir import RunLock

SHORT = {"train.max_steps": 2, "train.save_every_steps": 1, "train.keep_last": 2, "eval.final": "false"}


def train(sets: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "video_swin.cli", "train", "--config", "demo.yaml", "--set", *sets, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's only ``error:`` line, which must also be the last line, with no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


def test_a_second_run_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tiny_data, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from video_swin.engine.run_dir import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = train(tiny_overrides(tiny_data, out, **SHORT))
        assert result.returncode == 2
        line = one_error_line(result)
        assert f"is in use by another run (host {socket.gethostname()}, pid {holder.pid}, since " in line
        assert not (out / "config.yaml").exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing anything: the next run takes the folder over.
    assert train(tiny_overrides(tiny_data, out, **SHORT)).returncode == 0
    lock = RunLock(out)
    lock.acquire()
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_a_folder_holding_a_run_needs_resume_or_overwrite_and_resume_checks_the_config(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **SHORT)
    assert train(sets).returncode == 0
    saved_config, saved_metrics = (out / "config.yaml").read_bytes(), (out / "metrics.jsonl").read_bytes()

    again = train(sets)
    assert again.returncode == 2
    assert "already holds a run" in one_error_line(again) and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert (out / "metrics.jsonl").read_bytes() == saved_metrics  # nothing deleted

    changed = train(tiny_overrides(tiny_data, out, **{**SHORT, "train.batch_size": 2, "optim.lr": 5e-4}), "--resume")
    assert changed.returncode == 2
    line = one_error_line(changed)
    assert "train.batch_size 4 -> 2" in line and "optim.lr 0.0003 -> 0.0005" in line
    assert line.endswith("--allow-changes train.batch_size optim.lr")
    assert (out / "config.yaml").read_bytes() == saved_config  # written only after the check

    # Safe changes pass with a note; a named change is accepted knowingly and the run goes on.
    more = train(tiny_overrides(tiny_data, out, **{**SHORT, "train.max_steps": 3, "data.num_workers": 1}),
                 "--resume", "--allow-changes", "train.max_steps")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "config changes accepted: data.num_workers 0 -> 1; train.max_steps 2 -> 3" in more.stdout
    assert "resumed from" in more.stdout and states.latest_state(out / "checkpoints").name == "step_3"

    replaced = train(sets, "--overwrite")
    assert replaced.returncode == 0 and "--overwrite: removing the previous run's files" in replaced.stdout
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_an_unreadable_newest_state_is_an_error_naming_the_one_before(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **SHORT)
    assert train(sets).returncode == 0
    metrics = (out / "metrics.jsonl").read_bytes()
    (out / "checkpoints" / "step_2" / "trainer_state.json").write_text('{"step": 2')  # torn
    result = train(sets, "--resume")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "step_2/trainer_state.json: the newest training state cannot be read" in line
    assert line.endswith(f"--resume {out / 'checkpoints' / 'step_1'}")
    assert (out / "metrics.jsonl").read_bytes() == metrics  # no silent fall-back that drops rows
    resumed = train(sets, "--resume", str(out / "checkpoints" / "step_1"))
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout and "at step 1" in resumed.stdout


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mounts tmpfs filesystems of a given size (root only); unmounted afterwards."""
    mounted = []

    def mount(size_bytes: int) -> Path:
        point = tmp_path / f"tmpfs_{uuid.uuid4().hex[:6]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.slow
def test_a_really_full_disk_during_a_save_gives_one_line_and_keeps_the_earlier_state(tiny_data, tmp_path,
                                                                                      small_tmpfs):
    # Measure a run folder after its first state, then give the real run a disk with room for it and half a state.
    probe = tmp_path / "probe"
    assert train(tiny_overrides(tiny_data, probe, **{**SHORT, "train.max_steps": 1})).returncode == 0
    state_bytes = sum(p.stat().st_size for p in (probe / "checkpoints" / "step_1").rglob("*") if p.is_file())
    used = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file() and p.name != "model.safetensors")
    disk = small_tmpfs(used + state_bytes // 2 + 64 * 1024)
    out = disk / "run"
    result = train(tiny_overrides(tiny_data, out, **{**SHORT, "train.max_steps": 3, "train.keep_last": 1}))
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("error: could not save the training state of step 2 (writing): ") and "step_1" in line
    # torch's writer reports a full disk as "unexpected pos"; the line says the disk is full either way
    assert "No space left on device" in line or "MiB free on that disk: it is full" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]  # no half-written folder
    assert states.latest_state(out / "checkpoints") == out / "checkpoints" / "step_1"
    shutil.rmtree(probe)
