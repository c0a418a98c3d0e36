"""Config schema: types, ranges, overrides, and the script's exit code 2 on user mistakes."""

import dataclasses
import logging
import subprocess
import sys

import pytest
import yaml

from video_swin.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    Views,
    config_from_dict,
    list_configs,
    load_config,
    parse_views,
    to_dict,
)

from .conftest import REPO


def test_every_shipped_config_loads():
    assert {"demo.yaml", "k400_swin_t.yaml", "ssv2_swin_b.yaml"} <= set(list_configs())
    for name in list_configs():
        load_config(str(CONFIG_DIR / name))
        load_config(name)
    assert (REPO / "configs" / "demo.yaml").is_file()  # the repo-root link keeps configs/*.yaml paths working
    assert load_config("configs/demo.yaml") == load_config("demo.yaml")


def test_bare_name_is_looked_up_in_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recipes are package data: found from any directory
    assert load_config("k400_swin_t.yaml").model.name == "swin3d_t"
    assert load_config("ssv2_swin_b").model.window_size == [16, 7, 7]
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_load_config_returns_plain_dataclasses():
    cfg = load_config("demo.yaml", ["model.window_size=[2,4,4]"])
    assert type(cfg) is Config and dataclasses.is_dataclass(cfg.model)
    assert type(cfg.model.window_size) is list and type(cfg.data.crop_scale[0]) is float
    assert type(cfg.data.decoder) is str and cfg.train.mixed_precision == "no"
    assert yaml.safe_load(yaml.safe_dump(to_dict(cfg))) == to_dict(cfg)  # what a run folder's config.yaml holds
    assert config_from_dict(to_dict(cfg)) == cfg


def test_yaml_1_1_floats_and_ints_as_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 5e-4\n  eps: 1e-6\nsched:\n  warmup_epochs: 1\ndata:\n  crop_scale: [0, 1]\n")
    cfg = load_config(str(path))
    assert cfg.optim.lr == 5e-4 and cfg.optim.eps == 1e-6 and type(cfg.sched.warmup_epochs) is float
    assert cfg.data.crop_scale == [0.0, 1.0]
    assert config_from_dict({"optim": {"lr": "5e-4"}}).optim.lr == 5e-4


def test_legacy_keys_of_saved_configs_are_dropped(caplog):
    saved = to_dict(load_config("demo.yaml"))
    saved["model"].update(recompute_mlp=True, recompute_qkv=False)  # what older runs wrote beside checkpoints
    with caplog.at_level(logging.DEBUG, logger="video_swin.config"):
        assert config_from_dict(saved) == load_config("demo.yaml")
    assert "model.recompute_mlp" in caplog.text
    with pytest.raises(ConfigError, match=r"unknown key 'model\.recompute_mlp'"):  # given on purpose: an error
        load_config("demo.yaml", ["model.recompute_mlp=false"])


def test_empty_sections_and_interpolation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\ndata:\n  root: /x\n  train_annotations: ${data.root}/train.csv\n")
    cfg = load_config(str(path))
    assert cfg.model.name == "swin3d_t" and cfg.data.train_annotations == "/x/train.csv"
    with pytest.raises(ConfigError, match="model: expected a mapping, got 3"):
        load_config(None, ["model=3"])


def test_official_recipe_values():
    t, s, b = (load_config(f"k400_swin_{x}.yaml") for x in "tsb")
    assert (t.optim.lr, t.optim.weight_decay, t.optim.backbone_lr_mult, t.optim.betas) == (1e-3, 0.02, 0.1, [0.9, 0.999])
    assert (t.data.clip_len, t.data.frame_interval, t.data.crop_size, t.eval.views) == (32, 2, 224, "4x3")
    assert (t.train.batch_size, t.train.grad_accum_steps, s.train.grad_accum_steps, b.train.grad_accum_steps) == (8, 4, 8, 8)
    assert (t.model.drop_path_rate, s.model.drop_path_rate, b.model.drop_path_rate) == (0.1, 0.1, 0.3)
    assert (s.optim.weight_decay, b.optim.weight_decay, t.sched.warmup_epochs, t.train.epochs) == (0.02, 0.05, 2.5, 30)
    ssv2 = load_config("ssv2_swin_b.yaml")
    assert (ssv2.data.flip, ssv2.data.rand_augment, ssv2.data.random_erasing, ssv2.train.label_smoothing) == (False, [4, 7], 0.25, 0.1)
    assert (ssv2.optim.lr, ssv2.optim.weight_decay, ssv2.model.drop_path_rate, ssv2.train.epochs, ssv2.eval.views) == (
        3e-4, 0.05, 0.4, 60, "1x3")


def test_overrides_are_typed():
    cfg = load_config("demo.yaml", ["train.epochs=3", "optim.lr=5e-4", "model.window_size=[2,4,4]", "model.pretrained_image=null"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 5e-4 and cfg.model.window_size == [2, 4, 4]


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.decoder=opencv", "data.decoder: must be one of ['decord', 'pyav', 'torchcodec', 'auto'], got 'opencv'"),
        ("model.depths=[1.5]", "model.depths[0]: expected int, got 1.5"),
        ("train.mixed_precision=no", "quote the value"),
        ("train.epoch=3", "train.epoch"),
        ("trian.epochs=3", "trian"),
        ("train.epochs=three", "train.epochs"),
        ("data.clip_len=0", "data.clip_len"),
        ("eval.views=4y3", "eval.views"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("model.drop_path_rate=1.5", "model.drop_path_rate"),
    ],
)
def test_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config("demo.yaml", [override])
    assert key in str(info.value) and "\n" not in str(info.value)


def test_views_parse():
    assert parse_views("4x3") == (4, 3) and parse_views("1x1") == Views(clips=1, crops=1)
    assert str(parse_views(" 2 x 3 ")) == "2x3" and parse_views(Views(4, 3)) == (4, 3)
    with pytest.raises(ConfigError, match="--views"):
        parse_views("4x2", key="--views")
    assert load_config("ssv2_swin_b.yaml").eval.parsed_views == Views(clips=1, crops=3)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config", "demo.yaml", "--set", "train.epoch=3"], "train.epoch"),
        (["--config", "demo.yaml", "--set", "data.clip_len=0"], "data.clip_len"),
        (["--config", "demo.yaml", "--set", "eval.views=4y3"], "eval.views"),
        (["--config", "no_such_config.yaml"], "no_such_config.yaml"),
        (["--config", "demo.yaml", "--set", "data.generate_demo=false", "data.train_annotations=/nope/train.csv"],
         "/nope/train.csv"),
        (["--config", "demo.yaml", "--set", "model.pretrained_image=/nope/swin.pth"], "/nope/swin.pth"),
    ],
)
def test_script_exits_2_with_one_line(args, needle):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], check=False,
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_script_help():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--help"], check=False,
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and "--config" in result.stdout and "--resume" in result.stdout


def test_v2_options_reach_the_model():
    from video_swin.engine.build import model_from_config

    cfg = load_config("demo.yaml", ["model.attention=cosine", "model.position_bias=cpb",
                                    "model.pretrained_window_size=[2,4,4]"])
    attn = model_from_config(cfg, 10).layers[0].blocks[0].attn
    assert hasattr(attn, "logit_scale") and hasattr(attn, "cpb_mlp")
    plain = model_from_config(load_config("demo.yaml"), 10).layers[0].blocks[0].attn
    assert not hasattr(plain, "logit_scale") and not hasattr(plain, "cpb_mlp")
    with pytest.raises(ConfigError, match="model.norm"):
        load_config("demo.yaml", ["model.norm=middle"])


def test_activation_checkpointing_reaches_the_model():
    from video_swin.engine.build import model_from_config

    assert not model_from_config(load_config("demo.yaml"), 10).layers[0].use_checkpoint
    assert model_from_config(load_config("demo.yaml", ["model.use_checkpoint=true"]), 10).layers[0].use_checkpoint


def test_uint8_output_rules():
    assert load_config("demo.yaml", ["data.output=uint8"]).data.output == "uint8"
    with pytest.raises(ConfigError, match="data.output"):
        load_config("demo.yaml", ["data.output=uint8", "data.random_erasing=0.25"])
    with pytest.raises(ConfigError, match="data.output"):
        load_config("demo.yaml", ["data.output=uint8", "data.pipeline=pytorchvideo"])
    with pytest.raises(ConfigError, match="data.output"):
        load_config("demo.yaml", ["data.output=half"])


def test_shm_slots_pick_the_collate():
    from video_swin.data import SharedRingCollate
    from video_swin.data.collate import collate
    from video_swin.engine.build import collate_fn

    ring = collate_fn(load_config("demo.yaml"))  # the default: 4 segments per worker
    assert isinstance(ring, SharedRingCollate) and ring.slots == 4
    assert collate_fn(load_config("demo.yaml", ["data.shm_slots=2"])).slots == 2
    assert collate_fn(load_config("demo.yaml", ["data.shm_slots=0"])) is collate  # a new segment per batch
    assert collate_fn(load_config("demo.yaml", ["data.num_workers=0"])) is collate  # nothing crosses processes
    with pytest.raises(ConfigError, match=r"data\.shm_slots"):
        load_config("demo.yaml", ["data.shm_slots=-1"])
