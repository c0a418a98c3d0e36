"""Clip sampling: exact frame indices of the official train/test recipes."""

import numpy as np
import pytest

from video_swin.data import sampling


def test_train_clip_is_a_strided_run_from_a_seeded_start():
    rng = np.random.default_rng(7)
    got = sampling.train_clip_indices(100, 8, 2, rng)
    start = int(np.random.default_rng(7).integers(0, 100 - 16 + 1))
    np.testing.assert_array_equal(got, start + 2 * np.arange(8))
    assert got.dtype == np.int64


def test_train_starts_cover_exactly_the_valid_range():
    rng = np.random.default_rng(0)
    starts = {int(sampling.train_clip_indices(20, 4, 3, rng)[0]) for _ in range(2000)}
    assert starts == set(range(20 - 12 + 1))


@pytest.mark.parametrize("num_frames", [5, 15, 16])
def test_train_short_video_starts_at_zero_and_loops(num_frames):
    got = sampling.train_clip_indices(num_frames, 8, 2, np.random.default_rng(0))
    if num_frames == 16:  # exactly one span: the only start is 0, no looping needed
        np.testing.assert_array_equal(got, np.arange(0, 16, 2))
    else:
        np.testing.assert_array_equal(got, np.arange(0, 16, 2) % num_frames)


def test_eval_clips_official_k400_positions():
    # 300 frames, 32 x 2, 4 clips: free range 237 split in 4 parts of 59.25, start in each middle.
    got = sampling.eval_clip_indices(300, 32, 2, 4)
    assert got.shape == (4, 32)
    np.testing.assert_array_equal(got[:, 0], [29, 88, 148, 207])
    np.testing.assert_array_equal(got[2], 148 + 2 * np.arange(32))


def test_eval_single_clip_is_centred():
    got = sampling.eval_clip_indices(100, 8, 2, 1)
    np.testing.assert_array_equal(got, [42 + 2 * np.arange(8)])  # int(85 / 2) = 42


def test_eval_short_video_loops_from_zero():
    got = sampling.eval_clip_indices(10, 8, 2, 3)
    np.testing.assert_array_equal(got, np.tile(np.arange(0, 16, 2) % 10, (3, 1)))


@pytest.mark.parametrize("args", [(0, 8, 2), (10, 0, 2), (10, 8, 0)])
def test_invalid_arguments_raise(args):
    with pytest.raises(ValueError):
        sampling.train_clip_indices(*args, np.random.default_rng(0))
    with pytest.raises(ValueError):
        sampling.eval_clip_indices(*args, 1)
    with pytest.raises(ValueError):
        sampling.eval_clip_indices(10, 2, 2, 0)
