"""collate and SharedRingCollate: default_collate's batches with failure records flattened; segments reused,
kept batches never overwritten."""

from __future__ import annotations

import copy
from collections import namedtuple

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from video_swin.data import DecodeFailure, SharedRingCollate
from video_swin.data.collate import collate

Pair = namedtuple("Pair", "first second")


class Samples(Dataset):
    """Every kind of leaf default_collate handles, each value telling its index apart."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> dict:
        return {
            "video": torch.arange(3 * 4 * 8 * 8, dtype=torch.float32).view(3, 4, 8, 8) + 1000 * i,
            "uint8": torch.full((2, 5), i, dtype=torch.uint8),
            "label": i,
            "score": i / 3,
            "path": f"video{i}.mp4",
            "pair": Pair(torch.tensor([i, -i]), [i, str(i)]),
            "bf16": torch.full((3,), i, dtype=torch.bfloat16),  # numpy cannot view it: the default way
            "mask": torch.tensor([i % 2 == 0]),
        }


def assert_same_batch(got, want) -> None:
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same_batch(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same_batch(a, b)
    else:
        assert got == want


def through_ring(batch: dict) -> bool:
    """Ring batches view a segment the main process maps itself; default batches are torch shared tensors."""
    return not batch["video"].is_shared()


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_are_default_collate_batches(workers):
    want = list(DataLoader(Samples(), batch_size=4, num_workers=0))
    got = list(DataLoader(Samples(), batch_size=4, num_workers=workers, collate_fn=SharedRingCollate(slots=4)))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert_same_batch(g, w)
    assert through_ring(got[0])


def test_a_consumer_that_drops_batches_gets_every_one_through_the_ring():
    # 2 queued per worker (prefetch_factor) + the batch in use + the one before it, still
    # referenced while the next is fetched: 4 segments are enough for every batch.
    loader = DataLoader(Samples(), batch_size=2, num_workers=2, prefetch_factor=2, collate_fn=SharedRingCollate(4))
    for _ in range(2):  # a second epoch starts new workers with new rings
        seen = []
        for batch in loader:
            assert through_ring(batch)
            seen.append(batch["label"].tolist())
        assert seen == [[i, i + 1] for i in range(0, 24, 2)]


def test_kept_batches_are_never_overwritten():
    """A caller keeping every batch holds all of a worker's segments: later batches take the default way."""
    want = list(DataLoader(Samples(), batch_size=2, num_workers=0))
    got = list(DataLoader(Samples(), batch_size=2, num_workers=1, collate_fn=SharedRingCollate(slots=2)))
    for g, w in zip(got, want, strict=True):
        assert_same_batch(g, w)
    assert [through_ring(b) for b in got] == [True, True] + [False] * (len(got) - 2)


def test_a_copied_and_dropped_batch_frees_its_segment():
    """Copied elsewhere (as pin_memory or .to(device) do) and dropped: the segment is filled again."""
    kept = []
    for batch in DataLoader(Samples(), batch_size=2, num_workers=1, collate_fn=SharedRingCollate(slots=4)):
        assert through_ring(batch)
        kept.append(copy.deepcopy(batch))  # new tensors; nothing of the batch is kept
    want = list(DataLoader(Samples(), batch_size=2, num_workers=0))
    for g, w in zip(kept, want, strict=True):
        assert_same_batch(g, w)


def test_spawned_workers_build_their_own_ring():
    data = TensorDataset(torch.arange(40.0).view(10, 4), torch.arange(10))
    got = list(DataLoader(data, batch_size=3, num_workers=1, multiprocessing_context="spawn",
                          collate_fn=SharedRingCollate(slots=2)))  # fmt: skip
    want = list(DataLoader(data, batch_size=3))
    for g, w in zip(got, want, strict=True):
        assert_same_batch(g, w)
    assert not got[0][0].is_shared()


def test_in_the_main_process_it_is_default_collate():
    samples = [Samples()[i] for i in range(3)]
    assert_same_batch(SharedRingCollate()(samples), default_collate(samples))


@pytest.mark.parametrize("slots", [0, -1, 1.5, True])
def test_bad_slot_counts_are_refused(slots):
    with pytest.raises(ValueError, match="slots must be an integer >= 1"):
        SharedRingCollate(slots)


class FailingSamples(Samples):
    """Samples whose ``"failures"`` lists differ in length: sample i reports i % 3 records."""

    def __getitem__(self, i: int) -> dict:
        failures = [DecodeFailure(f"bad{i}_{k}.mp4", f"reason {k}") for k in range(i % 3)]
        return {**super().__getitem__(i), "failures": failures}


def _failures(indices) -> list[DecodeFailure]:
    return [failure for i in indices for failure in FailingSamples()[i]["failures"]]


def test_collate_flattens_failure_records_and_is_default_collate_otherwise():
    samples = [FailingSamples()[i] for i in range(4)]
    batch = collate(samples)
    assert batch["failures"] == _failures(range(4)) and len(batch["failures"]) == 0 + 1 + 2 + 0
    assert list(batch) == list(samples[0])  # the samples' key order
    rest = [{k: v for k, v in s.items() if k != "failures"} for s in samples]
    assert_same_batch({k: v for k, v in batch.items() if k != "failures"}, default_collate(rest))
    plain = [Samples()[i] for i in range(3)]
    assert_same_batch(collate(plain), default_collate(plain))
    with pytest.raises(RuntimeError, match="equal size"):  # why a plain default collate does not do
        default_collate(samples)


@pytest.mark.parametrize("collate_fn,workers", [(collate, 0), (collate, 2), (SharedRingCollate(4), 0),
                                                (SharedRingCollate(4), 2)])  # fmt: skip
def test_every_way_gives_the_flat_failure_list(collate_fn, workers):
    got = list(DataLoader(FailingSamples(), batch_size=4, num_workers=workers, collate_fn=collate_fn))
    assert [b["failures"] for b in got] == [_failures(range(i, i + 4)) for i in range(0, 24, 4)]
    if isinstance(collate_fn, SharedRingCollate) and workers:
        assert all(through_ring(b) for b in got)
