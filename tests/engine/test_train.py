"""Training through accelerate on a tiny config: steps, exact resume after kill -9, 1 vs 2 processes."""

import json
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from .conftest import ACCELERATE, run_train, tiny_overrides

pytestmark = pytest.mark.slow


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_few_steps_write_a_complete_run_folder(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_train(tiny_overrides(tiny_data, out, **{"eval.every_epochs": 1}), launcher=(ACCELERATE, "launch", "--num_processes", "1"))
    assert "world size: 1" in result.stdout + result.stderr
    for name in ["config.yaml", "classes.txt", "metrics.jsonl", "model.safetensors", "model.json", "curves.png",
                 "eval/metrics.json", "eval/predictions.csv", "eval/confusion_matrix.png"]:
        assert (out / name).is_file(), name
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5, 6]
    states = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert states == ["step_4", "step_6"]  # keep_last = 2, older pruned
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["num_videos"] == 10 and metrics["num_failed"] == 0 and metrics["views"] == "1x1"
    assert "world_size: 1" in (out / "config.yaml").read_text()


def test_resume_after_kill_gives_the_uninterrupted_weights(tiny_data, tmp_path):
    extra = {"train.max_steps": 10, "data.num_workers": 1, "model.drop_path_rate": 0.2, "eval.final": "false"}
    full = tmp_path / "full"
    run_train(tiny_overrides(tiny_data, full, **extra))

    cut = tmp_path / "cut"
    proc = run_train(tiny_overrides(tiny_data, cut, **extra), popen=True)
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "step_2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first save"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "model.safetensors").exists(), "the run finished before it could be killed"
    run_train(tiny_overrides(tiny_data, cut, **extra), resume=True)

    a, b = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert losses(full) == losses(cut)


def test_two_processes_and_two_machines_log_the_losses_of_one_with_the_global_batch(tiny_data, tmp_path):
    one, two, nodes = tmp_path / "one", tmp_path / "two", tmp_path / "nodes"
    run_train(tiny_overrides(tiny_data, one, **{"train.batch_size": 4, "eval.final": "false"}),
              launcher=(ACCELERATE, "launch", "--num_processes", "1"))
    result = run_train(tiny_overrides(tiny_data, two, **{"train.batch_size": 2, "eval.final": "false"}),
                       launcher=(ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29577"))
    assert "world size: 2" in result.stdout + result.stderr
    assert "world_size: 2" in (two / "config.yaml").read_text()
    (s1, l1), (s2, l2) = zip(*losses(one)), zip(*losses(two))
    assert s1 == s2
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-4, atol=1e-5)

    # Two machines of one process each, on the loopback interface, one shared output folder
    # (docs/MULTI_NODE.md): the launch a cluster does, node by node.
    sets = tiny_overrides(tiny_data, nodes, **{"train.batch_size": 2, "eval.final": "false"})
    node = [ACCELERATE, "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", "29579", "--machine_rank"]  # fmt: skip
    second = run_train(sets, launcher=(*node, "1"), popen=True)
    run_train(sets, launcher=(*node, "0"))
    assert second.wait(timeout=120) == 0
    assert "world_size: 2" in (nodes / "config.yaml").read_text()
    s3, l3 = zip(*losses(nodes))
    assert s3 == s1
    torch.testing.assert_close(torch.tensor(l3), torch.tensor(l1), rtol=1e-4, atol=1e-5)


def test_uint8_clips_and_the_default_collate_train_and_evaluate_exactly_alike(tiny_data, tmp_path):
    """data.output=uint8 (workers send uint8, the step normalises) and data.shm_slots=0 (torch's default
    collate instead of the reused shared-memory ring): the same losses, weights and final top-1."""
    runs = {}
    for name, sets in {"float": {"data.output": "float"}, "uint8": {"data.output": "uint8"},
                       "default collate": {"data.output": "float", "data.shm_slots": 0}}.items():  # fmt: skip
        out = tmp_path / name.replace(" ", "_")
        run_train(tiny_overrides(tiny_data, out, **{**sets, "data.num_workers": 1}))
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        runs[name] = (losses(out), load_file(out / "model.safetensors"), metrics["top1"])
    l_f, w_f, top_f = runs["float"]
    for name in ("uint8", "default collate"):
        l_o, w_o, top_o = runs[name]
        assert l_o == l_f and top_o == top_f, name
        assert w_o.keys() == w_f.keys() and all(torch.equal(w_o[k], w_f[k]) for k in w_f), name
