"""Clip-consistent spatial transforms: every frame of a clip gets the same crop, flip and augmentation.

The official recipe resizes the short side (to 256 for training and validation,
to ``crop_size`` for testing) and then crops. Here the crop boxes are chosen in
the coordinates of that resized frame and mapped back to the source frame, so
each view is one crop-and-resize of the source: one resampling instead of
two, done once per clip on uint8 frames (torch's fast channels-last path).
Conversion to float happens after cropping.

Randomness comes in as a ``numpy.random.Generator``; RandAugment and random
erasing (torchvision.transforms.v2, which draw from torch's global generator)
run under a forked torch RNG seeded from it, so a clip's augmentation depends
only on that generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet mean/std on the 0-255 scale, as in the official Video Swin configs.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels
OUTPUTS = ("float", "uint8")


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Frame size after scaling the short side to ``short_side`` (aspect kept, mmaction rounding)."""
    if height <= width:
        return short_side, int(width * short_side / height + 0.5)
    return int(height * short_side / width + 0.5), short_side


def random_resized_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Inception-style random crop box (area fraction in ``scale``, aspect ratio in ``ratio``).

    Ten tries as in torchvision's ``RandomResizedCrop``, then a centre crop with
    the aspect ratio clamped to ``ratio``.

    Returns:
        ``(top, left, height, width)`` in the given frame's pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_box(height: int, width: int, size: int) -> Box:
    """The ``size`` x ``size`` box in the middle of the frame."""
    return (height - size) // 2, (width - size) // 2, size, size


def three_crop_boxes(height: int, width: int, size: int) -> list[Box]:
    """Three ``size`` x ``size`` boxes along the long side: start, middle, end (mmaction ``ThreeCrop``)."""
    top, left = (height - size) // 2, (width - size) // 2
    if width >= height:
        return [(top, 0, size, size), (top, left, size, size), (top, width - size, size, size)]
    return [(0, left, size, size), (top, left, size, size), (height - size, left, size, size)]


def _to_source(box: Box, fy: float, fx: float, height: int, width: int) -> Box:
    top = min(max(round(box[0] * fy), 0), height - 1)
    left = min(max(round(box[1] * fx), 0), width - 1)
    h = min(max(round(box[2] * fy), 1), height - top)
    w = min(max(round(box[3] * fx), 1), width - left)
    return top, left, h, w


def resized_crops(frames: torch.Tensor, boxes: Sequence[Box], size: int, antialias: bool = False) -> torch.Tensor:
    """Crops every box from all frames and resizes it (bilinear) to ``size`` x ``size``.

    Args:
        frames: ``Tensor[T, H, W, 3]`` uint8 (or float).
        boxes: ``(top, left, height, width)`` boxes in source pixels.
        size: Output side.
        antialias: Low-pass before downscaling. Off by default, like the OpenCV
            bilinear resize of the official pipeline (and about 1.7x faster).

    Returns:
        ``Tensor[len(boxes), T, 3, size, size]``, same dtype as ``frames``.
    """
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W), channels-last in memory: torch's fast uint8 resize path
    views = []
    for top, left, h, w in boxes:
        crop = x[:, :, top : top + h, left : left + w]  # (T, 3, h, w)
        if (h, w) != (size, size):
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        views.append(crop)
    return torch.stack(views) if len(views) > 1 else views[0][None]  # (V, T, 3, size, size)


def _affine(
    mean: Sequence[float], std: Sequence[float], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x - mean) / std`` as ``x * scale + shift``: float32 ``Tensor[3, 1, 1]`` each (one definition, so
    :func:`normalize` and :func:`clips_to_float` give bitwise the same values)."""
    scale = 1.0 / torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    return scale, -torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1) * scale


def normalize(clips: torch.Tensor, mean: Sequence[float], std: Sequence[float], flip: bool = False) -> torch.Tensor:
    """uint8 ``Tensor[..., T, 3, H, W]`` -> float32 ``Tensor[..., 3, T, H, W]``, ``(x - mean) / std``.

    Works frame by frame so each float frame is converted, scaled and shifted
    while it is in cache (a third of the memory traffic of whole-clip ops,
    about 1.7x faster). With ``flip``, also mirrors the width axis.
    """
    x = clips.transpose(-4, -3)  # (..., 3, T, H, W), strided view
    out = torch.empty(x.shape, dtype=torch.float32)
    scale, shift = _affine(mean, std)  # (3, 1, 1)
    for dst, src in zip(out.unbind(-3), x.unbind(-3)):  # (..., 3, H, W) per frame
        dst.copy_(src.flip(-1) if flip else src)
        dst.mul_(scale).add_(shift)
    return out


def clips_to_float(
    video: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Normalises uint8 clips where they are (e.g. on the GPU); float clips pass through unchanged.

    The counterpart of ``output="uint8"`` (:class:`ClipTransform`,
    :class:`~video_swin.data.VideoDataset`): ``Tensor[..., 3, T, H, W]`` uint8
    to float32 ``(x - mean) / std``, the same arithmetic as :func:`normalize`,
    so the result is bitwise what ``output="float"`` gives.
    """
    if video.dtype != torch.uint8:
        return video
    scale, shift = _affine(mean, std, video.device)  # (3, 1, 1)
    return video.float().mul_(scale.unsqueeze(1)).add_(shift.unsqueeze(1))


class ClipTransform:
    """Turns decoded frames into normalised views, train or evaluation recipe.

    The one place the spatial recipe's options are named: datasets take a
    built ``ClipTransform`` (or build the default one from their mode and
    crop size), and the engine builds it once from the ``data.*`` config.

    Args:
        mode: "train" (one random resized crop, optional flip/RandAugment/erasing),
            "val" or "test" (``num_crops`` deterministic crops per clip: 1 = centre,
            3 = start/middle/end of the long side).
        crop_size: Output side of every view.
        short_side: Short side of the frame the crops are taken from; default
            ``round(crop_size * 8 / 7)`` (256 for 224) in train/val, ``crop_size``
            in test (the official recipes).
        num_crops: Crops per clip in val/test mode (1 or 3).
        flip: Random horizontal flip (p=0.5) in training; turn off for
            direction-sensitive data (SSv2, the demo's left/right pair).
        scale: Area range of the training crop, relative to the resized frame.
        ratio: Aspect-ratio range of the training crop.
        rand_augment: ``(num_ops, magnitude)`` for torchvision's RandAugment, or None.
        random_erasing: Probability of random erasing (0 disables).
        mean: Per-channel mean on the 0-255 scale.
        std: Per-channel std on the 0-255 scale.
        antialias: Antialiased resizing (off: OpenCV-like bilinear, as the official pipeline).
        output: ``"float"`` (normalised float32) or ``"uint8"``: the cropped,
            resized and flipped views left as uint8, 4x fewer bytes to send
            from DataLoader workers; :func:`clips_to_float` normalises them
            later, e.g. on the GPU. Random erasing needs ``"float"``.
    """

    def __init__(
        self,
        mode: str,
        crop_size: int = 224,
        short_side: int | None = None,
        *,
        num_crops: int = 1,
        flip: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        rand_augment: tuple[int, int] | None = None,
        random_erasing: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        antialias: bool = False,
        output: str = "float",
    ) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if output == "uint8" and random_erasing > 0:
            raise ValueError("random erasing works on float clips: it needs output='float'")
        self.output = output
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        if short_side is None:
            short_side = crop_size if mode == "test" else round(crop_size * 8 / 7)
        if short_side < crop_size and mode != "train":
            raise ValueError(f"short_side ({short_side}) must be >= crop_size ({crop_size}) for {mode}")
        self.mode, self.crop_size, self.short_side, self.num_crops = mode, crop_size, short_side, num_crops
        self.flip, self.scale, self.ratio = flip, scale, ratio
        self.mean, self.std, self.antialias = tuple(mean), tuple(std), antialias
        self.rand_augment, self.random_erasing = rand_augment, random_erasing
        self._rand_augment = None
        if rand_augment is not None:
            from torchvision.transforms import v2  # noqa: PLC0415

            self._rand_augment = v2.RandAugment(num_ops=rand_augment[0], magnitude=rand_augment[1])
        self._erasing = None
        if random_erasing > 0:
            from torchvision.transforms import v2  # noqa: PLC0415

            self._erasing = v2.RandomErasing(p=random_erasing, value="random")

    @property
    def num_views_per_clip(self) -> int:
        return 1 if self.mode == "train" else self.num_crops

    def __repr__(self) -> str:
        if self.mode == "train":
            options = (
                f"flip={self.flip}, scale={self.scale}, rand_augment={self.rand_augment}, "
                f"random_erasing={self.random_erasing}"
            )
        else:
            options = f"num_crops={self.num_crops}"
        return (
            f"{type(self).__name__}({self.mode!r}, crop_size={self.crop_size}, short_side={self.short_side}, "
            f"{options}, output={self.output!r})"
        )

    def boxes(self, height: int, width: int, rng: np.random.Generator | None = None) -> list[Box]:
        """Crop boxes in source pixels for a ``height`` x ``width`` video."""
        rh, rw = resized_size(height, width, self.short_side)
        if self.mode == "train":
            if rng is None:
                raise ValueError("training crops need a random generator")
            boxes = [random_resized_box(rh, rw, rng, self.scale, self.ratio)]
        elif self.num_crops == 1:
            boxes = [center_box(rh, rw, self.crop_size)]
        else:
            boxes = three_crop_boxes(rh, rw, self.crop_size)
        return [_to_source(b, height / rh, width / rw, height, width) for b in boxes]

    def __call__(self, clips: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Applies the recipe.

        Args:
            clips: ``Tensor[C, T, H, W, 3]`` uint8, C clips of one video.
            rng: Randomness for training (crop box, flip, augmentations).

        Returns:
            float32 (or with ``output="uint8"`` uint8) ``Tensor[C * K, 3, T, S, S]`` (K crops per clip, clip-major)
            with S = ``crop_size``; in train mode C must be 1 and the result is
            ``Tensor[1, 3, T, S, S]``.
        """
        num_clips, clip_len, height, width = clips.shape[:4]
        boxes = self.boxes(height, width, rng)
        flat = clips.reshape(num_clips * clip_len, height, width, 3)  # (C*T, H, W, 3)
        views = resized_crops(flat, boxes, self.crop_size, self.antialias)  # (K, C*T, 3, S, S)
        S = self.crop_size
        views = views.view(len(boxes), num_clips, clip_len, 3, S, S).transpose(0, 1)  # (C, K, T, 3, S, S)
        views = views.reshape(num_clips * len(boxes), clip_len, 3, S, S)  # (V, T, 3, S, S)
        if self.mode != "train":
            return self._finish(views)
        if num_clips != 1:
            raise ValueError(f"train mode takes one clip, got {num_clips}")
        flip = self.flip and rng.random() < 0.5
        if self._rand_augment is None and self._erasing is None:
            return self._finish(views, flip)
        if flip:
            views = views.flip(-1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            if self._rand_augment is not None:
                views = self._rand_augment(views[0].contiguous())[None]  # one draw for all T frames
            if self.output == "uint8":
                return self._finish(views)
            out = normalize(views, self.mean, self.std)  # (1, 3, T, S, S)
            if self._erasing is not None:
                out = self._erasing(out[0].transpose(0, 1)).transpose(0, 1)[None]  # one box for all frames
        return out.contiguous()

    def _finish(self, views: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """uint8 ``Tensor[V, T, 3, S, S]`` -> ``Tensor[V, 3, T, S, S]``, normalised float32 or uint8 (``output``)."""
        if self.output == "float":
            return normalize(views, self.mean, self.std, flip=flip)
        views = views.flip(-1) if flip else views
        return views.transpose(1, 2).contiguous()  # (V, 3, T, S, S) uint8


def dataset_transform(
    mode: str,
    transform: ClipTransform | None = None,
    *,
    crop_size: int | None = None,
    num_crops: int | None = None,
    **options: Any,
) -> ClipTransform:
    """The transform a dataset in ``mode`` applies.

    Args:
        mode: The dataset's mode ("train", "val" or "test").
        transform: A built transform: returned as it is, after checking that it
            fits the dataset (the training recipe for a training set, an
            evaluation recipe otherwise; ``crop_size`` and ``num_crops``, where
            given, equal to its own).
        crop_size: Output side of the default transform (224 when None).
        num_crops: Crops per clip of the default transform (1 when None).
        **options: Further :class:`ClipTransform` options of the default
            transform (``short_side``, ``flip``, ``output``, ...); only without
            ``transform``.

    Returns:
        ``transform``, or ``ClipTransform(mode, crop_size, num_crops=num_crops, **options)``.
    """
    if transform is None:
        return ClipTransform(
            mode, 224 if crop_size is None else crop_size, num_crops=1 if num_crops is None else num_crops, **options
        )
    if options:
        raise TypeError(f"{', '.join(sorted(options))}: set these on the ClipTransform passed as transform=")
    if (transform.mode == "train") != (mode == "train"):
        raise ValueError(f"a {mode!r} dataset cannot use a ClipTransform built for {transform.mode!r}")
    if crop_size is not None and crop_size != transform.crop_size:
        raise ValueError(f"crop_size={crop_size} differs from the transform's crop_size={transform.crop_size}")
    if num_crops is not None and num_crops != transform.num_views_per_clip:
        raise ValueError(f"num_crops={num_crops} differs from the transform's {transform.num_views_per_clip} per clip")
    return transform
