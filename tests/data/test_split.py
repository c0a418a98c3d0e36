"""The validation split of ``data.val_annotations: null``: stratified, seeded, written as lists the reader reads."""

import math

import pytest

from video_swin.data.annotations import VideoRecord, clear_scan_cache, read_annotations
from video_swin.data.split import ensure_split, stratified_split, val_count
from video_swin.errors import ConfigError

SIZES = {"a": 1, "b": 2, "c": 3, "d": 7, "e": 10, "f": 25, "g with space": 40}


def records(sizes=SIZES):
    classes = list(sizes)
    return [VideoRecord(f"/v/{c}/{i:03d}.mp4", k) for k, c in enumerate(classes) for i in range(sizes[c])], classes


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_each_class_holds_out_its_rounded_share_at_least_one(fraction):
    recs, classes = records()
    split = stratified_split(recs, classes, fraction, seed=0)
    for k, c in enumerate(classes):
        n, held = SIZES[c], sum(r.label == k for r in split.val)
        expected = 0 if n == 1 else min(n - 1, max(1, math.floor(fraction * n + 0.5)))
        assert held == expected == val_count(n, fraction), (c, n, held)
        assert held + sum(r.label == k for r in split.train) == n
    assert not {r.path for r in split.val} & {r.path for r in split.train}
    assert val_count(10, 0.1) == 1 and val_count(25, 0.1) == 3 and val_count(40, 0.1) == 4 and val_count(2, 0.5) == 1


def test_the_seed_decides_the_draw():
    recs, classes = records()
    val = {seed: {r.path for r in stratified_split(recs, classes, 0.2, seed).val} for seed in (0, 1)}
    assert {r.path for r in stratified_split(list(reversed(recs)), classes, 0.2, 0).val} == val[0]  # order-free
    assert val[0] != val[1]
    # a class added later leaves the other classes' draws as they were
    more, more_classes = records({**SIZES, "h": 5})
    assert {r.path for r in stratified_split(more, more_classes, 0.2, 0).val if "/h/" not in r.path} == val[0]


def videos(root, sizes):
    for c, n in sizes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{i:03d}.mp4").write_bytes(b"")  # listed by name only; never decoded here
    clear_scan_cache()


def test_written_lists_read_back_as_the_split(tmp_path):
    root, folder = tmp_path / "videos", tmp_path / "run" / "split"
    videos(root, {"fading in": 4, "#tag": 3, "zoom": 5})  # a space, a name that starts a comment, repeated file names
    files = ensure_split(folder, root, root, classes=None, fraction=0.25, seed=0)
    assert "3 of 12 videos held out" in files.summary
    classes = (folder / "classes.txt").read_text().splitlines()
    assert classes == ["#tag", "fading in", "zoom"]
    train, val = (read_annotations(f, root) for f in (files.train, files.val))
    assert not train.missing and not val.missing and train.classes == val.classes == classes
    assert len(train.records) == 9 and len(val.records) == 3
    labels = {r.path: classes[r.label] for r in train.records + val.records}
    assert labels == {str(p): p.parent.name for p in root.rglob("*.mp4")}


def test_a_written_split_is_reused_not_drawn_again(tmp_path):
    root, folder = tmp_path / "videos", tmp_path / "split"
    videos(root, {"x": 6, "y": 6})
    first = ensure_split(folder, root, root, classes=None, fraction=0.5, seed=0)
    before = first.val.read_text()
    again = ensure_split(folder, root, root, classes=None, fraction=0.5, seed=1)  # another seed: the file decides
    assert again.val.read_text() == before and "reusing" in again.summary


def test_no_class_to_split_is_an_error(tmp_path):
    videos(tmp_path / "v", {"x": 1, "y": 1})
    with pytest.raises(ConfigError, match="no class .* has two videos"):
        ensure_split(tmp_path / "split", tmp_path / "v", tmp_path / "v", classes=None, fraction=0.1, seed=0)
