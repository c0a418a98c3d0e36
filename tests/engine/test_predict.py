"""scripts/predict.py: class names of demo videos, per-file errors, weights without a sidecar, usage mistakes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from video_swin.config import load_config, to_dict

from .conftest import REPO

SCRIPT = str(REPO / "scripts" / "predict.py")


def load_script():
    spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def val_videos(root):
    """``(path, class name)`` of the val videos (the demo keeps them in class folders)."""
    return [(str(p), p.parent.name) for p in sorted((root / "val").rglob("*.mp4"))]


@pytest.mark.slow
def test_predict_names_the_class_of_each_demo_video(tiny_checkpoint, tiny_data):
    path, _ = tiny_checkpoint
    videos = val_videos(tiny_data)
    result = subprocess.run([sys.executable, SCRIPT, "--checkpoint", str(path), "--json", *[v for v, _ in videos]],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["views"] == "1x1"  # the saved config's eval.views
    assert [v["path"] for v in out["videos"]] == [v for v, _ in videos]
    for entry, (_, label) in zip(out["videos"], videos):
        probs = [t["probability"] for t in entry["top"]]
        assert entry["error"] is None and len(entry["top"]) == 5
        assert entry["top"][0]["class"] == label, entry
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5


def test_table_and_views_and_top_k(tiny_checkpoint, tiny_data, capsys):
    path, _ = tiny_checkpoint
    (video, label), *_ = val_videos(tiny_data)
    assert load_script().main(["--checkpoint", str(path), "--top-k", "3", video]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == video and len(lines) == 4
    assert lines[1].strip().startswith(f"1. {label} ") and lines[1].endswith("%")
    assert load_script().main(["--checkpoint", str(path), "--views", "2x3", "--top-k", "20", "--json", video]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["views"] == "2x3" and len(out["videos"][0]["top"]) == 10  # top-k capped at the class count
    assert sum(t["probability"] for t in out["videos"][0]["top"]) == pytest.approx(1.0, abs=1e-5)


def test_unreadable_files_get_their_error_and_the_others_still_run(tiny_checkpoint, tiny_data, tmp_path, capsys):
    path, _ = tiny_checkpoint
    (good, label), *_ = val_videos(tiny_data)
    garbage, empty, missing = tmp_path / "garbage.mp4", tmp_path / "empty.mp4", tmp_path / "missing.mp4"
    garbage.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    empty.write_bytes(b"")
    assert load_script().main(["--checkpoint", str(path), "--json", str(garbage), good, str(empty), str(missing)]) == 1
    captured = capsys.readouterr()
    entries = json.loads(captured.out)["videos"]
    assert [e["path"] for e in entries] == [str(garbage), good, str(empty), str(missing)]
    assert entries[1]["error"] is None and entries[1]["top"][0]["class"] == label
    assert "empty file" in entries[2]["error"] and "file not found" in entries[3]["error"]
    assert entries[0]["error"] and all(not e["top"] for e in (entries[0], entries[2], entries[3]))
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert [e.split(":")[1].strip() for e in errors] == [str(garbage), str(empty), str(missing)]


def test_weights_without_sidecar_take_config_and_class_file(tiny_checkpoint, tiny_data, tmp_path, capsys):
    path, sets = tiny_checkpoint
    state = load_file(path)  # the official Video Swin layout, no sidecar
    official = {(k.replace("head.", "cls_head.fc_cls.") if k.startswith("head.") else f"backbone.{k}"): v
                for k, v in state.items()}
    torch.save({"state_dict": official}, tmp_path / "official.pth")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(load_config("demo.yaml", sets))))
    classes = json.loads(Path(path).with_suffix(".json").read_text())["classes"]
    renamed = tmp_path / "classes.txt"
    renamed.write_text("".join(f"class {i} ({c})\n" for i, c in enumerate(classes)))
    (video, label), *_ = val_videos(tiny_data)
    script = load_script()

    assert script.main(["--checkpoint", str(tmp_path / "official.pth"), video]) == 2
    assert "--config" in capsys.readouterr().err
    args = ["--checkpoint", str(tmp_path / "official.pth"), "--config", str(config), "--json", video]
    assert script.main(args) == 2
    assert "--classes" in capsys.readouterr().err
    assert script.main([*args, "--classes", str(renamed)]) == 0
    top = json.loads(capsys.readouterr().out)["videos"][0]["top"][0]["class"]
    assert top == f"class {classes.index(label)} ({label})"


def test_usage_mistakes_exit_2_with_one_line(tiny_checkpoint, tiny_data, tmp_path, capsys):
    path, _ = tiny_checkpoint
    (video, _), *_ = val_videos(tiny_data)
    script = load_script()
    cases = [
        (["--checkpoint", str(tmp_path / "nope.safetensors"), video], "--checkpoint: file not found"),
        (["--checkpoint", str(path), "--views", "2x2", video], "--views: expected CLIPSxCROPS"),
        (["--checkpoint", str(path), "--top-k", "0", video], "--top-k: must be >= 1"),
        (["--checkpoint", str(path), "--classes", str(tmp_path / "none.txt"), video], "--classes: file not found"),
    ]
    for args, message in cases:
        assert script.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
