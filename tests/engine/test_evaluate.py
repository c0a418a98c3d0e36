"""scripts/evaluate.py: multi-view scores recomputed by hand, 1 vs 2 processes, broken files, official layouts."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from video_swin.checkpoints import load_model
from video_swin.data import VideoDataset
from video_swin.engine import score_views

from .conftest import ACCELERATE, REPO

SCRIPT = str(REPO / "scripts" / "evaluate.py")
BROKEN = "BROKENvideo_000000_000010.mp4"
# 2 clips x 3 crops = 6 views in chunks of 5: a chunk spans two videos of a batch.
EVAL_SETS = ["eval.batch_size=2", "eval.max_views_per_forward=5", "data.max_bad_fraction=0.5"]


def run_eval(args, launcher=()):
    cmd = [*launcher, SCRIPT, *args] if launcher else [sys.executable, SCRIPT, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def read_predictions(folder):
    with open(folder / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def broken_data(tiny_data, tmp_path_factory):
    """The tiny dataset plus one val row whose file is random bytes: 11 val videos (not a multiple of 2 x 2)."""
    root = tmp_path_factory.mktemp("with_broken") / "data"
    shutil.copytree(tiny_data, root)
    (root / "val" / "moving up" / BROKEN).write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with open(root / "val.csv", "a") as f:
        f.write("moving up,BROKENvideo,0,10,val\n")
    return root


def data_sets(sets, root):
    """The checkpoint's config overrides, pointed at another copy of the data."""
    moved = {"data.root": root, "data.train_annotations": f"{root}/train.csv", "data.val_annotations": f"{root}/val.csv"}
    kept = [s for s in sets if s.split("=", 1)[0] not in moved]
    return kept + [f"{k}={v}" for k, v in moved.items()]


def load_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_process(tiny_checkpoint, broken_data, tmp_path_factory):
    path, sets = tiny_checkpoint
    out = tmp_path_factory.mktemp("eval1")
    result = run_eval(["--config", "demo.yaml", "--checkpoint", str(path), "--views", "2x3", "--out", str(out),
                       "--set", *data_sets(sets, broken_data), *EVAL_SETS])
    return out, result


@pytest.mark.slow
def test_one_and_two_processes_score_every_video_once_and_agree(one_process, tiny_checkpoint, broken_data, tmp_path):
    out1, result = one_process
    path, sets = tiny_checkpoint
    out2 = tmp_path / "eval2"
    run_eval(["--config", "demo.yaml", "--checkpoint", str(path), "--views", "2x3", "--out", str(out2),
              "--set", *data_sets(sets, broken_data), *EVAL_SETS],
             launcher=(ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29581"))
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (out1, out2))
    listed = VideoDataset(broken_data / "val.csv", broken_data, mode="test").records
    broken_path = next(r.path for r in listed if r.path.endswith(BROKEN))
    for m, n in ((m1, 1), (m2, 2)):
        assert m["num_processes"] == n
        assert (m["num_videos"], m["num_failed"], m["failed"]) == (10, 1, [broken_path])
        assert m["views"] == "2x3" and m["checkpoint"] == str(path) and m["config"] == "demo.yaml"
        assert m["videos_per_s"] > 0
    for key in ("top1", "top5", "mean_class_accuracy"):
        assert m1[key] == pytest.approx(m2[key], abs=1e-6), key
    rows1, rows2 = read_predictions(out1), read_predictions(out2)
    assert [r["path"] for r in rows1] == [r.path for r in listed]  # each video once, in annotation order
    assert [r["path"] for r in rows2] == [r["path"] for r in rows1]
    for a, b in zip(rows1, rows2):
        assert (a["label"], a["pred"], a["top5"]) == (b["label"], b["pred"], b["top5"]), a["path"]
        if a["score"]:
            assert float(a["score"]) == pytest.approx(float(b["score"]), abs=2e-4)
    failed_row = next(r for r in rows1 if r["path"] == broken_path)
    assert (failed_row["label"], failed_row["pred"], failed_row["top5"]) == ("moving up", "", "")
    assert "could not be decoded" in result.stdout and (out1 / "confusion_matrix.png").stat().st_size > 0


@pytest.mark.slow
def test_multi_view_average_matches_a_recomputation_view_by_view(one_process, tiny_checkpoint, broken_data):
    out, _ = one_process
    path, _ = tiny_checkpoint
    model, meta = load_model(path)
    model.eval()
    classes = meta["classes"]
    rows = {r["path"]: r for r in read_predictions(out)}
    ds = VideoDataset(broken_data / "val.csv", broken_data, mode="test", num_clips=2, num_crops=3, clip_len=4,
                      frame_interval=2, crop_size=32, short_side=32, classes=classes)
    for i in (0, 4, 9):
        sample = ds[i]
        assert sample["video"].shape == (6, 3, 4, 32, 32)
        with torch.no_grad():
            probs = torch.stack([model(view[None])[0].softmax(-1) for view in sample["video"]]).mean(0)  # (K,)
        row = rows[sample["path"]]
        top = probs.topk(5)
        assert row["pred"] == classes[top.indices[0]]
        assert float(row["score"]) == pytest.approx(top.values[0].item(), abs=1e-4)
        assert row["top5"].split("|") == [classes[j] for j in top.indices.tolist()]
    # The recomputation must be able to tell views apart: scoring any single view instead of the
    # mean would miss the score check above (tolerance 1e-4) by a wide margin.
    with torch.no_grad():
        per_view = model(ds[0]["video"]).softmax(-1)
    assert (per_view - per_view.mean(0)).abs().max(1).values.min() > 1e-3


@pytest.mark.parametrize("average", ["prob", "logit"])
def test_score_views_in_chunks_equals_the_mean_over_single_views(average):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 7))
    videos = torch.randn(3, 4, 3, 2, 4, 4)  # (B, V, 3, T, H, W)
    got = score_views(model, videos, max_views=5, average=average)
    for b in range(3):
        logits = torch.stack([model(view[None])[0] for view in videos[b]])  # (V, K)
        want = logits.softmax(-1).mean(0) if average == "prob" else logits.mean(0)
        torch.testing.assert_close(got[b], want)


@pytest.mark.slow
def test_official_video_swin_layout_gives_the_same_report(one_process, tiny_checkpoint, broken_data, tmp_path):
    out1, _ = one_process
    path, sets = tiny_checkpoint
    state = load_file(path)  # mmaction layout: backbone.* + cls_head.fc_cls.*, no sidecar
    official = {(k.replace("head.", "cls_head.fc_cls.") if k.startswith("head.") else f"backbone.{k}"): v
                for k, v in state.items()}
    torch.save({"state_dict": official}, tmp_path / "swin_official.pth")
    out = tmp_path / "eval_official"
    run_eval(["--config", "demo.yaml", "--checkpoint", str(tmp_path / "swin_official.pth"), "--views", "2x3",
              "--out", str(out), "--set", *data_sets(sets, broken_data), *EVAL_SETS])
    rows, want = read_predictions(out), read_predictions(out1)
    assert [(r["path"], r["pred"], r["top5"]) for r in rows] == [(r["path"], r["pred"], r["top5"]) for r in want]


def test_usage_mistakes_exit_2_with_one_line(tiny_checkpoint, tmp_path, capsys):
    script = load_script()
    path, sets = tiny_checkpoint
    wrong_arch = [s for s in sets if not s.startswith("model.embed_dim=")] + ["model.embed_dim=16"]
    cases = [
        (["--checkpoint", str(tmp_path / "nope.safetensors"), "--set", *sets], "--checkpoint: file not found"),
        (["--checkpoint", str(path), "--views", "4x2", "--set", *sets], "--views: expected CLIPSxCROPS"),
        (["--checkpoint", str(path), "--set", *sets, "eval.average=mean"], "eval.average: must be one of"),
        (["--checkpoint", str(path), "--set", *wrong_arch], "the model expects"),
    ]
    for args, message in cases:
        assert script.main(["--config", "demo.yaml", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
