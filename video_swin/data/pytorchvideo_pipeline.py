"""The same dataset built through pytorchvideo: its ``LabeledVideoDataset`` and clip samplers.

An alternative pipeline (``data.pipeline: pytorchvideo``) and the baseline the
data benchmark compares against. Annotation parsing, class list and spatial
transforms are ours; decoding and clip sampling are pytorchvideo's. Its clip
samplers work in seconds, so a clip spans ``clip_len * frame_interval / fps``
seconds at an assumed frame rate and is then subsampled uniformly to
``clip_len`` frames. pytorchvideo's ``transforms`` package does not import with
current torchvision (it needs ``functional_tensor``); only ``pytorchvideo.data``
is used. Its random clip sampler draws from Python's global ``random``, so this
pipeline does not give the ``(seed, epoch, index)`` determinism of
:class:`~video_swin.data.VideoDataset`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .annotations import build_classes, read_annotations, resolve_labels
from .broken import FAILURES
from .transforms import ClipTransform, dataset_transform


def uniform_temporal_indices(num_frames: int, clip_len: int) -> torch.Tensor:
    """``clip_len`` indices spread evenly over ``num_frames`` (pytorchvideo's ``UniformTemporalSubsample``)."""
    return torch.linspace(0, num_frames - 1, clip_len).clamp(0, num_frames - 1).long()


class PytorchvideoDataset(IterableDataset):
    """pytorchvideo-decoded clips with our transforms; yields the same sample dicts as ``VideoDataset``.

    Args:
        annotations: As for :class:`~video_swin.data.VideoDataset`.
        root: Where the videos are.
        mode: "train" (random clip sampler, shuffled videos) or "val"/"test"
            (``num_clips`` constant clips per video, grouped into one sample).
        clip_len: Frames per clip (T).
        frame_interval: Frame step the clip span is computed from.
        num_clips: Clips per video in val/test.
        num_crops: Crops per clip in val/test (1 or 3); default 1, or the transform's.
        crop_size: Output side (S); default 224, or the transform's.
        decoder: Ignored (kept for a signature like ``VideoDataset``'s): pytorchvideo
            decodes with its own PyAV reader here; its decord reader sets decord's
            global bridge at import time.
        seed: Seed of the spatial augmentation.
        transform: The spatial recipe, as for ``VideoDataset``; its output must be "float".
        classes: As for ``VideoDataset``.
        fps: Frame rate assumed to turn the clip span into seconds.
        shuffle: Shuffle the video order (default: in training only).
        **transform_options: Options of the default transform, as for ``VideoDataset``.
    """

    def __init__(
        self,
        annotations: str | Path | None,
        root: str | Path | None = None,
        mode: str = "train",
        clip_len: int = 32,
        frame_interval: int = 2,
        num_clips: int = 1,
        num_crops: int | None = None,
        crop_size: int | None = None,
        decoder: str = "pyav",
        seed: int = 0,
        *,
        transform: ClipTransform | None = None,
        classes: Sequence[str] | str | Path | None = None,
        fps: float = 30.0,
        shuffle: bool | None = None,
        **transform_options: Any,
    ) -> None:
        from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler  # noqa: PLC0415

        if mode == "train" and (num_clips, num_crops or 1) != (1, 1):
            raise ValueError(f"training takes one clip and one crop per video, got {num_clips=} and {num_crops=}")
        self.transform = dataset_transform(
            mode, transform, crop_size=crop_size, num_crops=num_crops, **transform_options
        )
        if self.transform.output != "float":
            raise ValueError("output='uint8' is only available in the native pipeline")
        parsed = read_annotations(annotations, root)
        self.records, self.missing = parsed.records, parsed.missing
        self.classes = build_classes(parsed, classes)
        self.labels = resolve_labels(self.records, self.classes, parsed.source)
        self.mode, self.clip_len, self.num_clips = mode, clip_len, num_clips
        self.crop_size = self.transform.crop_size
        self.seed, self.epoch = seed, 0
        duration = Fraction(clip_len * frame_interval) / Fraction(fps).limit_denominator(1001)
        if mode == "train":
            clip_sampler = make_clip_sampler("random", duration)
        else:
            clip_sampler = make_clip_sampler("constant_clips_per_video", duration, num_clips)
        shuffle = mode == "train" if shuffle is None else shuffle
        labeled = [(r.path, {"label": lab}) for r, lab in zip(self.records, self.labels)]
        self._ptv = LabeledVideoDataset(
            labeled,
            clip_sampler,
            torch.utils.data.RandomSampler if shuffle else torch.utils.data.SequentialSampler,
            decode_audio=False,
            decoder="pyav",
        )

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch mixed into the augmentation seed."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict]:
        group: list[torch.Tensor] = []
        for item in self._ptv:
            video = item["video"]  # (3, T', H, W) float in [0, 255]
            index = int(item["video_index"])
            keep = uniform_temporal_indices(video.shape[1], self.clip_len)
            frames = video[:, keep].permute(1, 2, 3, 0).to(torch.uint8).contiguous()  # (T, H, W, 3)
            if self.mode == "train":
                rng = np.random.default_rng([self.seed, self.epoch, index])
                yield self._sample(index, self.transform(frames[None], rng)[0])
                continue
            clip_index = int(item["clip_index"])
            if clip_index == 0:
                group = []
            group.append(frames)
            if clip_index == self.num_clips - 1 and len(group) == self.num_clips:
                yield self._sample(index, self.transform(torch.stack(group)))  # (V, 3, T, S, S)

    def _sample(self, index: int, video: torch.Tensor) -> dict:
        return {
            "video": video,
            "label": self.labels[index],
            "index": index,
            "path": self.records[index].path,
            "valid": True,
            FAILURES: [],  # pytorchvideo skips a video it cannot decode (and logs it at debug level)
        }
