"""The demo dataset generator: layout, Kinetics CSVs, determinism, the script."""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from video_swin.data import DEMO_CLASSES, VideoDataset, ensure_demo_data, make_demo_data
from video_swin.data.demo import DEMO_MARKER, _render
from video_swin.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_demo_layout_csvs_and_determinism(tmp_path):
    out = make_demo_data(tmp_path / "a", seed=3, train_per_class=1, val_per_class=1, workers=1)
    assert len(DEMO_CLASSES) == 10 and "moving left" in DEMO_CLASSES
    with open(out / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["label", "youtube_id", "time_start", "time_end", "split"]
    assert sorted(r["label"] for r in rows) == sorted(DEMO_CLASSES)
    for r in rows:
        name = f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}.mp4"
        assert (out / "train" / r["label"] / name).stat().st_size > 0
    again = make_demo_data(tmp_path / "b", seed=3, train_per_class=1, val_per_class=1, workers=2)
    assert _hashes(out) == _hashes(again)
    other = make_demo_data(tmp_path / "c", seed=4, train_per_class=1, val_per_class=1, workers=1)
    assert _hashes(other) != _hashes(out)


def test_demo_videos_load_in_both_orientations(tmp_path):
    out = make_demo_data(tmp_path / "d", seed=0, train_per_class=1, val_per_class=1, workers=1)
    train = VideoDataset(out / "train.csv", out, clip_len=8, frame_interval=4, crop_size=32, flip=False)
    assert train.classes == sorted(DEMO_CLASSES)
    val = VideoDataset(out / "val.csv", out, mode="val", clip_len=8, frame_interval=4, crop_size=32,
                       classes=train.classes)
    sizes = set()
    for i in range(len(val)):
        sample = val[i]
        assert sample["valid"] and sample["video"].shape == (1, 3, 8, 32, 32)
        sizes.add(train.decoder.get_frames(val.records[i].path, [0]).shape[1:3])
    assert any(h > w for h, w in sizes) and any(h < w for h, w in sizes)  # portrait and landscape
    assert train.decoder.num_frames(train.records[0].path) >= 32
    torch.testing.assert_close(train[0]["video"], train[0]["video"])


@pytest.mark.parametrize("motion", ["move_x", "move_y", "rotate", "zoom", "fade"])
def test_second_class_of_a_pair_is_the_first_played_backwards(motion):
    forward, _ = _render(np.random.default_rng(5), motion, backward=False)
    backward, _ = _render(np.random.default_rng(5), motion, backward=True)
    def changed(a, b):  # fraction of pixels far beyond the noise (std 4) apart
        return (np.abs(a.astype(int) - b).max(-1) > 40).mean()

    assert changed(forward[::-1], backward) < 0.5 * changed(forward, backward)  # only noise and jitter differ


def test_ensure_demo_data_generates_once(tmp_path):
    root = tmp_path / "demo"
    assert ensure_demo_data(root, train_per_class=1, val_per_class=1, workers=1) == root
    stamp = os.path.getmtime(root / "train.csv")
    ensure_demo_data(root)
    assert os.path.getmtime(root / "train.csv") == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-")]  # no leftovers
    assert (root / DEMO_MARKER).is_file()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    with pytest.raises(ConfigError, match="busy is not empty and holds no demo data"):
        ensure_demo_data(tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["something"]  # nothing written


def test_script_help_and_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = str(REPO / "scripts" / "make_demo_data.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env, check=True)
    assert "--seed" in out.stdout and "--out" in out.stdout
    subprocess.run(
        [sys.executable, script, "--out", str(tmp_path / "s"), "--train-per-class", "1", "--val-per-class", "1"],
        capture_output=True, text=True, env=env, check=True,
    )
    assert (tmp_path / "s" / "val.csv").is_file()


def test_demo_data_is_never_generated_into_a_mistyped_root(tmp_path):
    demo = tmp_path / "data" / "demo"
    annotations = (demo / "train.csv", demo / "val.csv")  # what the config reads
    typo = tmp_path / "data" / "dmeo"
    with pytest.raises(ConfigError, match=f"into {typo}, but the annotations {demo / 'train.csv'} are not in"):
        ensure_demo_data(typo, annotations=annotations, train_per_class=1, val_per_class=1, workers=1)
    assert not (tmp_path / "data").exists()  # measured: 1,200 videos written into the mistyped folder
    # A real dataset's folder given by mistake: annotations inside it, but no marker and no demo CSVs.
    kinetics = tmp_path / "k400"
    (kinetics / "videos").mkdir(parents=True)
    (kinetics / "videos" / "clip.mp4").write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"demo data folder {kinetics} is not empty") as info:
        ensure_demo_data(kinetics, annotations=(kinetics / "train.csv", None))
    assert "\n" not in str(info.value) and [p.name for p in kinetics.iterdir()] == ["videos"]
    # The configured folder: generated, marked, and found again without regenerating.
    assert ensure_demo_data(demo, annotations=annotations, train_per_class=1, val_per_class=1, workers=1) == demo
    assert (demo / DEMO_MARKER).is_file() and (demo / "val.csv").is_file()


def test_a_marked_demo_folder_without_its_csvs_is_generated_again(tmp_path):
    root = make_demo_data(tmp_path / "demo", seed=1, train_per_class=1, val_per_class=1, workers=1)
    before = _hashes(root)
    (root / "train.csv").unlink()
    ensure_demo_data(root, seed=1, train_per_class=1, val_per_class=1, workers=1)
    assert _hashes(root) == before
