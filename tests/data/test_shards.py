"""WebDataset shards: prepare --shards, every sample once per epoch over ranks x workers, exact resume, evaluation
padding, the same clips as VideoDataset, broken samples, and clear errors for missing or damaged shards."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from video_swin.data import (
    ClipTransform,
    ShardDataset,
    ShardError,
    ShardLoader,
    ShardSet,
    VideoDataset,
    make_demo_data,
)
from video_swin.data.collate import collate
from video_swin.data.prepare import prepare
from video_swin.data.shards import read_shard
from video_swin.errors import ResumeError

SHARD_SIZE = 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Demo data (20 train, 10 val videos) prepared with --shards: 7 train and 4 val shards of up to 3 videos."""
    src = make_demo_data(tmp_path_factory.mktemp("demo") / "data", seed=0, train_per_class=2, val_per_class=1)
    out = tmp_path_factory.mktemp("prepared")
    prepare(src, out, short_side=48, keyframe_interval=8, jobs=2, shards=True, shard_size=SHARD_SIZE)
    return out


def pattern(out: Path) -> str:
    return f"{out}/shards/{{split}}-*.tar"


def dataset(shards: ShardSet, mode: str = "train", **kw) -> ShardDataset:
    transform = (ClipTransform("train", 32, 36, output="uint8") if mode == "train"
                 else ClipTransform(mode, 32, 32, num_crops=kw.pop("crops", 1), output="uint8"))
    classes = sorted({r.label for r in shards.records})
    args = {"clip_len": 4, "frame_interval": 2, "decoder": "pyav", "seed": 3, "batch_size": 2, "shuffle_buffer": 4}
    return ShardDataset(shards, mode, transform, classes, **{**args, **kw})


def epoch_batches(shards: ShardSet, epoch: int, *, world: int = 2, workers: int = 2, resume: int = 0,
                  videos: bool = False, **kw) -> dict[int, list]:
    """{rank: [batch indices (or whole batches)]} of one epoch, each rank through a real DataLoader."""
    out = {}
    for rank in range(world):
        ds = dataset(shards, rank=rank, world=world, **kw)
        ds.set_epoch(epoch)
        loader = ShardLoader(DataLoader(ds, batch_size=ds.batch_size, num_workers=workers, collate_fn=collate))
        loader.resume_at(resume)
        assert len(loader) == ds.num_batches
        out[rank] = [(b["index"].tolist(), b["video"]) if videos else b["index"].tolist() for b in loader]
    return out


def test_prepare_writes_shards_and_a_manifest_and_a_rerun_changes_nothing(prepared):
    folder = prepared / "shards"
    for split, total in (("train", 20), ("val", 10)):
        manifest = json.loads((folder / f"{split}.json").read_text())
        names = sorted(p.name for p in folder.glob(f"{split}-*.tar"))
        assert [s["name"] for s in manifest["shards"]] == names
        assert manifest["total"] == total == sum(s["count"] for s in manifest["shards"])
        assert all(s["count"] == SHARD_SIZE for s in manifest["shards"][:-1])
        assert manifest["settings"]["shard_size"] == SHARD_SIZE and manifest["settings"]["short_side"] == 48
        listed = {f"{split}/{r.split(',')[0]}" for r in (prepared / f"{split}.csv").read_text().splitlines()[1:]}
        paths = []
        for shard in manifest["shards"]:
            samples = list(read_shard(str(folder / shard["name"]), shard["count"]))
            assert [s["__key__"] for s in samples] == shard["keys"]
            for sample in samples:
                meta = json.loads(sample["json"])
                assert {"mp4", "index.npz", "json"} <= sample.keys()
                assert sample["mp4"] == (prepared / meta["path"]).read_bytes()  # the prepared file, as it is
                assert sample["index.npz"] == (prepared / f"{meta['path']}.index.npz").read_bytes()
                assert meta["label"] in manifest["classes"] and meta["frames"] > 0 and meta["youtube_id"]
                paths.append(meta["path"])
        assert len(set(paths)) == total and {f"{split}/{p.split('/')[1]}" for p in paths} == listed
        assert paths != sorted(paths)  # shuffled once, with a fixed seed
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    counts = prepare(_src_of(prepared), prepared, short_side=48,
                     keyframe_interval=8, jobs=2, shards=True, shard_size=SHARD_SIZE)
    assert counts["shards"] == 11
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left


def _src_of(prepared: Path) -> Path:
    journal = (prepared / ".prepare" / "journal.jsonl").read_text().splitlines()
    src = json.loads(journal[1])["src"]
    return Path(src).parents[2]  # SRC/train/<class>/<video>


def test_every_sample_once_per_epoch_over_two_ranks_and_two_workers(prepared):
    shards = ShardSet.find(pattern(prepared), "train")
    assert len(shards.records) == 20 and shards.counts == (3, 3, 3, 3, 3, 3, 2)
    epoch0 = epoch_batches(shards, 0)
    assert all(len(batches) == 5 for batches in epoch0.values())  # 20 / (2 ranks x batch 2)
    seen = [i for batches in epoch0.values() for batch in batches for i in batch]
    assert sorted(seen) == list(range(20))
    assert epoch_batches(shards, 0) == epoch0  # the same again
    epoch1 = epoch_batches(shards, 1)
    assert sorted(i for b in epoch1.values() for batch in b for i in batch) == list(range(20))
    assert epoch1 != epoch0
    # batch 3: floor(20 / 6) = 3 batches a rank, 2 videos dropped; each at most once
    dropped = epoch_batches(shards, 0, batch_size=3)
    seen = [i for batches in dropped.values() for batch in batches for i in batch]
    assert len(seen) == 18 == len(set(seen))


def test_one_process_one_worker_reads_every_sample_too(prepared):
    shards = ShardSet.find(pattern(prepared), "train")
    batches = epoch_batches(shards, 2, world=1, workers=0)[0]
    assert sorted(i for b in batches for i in b) == list(range(20))


@pytest.mark.parametrize("done", [1, 2, 3, 4])
def test_resume_after_k_batches_gives_the_remaining_batches_of_the_uninterrupted_epoch(prepared, done):
    shards = ShardSet.find(pattern(prepared), "train")
    full = epoch_batches(shards, 1, videos=done == 3)
    resumed = epoch_batches(shards, 1, resume=done, videos=done == 3)
    for rank in full:
        if done == 3:  # the clips themselves, bitwise
            assert [i for i, _ in resumed[rank]] == [i for i, _ in full[rank][done:]]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed[rank], full[rank][done:]))
        else:
            assert resumed[rank] == full[rank][done:]


def test_resume_without_loader_workers(prepared):
    shards = ShardSet.find(pattern(prepared), "train")
    full = epoch_batches(shards, 3, world=1, workers=0)[0]
    assert epoch_batches(shards, 3, world=1, workers=0, resume=4)[0] == full[4:]


def test_clips_equal_video_dataset_for_the_same_seed_epoch_and_index(prepared):
    """Per-sample randomness is VideoDataset's, keyed by the video's stable (manifest) index."""
    shards = ShardSet.find(pattern(prepared), "train")
    ds = dataset(shards, world=1, batch_size=1, shuffle_buffer=0)
    ds.set_epoch(2)
    files = VideoDataset([str(prepared / r.path) for r in shards.records], mode="train", clip_len=4,
                         frame_interval=2, decoder="pyav", seed=3, transform=ds.transform)
    files.set_epoch(2)
    for sample in list(ds)[:4]:
        assert torch.equal(sample["video"], files[sample["index"]]["video"])
        assert sample["path"] == shards.records[sample["index"]].path


def test_evaluation_pads_every_rank_to_the_same_number_of_batches(prepared):
    shards = ShardSet.find(pattern(prepared), "val")
    assert len(shards.records) == 10
    batches = epoch_batches(shards, 0, world=3, mode="val", batch_size=2, shuffle_buffer=0)
    assert {len(b) for b in batches.values()} == {2}  # ceil(ceil(10 / 3) / 2)
    seen = [i for b in batches.values() for batch in b for i in batch]
    assert sorted(set(seen)) == list(range(10))  # every video, in the stable order per rank
    assert [i for batch in batches[0] for i in batch] == [0, 1, 2, 2]  # rank 0: videos 0-2, padded with its last
    multi = dataset(shards, "test", world=1, batch_size=1, num_clips=2, crops=3)
    sample = next(iter(multi))
    assert sample["video"].shape == (6, 3, 4, 32, 32) and sample["valid"]


def test_a_changed_world_workers_batch_or_shard_set_refuses_a_mid_epoch_resume(prepared):
    shards = ShardSet.find(pattern(prepared), "train")
    loader = ShardLoader(DataLoader(dataset(shards, rank=0, world=2), batch_size=2, num_workers=2))
    saved = loader.resume_info()
    loader.check_resume(saved)
    for key, value in (("world", 4), ("num_workers", 1), ("batch_size", 4), ("shards", "0123")):
        with pytest.raises(ResumeError, match=key):
            loader.check_resume({**saved, key: value})
    with pytest.raises(ResumeError, match="not saved while training from shards"):
        loader.check_resume(None)


def test_a_pattern_without_shards_and_a_damaged_shard_are_clear_errors(prepared, tmp_path, caplog):
    with pytest.raises(ShardError, match="matches no shard of the train split"):
        ShardSet.find(f"{tmp_path}/{{split}}-*.tar", "train")
    with pytest.raises(ShardError, match=r"no shard .*train-000007\.tar \(and 2 more\)"):
        ShardSet.find(f"{prepared}/shards/{{split}}-{{000000..000009}}.tar", "train")
    # a brace pattern over the real shards finds the manifest beside them
    braces = ShardSet.find(f"{prepared}/shards/{{split}}-{{000000..000006}}.tar", "train")
    assert braces == ShardSet.find(pattern(prepared), "train")
    # without a manifest the samples are counted, with a warning
    copy = tmp_path / "copy"
    shutil.copytree(prepared / "shards", copy)
    (copy / "train.json").unlink()
    with caplog.at_level(logging.WARNING):
        counted = ShardSet.find(f"{copy}/{{split}}-*.tar", "train")
    assert "no manifest" in caplog.text
    assert counted.counts == braces.counts and [r.path for r in counted.records] == [r.path for r in braces.records]
    # a damaged (truncated) shard: one error naming it, raised in the main process
    (copy / "train.json").write_text((prepared / "shards" / "train.json").read_text())
    damaged = copy / "train-000002.tar"
    damaged.write_bytes(damaged.read_bytes()[:5000])
    shards = ShardSet.find(f"{copy}/{{split}}-*.tar", "train")
    with pytest.raises(ShardError, match=r"train-000002\.tar: (damaged shard|\d+ samples where)"):
        epoch_batches(shards, 0, world=1, workers=0, shuffle_buffer=0)
    # a shard replaced by a shorter one than the manifest lists
    damaged.write_bytes((prepared / "shards" / "train-000006.tar").read_bytes())
    with pytest.raises(ShardError, match=r"train-000002\.tar: 2 samples where the manifest lists 3"):
        epoch_batches(shards, 0, world=1, workers=0, shuffle_buffer=0)


def test_an_undecodable_training_sample_is_replaced_by_the_previous_good_one_and_eval_reports_it(prepared, tmp_path):
    import webdataset as wds

    folder = tmp_path / "shards"
    folder.mkdir()
    samples = list(read_shard(str(prepared / "shards" / "val-000000.tar"), 3))
    samples[1] = {**samples[1], "mp4": b"not a video" * 100}
    with open(folder / "val-000000.tar", "wb") as f, wds.TarWriter(f, encoder=False) as tar:
        for s in samples:
            tar.write({k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"})
    shards = ShardSet.find(f"{folder}/{{split}}-*.tar", "val")  # no manifest: counted
    train = list(dataset(shards, world=1, batch_size=1, shuffle_buffer=0))
    assert [s["index"] for s in train] == [0, 0, 2]  # sample 1 replaced by sample 0
    assert [len(s["failures"]) for s in train] == [0, 1, 0]
    assert train[1]["failures"][0].path == shards.records[1].path and torch.equal(train[1]["video"], train[0]["video"])
    val = list(dataset(shards, "val", world=1, batch_size=1, shuffle_buffer=0))
    assert [s["valid"] for s in val] == [True, False, True] and val[1]["failures"][0].path == shards.records[1].path


def test_the_plan_arithmetic():
    from video_swin.data.shards import batches_per_rank, role_batches, skipped_batches

    assert batches_per_rank(20, 2, 2, 2) == 4 and batches_per_rank(23, 2, 2, 2) == 4 and batches_per_rank(7, 2, 2) == 1
    assert [role_batches(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]  # lower roles one more
    # after K batches, role r has yielded the k < K with k % nw == r
    for done in range(8):
        assert [skipped_batches(done, 3, r) for r in range(3)] == [sum(k % 3 == r for k in range(done)) for r in range(3)]
