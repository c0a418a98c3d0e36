"""Repeated augmentation (``data.repeated_aug``): each training video k times per epoch, each time augmented anew.

As DeiT's RASampler: process p of W gets items p, p + W, ... of the shuffled
videos each followed by its k repeats, so the repeats go to different
processes in the same or the next step (with fewer processes than repeats,
the rest share a batch). Unlike DeiT, the epoch is not cut back to
the dataset's size: it passes every video k times (k times the batches).

Items are numbered ``r * N + i`` for repeat r of video i (N videos), so with
k = 1 the numbers, the order and the samples are those of the plain
training loader.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class RepeatedVideos(Dataset):
    """Item ``r * N + i`` is video ``i`` of ``dataset``, drawn as in epoch ``epoch * k + r``.

    The dataset seeds each sample from ``(seed, epoch, index)``, so k repeats
    of one index in one epoch would be the same clip and crop; each repeat
    takes the randomness of an epoch of its own instead (distinct for every
    (epoch, repeat) pair). The epoch is the wrapped dataset's (its ``set_epoch``).

    Args:
        dataset: a map-style dataset with ``epoch`` and ``get(index, epoch)``
            (:class:`~video_swin.data.VideoDataset`).
        repeats: k.
    """

    def __init__(self, dataset: Any, repeats: int) -> None:
        self.dataset, self.repeats = dataset, int(repeats)

    def __len__(self) -> int:
        return self.repeats * len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, item: int) -> dict:
        repeat, index = divmod(int(item), len(self.dataset))
        return self.dataset.get(index, epoch=self.dataset.epoch * self.repeats + repeat)


def _repeat_major(batch: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Reorders one batch so that the first occurrence of each video comes first, then the second, ...

    Mixup and CutMix pair each clip with the one before it: side by side, two
    repeats of one video would be mixed with each other.
    """
    seen: dict[int, int] = {}
    rank = []
    for item in batch.tolist():
        video = item % num_videos
        rank.append(seen.get(video, 0))
        seen[video] = rank[-1] + 1
    return batch[torch.tensor(rank).argsort(stable=True)]


class RepeatedAugmentationSampler(Sampler[int]):
    """The items of :class:`RepeatedVideos` in an order that depends only on (seed, epoch).

    The videos are shuffled as :class:`~video_swin.engine.trainer.EpochSampler`
    shuffles them, each followed by its k repeats. Process p of W gets the
    items p, p + W, p + 2W, ... of that list (DeiT's RASampler); since
    accelerate deals out a global order's batches to the processes in turn,
    the global order is that list with each step's W batches interleaved.
    Items that do not fill a last step of W batches are dropped (as the
    loader's ``drop_last`` would).

    Args:
        num_videos: N.
        repeats: k.
        seed: the run's seed.
        batch_size: B, per process.
        num_processes: W.
    """

    def __init__(self, num_videos: int, repeats: int, seed: int, batch_size: int, num_processes: int = 1) -> None:
        self.num_videos, self.repeats, self.seed = num_videos, repeats, seed
        self.batch_size, self.num_processes, self.epoch = batch_size, num_processes, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        per_step = self.batch_size * self.num_processes
        return self.num_videos * self.repeats // per_step * per_step

    def __iter__(self):
        n, k, b, w = self.num_videos, self.repeats, self.batch_size, self.num_processes
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        videos = torch.randperm(n, generator=g)  # (N,)
        items = (videos[:, None] + n * torch.arange(k)).flatten()  # (N*k,): video i's repeats side by side
        items = items[: len(self)].view(-1, b, w).transpose(1, 2)  # (steps, W, B): batch (s, p) = items p::W
        batches = [_repeat_major(batch, n) for batch in items.reshape(-1, b)]  # (steps*W) x (B,)
        return iter(torch.cat(batches).tolist() if batches else [])
