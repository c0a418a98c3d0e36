"""The scan of a dataset root on hostile trees: symbolic link loops, huge roots, progress on slow scans."""

import os
import signal
import time
from contextlib import contextmanager

import pytest

from video_swin.data import annotations as ann_mod
from video_swin.data import read_annotations
from video_swin.data.annotations import scan_videos
from video_swin.errors import AnnotationError, ConfigError

HEADER = "label,youtube_id,time_start,time_end,split\n"


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _indexed(index) -> list[str]:
    return sorted(p for paths in index.by_name.values() for p in paths)


@contextmanager
def _deadline(seconds: int):
    """Fails the test instead of hanging (or eating memory) when the scan does not end."""

    def stop(*_):
        raise TimeoutError(f"the scan did not end within {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def tree(tmp_path):
    """``outer/root`` with 3 videos in 2 class folders and a text file; ``outer`` holds nothing else."""
    root = tmp_path / "outer" / "root"
    files = [_touch(root / "train" / "a" / "aaaaaaaaaaa_000000_000010.mp4"),
             _touch(root / "train" / "b" / "bbbbbbbbbbb_000000_000010.mp4"),
             _touch(root / "val" / "a" / "ccccccccccc_000000_000010.mp4")]  # fmt: skip
    _touch(root / "notes.txt")
    return root, sorted(str(f) for f in files)


def test_a_self_link_indexes_each_file_once_under_its_real_path(tree):
    root, files = tree
    os.symlink(".", root / "self")  # measured: each file indexed 31 times
    os.symlink(".", root / "train" / "again")
    with _deadline(30):
        index = scan_videos(root, refresh=True)
    assert _indexed(index) == files


@pytest.mark.parametrize("where", ["in_subfolders", "at_the_root"])
def test_sibling_up_links_end_quickly_and_index_each_file_once(tree, where):
    root, files = tree
    if where == "in_subfolders":  # two links back to the root from two sibling folders
        os.symlink("..", root / "train" / "up")
        os.symlink("..", root / "val" / "up")
    else:  # measured: two sibling links to the root's parent; the scan never ended, memory past 8 GB
        os.symlink("..", root / "up")
        os.symlink("..", root / "up2")
    start = time.monotonic()
    with _deadline(30):
        index = scan_videos(root, refresh=True)
    assert time.monotonic() - start < 5
    assert _indexed(index) == files  # links to the root or above it are not followed


def test_a_link_to_a_folder_elsewhere_is_followed(tree, tmp_path):
    root, files = tree
    elsewhere = _touch(tmp_path / "disk2" / "k400" / "ddddddddddd_000000_000010.mp4")
    os.symlink(elsewhere.parent, root / "more")
    os.symlink(root / "train", root / "alias")  # a second name of a folder already indexed
    index = scan_videos(root, refresh=True)
    assert _indexed(index) == sorted([*files, str(root / "more" / elsewhere.name)])


def test_rows_are_found_once_through_looping_links(tree, tmp_path):
    root, files = tree
    os.symlink(".", root / "self")
    os.symlink("..", root / "train" / "up")
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + "a,aaaaaaaaaaa,0,10,train\nb,bbbbbbbbbbb,0,10,train\n")
    with _deadline(30):
        parsed = read_annotations(csv, root)
    assert [r.path for r in parsed.records] == files[:2]  # no "several files match" for a looped name


def test_class_folders_skip_links_to_the_tree_or_above(tmp_path):
    root = tmp_path / "tree"
    _touch(root / "jumping" / "x.mp4")
    _touch(root / "running" / "y.mp4")
    os.symlink("..", root / "running" / "up")
    os.symlink(".", root / "self")  # not a class "self" holding every video
    os.symlink("..", root / "parent")
    with _deadline(30):
        parsed = read_annotations(root)
    assert parsed.classes == ["jumping", "running"]
    assert [os.path.basename(r.path) for r in parsed.records] == ["x.mp4", "y.mp4"]


@pytest.mark.parametrize("limit", ["max_folders", "max_entries"])
def test_a_root_past_the_limits_is_an_error_naming_it(tmp_path, limit):
    root = tmp_path / "huge"
    for i in range(30):
        _touch(root / f"f{i:02d}" / "clip.mp4")
    with pytest.raises(AnnotationError, match=f"dataset root {root}: more than 10 (folders|entries)") as info:
        scan_videos(root, refresh=True, **{limit: 10})
    assert isinstance(info.value, ConfigError)  # the command line's exit 2, one line
    assert "\n" not in str(info.value)
    assert len(_indexed(scan_videos(root, refresh=True))) == 30  # the default limits are far above


def test_a_slow_scan_shows_progress_on_the_main_process_only(tree, capsys, monkeypatch, caplog):
    root, _ = tree
    monkeypatch.setattr(ann_mod, "SCAN_PROGRESS_AFTER_S", 0.0)  # every scan counts as slow
    monkeypatch.delenv("RANK", raising=False)
    with caplog.at_level("INFO", logger="video_swin.data.annotations"):
        scan_videos(root, refresh=True)
    assert f"scanning {root}" in capsys.readouterr().err
    assert any("indexed 3 video files in" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("RANK", "1")  # another process of the launch: no second bar
    scan_videos(root, refresh=True)
    assert "scanning" not in capsys.readouterr().err


def test_a_fast_scan_prints_nothing(tree, capsys):
    root, _ = tree
    scan_videos(root, refresh=True)
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_folder_is_skipped_with_a_warning(tree, caplog):
    root, files = tree
    locked = root / "val"
    locked.chmod(0)
    try:
        with caplog.at_level("WARNING"):
            index = scan_videos(root, refresh=True)
    finally:
        locked.chmod(0o755)
    assert _indexed(index) == files[:2]
    assert any(f"cannot list {locked}" in r.getMessage() for r in caplog.records)
