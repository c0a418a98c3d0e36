"""``VideoDataset``: annotations + decoder + clip sampling + transforms, as a map-style dataset."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import TrainingError
from .annotations import build_classes, read_annotations, resolve_labels
from .broken import FAILURES, DecodeFailure, TooManyBrokenVideos, too_many
from .decoder_base import DecodeError, Decoder
from .decoders import get_decoder
from .sampling import eval_clip_indices, train_clip_indices
from .transforms import ClipTransform, dataset_transform

logger = logging.getLogger(__name__)


def _clip_indices(
    train: bool,
    clip_len: int,
    frame_interval: int,
    num_clips: int,
    sample_seed: tuple[int, ...] | None,
    num_frames: int,
) -> np.ndarray:
    """Frame indices of a sample's clips (pure: a fallback decoder may call it twice)."""
    if train:
        rng = np.random.default_rng([*sample_seed, 0])
        return train_clip_indices(num_frames, clip_len, frame_interval, rng)
    return eval_clip_indices(num_frames, clip_len, frame_interval, num_clips).reshape(-1)


def read_views(
    decoder: Decoder,
    path: str | Path,
    transform: ClipTransform,
    *,
    train: bool,
    clip_len: int,
    frame_interval: int,
    num_clips: int,
    sample_seed: Sequence[int] | None,
) -> torch.Tensor:
    """Decodes the clips of one video and applies the spatial recipe: ``Tensor[V, 3, T, S, S]``.

    The one place a sample's frames are chosen and transformed, shared by
    :class:`VideoDataset` and the shard reader (:mod:`.shards`), so both give
    the same clips for the same video and seed. In training, ``sample_seed``
    = [seed, epoch, requested index, attempt] seeds the clip position
    (``sample_seed + [0]``) and the spatial augmentation (``sample_seed + [1]``);
    in val/test it is None and the ``num_clips`` clips are evenly spaced.
    """
    seed = None if sample_seed is None else tuple(sample_seed)
    # A picklable selector, so that an isolated decoder can run it in its helper process.
    select = functools.partial(_clip_indices, train, clip_len, frame_interval, num_clips, seed)
    frames, _ = decoder.read(path, select)  # (C*T, H, W, 3)
    clips = frames.view(num_clips, clip_len, *frames.shape[1:])  # (C, T, H, W, 3)
    rng = np.random.default_rng([*seed, 1]) if train else None
    return transform(clips, rng)  # (V, 3, T, S, S)


class VideoDataset(Dataset):
    """Kinetics-style video classification dataset, following the official Video Swin recipe.

    Training: one random clip of ``clip_len`` frames every ``frame_interval``
    frames. Validation and test: ``num_clips`` evenly spaced clips. The frames
    then go through one :class:`~video_swin.data.transforms.ClipTransform`
    (``transform``; by default the official recipe of ``mode`` at ``crop_size``:
    a random resized crop and flip in training; ``num_crops`` crops per clip in
    val and test, of frames whose short side is ``8/7 * crop_size`` in val and
    ``crop_size`` in test). All views of a video come from one decode of the
    union of their frames.

    The randomness of sample ``i`` depends only on ``(seed, epoch, i)``: the
    same clip comes out whichever worker or process loads it. Call
    :meth:`set_epoch` before each epoch (with ``persistent_workers=False``, the
    DataLoader default, workers pick it up when they start).

    Broken videos (missing, empty, truncated, not a video) never raise in a
    worker. In training the sample is replaced by another video chosen from
    ``(seed, epoch, i, attempt)``; in val/test it comes back with
    ``"valid": False`` and a zero video, so evaluation can report it. Either
    way the path is logged once per process (at INFO level inside a
    DataLoader worker, where the main process's :class:`BrokenVideoLog` names
    it instead) and listed with its reason in the sample's ``"failures"``
    (:class:`~video_swin.data.DecodeFailure` records). More distinct failures
    than ``max_bad_fraction`` of the dataset raise :class:`TooManyBrokenVideos`
    in the main process: here when the dataset is read there
    (``num_workers=0``), else from :meth:`BrokenVideoLog.update` on the batch
    that carries them, so the error is the list of files and not a worker's
    traceback. Likewise a training sample that finds no decodable video in
    ``max_attempts`` tries raises :class:`~video_swin.errors.TrainingError`
    in the main process, and in a worker comes back as a zero video whose last
    failure record has ``gave_up`` set, which :class:`BrokenVideoLog` turns
    into the same error. Batch samples with
    ``collate_fn=``:func:`~video_swin.data.collate.collate` (or
    :class:`~video_swin.data.SharedRingCollate`): torch's default collate
    refuses lists of failures whose lengths differ within a batch.

    Args:
        annotations: Kinetics CSV, mmaction list, or class-per-folder directory
            (None: the folder tree at ``root``), or a list of video paths
            (unlabelled: ``"label"`` is -1).
        root: Where the videos are (searched recursively by file name).
        mode: "train", "val" or "test".
        clip_len: Frames per clip (T).
        frame_interval: Step between sampled frames.
        num_clips: Clips per video in val/test mode (1 in training).
        num_crops: Crops per clip in val/test mode: 1 (centre) or 3 (along the long side);
            default 1, or the transform's.
        crop_size: Output side (S); default 224, or the transform's.
        decoder: "decord", "pyav", "torchcodec", "auto" (all exact: each file goes to a backend
            that is exact for it, see :mod:`~video_swin.data.decoders`), or a :class:`Decoder`.
        seed: Base seed of all sampling randomness.
        transform: The spatial recipe, built once (e.g. ``ClipTransform("val", 224,
            256, output="uint8")``); its mode must be "train" for a training set
            and "val" or "test" otherwise. None builds the default one from
            ``mode``, ``crop_size``, ``num_crops`` and ``transform_options``.
        classes: Class names (or a file with one per line); default: those the
            annotations define. Pass the training set's ``classes`` to evaluation
            sets: a label they do not contain is an error naming it.
        max_bad_fraction: Largest tolerated fraction of undecodable videos.
        max_attempts: Videos tried for one training sample before giving up.
        decoder_threads: Decoding threads per video.
        decode_timeout: Seconds one video may take to decode, or None. When
            set, decoding runs in a helper process (one per DataLoader worker):
            a decoder that crashes or hangs on a file costs that file only,
            which is then handled as a broken video (see
            :class:`~video_swin.data.isolated.IsolatedDecoder`).
        **transform_options: Options of the default transform, as
            :class:`~video_swin.data.transforms.ClipTransform` names them
            (``short_side``, ``flip``, ``output``, ...); only without ``transform``.
    """

    def __init__(
        self,
        annotations: str | Path | Sequence[str | Path] | None,
        root: str | Path | None = None,
        mode: str = "train",
        clip_len: int = 32,
        frame_interval: int = 2,
        num_clips: int = 1,
        num_crops: int | None = None,
        crop_size: int | None = None,
        decoder: str | Decoder = "decord",
        seed: int = 0,
        *,
        transform: ClipTransform | None = None,
        classes: Sequence[str] | str | Path | None = None,
        max_bad_fraction: float = 0.05,
        max_attempts: int = 10,
        decoder_threads: int = 1,
        decode_timeout: float | None = None,
        **transform_options: Any,
    ) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        if mode == "train" and (num_clips, num_crops or 1) != (1, 1):
            raise ValueError(f"training takes one clip and one crop per video, got {num_clips=} and {num_crops=}")
        self.transform = dataset_transform(
            mode, transform, crop_size=crop_size, num_crops=num_crops, **transform_options
        )
        parsed = read_annotations(annotations, root)
        self.source = parsed.source
        self.records = parsed.records
        self.missing = parsed.missing
        self.classes = build_classes(parsed, classes)
        self.labels = resolve_labels(self.records, self.classes, parsed.source)
        self.mode, self.clip_len, self.frame_interval = mode, clip_len, frame_interval
        self.num_clips, self.num_crops = num_clips, self.transform.num_views_per_clip
        self.crop_size = self.transform.crop_size
        self.seed, self.epoch = seed, 0
        self.max_bad_fraction, self.max_attempts = max_bad_fraction, max_attempts
        self.decoder = get_decoder(decoder, num_threads=decoder_threads, timeout=decode_timeout)
        self._bad: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_views(self) -> int:
        """Views per sample: 1 in training, ``num_clips * num_crops`` otherwise."""
        return 1 if self.mode == "train" else self.num_clips * self.num_crops

    @property
    def bad_files(self) -> dict[str, str]:
        """``{path: reason}`` of the videos this process failed to decode."""
        return dict(self._bad)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that, with the seed and the index, determines each sample's randomness."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        """One sample, drawn with the randomness of the current epoch (see :meth:`get`)."""
        return self.get(index)

    def get(self, index: int, epoch: int | None = None) -> dict:
        """One sample; in training its randomness is that of ``(seed, epoch, index)``.

        ``epoch`` defaults to the one :meth:`set_epoch` set; repeated
        augmentation (:class:`~video_swin.data.repeated.RepeatedVideos`) passes
        another one for each repeat of a video, so that each gets its own clip and crop.

        Returns:
            ``{"video": float32 Tensor[3, T, S, S] (train) or Tensor[V, 3, T, S, S]
            (val/test, V = num_clips * num_crops, clip-major), "label": int,
            "index": int, "path": str, "valid": bool, "failures": list[DecodeFailure]}``.
            In training, after a replacement, index/path/label are those of the
            video returned and ``"failures"`` lists the videos that failed first,
            with their reasons; in val/test an invalid sample lists its own video.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} videos")
        if self.mode != "train":
            try:
                video = self._load(index, None)
            except DecodeError as exc:
                self._record_failure(exc)
                failure = DecodeFailure(self.records[index].path, exc.reason)
                return self._sample(index, self._zero_video(), valid=False, failures=[failure])
            return self._sample(index, video)
        failures: list[DecodeFailure] = []
        target, epoch = index, self.epoch if epoch is None else int(epoch)
        for attempt in range(self.max_attempts):
            if attempt > 0:
                target = self._replacement(index, attempt, epoch)
            try:
                video = self._load(target, [self.seed, epoch, index, attempt])[0]
            except DecodeError as exc:
                self._record_failure(exc)
                failures.append(DecodeFailure(self.records[target].path, exc.reason))
                continue
            return self._sample(target, video, failures=failures)
        if get_worker_info() is None:
            raise TrainingError(
                f"{self.max_attempts} videos in a row could not be decoded for one training sample: "
                + ", ".join(f.path for f in failures)
            )
        # In a worker: a zero video the main process's BrokenVideoLog refuses (see the class docstring).
        failures[-1] = dataclasses.replace(failures[-1], gave_up=True)
        return self._sample(index, self._zero_video()[0], valid=False, failures=failures)

    def _load(self, index: int, sample_seed: list[int] | None) -> torch.Tensor:
        """Decodes and transforms video ``index``: ``Tensor[V, 3, T, S, S]`` (see :func:`read_views`)."""
        num_clips = 1 if self.mode == "train" else self.num_clips
        return read_views(self.decoder, self.records[index].path, self.transform, train=self.mode == "train",
                          clip_len=self.clip_len, frame_interval=self.frame_interval, num_clips=num_clips,
                          sample_seed=sample_seed)

    def _zero_video(self) -> torch.Tensor:
        """What a video that could not be decoded comes back as: ``Tensor[V, 3, T, S, S]`` of zeros."""
        shape = (self.num_views, 3, self.clip_len, self.crop_size, self.crop_size)
        return torch.zeros(shape, dtype=torch.uint8 if self.transform.output == "uint8" else torch.float32)

    def _replacement(self, index: int, attempt: int, epoch: int) -> int:
        if len(self) == 1:
            return index
        rng = np.random.default_rng([self.seed, epoch, index, attempt, 2])
        return int((index + 1 + rng.integers(len(self) - 1)) % len(self))  # any index but `index`

    def _record_failure(self, exc: DecodeError) -> None:
        if exc.path not in self._bad:
            self._bad[exc.path] = exc.reason
            action = "replaced by another video" if self.mode == "train" else "reported as not scored"
            # In a DataLoader worker the main process's BrokenVideoLog names the file once per epoch.
            log = logger.info if get_worker_info() is not None else logger.warning
            log("cannot decode %s (%s); %s", exc.path, exc.reason, action)
        # Only in the main process: in a worker the batch's failure records carry this to
        # the main process's BrokenVideoLog, which raises the same error there.
        if get_worker_info() is None and too_many(len(self._bad), len(self), self.max_bad_fraction):
            raise TooManyBrokenVideos(list(self._bad), len(self), self.max_bad_fraction, self._bad)

    def _sample(
        self,
        index: int,
        video: torch.Tensor,
        valid: bool = True,
        failures: Sequence[DecodeFailure] = (),
    ) -> dict:
        return {
            "video": video,
            "label": self.labels[index],
            "index": index,
            "path": self.records[index].path,
            "valid": valid,
            FAILURES: list(failures),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, videos={len(self)}, classes={len(self.classes)}, "
            f"clip={self.clip_len}x{self.frame_interval}, views={self.num_views}, crop={self.crop_size}, "
            f"decoder={self.decoder.name!r}, source={self.source!r})"
        )
