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
from video_swin.data import (
    BrokenVideoLog,
    DecodeError,
    TooManyBrokenVideos,
    VideoDataset,
    get_decoder,
)
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


# -- more broken videos than max_bad_fraction, under DataLoader workers ----------------------------

LIMITED = {**CLIP, "max_bad_fraction": 0.25}  # 16 rows: a 5th distinct broken video is one too many


class _MeanModel(torch.nn.Module):
    """A stand-in classifier: (B, 3, T, H, W) -> (B, 3) channel means."""

    def forward(self, x):
        return x.float().mean((2, 3, 4))


def _assert_one_clean_error(error: BaseException, paths: dict[str, Path]) -> None:
    assert type(error) is TooManyBrokenVideos  # measured: RuntimeError("Caught TooManyBrokenVideos in DataLoader worker")
    message = str(error)
    assert "Caught" not in message and "Traceback" not in message and "worker" not in message
    assert message.startswith(f"{len(error.paths)} of 16 videos could not be decoded, more than max_bad_fraction=0.25")
    assert len(error.paths) >= 5 and message.rstrip().endswith("Fix or remove these files, or raise data.max_bad_fraction.")
    listed = [line.strip() for line in message.splitlines()[1:-1]]
    assert all(any(line.startswith(f"{p} (") for p in map(str, paths.values())) for line in listed), listed


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_broken_videos_in_training_stop_in_the_main_process(bad_set, workers):
    csv, root, paths = bad_set
    ds = VideoDataset(csv, root, **LIMITED)
    log = BrokenVideoLog(len(ds), ds.max_bad_fraction)  # as the trainer makes it
    loader = DataLoader(ds, batch_size=4, num_workers=workers, shuffle=False, collate_fn=collate)
    with pytest.raises(TooManyBrokenVideos) as info:
        for batch in loader:
            log.update(batch)
    _assert_one_clean_error(info.value, paths)


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_broken_videos_in_evaluation_stop_in_the_main_process(bad_set, workers):
    from accelerate import Accelerator

    from video_swin.engine.evaluate import predict_dataset

    csv, root, paths = bad_set
    ds = VideoDataset(csv, root, mode="test", **LIMITED)
    loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate)
    with pytest.raises(TooManyBrokenVideos) as info:
        predict_dataset(_MeanModel(), loader, Accelerator(cpu=True), desc="val")
    _assert_one_clean_error(info.value, paths)
    unlimited = VideoDataset(csv, root, mode="test", **CLIP)  # max_bad_fraction=1.0: scored, the broken ones marked
    loader = DataLoader(unlimited, batch_size=4, num_workers=workers, collate_fn=collate)
    result = predict_dataset(_MeanModel(), loader, Accelerator(cpu=True))
    assert len(result.index) == 16 and int((~result.valid).sum()) == 7  # "missingatruntime" is still there


def _mostly_broken_data(tiny_data, tmp_path: Path, split: str) -> Path:
    """A copy of the demo data whose ``split`` CSV keeps 3 good rows and gets 7 broken ones."""
    import shutil

    from video_swin.data import DEMO_CLASSES

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    lines = (root / f"{split}.csv").read_text().splitlines(keepends=True)
    (root / f"{split}.csv").write_text("".join(lines[:4]))
    add_bad_videos(root, split, [k for k in BROKEN if k != "missingatruntime"], label=lines[1].split(",")[0])
    (root / "classes.txt").write_text("".join(c + "\n" for c in DEMO_CLASSES))
    return root


def _cli(args: list[str]):
    import subprocess
    import sys

    from tests.engine.conftest import REPO

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "video_swin.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _assert_cli_stopped_cleanly(result) -> None:
    err = result.stderr
    assert result.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "Caught" not in err and "DataLoader worker" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "videos could not be decoded, more than max_bad_fraction=0.05" in errors[0], err[-3000:]
    assert err.rstrip().endswith("Fix or remove these files, or raise data.max_bad_fraction."), err[-3000:]


@pytest.mark.slow
def test_train_command_with_mostly_broken_videos_and_workers_stops_with_one_message(tiny_data, tmp_path):
    from .conftest import tiny_overrides

    root = _mostly_broken_data(tiny_data, tmp_path, "train")
    sets = tiny_overrides(root, tmp_path / "run", **{"data.num_workers": 2, "data.max_bad_fraction": 0.05,
                                                     "data.classes": root / "classes.txt", "eval.final": "false"})
    _assert_cli_stopped_cleanly(_cli(["train", "--config", "demo.yaml", "--set", *sets]))


@pytest.mark.slow
def test_evaluate_command_with_mostly_broken_videos_and_workers_stops_with_one_message(tiny_data, tiny_checkpoint,
                                                                                    tmp_path):
    path, sets = tiny_checkpoint  # made from tiny_data
    root = _mostly_broken_data(tiny_data, tmp_path, "val")
    moved = {"data.root": root, "data.train_annotations": root / "train.csv", "data.val_annotations": root / "val.csv",
             "data.num_workers": 2, "data.max_bad_fraction": 0.05}
    sets = [s for s in sets if s.split("=", 1)[0] not in moved] + [f"{k}={v}" for k, v in moved.items()]
    result = _cli(["evaluate", "--config", "demo.yaml", "--checkpoint", str(path), "--views", "1x1",
                   "--out", str(tmp_path / "eval"), "--set", *sets])
    _assert_cli_stopped_cleanly(result)
    assert not (tmp_path / "eval" / "metrics.json").exists()
