"""forward_intermediates: per-stage features with timm's arguments, equal to timm's Swin on the same weights."""

import pytest
import timm
import torch

import video_swin
from video_swin.checkpoints import load_checkpoint

TINY = {"embed_dim": 16, "depths": (2, 2, 2), "num_heads": (2, 2, 4), "num_classes": 5}


def tiny_clip_model(seam, **overrides):
    torch.manual_seed(0)
    model = video_swin.create_model("swin3d_t", window_size=(2, 3, 3), **{**TINY, **overrides})
    return seam(model.eval())


def test_image_stages_equal_timm(seam):
    torch.manual_seed(0)
    small = {"embed_dim": 32, "depths": (2, 2, 2), "num_heads": (2, 4, 8), "num_classes": 10}
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=112, **small).eval()
    model = seam(video_swin.create_model("swin_t", **small).eval())
    report = load_checkpoint(model, ref.state_dict())
    assert report.layout == "timm" and not report.missing and not report.unexpected
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        final, ours = model.forward_intermediates(x, norm=True)
        ref_final, theirs = ref.forward_intermediates(x, norm=True)
        assert [t.shape for t in ours] == [t.shape for t in theirs]
        assert [t.shape[1:] for t in ours] == [(32, 28, 28), (64, 14, 14), (128, 7, 7)]
        for i, (a, b) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"stage {i}")
        torch.testing.assert_close(final, ref_final.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-4)
        # timm's selections: the last n stages, listed (negative) indices, stopping early
        for kwargs in ({"indices": 2}, {"indices": [0, -2]}, {"indices": [1], "stop_early": True}):
            ours = model.forward_intermediates(x, intermediates_only=True, **kwargs)
            theirs = ref.forward_intermediates(x, intermediates_only=True, **kwargs)
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=str(kwargs))


def test_clip_stages_shapes_and_final_equal_forward_features(seam):
    model = tiny_clip_model(seam)
    x = torch.randn(2, 3, 5, 36, 44)  # odd T and padded maps: T' = 3, H' x W' = 9 x 11 -> 5 x 6 -> 3 x 3
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert [tuple(f.shape) for f in feats] == [(2, 16, 3, 9, 11), (2, 32, 3, 5, 6), (2, 64, 3, 3, 3)]
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[-1], final)
        torch.testing.assert_close(normed[0], feats[0])  # the final norm is for the last stage only
        last = model.forward_intermediates(x, indices=1, output_fmt="NTHWC", intermediates_only=True)
        torch.testing.assert_close(last[0], feats[-1].movedim(1, -1))


def test_stop_early_runs_no_later_stage(seam):
    model = tiny_clip_model(seam)
    x = torch.randn(1, 3, 4, 32, 32)
    calls = []
    model.layers[2].register_forward_pre_hook(lambda *_: calls.append(2))
    model.layers[1].downsample.register_forward_pre_hook(lambda *_: calls.append("merge 1"))
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        assert calls == []
        full = model.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == 2
    torch.testing.assert_close(final, feats[-1])  # the last stage run, not normalised
    for a, b in zip(feats, full):
        torch.testing.assert_close(a, b)


def test_accelerated_equals_reference():
    ref = tiny_clip_model(lambda m: m, attention="cosine", position_bias="cpb", norm="post")
    fast = tiny_clip_model(video_swin.models.kernels.accelerate_cpu, attention="cosine", position_bias="cpb",
                           norm="post")
    x = torch.randn(2, 3, 4, 40, 40)
    with torch.no_grad():
        for a, b in zip(ref.forward_intermediates(x)[1], fast.forward_intermediates(x)[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradients_flow_to_every_chosen_stage():
    model = tiny_clip_model(lambda m: m).train()
    x = torch.randn(1, 3, 4, 32, 32)
    feats = model.forward_intermediates(x, intermediates_only=True)
    sum(f.square().mean() for f in feats).backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.layers[2].blocks[1].mlp.fc2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"indices": 4}, "last 4 stages"), ({"indices": [3]}, "stage numbers"), ({"indices": []}, "stage numbers"),
     ({"output_fmt": "NCHW"}, "NCTHW")],
)
def test_bad_arguments_raise(kwargs, match):
    model = tiny_clip_model(lambda m: m)
    with pytest.raises(ValueError, match=match):
        model.forward_intermediates(torch.randn(1, 3, 4, 32, 32), **kwargs)
    with pytest.raises(ValueError, match="expected a float tensor"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32))
