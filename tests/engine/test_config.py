"""Config schema: types, ranges, overrides, and the script's exit code 2 on user mistakes."""

import subprocess
import sys

import pytest

from video_swin.config import ConfigError, load_config, parse_views

from .conftest import REPO


def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(str(path))


def test_bare_name_is_looked_up_in_configs():
    assert load_config("k400_swin_t.yaml").model.name == "swin3d_t"
    assert load_config("ssv2_swin_b").model.window_size == [16, 7, 7]


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
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("demo.yaml", [override])


def test_views_parse():
    assert parse_views("4x3") == (4, 3) and parse_views("1x1") == (1, 1)
    with pytest.raises(ConfigError):
        parse_views("4x2")


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
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_script_help():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
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


def test_memory_options_reach_the_model():
    from video_swin.engine.build import model_from_config

    block = model_from_config(load_config("demo.yaml"), 10).layers[0].blocks[0]
    assert block.recompute_mlp and block.attn.recompute_qkv  # the defaults
    cfg = load_config("demo.yaml", ["model.recompute_mlp=false", "model.recompute_qkv=false",
                                    "model.use_checkpoint=true"])
    model = model_from_config(cfg, 10)
    block = model.layers[0].blocks[0]
    assert not block.recompute_mlp and not block.attn.recompute_qkv and model.layers[0].use_checkpoint


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
    from video_swin.engine.build import collate_fn

    ring = collate_fn(load_config("demo.yaml"))  # the default: 4 segments per worker
    assert isinstance(ring, SharedRingCollate) and ring.slots == 4
    assert collate_fn(load_config("demo.yaml", ["data.shm_slots=2"])).slots == 2
    assert collate_fn(load_config("demo.yaml", ["data.shm_slots=0"])) is None  # torch's default collate
    assert collate_fn(load_config("demo.yaml", ["data.num_workers=0"])) is None  # nothing crosses processes
    with pytest.raises(ConfigError, match=r"data\.shm_slots"):
        load_config("demo.yaml", ["data.shm_slots=-1"])
