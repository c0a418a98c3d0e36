"""Preemption: SIGTERM, SIGINT and SIGUSR1 save the step they arrive in and stop; elastic restarts resume by themselves.

The signals are real: the training process sends one to itself at a chosen
batch (``signal_at_batch`` in faulty_train.py), and ``kill -9`` of one of two
processes is a real SIGKILL under ``torchrun --max-restarts``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from video_swin.cli import main as cli_main
from video_swin.engine.state import latest_state
from video_swin.errors import Preempted

from .conftest import (
    FAULTY_TRAIN,
    REPO,
    RESUME_RUN,
    assert_same_training,
    metrics_rows,
    run_faulty,
    tiny_overrides,
)

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# Two processes of 2 clips (the global batch of RESUME_RUN), without DataLoader workers on 2 cores.
TWO_PROCESSES = {**RESUME_RUN, "train.batch_size": 2, "data.num_workers": 0}


def saved_line(signame: str, step: int, process: int | None = None) -> str:
    by = f" (process {process})" if process is not None else ""
    return f"stopped by {signame}{by}: saved step {step}; continue with --resume"


def logged_steps(out: Path) -> list[int]:
    return [r["step"] for r in metrics_rows(out) if "loss" in r]


def state_step(out: Path) -> int:
    folder = latest_state(out / "checkpoints")
    return json.loads((folder / "trainer_state.json").read_text())["step"]


def torchrun(sets, fault="", *, resume=None, max_restarts=0, timeout=600):
    """faulty_train.py on 2 CPU processes under torchrun (an elastic agent), ``--resume [auto]`` if given."""
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", str(max_restarts),
           "--monitor-interval", "0.2", str(FAULTY_TRAIN), "--config", "demo.yaml", "--set", *sets]  # fmt: skip
    if resume is not None:
        cmd += ["--resume"] + ([] if resume is True else [resume])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "VIDEO_SWIN_FAULT": fault}
    # A session of its own, so that a timeout ends torchrun's workers too, not only torchrun.
    with subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # torchrun starts each worker in a session of its own: end them by pid, or they keep the pipes open.
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"torchrun still running after {timeout} s\n{stdout[-3000:]}\n{stderr[-5000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


# -- the handlers alone: real signals to a small process --------------------------------------------

HANDLERS = textwrap.dedent("""
    import os, signal, sys, time
    from video_swin.engine import preemption

    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    with preemption.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.signum == signal.SIGTERM, stop.signum
        os.kill(os.getpid(), signal.SIGINT)  # a launcher's copy, at once: the same request
        time.sleep(0.05)
        pid = os.fork()
        if pid == 0:  # a forked DataLoader worker inherits the handler and ignores the signal
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        if sys.argv[1] == "twice":
            time.sleep(preemption.REPEAT_WINDOW_S + 0.1)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(10)
            sys.exit(99)
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
    print("handlers restored")
""")


@pytest.mark.parametrize("mode", ["once", "twice"])
def test_a_signal_is_remembered_a_repeat_ignored_a_second_one_exits_at_once(mode):
    result = subprocess.run([sys.executable, "-c", HANDLERS, mode], cwd=REPO, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    received = "received SIGTERM: saving a state after the current optimizer step"
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(received), explain(result)
    if mode == "once":
        assert result.returncode == 0 and result.stdout.strip() == "handlers restored", explain(result)
        assert len(lines) == 1
    else:
        assert result.returncode == 128 + signal.SIGUSR1, explain(result)
        assert lines[1:] == ["received SIGUSR1 again: stopping now, without saving"]


def test_the_command_maps_a_preemption_to_one_line_and_128_plus_the_signal(monkeypatch, capsys, tmp_path):
    import video_swin.engine

    calls = []

    def train(cfg, resume=False, **options):
        calls.append(resume)
        raise Preempted(7, signal.SIGTERM)

    monkeypatch.setattr(video_swin.engine, "train", train)
    base = ["train", "--config", "demo.yaml", "--set", f"output_dir={tmp_path}"]
    for extra, resume in (([], False), (["--resume"], True), (["--resume", "auto"], "auto")):
        assert cli_main([*base, *extra]) == 143
        assert calls.pop() == resume
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [saved_line("SIGTERM", 7)]
    assert Preempted(3, signal.SIGINT).exit_code == 130 and Preempted(3, signal.SIGUSR1).exit_code == 138
    assert str(Preempted(3, signal.SIGUSR1, 1)) == saved_line("SIGUSR1", 3, 1)


# -- whole runs ---------------------------------------------------------------------------------


def signal_points(seed: int) -> list[tuple[str, int]]:
    """SIGTERM, SIGINT and SIGUSR1 at three random steps of the 12 (states every 3, 5 steps an epoch):
    before or after the first save in epoch 0, then in epoch 1, then in the last steps."""
    rng = random.Random(seed)
    return [("SIGTERM", rng.choice([1, 2, 4, 5])), ("SIGINT", rng.randint(6, 8)), ("SIGUSR1", rng.randint(9, 11))]


@pytest.mark.slow
def test_signals_save_the_step_they_arrive_in_and_resume_gives_the_uninterrupted_run_bitwise(
        tiny_data, uninterrupted, tmp_path):  # fmt: skip
    seed = int(os.environ.get("VIDEO_SWIN_SIGNAL_SEED", "0"))
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **RESUME_RUN)
    for i, (name, step) in enumerate(signal_points(seed)):
        signum = getattr(signal, name)
        result = run_faulty(sets, f"signal_at_batch:{step}:{name}", resume=i > 0, expect=128 + signum)
        err = result.stderr.strip().splitlines()
        assert err[-1] == saved_line(name, step), (seed, name, step, result.stderr[-3000:])
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
        assert state_step(out) == step and max(logged_steps(out)) == step  # nothing since the signal is lost
        assert not (out / "model.safetensors").exists()
    run_faulty(sets, resume=True)
    assert_same_training(uninterrupted, out)


@pytest.mark.slow
def test_a_signal_in_an_accumulation_cycle_saves_at_its_end_and_resumes_exactly(tiny_data, tmp_path):
    extra = {**RESUME_RUN, "train.grad_accum_steps": 2, "train.max_steps": 4}
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_faulty(tiny_overrides(tiny_data, full, **extra))
    sets = tiny_overrides(tiny_data, cut, **extra)
    result = run_faulty(sets, "signal_at_batch:3:SIGINT", expect=130)  # the first batch of step 2's cycle
    assert result.stderr.strip().splitlines()[-1] == saved_line("SIGINT", 2)
    counters = json.loads((latest_state(cut / "checkpoints") / "trainer_state.json").read_text())
    assert counters["step"] == 2 and counters["batches_in_epoch"] == 4
    run_faulty(sets, resume=True)
    assert_same_training(full, cut)


@pytest.mark.slow
def test_a_second_signal_stops_at_once_without_saving(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **RESUME_RUN)
    result = run_faulty(sets, "signal_at_batch:5:SIGTERM,signal_in_save:5:SIGTERM", expect=143)
    assert result.stderr.strip().splitlines()[-1] == "received SIGTERM again: stopping now, without saving"
    assert "saved step" not in result.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [".tmp_step_5", "step_3"]
    assert state_step(out) == 3  # the half-written state is never picked


@pytest.fixture(scope="module")
def uninterrupted_two(tiny_data, tmp_path_factory):
    """TWO_PROCESSES under torchrun, start to end without a fault."""
    out = tmp_path_factory.mktemp("uninterrupted_two") / "run"
    result = torchrun(tiny_overrides(tiny_data, out, **TWO_PROCESSES))
    assert result.returncode == 0, explain(result)
    return out


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(tiny_data, uninterrupted_two, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **TWO_PROCESSES)
    # Step 8 is mid-epoch: the resumed process skips 3 batches of epoch 1, which must keep epoch 1's order.
    result = torchrun(sets, "signal_at_batch:8:SIGTERM:1")
    assert result.returncode != 0
    assert saved_line("SIGTERM", 8, 1) in result.stderr, explain(result)
    # Process 0 never received the signal and stopped all the same; the launcher, seeing process 1
    # exit, sends it SIGTERM, which may end it after its save and before its line.
    assert (saved_line("SIGTERM", 8, 0) in result.stderr
            or "Signal 15 (SIGTERM) received by PID" in result.stderr), explain(result)  # fmt: skip
    tracebacks = result.stderr.split("Traceback (most recent call last):")[1:]
    assert all(t.lstrip().startswith(f'File "{TORCHRUN}"') for t in tracebacks)  # only the launcher's report
    state = latest_state(out / "checkpoints")
    assert state.name == "step_8" and {"rng_state_0.safetensors", "rng_state_1.safetensors"} <= {
        p.name for p in state.iterdir()}  # fmt: skip
    result = torchrun(sets, resume=True)
    assert result.returncode == 0, explain(result)
    assert_same_training(uninterrupted_two, out)


@pytest.mark.slow
def test_an_elastic_restart_after_kill_9_of_one_process_resumes_by_itself(tiny_data, uninterrupted_two, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **TWO_PROCESSES)
    # Process 1 dies at step 7 of the first attempt (states at 3 and 6); torchrun stops process 0
    # and starts both again with the same command, which resumes from step 6. torchrun keeps one
    # key-value store for all attempts: the second must not read the first one's addresses, or gloo
    # connects to a dead port or waits forever (make_accelerator's prefix per attempt). Process 0
    # starts the second attempt late, so that without the prefix process 1 always reads a stale one.
    result = torchrun(sets, "kill_at_step:7:1@0,sleep_at_start:2:0@1", resume="auto", max_restarts=2,
                      timeout=240)  # fmt: skip
    assert result.returncode == 0, explain(result)
    text = result.stdout + result.stderr
    assert f"resumed from {out / 'checkpoints' / 'step_6'} at step 6" in text, explain(result)
    assert result.stderr.count("failed (exitcode:") == 1, explain(result)  # torchrun's line per failed attempt
    assert_same_training(uninterrupted_two, out)
