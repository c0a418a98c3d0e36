"""Checkpoints that would run code, or are truncated, mismatched or non-finite: refused on every load path."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import video_swin
from video_swin.checkpoints import save_checkpoint

from .conftest import RESUME_RUN, run_main, tiny_overrides

REFUSED = "refused to unpickle"


class _RunsCode:
    """Unpickling this runs ``touch MARKER`` (what an attacker's checkpoint would do, less politely)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """A factory of pickles that hold real tensors and a payload; returns (path, marker)."""
    marker = tmp_path / "MARKER"

    def make(path: Path, content: dict | None = None) -> Path:
        torch.save({**(content or {"model": {"w": torch.zeros(2)}}), "payload": _RunsCode(marker)}, path)
        return path

    yield make, marker
    assert not marker.exists(), "a hostile pickle was unpickled and ran its code"


def _one_refusal(code, err, path):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert str(path) in err[0] and REFUSED in err[0], err


def test_the_payload_is_live(hostile, tmp_path):
    make, marker = hostile
    path = make(tmp_path / "evil.pth")
    torch.load(path, weights_only=False)  # the unsafe load every path below must avoid
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("key", ["model.pretrained_video", "model.pretrained_image"])
def test_train_refuses_hostile_pretrained_weights(hostile, tiny_data, tmp_path, capsys, key):
    make, _ = hostile
    evil = make(tmp_path / "evil.pth")
    out = tmp_path / "run"
    code, err, _ = run_main(capsys, "train", ["--config", "demo.yaml", "--set",
                                              *tiny_overrides(tiny_data, out, **{key: evil})])
    _one_refusal(code, err, evil)
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])
def test_resume_refuses_a_hostile_state_file(hostile, tiny_data, uninterrupted, tmp_path, capsys, name):
    make, _ = hostile
    out = tmp_path / "run"
    state = out / "checkpoints" / "step_12"
    shutil.copytree(uninterrupted / "checkpoints" / "step_12", state)
    genuine = torch.load(state / name, weights_only=False)  # what accelerate wrote (plain data)
    make(state / name, {"state": genuine} if isinstance(genuine, dict) else None)
    code, err, _ = run_main(capsys, "train", ["--config", "demo.yaml", "--resume", "--set",
                                              *tiny_overrides(tiny_data, out, **RESUME_RUN)])
    _one_refusal(code, err, state / name)
    assert not (out / "model.safetensors").exists()


def test_inflate_refuses_a_hostile_image_checkpoint(hostile, tmp_path, capsys):
    make, _ = hostile
    evil = make(tmp_path / "swin_t.pth")
    out = tmp_path / "inflated.safetensors"
    code, err, _ = run_main(capsys, "inflate", ["--image-checkpoint", str(evil), "--out", str(out)])
    _one_refusal(code, err, evil)
    assert not out.exists()


def test_evaluate_and_predict_refuse_a_hostile_checkpoint(hostile, tiny_checkpoint, tiny_data, tmp_path, capsys):
    make, _ = hostile
    path, sets = tiny_checkpoint
    evil = make(tmp_path / "model.pth", {"state_dict": load_file(path)})  # real weights plus the payload
    shutil.copyfile(Path(path).with_suffix(".json"), evil.with_suffix(".json"))  # a sidecar, so predict gets that far
    code, err, _ = run_main(capsys, "evaluate", ["--config", "demo.yaml", "--checkpoint", str(evil), "--views", "1x1",
                                                 "--out", str(tmp_path / "eval"), "--set", *sets])
    _one_refusal(code, err, evil)
    video = next(tiny_data.glob("val/*/*.mp4"))
    code, err, out = run_main(capsys, "predict", ["--checkpoint", str(evil), str(video)])
    _one_refusal(code, err, evil)
    assert not (tmp_path / "eval").exists() and out == ""


# -- truncated, mismatched, non-finite: a specific error before anything trains ------------------------

def _tiny_model(tiny_overrides_list, **changes):
    from video_swin.config import load_config
    from video_swin.engine.build import model_from_config

    cfg = load_config("demo.yaml", [*tiny_overrides_list, *(f"model.{k}={v}" for k, v in changes.items())])
    return model_from_config(cfg, 10)


@pytest.fixture
def bad_files(tiny_data, tmp_path):
    """Broken weight files for the tiny model, with the words their error must contain."""
    sets = tiny_overrides(tiny_data, tmp_path / "unused")
    good = save_checkpoint(_tiny_model(sets), tmp_path / "good.safetensors")
    data = good.read_bytes()
    files = {}
    files["truncated"] = (tmp_path / "truncated.safetensors", "not a readable safetensors file (truncated or corrupt?)")
    files["truncated"][0].write_bytes(data[: len(data) // 2])
    # A header whose first shape disagrees with the bytes it points at.
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [d + 1 for d in header[name]["shape"]]
    raw = json.dumps(header).encode()
    files["bad_header"] = (tmp_path / "bad_header.safetensors", "not a readable safetensors file")
    files["bad_header"][0].write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    files["other_shapes"] = (save_checkpoint(_tiny_model(sets, embed_dim=16), tmp_path / "wide.safetensors"),
                             "but the model expects")
    state = _tiny_model(sets).state_dict()
    state["layers.1.blocks.0.mlp.fc2.weight"][0, 0] = float("inf")
    files["non_finite"] = (tmp_path / "inf.safetensors", "layers.1.blocks.0.mlp.fc2.weight holds NaN or Inf values")
    save_file({k: v.contiguous() for k, v in state.items()}, files["non_finite"][0])
    return files


@pytest.mark.parametrize("kind", ["truncated", "bad_header", "other_shapes", "non_finite"])
def test_bad_weights_stop_train_and_evaluate_before_they_start(bad_files, tiny_data, tmp_path, capsys, kind):
    path, words = bad_files[kind]
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **{"model.pretrained_video": path})
    code, err, _ = run_main(capsys, "train", ["--config", "demo.yaml", "--set", *sets])
    assert code == 2 and len(err) == 1 and str(path) in err[0] and words in err[0], err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    code, err, _ = run_main(capsys, "evaluate", ["--config", "demo.yaml", "--checkpoint", str(path), "--set",
                                                 *tiny_overrides(tiny_data, out)])
    assert code == 2 and len(err) == 1 and str(path) in err[0] and words in err[0], err


def test_library_loaders_refuse_the_same_files(hostile, bad_files, tmp_path):
    make, _ = hostile
    from video_swin.checkpoints import CheckpointError, inflate_image_checkpoint, load_checkpoint, read_state_dict

    evil = make(tmp_path / "evil.pth")
    model = video_swin.create_model("swin3d_t", embed_dim=8, depths=(1, 1), num_heads=(1, 2), num_classes=10)
    for load in (load_checkpoint, inflate_image_checkpoint, lambda m, p: read_state_dict(p)):
        with pytest.raises(CheckpointError, match=REFUSED):
            load(model, evil)
    tiny = _tiny_model(tiny_overrides(tmp_path, tmp_path))
    for path, words in bad_files.values():
        with pytest.raises(CheckpointError, match=re.escape(words)):
            load_checkpoint(tiny, path)


@pytest.mark.slow
def test_resume_from_a_damaged_state_stops_with_one_line(tiny_data, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    state = out / "checkpoints" / "step_12"
    shutil.copytree(uninterrupted / "checkpoints" / "step_12", state)
    data = (state / "optimizer.bin").read_bytes()
    (state / "optimizer.bin").write_bytes(data[: len(data) // 2])  # e.g. a disk that lied about a flush
    code, err, _ = run_main(capsys, "train", ["--config", "demo.yaml", "--resume", "--set",
                                              *tiny_overrides(tiny_data, out, **RESUME_RUN)])
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"error: {state}: the saved state cannot be restored") and "move this folder away" in err[0]
