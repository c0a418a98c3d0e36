"""Clip sampling by frame index, as in the official Video Swin (mmaction ``SampleFrames``) recipe.

A clip is ``clip_len`` frames taken every ``frame_interval`` frames, so it spans
``clip_len * frame_interval`` frames of the video. Indices past the end of a
short video wrap around (mmaction's ``out_of_bound_opt="loop"``). These are
pure functions of their arguments; training randomness comes in as a
``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np


def _check(num_frames: int, clip_len: int, frame_interval: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_len < 1 or frame_interval < 1:
        raise ValueError(f"clip_len and frame_interval must be >= 1, got {clip_len} and {frame_interval}")


def train_clip_indices(
    num_frames: int, clip_len: int, frame_interval: int, rng: np.random.Generator
) -> np.ndarray:
    """One clip at a random start, uniform over the starts that keep it inside the video.

    Matches mmaction's ``SampleFrames(num_clips=1)`` in training mode: the start is
    drawn from ``[0, num_frames - clip_len * frame_interval]``, or is 0 when the
    video is shorter than the clip's span, in which case the clip loops.

    Args:
        num_frames: Frames in the video.
        clip_len: Frames in the clip.
        frame_interval: Step between consecutive clip frames.
        rng: Source of the random start.

    Returns:
        ``int64[clip_len]`` frame indices in [0, num_frames).
    """
    _check(num_frames, clip_len, frame_interval)
    span = clip_len * frame_interval
    start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else 0
    return (start + np.arange(clip_len, dtype=np.int64) * frame_interval) % num_frames


def eval_clip_indices(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """``num_clips`` clips with evenly spaced starts (mmaction ``SampleFrames(test_mode=True)``).

    The free range ``num_frames - span + 1`` is split into ``num_clips`` equal
    parts and each clip starts in the middle of its part (truncated to an
    integer). Videos shorter than one span get all clips at start 0, looping.

    Args:
        num_frames: Frames in the video.
        clip_len: Frames per clip.
        frame_interval: Step between consecutive clip frames.
        num_clips: Number of clips.

    Returns:
        ``int64[num_clips, clip_len]`` frame indices in [0, num_frames).
    """
    _check(num_frames, clip_len, frame_interval)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    span = clip_len * frame_interval
    if num_frames > span - 1:
        part = (num_frames - span + 1) / num_clips
        starts = (np.arange(num_clips) * part + part / 2.0).astype(np.int64)
    else:
        starts = np.zeros(num_clips, dtype=np.int64)
    offsets = np.arange(clip_len, dtype=np.int64) * frame_interval
    return (starts[:, None] + offsets[None, :]) % num_frames  # (num_clips, clip_len)
