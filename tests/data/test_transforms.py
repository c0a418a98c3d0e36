"""Clip-consistent transforms: one crop/flip/augmentation for all frames, official geometry."""

import numpy as np
import pytest
import torch

from video_swin.data import IMAGENET_MEAN, IMAGENET_STD
from video_swin.data.transforms import (
    ClipTransform,
    center_box,
    dataset_transform,
    normalize,
    random_resized_box,
    resized_size,
    three_crop_boxes,
)


def _frames(num: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (num, height, width, 3), dtype=np.uint8))


def test_resized_size_keeps_aspect_with_mmaction_rounding():
    assert resized_size(256, 340, 256) == (256, 340)
    assert resized_size(240, 320, 256) == (256, 341)  # 341.33 rounds down
    assert resized_size(320, 180, 224) == (398, 224)  # portrait: width is the short side


def test_three_crops_span_the_long_side():
    assert three_crop_boxes(224, 300, 224) == [(0, 0, 224, 224), (0, 38, 224, 224), (0, 76, 224, 224)]
    assert three_crop_boxes(300, 224, 224) == [(0, 0, 224, 224), (38, 0, 224, 224), (76, 0, 224, 224)]
    assert center_box(256, 340, 224) == (16, 58, 224, 224)


def test_random_resized_box_respects_bounds_area_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = random_resized_box(256, 340, rng)
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 340
        assert 0.08 * 256 * 340 * 0.9 <= h * w <= 256 * 340
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_normalize_layout_and_values():
    clip = torch.full((2, 5, 3, 4, 4), 200, dtype=torch.uint8)  # (V, T, 3, H, W)
    out = normalize(clip, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (2, 3, 5, 4, 4) and out.dtype == torch.float32 and out.is_contiguous()
    expected = (200 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0, 0], expected)


@pytest.mark.parametrize(
    "options",
    [{}, {"flip": True}, {"rand_augment": (2, 9)}, {"random_erasing": 1.0},
     {"rand_augment": (4, 7), "random_erasing": 1.0}],
    ids=["crop", "flip", "randaugment", "erasing", "all"],
)
def test_training_views_are_identical_across_frames_of_a_static_clip(options):
    frame = _frames(1, 60, 80)
    clip = frame.expand(8, -1, -1, -1).contiguous()[None]  # (1, T, H, W, 3), all frames equal
    transform = ClipTransform("train", 32, 37, **options)
    for seed in range(5):
        out = transform(clip, np.random.default_rng(seed))
        assert out.shape == (1, 3, 8, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out[:, :, :1].expand_as(out), out), seed


def test_training_crop_box_is_shared_by_frames_that_differ():
    # frame t = frame 0 + 3t: if every frame gets the same box, the outputs differ by a constant.
    base = torch.from_numpy(np.random.default_rng(1).integers(0, 200, (50, 70, 3), dtype=np.uint8))
    clip = torch.stack([base + 3 * t for t in range(6)])[None]
    out = ClipTransform("train", 24, 27, flip=True)(clip, np.random.default_rng(3))[0]  # (3, T, S, S)
    diff = (out[:, 1:] - out[:, :1]) * torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    steps = 3 * torch.arange(1, 6, dtype=torch.float32).view(1, 5, 1, 1)
    assert (diff - steps).abs().max() < 1.01  # resampling of uint8 rounds each frame by at most 1


def test_same_generator_state_gives_same_augmentation():
    clip = _frames(4, 40, 40)[None]
    transform = ClipTransform("train", 16, 18, rand_augment=(2, 9), random_erasing=0.5)
    a = transform(clip, np.random.default_rng(11))
    b = transform(clip, np.random.default_rng(11))
    assert torch.equal(a, b)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    transform(clip, np.random.default_rng(12))
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator is left alone


def test_eval_views_are_clip_major_and_three_crops_go_left_to_right():
    height, width, size = 32, 64, 32
    ramp = torch.linspace(0, 255, width).round().to(torch.uint8)  # brighter to the right
    clips = ramp.view(1, 1, 1, width, 1).expand(2, 3, height, width, 3).clone()  # (C, T, H, W, 3)
    clips[1] //= 2  # the second clip is darker
    out = ClipTransform("test", size, size, num_crops=3)(clips)
    assert out.shape == (6, 3, 3, size, size)
    means = out.mean(dim=(1, 2, 3, 4))
    assert means[0] < means[1] < means[2] and means[3] < means[4] < means[5]
    assert (means[3:] < means[:3]).all()


@pytest.mark.parametrize("mode,short_side,box", [("val", 36, (2, 12, 36, 36)), ("test", 32, (0, 10, 40, 40))])
def test_eval_crop_is_the_centre_of_the_resized_frame(mode, short_side, box):
    transform = ClipTransform(mode, 32, short_side, num_crops=1)
    assert transform.boxes(40, 60) == [box]  # the centre 32 x 32 of the resized frame, in source pixels
    clips = _frames(3, 40, 60)[None]
    out = transform(clips)
    assert out.shape == (1, 3, 3, 32, 32)
    assert torch.equal(out, transform(clips))


def test_centre_crop_at_native_scale_takes_the_exact_pixels():
    clips = _frames(3, 64, 80)[None]  # short side already 64: no resampling
    out = ClipTransform("val", 56, 64)(clips)
    expected = normalize(clips[0, :, 4:60, 12:68].permute(0, 3, 1, 2)[None], IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(out, expected)


def test_invalid_configurations():
    with pytest.raises(ValueError, match="num_crops"):
        ClipTransform("val", 32, 36, num_crops=2)
    with pytest.raises(ValueError, match="short_side"):
        ClipTransform("test", 32, 16)
    with pytest.raises(ValueError, match="mode"):
        ClipTransform("eval", 32, 36)


@pytest.mark.parametrize(
    "mode, options",
    [("train", {}), ("train", {"rand_augment": (2, 9)}), ("test", {"num_crops": 3}), ("val", {})],
)
def test_uint8_output_normalised_later_is_bitwise_the_float_output(mode, options):
    from video_swin.data import clips_to_float

    clips = _frames(4 * (2 if mode != "train" else 1), 48, 64).view(-1, 4, 48, 64, 3)  # (C, T, H, W, 3)
    kwargs = dict(num_crops=options.pop("num_crops", 1), **options)
    as_float = ClipTransform(mode, 32, 36, **kwargs)
    as_uint8 = ClipTransform(mode, 32, 36, output="uint8", **kwargs)
    flips = 0
    for seed in range(6):  # training: both flip outcomes among the seeds
        ref = as_float(clips, np.random.default_rng(seed))
        raw = as_uint8(clips, np.random.default_rng(seed))
        assert raw.dtype == torch.uint8 and raw.shape == ref.shape
        assert torch.equal(clips_to_float(raw), ref)
        flips += not torch.equal(raw, as_uint8(clips, np.random.default_rng(100)))
    assert clips_to_float(ref) is ref  # float clips pass through
    if mode == "train":
        assert flips  # the seeds did change the crop/flip


def test_uint8_output_refuses_random_erasing():
    with pytest.raises(ValueError, match="random erasing"):
        ClipTransform("train", 32, 36, random_erasing=0.25, output="uint8")
    with pytest.raises(ValueError, match="output"):
        ClipTransform("train", 32, 36, output="half")


@pytest.mark.parametrize("mode,crop_size,short_side", [("train", 224, 256), ("val", 224, 256), ("test", 224, 224),
                                                       ("val", 56, 64), ("test", 56, 56)])  # fmt: skip
def test_default_short_side_is_the_official_recipe(mode, crop_size, short_side):
    assert ClipTransform(mode, crop_size).short_side == short_side
    assert ClipTransform(mode).crop_size == 224


def test_dataset_transform_builds_the_default_or_checks_the_given_one():
    built = dataset_transform("test", crop_size=32, num_crops=3, short_side=40, output="uint8")
    assert (built.mode, built.crop_size, built.num_crops, built.short_side) == ("test", 32, 3, 40)
    assert built.output == "uint8"
    assert dataset_transform("train").crop_size == 224 and dataset_transform("val").num_crops == 1
    given = ClipTransform("val", 32, num_crops=3)
    assert dataset_transform("test", given) is given  # val and test recipes both evaluate
    assert dataset_transform("val", given, crop_size=32, num_crops=3) is given
    with pytest.raises(ValueError, match="'train' dataset"):
        dataset_transform("train", given)
    with pytest.raises(ValueError, match="'val' dataset"):
        dataset_transform("val", ClipTransform("train", 32))
    with pytest.raises(ValueError, match="crop_size=16"):
        dataset_transform("val", given, crop_size=16)
    with pytest.raises(ValueError, match="num_crops=1"):
        dataset_transform("val", given, num_crops=1)
    with pytest.raises(TypeError, match="flip, short_side"):
        dataset_transform("val", given, short_side=40, flip=False)
    with pytest.raises(TypeError):
        dataset_transform("val", crop_sise=32)  # a misspelt option is an error, not ignored
