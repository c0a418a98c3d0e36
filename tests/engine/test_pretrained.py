"""``model.pretrained_image`` takes a raw 2D checkpoint or the output of scripts/inflate.py."""

import subprocess
import sys

import torch
import torchvision
from accelerate import Accelerator

from video_swin.config import load_config
from video_swin.engine.trainer import build_model

from .conftest import REPO


def test_pretrained_image_accepts_raw_2d_and_inflated_files(tmp_path):
    image = torchvision.models.swin_t()
    torch.save(image.state_dict(), tmp_path / "swin_t.pth")
    subprocess.run([sys.executable, str(REPO / "scripts" / "inflate.py"), "--image-checkpoint", str(tmp_path / "swin_t.pth"),
                    "--model", "swin3d_t", "--out", str(tmp_path / "inflated.safetensors")], check=True, capture_output=True)
    models = []
    for path in ("swin_t.pth", "inflated.safetensors"):
        cfg = load_config("k400_swin_t.yaml", [f"model.pretrained_image={tmp_path / path}"])
        models.append(build_model(cfg, 10, Accelerator(cpu=True)))
    a, b = (m.state_dict() for m in models)
    for key in a:
        if not key.startswith("head."):
            assert torch.equal(a[key], b[key]), key
    torch.testing.assert_close(a["layers.0.blocks.0.mlp.fc1.weight"], image.state_dict()["features.1.0.mlp.0.weight"])


def test_pretrained_image_file_is_read_once(tmp_path, monkeypatch):
    """build_model reads a pretrained file once, whichever way it then loads it."""
    from video_swin.checkpoints import io

    image = torchvision.models.swin_t()
    torch.save(image.state_dict(), tmp_path / "swin_t.pth")
    reads = []
    original = io._load_file
    monkeypatch.setattr(io, "_load_file", lambda path, *rest: reads.append(path) or original(path, *rest))
    cfg = load_config("k400_swin_t.yaml", [f"model.pretrained_image={tmp_path / 'swin_t.pth'}"])
    build_model(cfg, 10, Accelerator(cpu=True))
    assert reads == [tmp_path / "swin_t.pth"]
