"""Writers of tiny real mp4 files for the data tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from video_swin.data import IMAGENET_MEAN, IMAGENET_STD
from video_swin.data.demo import write_video

GRAY_STEP = 4  # frame i of an "index video" is uniformly gray at GRAY_STEP * i + 2


def write_mp4(path: Path, frames: np.ndarray, fps: int | Fraction = 25, gop: int = 12, crf: int = 0,
              faststart: bool = False) -> Path:
    """Writes (N, H, W, 3) uint8 frames as H.264 with B-frames, reproducibly; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps, crf=crf, gop=gop, faststart=faststart)
    return path


def index_frames(num_frames: int, height: int = 24, width: int = 32) -> np.ndarray:
    """Frames whose uniform gray level encodes their index (up to 63)."""
    assert num_frames <= 64
    levels = np.arange(num_frames) * GRAY_STEP + 2
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)


def frame_indices_of(frames: torch.Tensor) -> list[int]:
    """Inverse of :func:`index_frames` for decoded (N, H, W, 3) uint8 frames."""
    means = frames.reshape(frames.shape[0], -1).float().mean(1)
    return ((means - 2) / GRAY_STEP).round().long().tolist()


def clip_indices_of(video: torch.Tensor) -> list[int]:
    """Frame indices of a normalised (3, T, H, W) clip made from an index video."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    gray = (video * std + mean).mean(dim=(0, 2, 3))  # (T,)
    return ((gray - 2) / GRAY_STEP).round().long().tolist()


def textured_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A moving random texture, so that every frame differs from the others."""
    base = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.stack([np.roll(base, (i, 2 * i), axis=(0, 1)) for i in range(num_frames)])
