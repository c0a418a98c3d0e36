"""Shared pieces of the reliability tests: the tiny demo data, runs of scripts/train.py with a fault injected."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import ACCELERATE, REPO, tiny_checkpoint, tiny_data, tiny_overrides  # noqa: F401  (fixtures)

FAULTY_TRAIN = Path(__file__).with_name("faulty_train.py")
# The runs the resume tests compare: 20 training videos in batches of 4 = 5 steps an
# epoch, a state every 3 steps, 12 steps (so states fall mid-epoch), two DataLoader
# workers, drop path on (the model's RNG stream matters), no final evaluation.
RESUME_RUN = {"train.max_steps": 12, "train.save_every_steps": 3, "train.keep_last": 2, "data.num_workers": 2,
              "model.drop_path_rate": 0.2, "eval.final": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_faulty(sets, fault="", *, resume=False, expect=0, timeout=600, processes=1):
    """Runs scripts/train.py on the demo config with ``sets`` and the fault ``fault`` (see faulty_train.py).

    With ``processes`` > 1, through ``accelerate launch`` (CPU processes in one gloo group).
    """
    launcher = [sys.executable]
    if processes > 1:
        launcher = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes),
                    "--main_process_port", str(free_port())]
    cmd = [*launcher, str(FAULTY_TRAIN), "--config", "demo.yaml", "--set", *sets, *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "VIDEO_SWIN_FAULT": fault}
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if expect is not None and result.returncode != expect:
        raise AssertionError(f"{fault or 'no fault'}: exit code {result.returncode}, expected {expect}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def metrics_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a: Path, b: Path) -> None:
    """Bitwise equal final weights, last state (model, optimizer moments, LR, counters) and logged losses/LRs."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"final weights differ: {key}"
    last_a, last_b = (max((p / "checkpoints").glob("step_*"), key=lambda f: int(f.name[5:])) for p in (a, b))
    assert last_a.name == last_b.name
    for name in ("model.safetensors", "rng_state_0.safetensors"):
        sa, sb = load_file(last_a / name), load_file(last_b / name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa) and sa.keys() == sb.keys(), name
    oa, ob = (torch.load(p / "optimizer.bin", weights_only=True) for p in (last_a, last_b))
    assert oa["param_groups"] == ob["param_groups"]  # LR, betas, weight decay, step counts per group
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][k]), f"optimizer state {i}.{k} differs"
    counters = [json.loads((p / "trainer_state.json").read_text()) for p in (last_a, last_b)]
    assert counters[0] == counters[1]
    logged = [[(r["step"], r["loss"], r["lr"]) for r in metrics_rows(p) if "loss" in r] for p in (a, b)]
    assert logged[0] == logged[1]


@pytest.fixture(scope="session")
def uninterrupted(tiny_data, tmp_path_factory):  # noqa: F811
    """The reference run of RESUME_RUN, start to end without a fault."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_faulty(tiny_overrides(tiny_data, out, **RESUME_RUN))
    return out


def load_script(name: str):
    """scripts/<name>.py as a module, to call its ``main(argv)`` in this process."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(capsys, name: str, argv: list[str]) -> tuple[int, list[str], str]:
    """Runs scripts/<name>.py's main in this process; returns (exit code, stderr lines, stdout).

    Logger levels a script sets (predict.py quiets the dataset's) are restored afterwards.
    """
    levels = {n: logging.getLogger(n).level for n in ("video_swin.data.dataset", "video_swin.data.broken")}
    try:
        code = load_script(name).main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out
