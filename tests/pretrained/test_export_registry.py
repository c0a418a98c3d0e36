"""``video-swin export --weights MODEL.TAG``: a registry entry served by the loopback mirror, at its evaluation size."""

from dataclasses import replace

import torch
from test_weights_download import TINY, official_video, server, tiny_entry  # noqa: F401  (server: a fixture)

import video_swin
from video_swin.cli import main
from video_swin.export import run_exported


def test_export_a_registry_entry_at_its_evaluation_clip(server, monkeypatch, tmp_path, capsys):  # noqa: F811
    entry = tiny_entry(monkeypatch)
    # The publisher's 32x224x224 clip, shrunk so that the test stays fast.
    monkeypatch.setitem(video_swin.pretrained.CATALOG, entry.name,
                        replace(entry, eval={**entry.eval, "clip_len": 4, "crop_size": 32}))
    server.files[entry.file] = official_video(video_swin.create_model("swin3d_t", **TINY))
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--weights", entry.name, "--format", "pt2"]) == 0
    assert f"wrote {entry.name}.pt2 (input Bx3x4x32x32)" in capsys.readouterr().out
    model = video_swin.create_model("swin3d_t", pretrained=entry.name).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_exported(tmp_path / f"{entry.name}.pt2", x), model(x), rtol=1e-4, atol=1e-5)
    assert server.requests == [entry.file]
