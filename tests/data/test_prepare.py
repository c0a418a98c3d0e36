"""``video-swin prepare``: layouts, re-encoded videos that keep every frame, broken files, resume, isolation."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import BY_NAME, read_indices, write

from video_swin.data import get_decoder, read_annotations
from video_swin.data import prepare as prepare_module
from video_swin.data.frame_index import build_frame_index, get_frame_index
from video_swin.data.prepare import output_size, prepare

TRAIN = {"abcdefghijk_000010_000020": ("h264_vfr", "running"), "bbbbbbbbbbb_000000_000010": ("mpeg4_bframes_avi", "jumping jacks")}
VAL = {"ccccccccccc_000005_000015": ("h264_rotated", "running"), "ddddddddddd_000001_000011": ("big", "jumping jacks")}


@pytest.fixture(scope="module")
def kinetics_src(tmp_path_factory) -> Path:
    """A Kinetics download layout: annotations/{train,val}.csv, videos in split folders; one truncated, one missing."""
    src = tmp_path_factory.mktemp("k400")
    made = tmp_path_factory.mktemp("made")
    encodings = {"big": replace(BY_NAME["h264_bframes"], name="big", size=(96, 128), num_frames=40)}
    for split, rows in (("train", TRAIN), ("val", VAL)):
        (src / split).mkdir()
        for stem, (enc_name, _) in rows.items():
            enc = encodings.get(enc_name) or BY_NAME[enc_name]
            made_file = write(enc, made)
            shutil.copy(made_file, src / split / f"{stem}{enc.suffix}")
    long = write(BY_NAME["h264_bframes"], made)
    (src / "val" / "eeeeeeeeeee_000000_000010.mp4").write_bytes(long.read_bytes()[:1500])  # truncated
    (src / "annotations").mkdir()
    for split, rows in (("train", TRAIN), ("val", VAL)):
        lines = ["label,youtube_id,time_start,time_end,split"]
        for stem, (_, label) in rows.items():
            yid, start, end = stem.rsplit("_", 2)
            lines.append(f"{label},{yid},{int(start)},{int(end)},{split}")
        if split == "val":
            lines += ["running,eeeeeeeeeee,0,10,val", "running,zzzzzzzzzzz,0,10,val"]
        (src / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return src


@pytest.fixture(scope="module")
def prepared(kinetics_src, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out")
    counts = prepare(kinetics_src, out, short_side=64, keyframe_interval=8, jobs=2)
    return out, counts


def test_outputs_and_tables(prepared):
    out, counts = prepared
    assert counts == {"prepared": 4, "broken": 2, "failed": 0}
    rows = list(csv.DictReader(open(out / "train.csv")))
    assert [r["youtube_id"] for r in rows] == ["abcdefghijk", "bbbbbbbbbbb"]
    assert rows[0] == {"label": "running", "youtube_id": "abcdefghijk", "time_start": "10", "time_end": "20",
                       "split": "train"}  # fmt: skip
    broken = {Path(r["path"]).stem: r["reason"] for r in csv.DictReader(open(out / "broken.csv"))}
    assert set(broken) == {"eeeeeeeeeee_000000_000010", "zzzzzzzzzzz_000000_000010"}
    assert "cannot open it" in broken["eeeeeeeeeee_000000_000010"] and "not found" in broken["zzzzzzzzzzz_000000_000010"]
    # the training configs read the tables as they are (data.root: OUT)
    for split, expected in (("train", TRAIN), ("val", VAL)):
        parsed = read_annotations(out / f"{split}.csv", out)
        assert [Path(r.path).stem for r in parsed.records] == list(expected) and not parsed.missing


@pytest.mark.parametrize("stem", [*TRAIN, *VAL])
def test_every_frame_survives_re_encoding(prepared, stem):
    out, _ = prepared
    enc_name, label = {**TRAIN, **VAL}[stem]
    path = next((out).glob(f"*/{label}/{stem}.mp4"))
    index = build_frame_index(path)
    n = {"big": 40}.get(enc_name) or BY_NAME[enc_name].num_frames
    assert len(index) == n and index.rotation == 0 and index.codec == "h264" and not index.open_gop
    assert np.all(np.diff(index.keyframes) == 8) and index.keyframes[0] == 0
    frames = get_decoder("pyav").get_frames(path, list(range(n)))
    height, width = frames.shape[1:3]
    if enc_name == "h264_rotated":  # shown upright now: turn back to read the painted cells
        frames = torch.rot90(frames, -1, dims=(1, 2))
    assert read_indices(frames) == list(range(n))  # every frame, in order, none lost or doubled
    if enc_name == "h264_rotated":  # stored 64x48 with a 90 degree tag: now upright 48x64
        assert (height, width) == (64, 48)
    if enc_name == "big":
        assert (width, height) == output_size(128, 96, 64) == (86, 64)
    if enc_name == "h264_vfr":  # timestamps kept: the same irregular steps of 1, 2 and 3 frame durations
        assert len(set(np.diff(index.pts).tolist())) == 3


def test_sidecar_index_is_used(prepared, monkeypatch):
    out, _ = prepared
    path = next(out.glob("train/running/*.mp4"))
    assert Path(f"{path}.index.npz").is_file()

    def no_build(_):
        raise AssertionError("the sidecar should have been used")

    monkeypatch.setattr("video_swin.data.frame_index.build_frame_index", no_build)
    assert len(get_frame_index(path)) == BY_NAME["h264_vfr"].num_frames


def test_a_second_run_does_nothing_and_an_interrupted_one_continues(kinetics_src, tmp_path):
    out = tmp_path / "out"
    prepare(kinetics_src, out, short_side=64, keyframe_interval=8, jobs=1)
    journal = out / ".prepare" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    # with --skip-failed nothing is done again; without, only the broken video is tried again
    again = {"prepared": 4, "broken": 2, "failed": 0}
    assert prepare(kinetics_src, out, short_side=64, keyframe_interval=8, jobs=1, skip_failed=True) == again
    assert journal.read_text().splitlines() == lines
    assert prepare(kinetics_src, out, short_side=64, keyframe_interval=8, jobs=1) == again
    retried = journal.read_text().splitlines()[len(lines):]
    assert [Path(json.loads(line)["src"]).stem for line in retried] == ["eeeeeeeeeee_000000_000010"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == stamps
    # as if stopped after the first video: the rest is done, the first is not redone
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # settings, one entry, a cut line
    first = Path(json.loads(lines[1])["dst"])
    before = first.stat().st_mtime_ns
    assert prepare(kinetics_src, out, short_side=64, keyframe_interval=8, jobs=1) == {"prepared": 4, "broken": 2, "failed": 0}
    assert first.stat().st_mtime_ns == before
    with pytest.raises(Exception, match="prepared with"):
        prepare(kinetics_src, out, short_side=128, keyframe_interval=8, jobs=1)


def test_a_crashing_or_hanging_decoder_costs_one_file(kinetics_src, tmp_path, monkeypatch):
    import prepare_faults  # noqa: PLC0415  (beside this file: the workers import it by name)

    monkeypatch.setattr(prepare_module, "prepare_one", prepare_faults.crash_or_hang)
    counts = prepare(kinetics_src, tmp_path / "out", short_side=64, jobs=2, timeout=3)
    assert counts == {"prepared": 2, "broken": 4, "failed": 2}
    broken = {Path(r["path"]).stem: r["reason"] for r in csv.DictReader(open(tmp_path / "out" / "broken.csv"))}
    assert "crashed (signal SIGSEGV)" in broken["abcdefghijk_000010_000020"]
    assert "longer than 3 s" in broken["bbbbbbbbbbb_000000_000010"]


def test_class_folders_and_lists_with_repeated_names(tmp_path):
    src = tmp_path / "src"
    made = write(BY_NAME["mpeg4_avi"], tmp_path)  # not VP9: its encoder fails once decord is loaded
    for label in ("a", "b"):
        (src / "train" / label).mkdir(parents=True)
        shutil.copy(made, src / "train" / label / "clip1.avi")  # the same name in two classes
    counts = prepare(src, tmp_path / "out", jobs=1)
    assert counts == {"prepared": 2, "broken": 0, "failed": 0}
    parsed = read_annotations(tmp_path / "out" / "train.csv", tmp_path / "out")
    assert sorted(r.label for r in parsed.records) == ["a", "b"] and len({r.path for r in parsed.records}) == 2
    # an mmaction list (label indices, classes.txt beside it), without re-encoding
    (src / "list.txt").write_text("train/a/clip1.avi 0\ntrain/b/clip1.avi 1\n")
    (src / "classes.txt").write_text("a\nb\n")
    counts = prepare(src, tmp_path / "out2", annotations={"train": str(src / "list.txt")}, reencode=False, jobs=1)
    assert counts == {"prepared": 2, "broken": 0, "failed": 0}
    assert not list((tmp_path / "out2").rglob("*.mp4"))


def test_cli(kinetics_src, tmp_path):
    done = subprocess.run([sys.executable, "-m", "video_swin.cli", "prepare", str(kinetics_src), str(tmp_path / "o"),
                           "--short-side", "64", "--jobs", "2"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 videos ready, 2 broken" in done.stdout and "data.root=" in done.stdout
    sharded = subprocess.run([sys.executable, "-m", "video_swin.cli", "prepare", str(kinetics_src), str(tmp_path / "o"),
                              "--short-side", "64", "--jobs", "2", "--shards", "--shard-size", "1"],
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert "4 shards in" in sharded.stdout and "data.shards=" in sharded.stdout
    assert sorted(p.name for p in (tmp_path / "o" / "shards").iterdir()) == [
        "train-000000.tar", "train-000001.tar", "train.json", "val-000000.tar", "val-000001.tar", "val.json"]
    bad = subprocess.run([sys.executable, "-m", "video_swin.cli", "prepare", str(tmp_path / "nothing"), str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "not a folder" in bad.stderr
