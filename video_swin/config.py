"""Typed training configuration: dataclasses, YAML loading and ``--set a.b=c`` overrides.

YAML files are pure data over this schema. Unknown keys, wrong types and
impossible values raise :class:`ConfigError` naming the key, before anything
is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelConfig:
    name: str = "swin3d_t"
    num_classes: int | None = None  # None: from the training annotations
    drop_path_rate: float = 0.1
    head_dropout: float = 0.5
    pretrained_image: str | None = None  # 2D checkpoint to inflate
    pretrained_video: str | None = None  # video checkpoint (window differences are interpolated)
    temporal_init: str = "average"  # inflation of the patch embedding: average | center
    window_size: list[int] | None = None
    embed_dim: int | None = None
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    use_checkpoint: bool = False
    # keep less for backward and recompute it there (see SwinTransformer): MLP
    # hidden layers, and on CPU the attention's qkv projection
    recompute_mlp: bool = True
    recompute_qkv: bool = True
    # Swin V2 options, one at a time on any preset (None: the preset's own choice)
    attention: str | None = None  # dot | cosine
    position_bias: str | None = None  # table | cpb
    norm: str | None = None  # pre | post
    pretrained_window_size: list[int] | None = None  # cpb: the window the loaded weights were trained with


@dataclass
class DataConfig:
    root: str = "data/kinetics400"
    train_annotations: str = "data/kinetics400/train.csv"
    val_annotations: str = "data/kinetics400/val.csv"
    classes: str | None = None  # optional class list file (one name per line)
    decoder: str = "decord"  # decord | pyav
    pipeline: str = "native"  # native | pytorchvideo
    output: str = "float"  # float | uint8: workers send uint8 clips, normalised on the device
    clip_len: int = 32
    frame_interval: int = 2
    crop_size: int = 224
    train_short_side: int = 256  # training and single-view validation
    test_short_side: int = 224  # multi-view testing: short side resized to this, then the views' crops
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random resized crop area range
    flip: bool = True
    rand_augment: list[int] | None = None  # [n, m]
    random_erasing: float = 0.0
    max_bad_fraction: float = 0.05
    # Seconds one video may take to decode. Decoding then runs in a helper process per
    # DataLoader worker, so a decoder that crashes or hangs on a file costs that file
    # (handled as a broken video), not the run. null: decode in the worker itself.
    decode_timeout: float | None = 60.0
    num_workers: int = 4
    # Shared-memory batch buffers per DataLoader worker, filled again once a batch is
    # freed (SharedRingCollate); 0: torch's default collate (a new segment per batch).
    shm_slots: int = 4
    generate_demo: bool = False  # write the demo dataset to `root` if it is missing


@dataclass
class TrainConfig:
    epochs: int = 30
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 8  # per process
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    max_grad_norm: float | None = None
    label_smoothing: float = 0.0
    save_every_steps: int = 1000
    keep_last: int = 2
    log_every_steps: int = 10
    max_nonfinite_steps: int = 5  # consecutive skipped steps before the run stops


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.02
    backbone_lr_mult: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedConfig:
    warmup_epochs: float = 2.5
    min_lr: float = 0.0


@dataclass
class EvalConfig:
    views: str = "4x3"  # clips x crops
    final: bool = True
    every_epochs: int = 1  # single-view validation accuracy; 0 = never
    batch_size: int = 1
    max_views_per_forward: int = 12
    average: str = "prob"  # prob | logit


@dataclass
class Config:
    seed: int = 0
    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` for the scripts: a usage mistake is one line on stderr (``error: ...``) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_views(views: str, key: str = "eval.views") -> tuple[int, int]:
    """``"4x3"`` -> (4 clips, 3 crops); a ConfigError naming ``key`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(views))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) not in (1, 3):
        raise ConfigError(f"{key}: expected CLIPSxCROPS such as '4x3' (crops 1 or 3), got {views!r}")
    return int(m.group(1)), int(m.group(2))


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{full}'{hint}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, f"{full}.")
        else:
            kwargs[key] = _check_type(full, value, hints[key])
    return cls(**kwargs)


def _positive(key: str, value: Any, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate(cfg: Config) -> None:
    """Range and choice checks that types alone cannot express."""
    choices = {
        "data.decoder": (cfg.data.decoder, ("decord", "pyav")),
        "data.pipeline": (cfg.data.pipeline, ("native", "pytorchvideo")),
        "data.output": (cfg.data.output, ("float", "uint8")),
        "train.mixed_precision": (cfg.train.mixed_precision, ("no", "fp16", "bf16")),
        "eval.average": (cfg.eval.average, ("prob", "logit")),
        "model.temporal_init": (cfg.model.temporal_init, ("average", "center")),
        "model.attention": (cfg.model.attention, (None, "dot", "cosine")),
        "model.position_bias": (cfg.model.position_bias, (None, "table", "cpb")),
        "model.norm": (cfg.model.norm, (None, "pre", "post")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {list(allowed)}, got {value!r}")
    if cfg.data.output == "uint8" and cfg.data.pipeline != "native":
        raise ConfigError("data.output: uint8 is only available with data.pipeline: native")
    if cfg.data.output == "uint8" and cfg.data.random_erasing:
        raise ConfigError("data.output: uint8 cannot be combined with data.random_erasing (it works on float clips)")
    from .models import list_models  # noqa: PLC0415  (imports torch; only once the types are known good)

    if cfg.model.name not in list_models():
        close = difflib.get_close_matches(cfg.model.name, list_models(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; one of {list_models()}"
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}{hint}")
    for key in ("data.clip_len", "data.frame_interval", "data.crop_size", "data.train_short_side",
                "data.test_short_side", "train.epochs", "train.batch_size", "train.grad_accum_steps",
                "train.save_every_steps", "train.log_every_steps", "train.keep_last", "optim.lr",
                "eval.batch_size", "eval.max_views_per_forward", "train.max_steps", "model.num_classes",
                "train.max_nonfinite_steps", "data.decode_timeout"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name))
    for key in ("data.num_workers", "data.shm_slots", "optim.weight_decay", "sched.warmup_epochs", "sched.min_lr",
                "eval.every_epochs", "optim.backbone_lr_mult", "model.drop_path_rate", "model.head_dropout"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name), allow_zero=True)
    for key, value in (("model.drop_path_rate", cfg.model.drop_path_rate), ("model.head_dropout", cfg.model.head_dropout),
                       ("data.random_erasing", cfg.data.random_erasing), ("data.max_bad_fraction", cfg.data.max_bad_fraction),
                       ("train.label_smoothing", cfg.train.label_smoothing)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}: must be in [0, 1], got {value!r}")
    if cfg.data.crop_size > cfg.data.train_short_side:
        raise ConfigError(f"data.crop_size: {cfg.data.crop_size} exceeds data.train_short_side {cfg.data.train_short_side}")
    if cfg.data.rand_augment is not None and len(cfg.data.rand_augment) != 2:
        raise ConfigError(f"data.rand_augment: expected [n, m], got {cfg.data.rand_augment!r}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {cfg.optim.betas!r}")
    parse_views(cfg.eval.views)


def resolve_path(name: str) -> Path:
    """A config path as given, or a bare file name looked up in ``configs/``."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {name} (looked in . and {CONFIG_DIR})")


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{part}' is not a section")
    node[parts[-1]] = value


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(error).split())


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Loads a YAML config (or the defaults) and applies ``KEY=VALUE`` overrides.

    Values are parsed as YAML (``train.epochs=3``, ``model.pretrained_image=null``,
    ``model.window_size=[16,7,7]``).

    Raises:
        ConfigError: missing file, invalid YAML, unknown key, wrong type or value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = resolve_path(path)
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: invalid YAML ({_yaml_problem(e)})") from e
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """A config from plain data (e.g. the ``config`` a checkpoint's sidecar holds), checked like a file."""
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (what ``config.yaml`` in a run folder holds)."""
    return dataclasses.asdict(cfg)


def check_paths(cfg: Config, *, evaluation: bool = False) -> None:
    """Raises ConfigError naming the first input file that does not exist.

    Annotation files are not required when ``data.generate_demo`` will write them.
    With ``evaluation``, only what evaluating a checkpoint reads is checked
    (the validation annotations and the class file; no pretrained weights).
    """
    files = {"data.classes": cfg.data.classes}
    if evaluation:
        files["data.val_annotations"] = cfg.data.val_annotations
    else:
        files.update({"model.pretrained_image": cfg.model.pretrained_image,
                      "model.pretrained_video": cfg.model.pretrained_video})
        if not cfg.data.generate_demo:
            files.update({"data.train_annotations": cfg.data.train_annotations,
                          "data.val_annotations": cfg.data.val_annotations})
    for key, value in files.items():
        if value is not None and not Path(value).exists():
            raise ConfigError(f"{key}: file not found: {value}")
