"""``video-swin predict --precision bf16``: bf16 weights and inputs, float32 probabilities, reports and features.

Tolerances, measured on the tiny model of ``tiny_checkpoint`` (10 val videos, 1x1 views, AMD EPYC Zen 3):
bf16 keeps 8 significant bits (unit roundoff 2^-9, spacing 2^-8 = 0.4% relative: about 3 significant
digits). Against float32, the pooled features differed by at most 0.8% of their largest entry
(0.26%-0.76%, a few roundings through the blocks) and the class probabilities by at most 9.1e-4
(the fitted head puts ~0.997 on the right class). The bounds below, 2% and 5e-3, are 2.6x and 5.5x
those measurements and still 10x and 200x below what a wrong class, an fp32 head on bf16 features or
an unnormalised output would give. A bf16 run that is bitwise the fp32 one (no cast) fails the
"differ at all" checks.
"""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from video_swin.cli import main
from video_swin.engine import predict as predict_engine
from video_swin.engine.predict import load_predictor, predict_videos
from video_swin.models.kernels import machine

FEATURE_RTOL = 2e-2  # of the largest feature; measured <= 7.6e-3
PROB_ATOL = 5e-3  # probabilities in [0, 1]; measured <= 9.1e-4


def demo_val(root):
    return sorted(str(p) for p in (root / "val").rglob("*.mp4"))


@pytest.fixture(autouse=True)
def fresh_warning(monkeypatch):
    monkeypatch.setattr(predict_engine, "_warned_bf16", False)  # warned once per process


def test_bf16_gives_the_fp32_classes_within_bf16_rounding(tiny_checkpoint, tiny_data):
    path, _ = tiny_checkpoint
    videos = demo_val(tiny_data)  # one per class
    results, models = {}, {}
    for precision in ("fp32", "bf16"):
        model, cfg, classes = load_predictor(path)
        results[precision] = predict_videos(
            model,
            cfg,
            classes,
            videos,
            views="1x1",
            workers=0,
            features=True,
            feature_stages=[0, 1],
            top_k=len(classes),
            precision=precision,
        )
        models[precision] = model
    # the bf16 run cast the model in place: floating weights and buffers, not the integer indices
    bf16 = models["bf16"]
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in bf16.buffers() if b.is_floating_point()} <= {torch.bfloat16}
    attn = bf16.layers[0].blocks[0].attn
    assert attn.relative_position_index.dtype == torch.int64
    assert {p.dtype for p in models["fp32"].parameters()} == {torch.float32}

    prob_diffs, feature_diffs = [], []
    for a, b in zip(results["fp32"], results["bf16"]):
        assert a.error is None and b.error is None
        assert b.top[0][0] == a.top[0][0] == a.path.split("/")[-2]  # same top-1, the right class
        assert b.features.dtype == torch.float32 and all(s.dtype == torch.float32 for s in b.stage_features.values())
        pa, pb = dict(a.top), dict(b.top)  # every class
        assert sum(pb.values()) == pytest.approx(1.0, abs=1e-5)  # softmax in float32
        prob_diffs.append(max(abs(pa[c] - pb[c]) for c in pa))
        feature_diffs.append(((a.features - b.features).abs().max() / a.features.abs().max()).item())
    assert 0 < max(prob_diffs) < PROB_ATOL, prob_diffs
    assert 0 < max(feature_diffs) < FEATURE_RTOL, feature_diffs


def test_json_report_records_the_precision_and_emulated_bf16_warns_once(
    tiny_checkpoint, tiny_data, capsys, caplog, monkeypatch
):
    path, _ = tiny_checkpoint
    video = demo_val(tiny_data)[0]
    # this machine's profile (cached), made to read as a CPU that emulates bf16, as this project's EPYC does
    emulated = dataclasses.replace(
        machine.cpu_profile(), cpu="Test CPU", bf16_native=False, fp32_gflops=80.0, bf16_gflops=10.0
    )
    monkeypatch.setattr(machine, "cpu_profile", lambda refresh=False: emulated)
    args = ["predict", "--weights", str(path), "--views", "1x1", "--workers", "0", "--json", video]
    with caplog.at_level(logging.WARNING, logger="video_swin.engine.predict"):
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out)["precision"] == "fp32"  # the default
        assert not caplog.records
        for _ in range(2):
            assert main([*args, "--precision", "bf16"]) == 0
            out = json.loads(capsys.readouterr().out)
            assert out["precision"] == "bf16" and out["videos"][0]["error"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per process
    assert "Test CPU" in warnings[0] and "8.0x slower" in warnings[0] and "--precision fp32" in warnings[0]
    assert "\n" not in warnings[0]


def test_bf16_features_are_saved_as_float32(tiny_checkpoint, tiny_data, tmp_path):
    path, _ = tiny_checkpoint
    videos = demo_val(tiny_data)[:2]
    args = [
        "predict",
        "--weights",
        str(path),
        "--views",
        "1x1",
        "--workers",
        "0",
        "--precision",
        "bf16",
        "--out",
        str(tmp_path / "p.jsonl"),
        "--feature-stages",
        "all",
        *videos,
    ]
    assert main([*args, "--features", str(tmp_path / "feats")]) == 0
    npys = sorted((tmp_path / "feats").rglob("*.npy"))
    assert len(npys) == 2 * 3  # pooled + 2 stages per video
    assert all(np.load(p).dtype == np.float32 for p in npys)
    assert main([*args, "--features", str(tmp_path / "f.safetensors")]) == 0
    tensors = load_file(tmp_path / "f.safetensors")
    assert len(tensors) == 2 * 3 and {t.dtype for t in tensors.values()} == {torch.float32}
    with safe_open(tmp_path / "f.safetensors", "pt") as f:
        assert f.metadata()["precision"] == "bf16"
    np.testing.assert_array_equal(np.load(npys[0]), tensors[videos[0]].numpy())  # the same run, both ways


def test_bad_precision_is_a_one_line_usage_error(tiny_checkpoint, tiny_data, capsys):
    path, _ = tiny_checkpoint
    with pytest.raises(SystemExit) as info:
        main(["predict", "--weights", str(path), "--precision", "fp16", demo_val(tiny_data)[0]])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--precision" in err[0] and "fp16" in err[0], err
    model, cfg, classes = load_predictor(path)
    with pytest.raises(ValueError, match="precision"):  # the library call alike
        predict_videos(model, cfg, classes, demo_val(tiny_data)[:1], workers=0, precision="float16")
