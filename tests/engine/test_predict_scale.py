"""Prediction at scale: folders, batches read by worker processes, --out tables, --features files."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from video_swin.cli import main
from video_swin.config import Views
from video_swin.engine.build import build_test_dataset
from video_swin.engine.predict import (
    find_videos,
    load_predictor,
    parse_feature_stages,
    predict_videos,
)


def demo_val(root):
    return sorted(str(p) for p in (root / "val").rglob("*.mp4"))


def garbage_file(path):
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                     .numpy().tobytes())
    return str(path)


def test_find_videos_searches_folders_keeps_files_and_expands_patterns(tiny_data, tmp_path):
    (tmp_path / "notes.txt").write_text("not a video")
    val = demo_val(tiny_data)
    assert find_videos([tiny_data / "val"]) == val  # recursive, sorted, only video extensions
    assert find_videos([str(tiny_data / "val" / "*" / "*.mp4")]) == val
    assert find_videos([val[3], str(tmp_path / "missing.mp4")]) == [val[3], str(tmp_path / "missing.mp4")]
    with pytest.raises(ValueError, match="no video files"):
        find_videos([tmp_path])


def test_batched_workers_give_the_serial_results_in_order_with_a_broken_file(tiny_checkpoint, tiny_data, tmp_path):
    path, _ = tiny_checkpoint
    model, cfg, classes = load_predictor(path)
    videos = demo_val(tiny_data)
    videos.insert(4, garbage_file(tmp_path / "broken.mp4"))
    serial = predict_videos(model, cfg, classes, videos, views="1x1", batch_size=1, workers=0, features=True)
    batched = predict_videos(model, cfg, classes, videos, views="1x1", batch_size=3, workers=2, features=True)
    assert [r.path for r in batched] == videos
    assert batched[4].error and not batched[4].top and batched[4].features is None
    for a, b in zip(serial, batched):
        assert a.error == b.error
        if a.error is None:  # lower ranks may swap names within float rounding: compare top-1 and the values
            assert a.top[0][0] == b.top[0][0]
            torch.testing.assert_close(torch.tensor([p for _, p in b.top]), torch.tensor([p for _, p in a.top]))
            torch.testing.assert_close(b.features, a.features)
    # each video's features are the pooled backbone output of its view, and name its class
    sample = build_test_dataset(cfg, classes, Views(1, 1), videos=[videos[0]])[0]["video"]  # (1, 3, T, S, S)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(sample), pre_logits=True)[0]  # (C,)
    torch.testing.assert_close(batched[0].features, pooled, rtol=1e-4, atol=1e-5)
    assert all(r.top[0][0] == r.path.split("/")[-2] for r in batched if r.error is None)


def test_cli_folder_to_csv_jsonl_and_features(tiny_checkpoint, tiny_data, tmp_path, capsys):
    path, _ = tiny_checkpoint
    val = demo_val(tiny_data)
    args = ["predict", "--weights", str(path), "--views", "1x1", "--top-k", "2", "--workers", "2", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "p.csv"), "--features", str(tmp_path / "feats"),
                 str(tiny_data / "val")]) == 0
    assert capsys.readouterr().out == ""  # the results went to the file
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert list(rows[0]) == ["path", "error", "class_1", "probability_1", "class_2", "probability_2"]
    assert [r["path"] for r in rows] == val
    assert all(r["class_1"] == r["path"].split("/")[-2] and r["error"] == "" for r in rows)
    assert float(rows[0]["probability_1"]) >= float(rows[0]["probability_2"]) > 0
    npys = sorted((tmp_path / "feats").rglob("*.npy"))  # DIR/<class folder>/<stem>.npy, as under val/
    assert [p.relative_to(tmp_path / "feats").with_suffix(".mp4") for p in npys] == \
        sorted(p.relative_to(tiny_data / "val") for p in (tiny_data / "val").rglob("*.mp4"))
    first = np.load(npys[0])
    assert first.shape == (16,) and first.dtype == np.float32  # the tiny model's last stage: 8 * 2 channels

    broken = garbage_file(tmp_path / "broken.mp4")
    assert main([*args, "--out", str(tmp_path / "p.jsonl"), "--features", str(tmp_path / "f.safetensors"),
                 str(tiny_data / "val"), broken]) == 1
    err = capsys.readouterr().err
    assert f"error: {broken}:" in err and f"{len(val)} of {len(val) + 1} videos scored" in err
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [e["path"] for e in lines] == [*val, broken] and lines[-1]["error"] and not lines[-1]["top"]
    tensors = load_file(tmp_path / "f.safetensors")
    assert sorted(tensors) == val  # the broken file has none
    rel = npys[0].relative_to(tmp_path / "feats").with_suffix(".mp4")
    np.testing.assert_allclose(tensors[str(tiny_data / "val" / rel)].numpy(), first, rtol=1e-5, atol=1e-6)


def test_cli_usage_mistakes(tiny_checkpoint, tiny_data, tmp_path, capsys):
    path, _ = tiny_checkpoint
    video = demo_val(tiny_data)[0]
    cases = [
        (["--weights", "swin3d_t.nope", video], "--weights: file not found and not a registry name"),
        (["--weights", str(path), "--out", str(tmp_path / "p.txt"), video], "--out: expected a .csv or .jsonl"),
        (["--weights", str(path), "--workers", "-1", video], "--workers: must be >= 0"),
        (["--weights", str(path), str(tmp_path)], "no video files"),
    ]
    for args, message in cases:
        assert main(["predict", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_stage_features_are_forward_intermediates_pooled_and_view_averaged(tiny_checkpoint, tiny_data):
    path, _ = tiny_checkpoint
    model, cfg, classes = load_predictor(path)
    videos = demo_val(tiny_data)[:3]
    stages = parse_feature_stages("all", len(model.layers))
    assert stages == [0, 1]  # the tiny model has two stages
    results = predict_videos(model, cfg, classes, videos, views="2x1", batch_size=2, workers=0, features=True,
                             feature_stages=stages)
    for video, r in zip(videos, results):
        sample = build_test_dataset(cfg, classes, Views(2, 1), videos=[video])[0]["video"]  # (2 views, 3, T, S, S)
        with torch.no_grad():
            final, maps = model.forward_intermediates(sample)
        assert sorted(r.stage_features) == [0, 1]
        for i, m in enumerate(maps):  # (V, C_i, T_i, H_i, W_i) -> (C_i,)
            expected = m.flatten(2).mean(-1).mean(0)
            assert r.stage_features[i].shape == (8 * 2**i,)
            torch.testing.assert_close(r.stage_features[i], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r.features, model.forward_head(final, pre_logits=True).mean(0), rtol=1e-4,
                                   atol=1e-5)
    unordered = predict_videos(model, cfg, classes, videos[:1], views="2x1", workers=0, features=True,
                               feature_stages=[-1, 0])[0].stage_features  # any order, negative from the end
    assert sorted(unordered) == [0, 1]
    for i in (0, 1):
        torch.testing.assert_close(unordered[i], results[0].stage_features[i])
    plain = predict_videos(model, cfg, classes, videos, views="2x1", batch_size=2, workers=0, features=True)
    for a, b in zip(plain, results):  # the same scores and pooled features either way
        assert a.stage_features is None and a.top[0][0] == b.top[0][0]
        torch.testing.assert_close(a.features, b.features)


def test_parse_feature_stages():
    assert parse_feature_stages(None, 4) is None and parse_feature_stages("none", 4) is None
    assert parse_feature_stages("all", 4) == [0, 1, 2, 3] and parse_feature_stages("last", 4) == [3]
    assert parse_feature_stages("3,0,-1", 4) == [0, 3]
    for bad, message in (("4", "stage 4 does not exist"), ("first", "expected all, last"), ("1,,2", "expected")):
        with pytest.raises(ValueError, match=message):
            parse_feature_stages(bad, 4)


def test_cli_feature_stages_npy_and_safetensors(tiny_checkpoint, tiny_data, tmp_path, capsys):
    path, _ = tiny_checkpoint
    val = demo_val(tiny_data)[:4]
    model, cfg, classes = load_predictor(path)
    api = {r.path: r for r in predict_videos(model, cfg, classes, val, views="1x1", workers=0, features=True,
                                             feature_stages=[0, 1])}
    args = ["predict", "--weights", str(path), "--views", "1x1", "--workers", "0", "--out", str(tmp_path / "p.csv")]
    assert main([*args, "--features", str(tmp_path / "feats"), "--feature-stages", "all", *val]) == 0
    names = sorted(p.name for p in (tmp_path / "feats").rglob("*.npy"))
    stems = sorted(p.rsplit("/", 1)[1][:-4] for p in val)
    assert names == sorted(f"{s}{suffix}" for s in stems for suffix in (".npy", ".stage0.npy", ".stage1.npy"))
    for video in val:
        folder = tmp_path / "feats" / video.split("/")[-2]
        stem = video.rsplit("/", 1)[1][:-4]
        for i in (0, 1):
            saved = np.load(folder / f"{stem}.stage{i}.npy")
            assert saved.shape == (8 * 2**i,) and saved.dtype == np.float32
            np.testing.assert_allclose(saved, api[video].stage_features[i].numpy(), rtol=1e-4, atol=1e-5)
    assert main([*args, "--features", str(tmp_path / "f.safetensors"), "--feature-stages", "last", *val]) == 0
    tensors = load_file(tmp_path / "f.safetensors")
    assert sorted(tensors) == sorted([*val, *[f"{v}#stage1" for v in val]])
    for video in val:
        torch.testing.assert_close(tensors[f"{video}#stage1"], api[video].stage_features[1], rtol=1e-4, atol=1e-5)
    for extra, message in ((["--feature-stages", "all"], "--feature-stages: needs --features"),
                           (["--features", str(tmp_path / "g"), "--feature-stages", "2"], "stage 2 does not exist")):
        assert main(["predict", "--weights", str(path), *extra, val[0]]) == 2
        assert message in capsys.readouterr().err
