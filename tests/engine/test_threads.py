"""``train.threads``: the rule that sets torch's intra-op threads against the loader workers, and its key."""

import pytest
import torch

from video_swin.config import load_config
from video_swin.engine import build
from video_swin.engine.build import set_torch_threads, torch_threads, usable_cores
from video_swin.errors import ConfigError


@pytest.mark.parametrize(("cores", "workers", "expected"), [(2, 0, 2), (2, 1, 1), (2, 2, 1), (2, 8, 1), (16, 4, 12),
                                                            (1, 0, 1)])  # fmt: skip
def test_auto_leaves_the_workers_their_cores_on_cpu(cores, workers, expected):
    assert torch_threads("auto", cores, workers, cpu=True) == expected


def test_auto_leaves_gpu_runs_alone_and_a_count_is_taken_as_is():
    assert torch_threads("auto", 2, 2, cpu=False) is None
    assert torch_threads("3", 2, 2, cpu=True) == 3
    assert torch_threads("3", 2, 2, cpu=False) == 3
    assert torch_threads("auto", 2, 2, cpu=True, omp_env="2") is None  # OMP_NUM_THREADS (a launcher's) is kept
    assert torch_threads("3", 2, 2, cpu=True, omp_env="2") == 3


def test_usable_cores_is_shared_by_the_local_processes(monkeypatch):
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert usable_cores() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert usable_cores() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert usable_cores() == 1


def test_set_torch_threads_is_a_function_of_config_and_machine(monkeypatch):
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(load_config("demo.yaml", ["data.num_workers=2"]), cpu=True) == 1
        assert set_torch_threads(load_config("demo.yaml", ["data.num_workers=0"]), cpu=True) == 2
        assert set_torch_threads(load_config("demo.yaml", ["train.threads=1", "data.num_workers=0"]), cpu=True) == 1
        torch.set_num_threads(2)
        assert set_torch_threads(load_config("demo.yaml", ["data.num_workers=2"]), cpu=False) == 2  # untouched
    finally:
        torch.set_num_threads(before)


def test_threads_key_is_auto_by_default_and_checked():
    assert load_config("demo.yaml").train.threads == "auto"
    assert load_config("demo.yaml", ["train.threads=4"]).train.threads == "4"
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="train.threads"):
            load_config("demo.yaml", [f"train.threads={bad}"])
