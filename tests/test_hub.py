"""save_pretrained / from_pretrained / push_to_hub and ``video-swin export-hub``, all without the network."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import video_swin
from video_swin import hub
from video_swin.checkpoints import CheckpointError, save_checkpoint
from video_swin.cli import main

TINY = {"embed_dim": 8, "depths": (1, 1), "num_heads": (1, 2), "window_size": (2, 4, 4)}
CLIP = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_model(**kwargs):
    torch.manual_seed(0)
    return video_swin.create_model("swinv2_3d_t", num_classes=3, **{**TINY, **kwargs}).eval()


def test_save_then_load_gives_the_same_logits_config_and_classes(tmp_path):
    model = tiny_model(drop_path_rate=0.0)
    model.classes = ["a", "b", "c"]
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_name"] == "swinv2_3d_t" and config["model_args"]["embed_dim"] == 8
    assert config["model_args"]["attention"] == "cosine" and config["classes"] == ["a", "b", "c"]
    loaded = video_swin.from_pretrained(tmp_path / "m")
    assert loaded.classes == ["a", "b", "c"] and not loaded.training
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(CLIP), model(CLIP), rtol=0, atol=0)
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: video-swin") and "`a`, `b`, `c`" in card


def test_repo_id_goes_through_hf_hub_download(tmp_path, monkeypatch):
    model = tiny_model()
    model.save_pretrained(tmp_path / "repo")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["revision"], kwargs["local_files_only"]))
        return str(tmp_path / "repo" / filename)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VIDEO_SWIN_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    loaded = video_swin.from_pretrained("someone/tiny-swin", revision="v1")
    assert calls == [("someone/tiny-swin", "config.json", "v1", False),
                     ("someone/tiny-swin", "model.safetensors", "v1", False)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(CLIP), model(CLIP), rtol=0, atol=0)


def test_offline_without_a_cached_copy_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE"):
        video_swin.from_pretrained("someone/not-cached", cache_dir=tmp_path / "hf")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        tiny_model().push_to_hub("someone/tiny-swin")


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        video_swin.from_pretrained(tmp_path / "missing" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json, model.safetensors"):
        video_swin.from_pretrained(tmp_path / "empty")
    tiny_model().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="does not fit"):
        video_swin.from_pretrained(tmp_path / "m", embed_dim=16)


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, **kwargs):
            uploaded["created"] = (repo_id, kwargs["private"])

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            uploaded["files"] = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()}
            return "https://huggingface.co/someone/tiny-swin/commit/abc"

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VIDEO_SWIN_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    model = tiny_model()
    url = model.push_to_hub("someone/tiny-swin", private=True, token="t")
    assert url.endswith("/commit/abc") and uploaded["created"] == ("someone/tiny-swin", True) and uploaded["token"] == "t"
    assert sorted(uploaded["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(uploaded["files"]["config.json"])["model_name"] == "swinv2_3d_t"


def test_export_hub_turns_a_run_folder_into_a_loadable_model(tmp_path, capsys):
    run = tmp_path / "run"
    model = tiny_model()
    config = {"data": {"clip_len": 4, "frame_interval": 2, "crop_size": 32, "test_short_side": 32},
              "eval": {"views": "2x3"}, "optim": {"lr": 0.001}}
    save_checkpoint(model, run / "model.safetensors", classes=["x", "y", "z"], step=12, config=config)
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"top1": 87.5, "top5": 100.0, "num_videos": 8}))
    assert main(["export-hub", str(run), str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out") in capsys.readouterr().out
    loaded = video_swin.from_pretrained(tmp_path / "out")
    assert loaded.classes == ["x", "y", "z"]
    assert loaded.hub_config["eval"] == {"clip_len": 4, "frame_interval": 2, "crop_size": 32, "test_short_side": 32,
                                         "views": "2x3"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(CLIP), model(CLIP), rtol=0, atol=0)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| top1 | 87.50 |" in card and "| step | 12 |" in card and '"lr": 0.001' in card
    shutil.rmtree(run / "eval")  # no final evaluation: a card without metrics, still a model
    assert main(["export-hub", str(run), str(tmp_path / "out2")]) == 0
    assert "top1" not in (tmp_path / "out2" / "README.md").read_text()
    assert set(load_file(tmp_path / "out2" / "model.safetensors")) == set(model.state_dict())
    assert main(["export-hub", str(tmp_path / "nothing"), str(tmp_path / "out3")]) == 2
    assert "no final weights" in capsys.readouterr().err
