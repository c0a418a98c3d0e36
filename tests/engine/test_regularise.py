"""The fine-tuning regularisers: Mixup/CutMix, EMA, layer-wise lr decay, repeated augmentation, frozen backbone."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest
import torch
import yaml
from accelerate.data_loader import BatchSamplerShard
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import BatchSampler

from video_swin.checkpoints import save_checkpoint
from video_swin.config import load_config
from video_swin.data import VideoDataset
from video_swin.data.repeated import RepeatedAugmentationSampler, RepeatedVideos
from video_swin.engine.optim import build_optimizer, layer_id, set_lr
from video_swin.engine.regularise import BatchMixer, make_ema
from video_swin.errors import ConfigError
from video_swin.models import create_model

from .conftest import run_train, tiny_overrides

K = 5


def batch(b=6, t=2, h=8, w=12):
    g = torch.Generator().manual_seed(0)
    videos = torch.randn(b, 3, t, h, w, generator=g)  # all values distinct
    labels = torch.tensor([0, 1, 2, 3, 4, 1][:b])  # neighbours (the pairs) of different classes
    return videos, labels


def test_mixup_targets_sum_to_one_and_the_pixels_use_the_targets_lambda():
    videos, labels = batch()
    before = videos.clone()
    mixed, targets = BatchMixer(K, mixup=0.8, cutmix=0.0)(videos, labels, key=(0, 0, 3, 0))
    assert torch.equal(videos, before)  # the batch (a reused shared-memory buffer) is not modified
    assert targets.shape == (6, K) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    lam = targets[0, labels[0]]
    assert 0 < lam < 1
    for i in range(6):  # each clip paired with the one before it, with that one weight
        assert targets[i, labels[i]] == lam and targets[i, labels[i - 1]] == 1 - lam
    torch.testing.assert_close(mixed, lam * videos + (1 - lam) * videos.roll(1, 0))
    again, _ = BatchMixer(K, mixup=0.8, cutmix=0.0)(videos, labels, key=(0, 0, 3, 0))
    other, _ = BatchMixer(K, mixup=0.8, cutmix=0.0)(videos, labels, key=(0, 0, 4, 0))
    assert torch.equal(again, mixed) and not torch.equal(other, mixed)  # a function of the batch's place


def test_cutmix_cuts_one_box_through_every_frame_whose_area_is_the_targets_weight():
    videos, labels = batch()
    seen = set()
    for step in range(20):
        mixed, targets = BatchMixer(K, mixup=0.0, cutmix=1.0)(videos, labels, key=(0, 0, step, 0))
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        pasted = mixed == videos.roll(1, 0)  # (B, 3, T, H, W)
        assert torch.equal(pasted | (mixed == videos), torch.ones_like(pasted))
        box = pasted[0, 0, 0]  # (H, W)
        assert torch.equal(pasted, box.expand_as(pasted))  # one box, the same in every clip, channel and frame
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        if len(rows):
            assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
        area = box.float().mean()
        for i in range(6):
            assert targets[i, labels[i - 1]] == pytest.approx(float(area), abs=1e-6)
            assert targets[i, labels[i]] == pytest.approx(1 - float(area), abs=1e-6)
        seen.add(round(float(area), 4))
    assert len(seen) > 5


def test_both_kinds_are_chosen_and_mix_prob_zero_leaves_batches_alone():
    videos, labels = batch()
    both = BatchMixer(K, mixup=0.8, cutmix=1.0, switch_prob=0.5)
    kinds = set()
    for step in range(20):
        mixed, _ = both(videos, labels, key=(1, 0, step, 0))
        kinds.add("cutmix" if ((mixed == videos) | (mixed == videos.roll(1, 0))).all() else "mixup")
    assert kinds == {"mixup", "cutmix"}
    mixed, targets = BatchMixer(K, mixup=0.8, cutmix=1.0, prob=0.0)(videos, labels, key=(0, 0, 0, 0))
    assert torch.equal(mixed, videos) and torch.equal(targets, nn.functional.one_hot(labels, K).float())


def test_ema_is_the_hand_computed_average_after_each_step():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    decay = 0.9
    ema = make_ema(model, decay)
    expected = None
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update_parameters(model)
        now = [p.detach().clone() for p in model.parameters()]
        expected = now if expected is None else [decay * e + (1 - decay) * w for e, w in zip(expected, now)]
        for got, want in zip(ema.module.parameters(), expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert int(ema.n_averaged) == 5


def tiny_swin():
    return create_model("swin3d_t", num_classes=K, embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 1])


def test_layer_decay_gives_each_stage_lr_times_d_to_the_power_of_its_distance_from_the_head():
    model, lr, d = tiny_swin(), 1e-3, 0.5
    opt = build_optimizer(model, lr, 0.05, backbone_lr_mult=0.1, layer_decay=d)
    names = {id(p): n for n, p in model.named_parameters()}
    expected_power = {"patch_embed": 4, "layers.0": 3, "layers.1": 2, "layers.2": 1, "norm": 0, "head": 0}
    seen = set()
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            prefix = next(k for k in expected_power if name.startswith(k + "."))
            assert layer_id(name, 3) == 4 - expected_power[prefix]
            assert group["lr"] == pytest.approx(lr * d ** expected_power[prefix]), name
            assert group["weight_decay"] == (0.0 if name in model.no_weight_decay() else 0.05), name
            seen.add(name)
    assert seen == set(names.values())  # every parameter, once
    for factor in (0.01, 0.5, 1.0):  # warm-up and cosine scale every group alike
        set_lr(opt, factor)
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(group["base_lr"] * factor)
    assert opt.param_groups[-1]["lr"] == pytest.approx(lr)  # the group the trainer logs: the head's


def test_without_layer_decay_the_groups_are_unchanged():
    model = tiny_swin()
    groups = build_optimizer(model, 1e-3, 0.05, backbone_lr_mult=0.1).param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-4), ("backbone_no_decay", 1e-4),
                                                      ("head", 1e-3), ("head_no_decay", 1e-3)]


@pytest.mark.parametrize("processes, b, k", [(1, 4, 2), (2, 4, 2), (2, 2, 3)])
def test_repeated_augmentation_order_depends_on_seed_and_epoch_and_spreads_repeats(processes, b, k):
    n = 12
    sampler = RepeatedAugmentationSampler(n, k, seed=0, batch_size=b, num_processes=processes)
    sampler.set_epoch(1)
    order = list(sampler)
    assert len(order) == len(sampler) == n * k and sorted(order) == list(range(n * k))  # every (video, repeat)
    assert order == list(sampler)  # a function of (seed, epoch): a resumed epoch sees the same order
    sampler.set_epoch(2)
    assert list(sampler) != order
    sampler.set_epoch(1)
    # what each process gets from accelerate's prepared loader
    batches = BatchSampler(sampler, b, drop_last=True)
    streams = [[i for batch_ in BatchSamplerShard(batches, processes, p) for i in batch_] for p in range(processes)]
    assert sorted(i for stream in streams for i in stream) == list(range(n * k))
    steps = {}
    for p, stream in enumerate(streams):
        for pos, item in enumerate(stream):
            steps.setdefault(item % n, []).append((pos // b, p))
    for video, where in steps.items():
        assert len(where) == k
        assert len({s for s, _ in where}) <= 2  # the repeats come together (within two neighbouring steps)
        assert len({p for _, p in where}) == min(k, processes)  # spread over the processes
    if b % k == 0 or processes >= k:  # mixing pairs a clip with the one before it: never with its own repeat
        for stream in streams:
            for s in range(0, len(stream), b):
                local = [i % n for i in stream[s:s + b]]
                assert all(local[i] != local[i - 1] for i in range(b)), local


def test_each_repeat_is_its_own_crop_and_one_repeat_is_the_plain_dataset(tiny_data):
    ds = VideoDataset(f"{tiny_data}/train.csv", tiny_data, mode="train", clip_len=4, frame_interval=2, crop_size=32,
                      seed=0, short_side=36)  # fmt: skip
    ds.set_epoch(2)
    plain = ds[5]["video"]
    assert torch.equal(RepeatedVideos(ds, 1)[5]["video"], plain)
    repeated = RepeatedVideos(ds, 3)
    views = [repeated[r * len(ds) + 5] for r in range(3)]
    assert all(v["index"] == 5 for v in views)
    for a in range(3):
        for c in range(a + 1, 3):
            assert not torch.equal(views[a]["video"], views[c]["video"]), (a, c)
    assert torch.equal(views[1]["video"], ds.get(5, epoch=2 * 3 + 1)["video"])


@pytest.mark.parametrize(
    "key, value, words",
    [("train.mixup", -1, "train.mixup: must be >= 0"), ("train.mix_prob", 1.5, "train.mix_prob: must be in [0, 1]"),
     ("train.ema_decay", 1.0, "train.ema_decay: must be in (0, 1)"),
     ("optim.layer_decay", 0, "optim.layer_decay: must be in (0, 1]"),
     ("data.repeated_aug", 0, "data.repeated_aug: must be >= 1")],
)  # fmt: skip
def test_config_errors_name_the_key(key, value, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config("demo.yaml", [f"{key}={value}"])
    with pytest.raises(ConfigError, match="data.repeated_aug: needs data.pipeline: native"):
        load_config("demo.yaml", ["data.repeated_aug=2", "data.shards=/nowhere/{split}.tar"])


def test_defaults_are_off():
    cfg = load_config("k400_swin_t.yaml")
    t = cfg.train
    assert (t.mixup, t.cutmix, t.ema_decay, t.freeze_backbone) == (0.0, 0.0, None, False)
    assert (cfg.optim.layer_decay, cfg.data.repeated_aug) == (None, 1)


def test_a_frozen_backbone_keeps_its_weights_bitwise_while_the_head_trains(tiny_data, tmp_path):
    from video_swin.engine.build import model_from_config

    sets = tiny_overrides(tiny_data, tmp_path / "run", **{"train.freeze_backbone": "true", "train.max_steps": 3,
                                                          "eval.final": "false", "model.drop_path_rate": 0.2})
    torch.manual_seed(1)
    start = model_from_config(load_config("demo.yaml", sets), 10)
    save_checkpoint(start, tmp_path / "start.safetensors")
    run_train([*sets, f"model.pretrained_video={tmp_path / 'start.safetensors'}"])
    before, after = load_file(tmp_path / "start.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        if key.startswith("head."):
            assert not torch.equal(before[key], after[key]), key
        else:
            assert torch.equal(before[key], after[key]), key


def test_kill_and_resume_with_every_regulariser_gives_the_uninterrupted_weights_and_ema(tiny_data, tmp_path):
    """Mixup and CutMix, EMA, layer decay and repeated augmentation together: a run killed after
    its first state and resumed ends with the uninterrupted run's weights and EMA, bitwise."""
    extra = {"train.max_steps": 4, "data.num_workers": 1, "model.drop_path_rate": 0.2, "eval.final": "false",
             "train.mixup": 0.8, "train.cutmix": 1.0, "train.mix_prob": 0.9, "train.ema_decay": 0.8,
             "optim.layer_decay": 0.7, "data.repeated_aug": 2, "train.grad_accum_steps": 2,
             "train.batch_size": 2}  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    # beside the killed run (less wall time), and evaluated after its last step (raw weights and EMA)
    evaluated = {**extra, "eval.final": "true", "eval.every_epochs": 1}
    uninterrupted = run_train(tiny_overrides(tiny_data, full, **evaluated), popen=True)
    proc = run_train(tiny_overrides(tiny_data, cut, **extra), popen=True)
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "step_2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first save"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "model.safetensors").exists(), "the run finished before it could be killed"
    run_train(tiny_overrides(tiny_data, cut, **extra), resume=True)
    assert uninterrupted.wait(timeout=300) == 0
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(full / name), load_file(cut / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    weights, ema = load_file(full / "model.safetensors"), load_file(full / "model_ema.safetensors")
    assert not torch.equal(weights["head.weight"], ema["head.weight"])  # an average, not a copy
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("val_top1" in r and "val_ema_top1" in r for r in rows)
    assert any("test_top1" in r for r in rows) and any("test_ema_top1" in r for r in rows)
    report = json.loads((full / "eval_ema" / "metrics.json").read_text())
    assert report["checkpoint"] == str(full / "model_ema.safetensors")
    assert report["top1"] == next(r["test_ema_top1"] for r in rows if "test_ema_top1" in r)


def test_a_frozen_backbone_runs_in_eval_mode_and_the_head_in_training_mode():
    from video_swin.engine.regularise import freeze_backbone, set_train_mode

    model = tiny_swin()
    frozen = freeze_backbone(model)
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert [g["name"] for g in build_optimizer(model, 1e-3, 0.05, 0.1).param_groups] == ["head", "head_no_decay"]
    model.eval()
    set_train_mode(model, freeze_backbone=True)
    modes = {n: m.training for n, m in model.named_modules() if n}
    assert modes["head"] and modes["head_drop"]
    assert not any(mode for n, mode in modes.items() if not n.startswith("head"))
    set_train_mode(model, freeze_backbone=False)
    assert all(m.training for m in model.modules())


def test_a_run_saved_before_these_keys_existed_resumes_with_them_at_their_defaults(tmp_path):
    from video_swin.config import to_dict
    from video_swin.engine.run_dir import check_resume_config

    new = {**to_dict(load_config("demo.yaml")), "world_size": 1}
    old = {**new, "train": {k: v for k, v in new["train"].items() if k not in ("mixup", "ema_decay")}}
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(old))
    assert check_resume_config(saved, new) == []
    new["train"] = {**new["train"], "mixup": 0.8}  # switched on when resuming: a change
    with pytest.raises(ConfigError, match=re.escape("train.mixup None -> 0.8")):
        check_resume_config(saved, new)


def test_mixing_leaves_the_global_random_streams_as_they_were():
    videos, labels = batch()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    BatchMixer(K, mixup=0.8, cutmix=1.0)(videos, labels, key=(0, 0, 0, 0))
    assert torch.equal(torch.rand(3), expected)
