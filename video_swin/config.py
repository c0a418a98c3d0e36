"""Typed training configuration on OmegaConf structured configs.

The dataclasses below are the schema. A recipe (YAML, pure data) and
``--set a.b=c`` overrides are merged over it by OmegaConf, which checks every
key and type; :func:`validate` adds the ranges and cross-field rules that
types cannot express. Every mistake is a :class:`~video_swin.errors.ConfigError`
whose one-line message names the key, before anything is built.

Recipes ship inside the package (``video_swin/configs/*.yaml``), so a bare
name such as ``demo.yaml`` resolves from any directory and any install.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

Decoder = Literal["decord", "pyav", "torchcodec", "auto"]
Pipeline = Literal["native", "pytorchvideo"]
ClipOutput = Literal["float", "uint8"]  # uint8: workers send uint8 clips, normalised on the device
MixedPrecision = Literal["no", "fp16", "bf16"]
Distributed = Literal["ddp", "fsdp"]  # fsdp: parameters, gradients, AdamW states sharded per Swin block (FSDP2)
TemporalInit = Literal["average", "center"]
Attention = Literal["dot", "cosine"]
PositionBias = Literal["table", "cpb"]
NormPlacement = Literal["pre", "post"]
ScoreAverage = Literal["prob", "logit"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]  # torch.compile's modes


@dataclass
class ModelConfig:
    name: str = "swin3d_t"
    num_classes: int | None = None  # None: from the training annotations
    drop_path_rate: float = 0.1
    head_dropout: float = 0.5
    pretrained_image: str | None = None  # 2D checkpoint to inflate
    pretrained_video: str | None = None  # video checkpoint (window differences are interpolated)
    temporal_init: TemporalInit = "average"  # inflation of the patch embedding
    window_size: list[int] | None = None
    embed_dim: int | None = None
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    use_checkpoint: bool = False
    # Swin V2 options, one at a time on any preset (None: the preset's own choice)
    attention: Attention | None = None
    position_bias: PositionBias | None = None
    norm: NormPlacement | None = None
    pretrained_window_size: list[int] | None = None  # cpb: the window the loaded weights were trained with


@dataclass
class DataConfig:
    root: str = "data/kinetics400"
    train_annotations: str = "data/kinetics400/train.csv"  # a CSV, an mmaction list, or a class-per-folder tree
    # null: no validation annotations; a stratified, seeded share of the training videos is held
    # out instead (val_fraction, split_seed) and written into the run folder (OUTPUT_DIR/split/)
    val_annotations: str | None = "data/kinetics400/val.csv"
    val_fraction: float = 0.1  # of each class's training videos, when val_annotations is null
    split_seed: int = 0  # the held-out videos' draw; its own seed, so runs of several `seed`s share one split
    classes: str | None = None  # optional class list file (one name per line)
    decoder: Decoder = "decord"
    pipeline: Pipeline = "native"
    output: ClipOutput = "float"
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
    # WebDataset shards instead of files (`video-swin prepare --shards`): the folder it wrote
    # (OUT/shards: each split's shards are found in it), or a pattern whose
    # {split} becomes train or val, brace-expanded, e.g. /data/k400/shards/{split}-{000000..000936}.tar;
    # local paths and globs, pipe: commands, http(s)/gs/hf URLs, fsspec URLs such as s3://...
    shards: str | None = None
    shuffle_buffer: int = 64  # raw (undecoded) shard samples each loader worker shuffles among
    # Repeated augmentation (DeiT): each training video k times per epoch, each time with its own
    # random clip and crop; an epoch is k times as many batches. 1: off. Files only (not shards).
    repeated_aug: int = 1


@dataclass
class TrainConfig:
    epochs: int = 30
    max_steps: int | None = None  # optimizer steps; overrides epochs
    # Clips per process and forward, or auto: the memory planner (engine/plan.py) chooses the
    # batch per device, train.grad_accum_steps and model.use_checkpoint that reach
    # train.global_batch within train.memory (engine/batch_plan.py; written to OUTPUT_DIR/batch_plan.json)
    batch_size: int | Literal["auto"] = 8
    global_batch: int | None = None  # clips per optimizer step (batch x processes x accumulation); for auto
    memory: float | None = None  # GiB per device for auto; null: the device's free memory (RAM on CPU)
    grad_accum_steps: int = 1
    mixed_precision: MixedPrecision = "no"
    distributed: Distributed = "ddp"  # how several processes share the model: replicas, or shards (fsdp)
    max_grad_norm: float | None = None
    label_smoothing: float = 0.0
    # Mixup / CutMix of training batches (torchvision.transforms.v2): Beta(alpha, alpha); 0 = off.
    # mix_prob: the chance a batch is mixed; mix_switch_prob: CutMix's share when both are on.
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    ema_decay: float | None = None  # EMA of the weights, updated after each optimizer step; None = off
    freeze_backbone: bool = False  # linear probe: only the head trains, the backbone in eval mode
    save_every_steps: int = 1000
    keep_last: int = 2
    log_every_steps: int = 10
    max_nonfinite_steps: int = 5  # consecutive skipped steps before the run stops
    # torch intra-op (OpenMP) threads of each training/evaluation process on CPU: "auto" or a
    # count. auto = max(1, cores - data.num_workers) on CPU-only runs (cores: this process's
    # share of the CPUs it may use), so that the model's threads and the loader workers do
    # not oversubscribe the cores (measured: docs/BENCHMARKS.md, "Training loop and threads");
    # GPU runs, and runs where OMP_NUM_THREADS is set (accelerate launch, torchrun), keep
    # torch's count. float32 CPU results can differ in the last bits between thread counts;
    # runs with the same config on the same machine get the same count.
    threads: str = "auto"
    # torch.compile of the model the training steps call: false, true (torch's default mode)
    # or a mode name. Compiling takes minutes (about 12 for swin3d_t on 2 CPU cores), paid
    # in the first steps (and again for each new input shape or precision), and on CPU the
    # compiled model was slower than the eager fast paths it replaces (measured once on an
    # AVX-512 EPYC: docs/BENCHMARKS.md, "What each optimisation bought"); it is for GPUs
    # (not measured there). Built in engine.build.compile_for_training. Evaluation, saved
    # weights and states are those of the uncompiled model, so `--resume` may change it;
    # results then differ from an uninterrupted run within float rounding.
    compile: bool | CompileMode = False


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.02
    backbone_lr_mult: float = 0.1
    # Layer-wise lr decay over the Swin stages (BEiT/VideoMAE): head lr, last stage lr*d, ...,
    # patch embedding lr*d^(stages+1); replaces backbone_lr_mult when set. None = off.
    layer_decay: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedConfig:
    warmup_epochs: float = 2.5
    min_lr: float = 0.0


class Views(NamedTuple):
    """Multi-view testing: ``clips`` evenly spaced clips x ``crops`` spatial crops."""

    clips: int
    crops: int

    def __str__(self) -> str:
        return f"{self.clips}x{self.crops}"


@dataclass
class EvalConfig:
    views: str = "4x3"  # clips x crops; read it parsed as `parsed_views`
    final: bool = True
    every_epochs: int = 1  # single-view validation accuracy; 0 = never
    batch_size: int = 1
    max_views_per_forward: int = 12
    average: ScoreAverage = "prob"

    @property
    def parsed_views(self) -> Views:
        """``views`` as (clips, crops); :func:`load_config` has already checked it."""
        return parse_views(self.views)


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


# Keys older versions wrote into the resolved config saved beside checkpoints;
# still accepted in saved data and dropped (the speed switches moved out of the config).
_LEGACY_KEYS = {"model": ("recompute_mlp", "recompute_qkv")}


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` for the commands: a usage mistake is one line on stderr (``error: ...``) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_views(views: str | Views, key: str = "eval.views") -> Views:
    """``"4x3"`` -> ``Views(clips=4, crops=3)``; a ConfigError naming ``key`` otherwise.

    The one parser of the CLIPSxCROPS notation (config, ``--views`` options, reports).
    """
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(views))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) not in (1, 3):
        raise ConfigError(f"{key}: expected CLIPSxCROPS such as '4x3' (crops 1 or 3), got {views!r}")
    return Views(int(m.group(1)), int(m.group(2)))


def list_configs() -> list[str]:
    """The recipes shipped with the package (bare names for ``--config``)."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def resolve_path(name: str | Path) -> Path:
    """A config path as given, or a bare recipe name (``demo`` or ``demo.yaml``) from the package's recipes."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {name} (looked in . and {CONFIG_DIR})")


# -- turning OmegaConf's exceptions into one-line messages in our words ----------------------------


def _key_parts(full_key: str) -> list[str | int]:
    """``"model.depths[0]"`` -> ``["model", "depths", 0]``."""
    return [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", full_key)]


def _schema_type(parts: list[str | int]) -> Any:
    """The annotation of a key path in :class:`Config` (Optional stripped), or None if it has none."""
    hint: Any = Config
    for part in parts:
        if dataclasses.is_dataclass(hint) and isinstance(part, str):
            hint = typing.get_type_hints(hint).get(part)
        elif typing.get_origin(hint) is list:
            hint = typing.get_args(hint)[0]
        else:
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) not in (None, list, Literal) and len(args) == 1:
            hint = args[0]  # X | None -> X
    return hint


def _choices(hint: Any) -> str:
    """The values a union of bool and Literals takes, in words: ``true, false or one of ['a', 'b']``."""
    words = ["true, false" if a is bool else f"one of {list(typing.get_args(a))}" if typing.get_origin(a) is Literal
             else _describe(a) for a in typing.get_args(hint) if a is not type(None)]  # fmt: skip
    return " or ".join(words)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _choices(hint)
    if typing.get_origin(hint) is list:
        return "a list"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


_ABSENT = object()


def _lookup(data: Any, parts: list[str | int]) -> Any:
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _ABSENT
    return data


def _first_line(e: BaseException) -> str:
    msg = getattr(e, "msg", None) or str(e)
    return msg.strip().splitlines()[0] if msg.strip() else type(e).__name__


def _translate(e: OmegaConfBaseException, data: Any) -> ConfigError:
    """A one-line ConfigError naming the key, for an OmegaConf error raised while merging ``data``."""
    full_key = getattr(e, "full_key", None) or ""
    parts = _key_parts(full_key)
    if isinstance(e, ConfigKeyError) and parts:
        parent = _schema_type(parts[:-1])
        names = [f.name for f in dataclasses.fields(parent)] if dataclasses.is_dataclass(parent) else []
        close = difflib.get_close_matches(str(parts[-1]), names, n=1)
        prefix = full_key.rpartition(".")[0]
        hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
        return ConfigError(f"unknown key '{full_key}'{hint}")
    hint = _schema_type(parts) if parts else None
    value = _lookup(data, parts)
    if value is _ABSENT or hint is None:
        return ConfigError(f"{full_key or 'config'}: {_first_line(e)}")
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and isinstance(value, (str, bool)):
        return ConfigError(f"{full_key}: must be {_choices(hint)}, got {value!r}")
    if typing.get_origin(hint) is Literal:
        quote = " (YAML reads yes/no/on/off as booleans: quote the value)" if isinstance(value, bool) else ""
        return ConfigError(f"{full_key}: must be one of {list(typing.get_args(hint))}, got {value!r}{quote}")
    return ConfigError(f"{full_key}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


# -- loading ----------------------------------------------------------------------------------------


def _plain(data: Any, source: str, *, drop_legacy: bool = True) -> dict[str, Any]:
    """Checks the top level of ``data`` (sections are mappings); a new plain dict.

    With ``drop_legacy``, keys of saved configs that this version no longer has are dropped.
    """
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=False)
    if data is None:
        return {}
    if not isinstance(data, dict):
        shown = OmegaConf.to_container(data) if OmegaConf.is_config(data) else data
        raise ConfigError(f"{source}: expected a mapping, got {shown!r}")
    data = dict(data)
    hints = typing.get_type_hints(Config)
    for key, value in list(data.items()):
        if not dataclasses.is_dataclass(hints.get(key)):
            continue
        if value is None:  # an empty section in YAML
            del data[key]
        elif not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        else:
            legacy = [k for k in _LEGACY_KEYS.get(key, ()) if k in value] if drop_legacy else []
            if legacy:
                logger.debug("ignoring legacy config keys %s", ", ".join(f"{key}.{k}" for k in legacy))
                data[key] = {k: v for k, v in value.items() if k not in legacy}
    return data


def _read_file(file: Path) -> dict[str, Any]:
    try:
        loaded = OmegaConf.load(file)  # OmegaConf's YAML reads "5e-4" as a float, as YAML 1.2 does
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: invalid YAML ({_yaml_problem(e)})") from e
    except (OSError, UnicodeDecodeError, OmegaConfBaseException) as e:
        raise ConfigError(f"{file}: cannot read it ({' '.join(str(e).split())})") from e
    return _plain(loaded, "config")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(error).split())


def _parse_overrides(overrides: typing.Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as nested data; values are YAML (``[16,7,7]``, ``null``, ``5e-4``)."""
    conf = OmegaConf.create()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            conf.merge_with_dotlist([f"{key.strip()}={value}"])
        except yaml.YAMLError:  # not YAML (e.g. "a: b" in a path): the text as it is
            OmegaConf.update(conf, key.strip(), value)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {_first_line(e)}") from e
    return _plain(conf, "overrides", drop_legacy=False)  # a removed key given on purpose is an error


def _build(*layers: dict[str, Any]) -> Config:
    """The schema with ``layers`` merged over it in order, as a checked :class:`Config`."""
    merged = OmegaConf.structured(Config)
    for data in layers:
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as e:
            raise _translate(e, data) from e
    try:
        cfg = OmegaConf.to_object(merged)  # plain dataclasses; interpolations resolved
    except OmegaConfBaseException as e:
        raise _translate(e, {}) from e
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Loads a YAML config (or the defaults) and applies ``KEY=VALUE`` overrides.

    Args:
        path: a YAML file, or the bare name of a shipped recipe (``k400_swin_t.yaml``, ``demo``).
        overrides: dotlist items whose values are parsed as YAML (``train.epochs=3``,
            ``model.pretrained_image=null``, ``model.window_size=[16,7,7]``).

    Returns:
        A plain :class:`Config` of dataclasses.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key, wrong type or value
            (``train.threads``: also more than this machine can use, see :func:`check_threads`).
    """
    data = _read_file(resolve_path(path)) if path is not None else {}
    cfg = _build(data, _parse_overrides(overrides))
    check_threads(cfg)
    return cfg


def check_threads(cfg: Config) -> None:
    """Refuses a ``train.threads`` count beyond twice this machine's logical CPUs.

    More intra-op threads than CPUs only wait on each other (1000 on 2 cores:
    steps 18x slower). Checked where a config is loaded to run here
    (:func:`load_config`), not for the config a checkpoint carries from the
    machine it was trained on (:func:`config_from_dict`).
    """
    if cfg.train.threads == "auto":
        return
    cpus = os.cpu_count() or 1
    if int(cfg.train.threads) > 2 * cpus:
        raise ConfigError(f"train.threads: {cfg.train.threads} is more than twice the {cpus} CPUs of this machine "
                          f"(at most {2 * cpus}); use auto or a count up to {2 * cpus}")


def config_from_dict(data: dict[str, Any]) -> Config:
    """A config from plain data (e.g. the ``config`` a checkpoint's sidecar holds), checked like a file.

    Keys that older versions saved and this one no longer has (``model.recompute_mlp``,
    ``model.recompute_qkv``) are dropped.
    """
    return _build(_plain(data, "config"))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (what ``config.yaml`` in a run folder holds)."""
    return dataclasses.asdict(cfg)


# -- checks types cannot express --------------------------------------------------------------------


def _positive(key: str, value: Any, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate(cfg: Config) -> None:
    """Range and cross-field checks that types alone cannot express."""
    if cfg.data.output == "uint8" and cfg.data.pipeline != "native":
        raise ConfigError("data.output: uint8 is only available with data.pipeline: native")
    if cfg.data.output == "uint8" and cfg.data.random_erasing:
        raise ConfigError("data.output: uint8 cannot be combined with data.random_erasing (it works on float clips)")
    if cfg.train.distributed == "fsdp" and cfg.train.mixed_precision == "fp16":
        raise ConfigError("train.distributed: fsdp trains in fp32 or bf16 (train.mixed_precision: no or bf16), "
                          "not fp16, whose loss scaling needs unsharded gradients")
    if cfg.train.batch_size == "auto" and cfg.train.global_batch is None:
        raise ConfigError("train.batch_size: auto needs train.global_batch (clips per optimizer step, e.g. 64)")
    if cfg.train.memory is not None and not (math.isfinite(cfg.train.memory) and cfg.train.memory > 0):
        raise ConfigError(f"train.memory: must be a size in GiB > 0 or null, got {cfg.train.memory!r}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be in (0, 1), got {cfg.data.val_fraction!r}")
    for key in ("data.clip_len", "data.frame_interval", "data.crop_size", "data.train_short_side",
                "data.test_short_side", "train.epochs", "train.grad_accum_steps", "train.global_batch",
                "train.save_every_steps", "train.log_every_steps", "train.keep_last", "optim.lr",
                "eval.batch_size", "eval.max_views_per_forward", "train.max_steps", "model.num_classes",
                "train.max_nonfinite_steps", "data.decode_timeout"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name))
    if cfg.train.batch_size != "auto":
        _positive("train.batch_size", cfg.train.batch_size)
    if cfg.train.threads != "auto" and not (cfg.train.threads.isdigit() and int(cfg.train.threads) > 0):
        raise ConfigError(f"train.threads: expected auto or a count > 0, got {cfg.train.threads!r}")
    for key in ("data.num_workers", "data.shm_slots", "data.shuffle_buffer", "optim.weight_decay", "sched.warmup_epochs", "sched.min_lr",
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
    if cfg.data.shards is not None and (cfg.data.pipeline != "native" or not _shard_location(cfg.data.shards)):
        raise ConfigError("data.shards: needs data.pipeline: native and the folder video-swin prepare --shards "
                          "wrote or a pattern holding {split} (e.g. /data/shards/{split}-{000000..000099}.tar), "
                          f"got {cfg.data.shards!r}")
    if cfg.data.rand_augment is not None and len(cfg.data.rand_augment) != 2:
        raise ConfigError(f"data.rand_augment: expected [n, m], got {cfg.data.rand_augment!r}")
    _validate_regularisers(cfg)
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {cfg.optim.betas!r}")
    parse_views(cfg.eval.views)
    # the model names come with torch: imported last, once every cheap check has passed
    from .models import list_models

    if cfg.model.name not in list_models():
        close = difflib.get_close_matches(cfg.model.name, list_models(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; one of {list_models()}"
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}{hint}")


def _validate_regularisers(cfg: Config) -> None:
    """The fine-tuning regularisers' ranges (docs/TRAINING.md, "Regularisers for small datasets")."""
    t = cfg.train
    for key, value in (("train.mixup", t.mixup), ("train.cutmix", t.cutmix)):
        _positive(key, value, allow_zero=True)
    for key, value in (("train.mix_prob", t.mix_prob), ("train.mix_switch_prob", t.mix_switch_prob)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}: must be in [0, 1], got {value!r}")
    if t.ema_decay is not None and not 0.0 < t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in (0, 1) or null, got {t.ema_decay!r}")
    if t.ema_decay is not None and t.distributed == "fsdp":
        raise ConfigError("train.ema_decay: not available with train.distributed: fsdp (the EMA copy is not sharded)")
    layer_decay = cfg.optim.layer_decay
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"optim.layer_decay: must be in (0, 1] or null, got {layer_decay!r}")
    if cfg.data.repeated_aug < 1:
        raise ConfigError(f"data.repeated_aug: must be >= 1 (1 = off), got {cfg.data.repeated_aug!r}")
    if cfg.data.repeated_aug > 1 and (cfg.data.shards or cfg.data.pipeline != "native"):
        raise ConfigError("data.repeated_aug: needs data.pipeline: native reading files (not data.shards)")


def is_shard_folder(shards: str) -> bool:
    """Whether ``data.shards`` names a folder (as ``prepare --shards`` wrote) rather than a pattern or URL:
    a local path without ``{split}``, braces or glob characters."""
    import glob
    from urllib.parse import urlparse

    return (len(urlparse(shards).scheme) <= 1 and "{" not in shards and not glob.has_magic(shards)
            and not shards.startswith("pipe:"))


def _shard_location(shards: str) -> bool:
    """A pattern holding ``{split}``, or the folder prepare wrote."""
    return "{split}" in shards or is_shard_folder(shards)


def check_paths(cfg: Config, *, evaluation: bool = False) -> None:
    """Raises ConfigError naming the first input file that does not exist.

    Annotation files are not required when ``data.generate_demo`` will write them.
    With ``evaluation``, only what evaluating a checkpoint reads is checked
    (the validation annotations and the class file; no pretrained weights).
    """
    files = {"data.classes": cfg.data.classes}
    if evaluation and not cfg.data.shards and cfg.data.val_annotations is None:
        # the held-out videos a training run wrote (video_swin.data.split); nothing to score without them
        split = Path(cfg.output_dir) / "split" / "val.txt"
        if not split.is_file():
            raise ConfigError(f"data.val_annotations: null, and {split} (the validation split a training run "
                              f"writes into output_dir) does not exist; give data.val_annotations or the run's "
                              f"output_dir")
    elif evaluation and not cfg.data.shards:
        files["data.val_annotations"] = cfg.data.val_annotations
    else:
        files.update({"model.pretrained_image": cfg.model.pretrained_image,
                      "model.pretrained_video": cfg.model.pretrained_video})
        if not cfg.data.generate_demo and not cfg.data.shards:  # shards hold the labels themselves
            files.update({"data.train_annotations": cfg.data.train_annotations,
                          "data.val_annotations": cfg.data.val_annotations})
    for key, value in files.items():
        if value is not None and not Path(value).exists() and not _is_weights_name(key, value):
            raise ConfigError(f"{key}: file not found: {value}")


def _is_weights_name(key: str, value: str) -> bool:
    """True for a published-weights name (``swin_t.in1k``) in a pretrained key: fetched when the model is built."""
    from .pretrained import is_pretrained_name  # on use: the catalog and urllib stay out of `video-swin --help`

    return key.startswith("model.pretrained_") and is_pretrained_name(value)


__all__ = [
    "CONFIG_DIR",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedConfig",
    "TrainConfig",
    "Views",
    "check_paths",
    "config_from_dict",
    "list_configs",
    "load_config",
    "parse_views",
    "resolve_path",
    "to_dict",
    "validate",
]
