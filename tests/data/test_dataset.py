"""VideoDataset end to end on tiny mp4s: shapes, exact frames, determinism, broken files."""

import logging
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from video_files import clip_indices_of, index_frames, textured_frames, write_mp4

from video_swin.data import (
    BrokenVideoLog,
    ClipTransform,
    DecodeFailure,
    SharedRingCollate,
    TooManyBrokenVideos,
    VideoDataset,
    build_video_dataset,
)
from video_swin.data.collate import collate
from video_swin.data.sampling import eval_clip_indices, train_clip_indices
from video_swin.errors import TrainingError

HEADER = "label,youtube_id,time_start,time_end,split\n"
CLIP = {"clip_len": 4, "frame_interval": 3, "crop_size": 16}


def _kinetics(tmp_path, videos, split="train"):
    """Writes a Kinetics CSV for ``[(label, frames or a broken file's bytes/path)]``; returns (csv, root)."""
    root = tmp_path / "videos"
    rows = []
    for i, (label, content) in enumerate(videos):
        youtube_id = f"vid{i:08d}"
        path = root / split / label / f"{youtube_id}_000000_000010.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, np.ndarray):
            write_mp4(path, content, gop=8)
        else:
            shutil.copyfile(content, path)
        rows.append(f"{label},{youtube_id},0,10,{split}")
    csv = tmp_path / f"{split}.csv"
    csv.write_text(HEADER + "\n".join(rows) + "\n")
    return csv, root


@pytest.fixture
def index_set(tmp_path):
    """Four index videos (60, 45, 7 and 33 frames; one portrait) in two classes with spaces."""
    counts = [60, 45, 7, 33]
    sizes = [(24, 32), (32, 24), (24, 32), (24, 40)]
    videos = [(label, index_frames(n, h, w)) for label, n, (h, w) in zip(["class a", "class b"] * 2, counts, sizes)]
    csv, root = _kinetics(tmp_path, videos)
    return csv, root, counts


@pytest.fixture
def texture_set(tmp_path):
    videos = [(f"c{i % 3}", textured_frames(30 + 5 * i, seed=i)) for i in range(6)]
    return _kinetics(tmp_path, videos)


def test_train_sample_layout_and_exact_frames(index_set):
    csv, root, counts = index_set
    ds = VideoDataset(csv, root, seed=3, **CLIP)
    assert ds.classes == ["class a", "class b"] and len(ds) == 4
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i, n in enumerate(counts):
            sample = ds[i]
            assert sample["video"].shape == (3, 4, 16, 16) and sample["video"].dtype == torch.float32
            assert sample["label"] == i % 2 and sample["index"] == i and sample["path"] == ds.records[i].path
            assert sample["valid"] is True and sample["failures"] == []
            expected = train_clip_indices(n, 4, 3, np.random.default_rng([3, epoch, i, 0, 0]))
            assert clip_indices_of(sample["video"]) == expected.tolist()


@pytest.mark.parametrize("mode", ["val", "test"])
@pytest.mark.parametrize("num_clips,num_crops", [(1, 1), (3, 3), (2, 1)])
def test_eval_views_layout_and_exact_frames(index_set, mode, num_clips, num_crops):
    csv, root, counts = index_set
    ds = VideoDataset(csv, root, mode=mode, num_clips=num_clips, num_crops=num_crops, **CLIP)
    assert ds.num_views == num_clips * num_crops
    for i, n in enumerate(counts):
        video = ds[i]["video"]
        assert video.shape == (num_clips * num_crops, 3, 4, 16, 16) and video.dtype == torch.float32
        expected = eval_clip_indices(n, 4, 3, num_clips)
        for v in range(num_clips * num_crops):
            assert clip_indices_of(video[v]) == expected[v // num_crops].tolist()


def test_randomness_depends_only_on_seed_epoch_index(texture_set):
    csv, root = texture_set
    ds = VideoDataset(csv, root, **CLIP)
    ds.set_epoch(2)
    first = [ds[i]["video"] for i in range(len(ds))]
    assert all(torch.equal(first[i], ds[i]["video"]) for i in reversed(range(len(ds))))  # order does not matter
    loaders = [DataLoader(ds, batch_size=2, num_workers=w, shuffle=False, collate_fn=collate) for w in (0, 2)]
    single, multi = ([b["video"] for b in loader] for loader in loaders)
    assert all(torch.equal(a, b) for a, b in zip(single, multi))
    torch.testing.assert_close(torch.cat(single), torch.stack(first))
    ds.set_epoch(3)
    assert any(not torch.equal(first[i], ds[i]["video"]) for i in range(len(ds)))
    other = VideoDataset(csv, root, seed=1, **CLIP)
    other.set_epoch(2)
    assert any(not torch.equal(first[i], other[i]["video"]) for i in range(len(ds)))


def test_eval_and_train_agree_across_decoders(texture_set):
    csv, root = texture_set
    for mode in ("train", "val"):
        a, b = (VideoDataset(csv, root, mode=mode, decoder=name, **CLIP) for name in ("decord", "pyav"))
        for i in range(len(a)):
            torch.testing.assert_close(a[i]["video"], b[i]["video"], atol=0.05, rtol=0)


@pytest.fixture
def broken_set(tmp_path, broken_files):
    good = [("ok", textured_frames(20, seed=s)) for s in range(3)]
    bad = [("bad", broken_files[k]) for k in ("zero_bytes", "truncated", "truncated_data", "random_bytes", "text")]
    csv, root = _kinetics(tmp_path, good + bad + [("bad", broken_files["text"])])  # 3 good, 6 broken
    return csv, root


def test_training_replaces_broken_videos_and_reports_them(broken_set, caplog):
    csv, root = broken_set
    ds = VideoDataset(csv, root, max_bad_fraction=1.0, **CLIP)
    doomed = ds.records[-1].path  # exists now, deleted before it is read: missing at run time
    (root / "train" / "bad" / "vid00000008_000000_000010.mp4").unlink()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            samples = [ds[i] for i in range(len(ds))]
    for i, sample in enumerate(samples):
        assert sample["valid"] and sample["video"].shape == (3, 4, 16, 16)
        if i < 3:
            assert sample["failures"] == [] and sample["index"] == i
        else:
            assert ds.records[i].path in [f.path for f in sample["failures"]]
            assert all(isinstance(f, DecodeFailure) and f.path in ds.bad_files and f.reason for f in sample["failures"])
            assert sample["label"] == ds.classes.index("ok")  # replaced by a decodable video
    assert set(ds.bad_files) == {r.path for r in ds.records[3:]}
    assert "file not found" in ds.bad_files[doomed]
    for path in ds.bad_files:  # logged once per path, however often it is met
        assert sum(path in r.getMessage() for r in caplog.records) == 1
    again = VideoDataset(csv, root, max_bad_fraction=1.0, **CLIP)
    assert all(torch.equal(samples[i]["video"], again[i]["video"]) for i in range(3, len(ds)))  # deterministic


@pytest.mark.parametrize("output", ["float", "uint8"])
def test_evaluation_marks_broken_videos_instead_of_dropping_them(broken_set, output):
    csv, root = broken_set
    ds = VideoDataset(csv, root, mode="test", num_clips=2, num_crops=3, max_bad_fraction=1.0, output=output, **CLIP)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate)  # decoded and zero videos mixed: one dtype for both
    batches = list(loader)
    assert all(b["video"].dtype == (torch.uint8 if output == "uint8" else torch.float32) for b in batches)
    valid = torch.cat([b["valid"] for b in batches])
    assert valid.tolist() == [True] * 3 + [False] * 6
    assert all(b["video"].shape[1:] == (6, 3, 4, 16, 16) for b in batches)
    assert batches[1]["video"][1:].abs().sum() == 0
    unscored = [p for b in batches for p, ok in zip(b["path"], b["valid"]) if not ok]
    assert unscored == [r.path for r in ds.records[3:]]


def test_too_many_broken_videos_stop_with_the_paths(broken_set):
    csv, root = broken_set
    ds = VideoDataset(csv, root, **CLIP)  # default max_bad_fraction=0.05 of 9 videos: none allowed
    with pytest.raises(TooManyBrokenVideos, match=r"vid00000003_000000_000010.mp4 \(empty file") as info:
        ds[3]
    assert info.value.paths == [ds.records[3].path]


def test_broken_video_log_counts_failures_across_batches(broken_set):
    csv, root = broken_set
    ds = VideoDataset(csv, root, max_bad_fraction=1.0, **CLIP)
    log = BrokenVideoLog(len(ds), max_bad_fraction=1.0)
    for batch in DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate):
        log.update(batch)
    assert log.end_epoch(0) == 6 and sorted(log.paths) == sorted(r.path for r in ds.records[3:])
    assert all(log.reasons.values())  # every failure came with its reason
    strict = BrokenVideoLog(len(ds), max_bad_fraction=0.5)
    with pytest.raises(TooManyBrokenVideos):
        strict.add(DecodeFailure(path, reason) for path, reason in log.reasons.items())


@pytest.mark.parametrize("collate_fn,workers", [(collate, 0), (collate, 2), (SharedRingCollate(2), 2)],
                         ids=["collate-main", "collate-workers", "ring-workers"])  # fmt: skip
def test_batches_carry_one_flat_list_of_failure_records(broken_set, collate_fn, workers):
    csv, root = broken_set
    ds = VideoDataset(csv, root, max_bad_fraction=1.0, **CLIP)
    want = [[f.path for i in range(start, min(start + 4, len(ds))) for f in ds[i]["failures"]] for start in (0, 4, 8)]
    batches = list(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_fn))
    # In sample order, whichever way the batch came (paths: decord's messages hold the time of day).
    assert [[f.path for f in b["failures"]] for b in batches] == want
    assert all(f.reason for b in batches for f in b["failures"])
    assert {f.path for b in batches for f in b["failures"]} == {r.path for r in ds.records[3:]}
    assert all(isinstance(f, DecodeFailure) for b in batches for f in b["failures"])
    assert list(batches[0]) == ["video", "label", "index", "path", "valid", "failures"]


@pytest.mark.parametrize("mode,views", [("train", (1, 1)), ("test", (2, 3))])
def test_a_built_transform_gives_what_the_same_options_give(texture_set, mode, views):
    csv, root = texture_set
    num_clips, num_crops = views
    options = {"short_side": 20, "flip": True, "scale": (0.3, 1.0)} if mode == "train" else {"short_side": 18}
    transform = ClipTransform(mode, CLIP["crop_size"], num_crops=num_crops, **options)
    clip = {k: v for k, v in CLIP.items() if k != "crop_size"}
    built = VideoDataset(csv, root, mode=mode, num_clips=num_clips, transform=transform, **clip)
    spelled = VideoDataset(csv, root, mode=mode, num_clips=num_clips, num_crops=num_crops, **CLIP, **options)
    assert built.transform is transform and (built.crop_size, built.num_crops) == (16, num_crops)
    assert all(torch.equal(built[i]["video"], spelled[i]["video"]) for i in range(len(built)))
    with pytest.raises(ValueError, match="crop_size=24"):
        VideoDataset(csv, root, mode=mode, num_clips=num_clips, transform=transform, **clip, crop_size=24)
    with pytest.raises(TypeError, match="short_side"):
        VideoDataset(csv, root, mode=mode, num_clips=num_clips, transform=transform, short_side=20, **clip)


def test_unseen_label_at_evaluation_names_it(tmp_path, index_set):
    csv, root, _ = index_set
    train = VideoDataset(csv, root, **CLIP)
    val_csv, val_root = _kinetics(tmp_path / "v", [("class c", index_frames(10))], split="val")
    with pytest.raises(ValueError, match="'class c'"):
        VideoDataset(val_csv, val_root, mode="val", classes=train.classes, **CLIP)


def test_invalid_arguments(index_set):
    csv, root, _ = index_set
    with pytest.raises(ValueError, match="one clip"):
        VideoDataset(csv, root, num_clips=2, **CLIP)
    with pytest.raises(ValueError, match="mode"):
        VideoDataset(csv, root, mode="eval", **CLIP)
    with pytest.raises(IndexError):
        VideoDataset(csv, root, **CLIP)[4]


@pytest.mark.parametrize("mode,views", [("train", None), ("val", 2)])
def test_pytorchvideo_pipeline_yields_the_same_sample_layout(texture_set, mode, views):
    csv, root = texture_set
    kwargs = {"num_clips": 2} if views else {}
    ds = build_video_dataset(csv, root, mode=mode, pipeline="pytorchvideo", **CLIP, **kwargs)
    samples = list(ds)
    assert len(samples) == len(ds) == 6
    shape = (3, 4, 16, 16) if views is None else (views, 3, 4, 16, 16)
    for s in samples:
        assert s["video"].shape == shape and s["video"].dtype == torch.float32
        assert set(s) == {"video", "label", "index", "path", "valid", "failures"} and s["failures"] == []
    assert sorted(s["index"] for s in samples) == list(range(6))
    with pytest.raises(ValueError, match="pipeline"):
        build_video_dataset(csv, root, pipeline="dali")
    with pytest.raises(ValueError, match="native pipeline"):
        build_video_dataset(csv, root, pipeline="pytorchvideo", output="uint8", **CLIP)


def test_a_training_sample_without_any_decodable_video_stops_the_run_in_the_main_process(tmp_path, broken_files):
    kinds = ("zero_bytes", "truncated", "random_bytes", "text")
    csv, root = _kinetics(tmp_path, [("bad", broken_files[k]) for k in kinds])
    ds = VideoDataset(csv, root, max_bad_fraction=1.0, max_attempts=3, **CLIP)
    with pytest.raises(TrainingError, match="3 videos in a row could not be decoded"):
        ds[0]  # num_workers=0: the dataset raises it itself
    # In a worker it raises nothing: the sample comes back empty and marked; the log stops the run.
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)))
    assert batch["video"].shape == (2, 3, 4, 16, 16) and not batch["valid"].any()
    assert [f.gave_up for f in batch["failures"]] == [False, False, True] * 2
    log = BrokenVideoLog(len(ds), max_bad_fraction=1.0)
    with pytest.raises(TrainingError, match="a training sample found no decodable video") as info:
        for batch in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate):
            log.update(batch)
    assert "Caught" not in str(info.value) and str(root) in str(info.value)
