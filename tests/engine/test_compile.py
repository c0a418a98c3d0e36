"""``train.compile``: the key, and tiny in-process training runs through torch.compile.

Inductor takes minutes to compile even the tiny model on 2 cores, so the runs here
compile with dynamo's "eager" backend (``VIDEO_SWIN_COMPILE_BACKEND``, the debugging
knob the trainer reads): the model really goes through dynamo's graph capture and
the same wrapper, only the code generation is left out. What this file checks lies
outside the backend: what is saved, resumed and evaluated. The knob is an environment
variable rather than a monkeypatch so that the same check can be made by hand on a
launched run (``VIDEO_SWIN_COMPILE_BACKEND=eager accelerate launch ...``). One slow
test compiles with inductor itself, on a single Swin stage (about 60 s on 2 cores).
"""

import json
import shutil

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

from video_swin.config import load_config, to_dict
from video_swin.engine.build import COMPILE_BACKEND_ENV, compile_for_training
from video_swin.engine.run_dir import check_resume_config
from video_swin.engine.trainer import train
from video_swin.errors import ConfigError

from .conftest import tiny_overrides


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """No compiled code or counters carried into (or out of) a test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_key_is_false_by_default_and_checked():
    assert load_config("demo.yaml").train.compile is False
    assert load_config("demo.yaml", ["train.compile=true"]).train.compile is True
    assert load_config("demo.yaml", ["train.compile=max-autotune"]).train.compile == "max-autotune"
    for bad in ("fast", "3", "'true'", "null"):
        with pytest.raises(ConfigError, match=r"^train\.compile: .*true, false or one of \['default'"):
            load_config("demo.yaml", [f"train.compile={bad}"])


def test_resume_accepts_a_changed_compile(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(to_dict(load_config("demo.yaml"))))
    new = to_dict(load_config("demo.yaml", ["train.compile=reduce-overhead"]))
    assert check_resume_config(saved, new) == ["train.compile False -> 'reduce-overhead'"]


def test_the_wrapper_is_a_view_of_the_model(monkeypatch):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "eager")
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    assert compile_for_training(model, False, accelerator) is None
    compiled = compile_for_training(model, "max-autotune", accelerator)  # the mode is inductor's: dropped
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is model
    assert list(model.state_dict()) == ["weight", "bias"]  # the model itself is left as it was


def _train(data, out, *, compile, resume=False, **extra):
    """A 4-step run of the tiny model in this process (one thread, no loader workers)."""
    sets = tiny_overrides(data, out, **{"train.max_steps": 4, "train.threads": 1, "train.compile": compile,
                                        "eval.views": "1x1", **extra})  # fmt: skip
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    threads = torch.get_num_threads()
    try:
        return train(load_config("demo.yaml", sets), resume=resume)
    finally:
        torch.set_num_threads(threads)


def _drop_last_state(out):
    """What a run killed between its step-2 and step-4 saves leaves behind."""
    shutil.rmtree(out / "checkpoints" / "step_4")
    (out / "model.safetensors").unlink()


def test_compiled_runs_save_uncompiled_keys_evaluate_and_resume_either_way(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "eager")
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    _train(tiny_data, eager, compile="false", **{"eval.final": "false"})
    assert not torch._dynamo.utils.counters["stats"]  # train.compile: false compiles nothing

    summary = _train(tiny_data, compiled, compile="true")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "the model did not go through dynamo"
    assert "train.compile: training steps run through torch.compile (backend eager" in capsys.readouterr().out
    assert summary["num_videos"] == 10 and (compiled / "eval" / "metrics.json").is_file()  # evaluated after training

    reference = load_file(eager / "model.safetensors")
    weights = load_file(compiled / "model.safetensors")
    assert weights.keys() == reference.keys() and not any("_orig_mod" in k for k in weights)
    state = "checkpoints/step_4/model.safetensors"
    assert load_file(compiled / state).keys() == load_file(eager / state).keys()
    for key in reference:  # the same training, up to float rounding (dynamo traces the reference paths)
        torch.testing.assert_close(weights[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)

    # a compiled run resumed compiled, and switched off on resume
    for out, switched in ((compiled, "true"), (compiled, "false"), (eager, "default")):
        _drop_last_state(out)
        _train(tiny_data, out, compile=switched, resume=True, **{"eval.final": "false"})
        assert "resumed from" in capsys.readouterr().out
        resumed = load_file(out / "model.safetensors")
        assert resumed.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    rows = [json.loads(line) for line in (eager / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.slow
def test_inductor_trains_the_tiniest_model_like_eager(tiny_data, tmp_path, monkeypatch, capsys):
    """The real backend, on one Swin stage for 2 steps: about 60 s of compiling on 2 cores (cold cache)."""
    monkeypatch.delenv(COMPILE_BACKEND_ENV, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))  # cold, and nothing left behind
    tiniest = {"model.depths": "[1]", "model.num_heads": "[1]", "train.max_steps": 2, "eval.final": "false"}
    _train(tiny_data, tmp_path / "eager", compile="false", **tiniest)
    _train(tiny_data, tmp_path / "inductor", compile="true", **tiniest)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert "(backend inductor, mode default)" in capsys.readouterr().out
    reference, weights = (load_file(tmp_path / run / "model.safetensors") for run in ("eager", "inductor"))
    assert weights.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
