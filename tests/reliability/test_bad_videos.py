"""Broken videos and decoders that crash or hang: named once per epoch with a reason, batches keep their shape."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.data.video_files import textured_frames, write_mp4
from video_swin.data import BrokenVideoLog, DecodeError, VideoDataset, get_decoder
from video_swin.data.collate import collate
from video_swin.data.isolated import IsolatedDecoder

from .broken_videos import HOSTILE, REASONS, HostileDecoder, add_bad_videos, video_name

CLIP = {"clip_len": 4, "frame_interval": 2, "crop_size": 16, "max_bad_fraction": 1.0}
BROKEN = [k for k, reason in REASONS.items() if reason is not None]


def _good_videos(root: Path, split: str, count: int) -> None:
    csv = root / f"{split}.csv"
    rows = []
    for i in range(count):
        youtube_id = f"good{i:07d}"
        write_mp4(root / split / f"c{i % 2}" / video_name(youtube_id), textured_frames(24, seed=i), gop=8)
        rows.append(f"c{i % 2},{youtube_id},0,10,{split}\n")
    csv.write_text("label,youtube_id,time_start,time_end,split\n" + "".join(rows))


@pytest.fixture
def bad_set(tmp_path):
    """7 good videos, a one-frame video and one of each broken kind: 16 rows, 8 of them broken."""
    root = tmp_path / "data"
    _good_videos(root, "train", 7)
    paths = add_bad_videos(root, "train", list(REASONS))
    return root / "train.csv", root, paths


def _broken_log_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "video_swin.data.broken" and r.levelno >= logging.WARNING]


def _assert_named_once_with_reason(message: str, paths: dict[str, Path], kinds) -> None:
    lines = message.splitlines()[1:]  # "epoch N: K video(s) could not be decoded:" then one line per video
    assert len(lines) == len(kinds), message
    for kind in kinds:
        expected = f"  {paths[kind]} ("
        named = [line for line in lines if line.startswith(expected)]
        assert len(named) == 1, (kind, message)
        reason = named[0][len(expected) :]
        assert reason != "no reason given)" and (REASONS.get(kind) or HOSTILE.get(kind, "")) in reason, (kind, reason)


@pytest.mark.parametrize("decode_timeout", [None, 20.0], ids=["in_worker", "isolated"])
def test_training_replaces_and_names_every_kind_once_per_epoch(bad_set, caplog, decode_timeout):
    csv, root, paths = bad_set
    ds = VideoDataset(csv, root, decode_timeout=decode_timeout, **CLIP)
    paths["missingatruntime"].unlink()  # listed and found at start, gone when it is read
    log = BrokenVideoLog(len(ds), max_bad_fraction=1.0)
    with caplog.at_level(logging.WARNING):
        for epoch in range(2):
            ds.set_epoch(epoch)
            for batch in DataLoader(ds, batch_size=4, num_workers=2, shuffle=False, collate_fn=collate):
                assert batch["video"].shape == (4, 3, 4, 16, 16) and bool(batch["valid"].all())
                log.update(batch)
            assert log.end_epoch(epoch) == len(BROKEN)
    messages = _broken_log_records(caplog)
    assert len(messages) == 2 and messages[0].startswith("epoch 0: 8 video(s)") and messages[1].startswith("epoch 1:")
    for message in messages:
        _assert_named_once_with_reason(message, paths, BROKEN)
    assert str(paths["oneframe"]) not in " ".join(messages)


def test_evaluation_marks_names_and_keeps_shapes(bad_set, caplog):
    csv, root, paths = bad_set
    ds = VideoDataset(csv, root, mode="test", num_clips=2, num_crops=3, **CLIP)
    paths["missingatruntime"].unlink()
    log = BrokenVideoLog(len(ds), max_bad_fraction=None)
    valid = {}
    with caplog.at_level(logging.WARNING):
        for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate):
            assert batch["video"].shape == (4, 6, 3, 4, 16, 16)
            valid.update(zip(batch["path"], batch["valid"].tolist()))
            log.update(batch)
        log.end_epoch("val")
    assert {p for p, ok in valid.items() if not ok} == {str(paths[k]) for k in BROKEN}
    (message,) = _broken_log_records(caplog)
    assert message.startswith("val: 8 video(s) could not be decoded")
    _assert_named_once_with_reason(message, paths, BROKEN)


# -- a decoder that crashes or hangs ---------------------------------------------------------------

def _children() -> list[int]:
    """Live (non-zombie) child processes of this process."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                out.append(int(entry))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_isolated_decoder_survives_crash_exit_and_hang(tmp_path):
    good = write_mp4(tmp_path / "good.mp4", textured_frames(20), gop=5)
    hostile = {name: write_mp4(tmp_path / f"{name}.mp4", textured_frames(20), gop=5) for name in ("CRASH", "EXIT", "HANG")}
    before = set(_children())
    decoder = IsolatedDecoder(HostileDecoder(get_decoder("decord")), timeout=1.5)
    expected = get_decoder("decord").get_frames(good, [0, 7, 19])
    assert torch.equal(decoder.get_frames(good, [0, 7, 19]), expected)
    reasons = {"CRASH": "crashed (killed by signal SIGSEGV)", "EXIT": "crashed (exit code 7)",
               "HANG": "did not finish within 1.5 s"}
    for name, path in hostile.items():
        start = time.monotonic()
        with pytest.raises(DecodeError) as info:
            decoder.get_frames(path, [0])
        assert info.value.path == str(path) and reasons[name] in info.value.reason
        assert time.monotonic() - start < 6
        assert torch.equal(decoder.get_frames(good, [0, 7, 19]), expected)  # a fresh helper took over
    with pytest.raises(DecodeError, match="empty file"):
        (tmp_path / "empty.mp4").write_bytes(b"")
        decoder.get_frames(tmp_path / "empty.mp4", [0])
    with pytest.raises(ValueError, match=r"\[0, 20\)"):  # a bad argument stays a bad argument
        decoder.get_frames(good, [25])
    os.kill(decoder._helper.pid, signal.SIGKILL)  # dies between two videos: neither is blamed
    deadline = time.monotonic() + 10  # on a loaded machine the kill can take a moment to land
    while decoder._helper.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert torch.equal(decoder.get_frames(good, [0, 7, 19]), expected)
    frames, indices = decoder.read(good, lambda n: np.arange(n - 3, n))  # a closure: indices asked for remotely
    assert indices.tolist() == [17, 18, 19] and torch.equal(frames, get_decoder("decord").get_frames(good, [17, 18, 19]))
    decoder.close()
    assert set(_children()) <= before  # nothing left running or unreaped


def test_without_isolation_the_same_crash_kills_the_worker(tmp_path):
    path = write_mp4(tmp_path / "CRASH.mp4", textured_frames(8), gop=4)
    ds = VideoDataset([path], mode="test", decoder=HostileDecoder(get_decoder("decord")), **CLIP)
    with pytest.raises(RuntimeError, match="DataLoader worker .* (killed by signal|exited unexpectedly)"):
        list(DataLoader(ds, batch_size=1, num_workers=1))


@pytest.mark.slow
def test_training_skips_and_names_files_that_crash_or_hang_the_decoder(bad_set, caplog):
    csv, root, _ = bad_set
    paths = add_bad_videos(root, "train", list(HOSTILE))
    ds = VideoDataset(csv, root, decoder=HostileDecoder(get_decoder("decord")), decode_timeout=2.0, **CLIP)
    log = BrokenVideoLog(len(ds), max_bad_fraction=1.0)
    hostile_paths = {str(p) for p in paths.values()}
    with caplog.at_level(logging.WARNING):
        batches = 0
        for batch in DataLoader(ds, batch_size=3, num_workers=2, drop_last=True, collate_fn=collate):
            assert batch["video"].shape == (3, 3, 4, 16, 16) and bool(batch["valid"].all())
            assert not hostile_paths & set(batch["path"])  # never returned as a sample
            log.update(batch)
            batches += 1
        log.end_epoch(0)
    assert batches == len(ds) // 3
    assert hostile_paths <= set(log.paths)
    (message,) = _broken_log_records(caplog)
    for kind, path in paths.items():
        assert f"  {path} ({HOSTILE[kind]}" in message, message


# -- end to end: scripts/train.py with broken files and a hostile decoder in train and val ----------

def _blocks(stderr: str, title: str) -> list[list[str]]:
    """The lines naming videos under each broken-video log line of the pass ``title`` ("epoch 0", "val", ...)."""
    lines, out = stderr.splitlines(), []
    pattern = re.compile(rf"^WARNING video_swin\.data\.broken: {re.escape(title)}: (\d+) video\(s\) could not be decoded:$")
    for i, line in enumerate(lines):
        if m := pattern.match(line):
            out.append(lines[i + 1 : i + 1 + int(m.group(1))])
    return out


@pytest.mark.slow
def test_a_run_with_broken_crashing_and_hanging_files_completes_and_names_them(tiny_data, tmp_path):
    import json
    import shutil

    from .conftest import run_faulty, tiny_overrides

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    kinds = [k for k in BROKEN if k != "missingatruntime"] + ["oneframe", *HOSTILE]
    bad = {split: add_bad_videos(root, split, kinds, label="moving up") for split in ("train", "val")}
    with open(root / "val.csv", "a") as f:
        f.write("moving up,NOTTHERE,0,10,val\n")  # missing before the run starts: reported and skipped
    out = tmp_path / "run"
    # 20 demo videos + 10 added rows in batches of 5: every video is met in each of the 2 epochs.
    sets = tiny_overrides(root, out, **{"data.num_workers": 2, "data.decode_timeout": 2, "data.max_bad_fraction": 0.9,
                                        "train.batch_size": 5, "train.max_steps": 12, "train.save_every_steps": 6,
                                        "eval.every_epochs": 1})
    result = run_faulty(sets, "hostile_decoder")
    err = result.stderr
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert "NOTTHERE_000000_000010.mp4" in err and "were not found" in err
    broken = [k for k in kinds if k != "oneframe"]
    expected = {split: {str(bad[split][k]): (REASONS[k] if k in REASONS else HOSTILE[k]) for k in broken} for split in bad}
    train_blocks = _blocks(err, "epoch 0") + _blocks(err, "epoch 1")
    val_blocks = _blocks(err, "val") + _blocks(err, "eval 1x1")
    assert len(train_blocks) == 2 and len(val_blocks) == 3  # two epochs; val after each, then the final 1x1
    for split, blocks in (("train", train_blocks), ("val", val_blocks)):
        for block in blocks:
            named = {line.strip().split(" (", 1)[0]: line.strip().split(" (", 1)[1] for line in block}
            assert len(named) == len(block) == len(expected[split]), block  # each once
            for path, reason in expected[split].items():
                assert reason in named[path], (path, named[path])
    report = json.loads((out / "eval" / "metrics.json").read_text())
    assert report["num_failed"] == len(broken) and set(report["failed"]) == set(expected["val"])
    assert report["num_videos"] == 11  # 10 demo videos + the one-frame video
