"""``video-swin predict --weights MODEL.TAG``: a registry entry served by the loopback mirror, its class names."""

import json
from dataclasses import replace

from test_weights_download import TINY, official_video, server, tiny_entry  # noqa: F401  (server: a fixture)

import video_swin
from video_swin.cli import main
from video_swin.data import make_demo_data
from video_swin.pretrained import read_classes


def test_predict_with_a_kinetics_registry_entry_prints_shipped_names(server, monkeypatch, tmp_path, capsys):  # noqa: F811
    entry = tiny_entry(monkeypatch)
    # The publisher's recipe, shrunk to the demo clips (32 px) so that the test stays fast.
    monkeypatch.setitem(video_swin.pretrained.CATALOG, entry.name, replace(entry, eval={
        **entry.eval, "clip_len": 4, "views": "2x1", "short_side": 32, "crop_size": 32}))
    server.files[entry.file] = official_video(video_swin.create_model("swin3d_t", **TINY))
    make_demo_data(tmp_path / "demo", seed=0, train_per_class=0, val_per_class=1)
    videos = sorted(str(p) for p in (tmp_path / "demo" / "val").rglob("*.mp4"))[:2]
    assert main(["predict", "--weights", entry.name, "--json", "--top-k", "3", "--workers", "0", *videos]) == 0
    out = json.loads(capsys.readouterr().out)
    kinetics = read_classes("kinetics400")
    assert out["weights"] == entry.name and out["views"] == "2x1"
    assert [v["path"] for v in out["videos"]] == videos
    assert all(len(v["top"]) == 3 and {t["class"] for t in v["top"]} <= set(kinetics) for v in out["videos"])
    assert server.requests == [entry.file]
