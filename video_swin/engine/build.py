"""What training and evaluation build alike: the accelerator, datasets, loaders, the model, the class list."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoints import load_checkpoint, load_image_pretrained
from ..checkpoints.io import read_sidecar
from ..config import Config, Views
from ..data import ClipTransform, SharedRingCollate, build_video_dataset, class_names
from ..data.annotations import read_class_file
from ..data.collate import collate
from ..data.shards import ShardDataset, ShardLoader, ShardSet
from ..data.split import SplitFiles, ensure_split, split_files
from ..errors import CheckpointError, ConfigError, TrainingError  # noqa: F401  (re-exported)
from ..models import create_model
from ..models.kernels import accelerate_cpu, machine  # machine's functions looked up when called (tests replace them)
from ..pretrained import resolve_weights

log = logging.getLogger(__name__)


# The rendezvous of :func:`_elastic_init_method`: ``env://`` with the keys of each attempt apart.
_ATTEMPT_SCHEME = "video-swin-attempt"


def _attempt_rendezvous(url: str, **kwargs: Any):
    """``env://``'s store, rank and world size, the store's keys under a prefix of this elastic attempt."""
    from urllib.parse import urlparse

    from torch.distributed import PrefixStore
    from torch.distributed.rendezvous import rendezvous

    store, rank, world_size = next(rendezvous(urlparse(url)._replace(scheme="env").geturl(), **kwargs))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    yield PrefixStore(f"video_swin/attempt_{attempt}", store), rank, world_size


def _elastic_init_method() -> str | None:
    """The ``init_method`` for the process group of a restarted torchrun attempt, or None for the default.

    torchrun (``--max-restarts``, c10d rendezvous) serves one key-value store for
    all its attempts (``TORCHELASTIC_USE_AGENT_STORE``) and torch writes each
    attempt's process-group keys under the same names. A restarted attempt then
    reads the addresses of the killed one: gloo retries a dead port ("connection
    refused") or waits for a peer that never comes (NCCL reads a stale id the
    same way). Each attempt's keys go under a prefix of its own here. The
    attempt count is only the same in every process under one agent (one node,
    ``GROUP_WORLD_SIZE`` 1); across nodes, launch torchrun with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a new store each attempt).
    """
    import torch.distributed as dist

    if (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("GROUP_WORLD_SIZE") != "1"
            or int(os.environ.get("WORLD_SIZE", "1")) < 2 or not dist.is_available() or dist.is_initialized()):
        return None
    try:
        dist.register_rendezvous_handler(_ATTEMPT_SCHEME, _attempt_rendezvous)
    except RuntimeError:  # registered by an earlier call in this process
        pass
    return f"{_ATTEMPT_SCHEME}://"


def usable_cores() -> int:
    """CPUs this process may run on (its affinity), shared by the processes launched on this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def torch_threads(setting: str, cores: int, workers: int, *, cpu: bool, omp_env: str | None = None) -> int | None:
    """The intra-op thread count of ``train.threads`` (None: leave torch's count as it is).

    ``auto`` on a CPU run: ``max(1, cores - workers)``, the cores the loader
    workers leave free; more threads than free cores spin-wait on each other
    while the workers decode (docs/BENCHMARKS.md, "Training loop and threads").
    ``auto`` on a GPU run, or where ``OMP_NUM_THREADS`` is set (``omp_env``:
    by the user, ``accelerate launch`` or torchrun, and torch follows it): None.
    A count: that count, anywhere.
    """
    if setting != "auto":
        return int(setting)
    return max(1, cores - workers) if cpu and not omp_env else None


def set_torch_threads(cfg: Config, cpu: bool, workers: int | None = None) -> int:
    """Applies :func:`torch_threads` for this process (``workers`` default ``data.num_workers``); returns the count."""
    workers = cfg.data.num_workers if workers is None else workers
    cores = usable_cores()
    threads = torch_threads(cfg.train.threads, cores, workers, cpu=cpu, omp_env=os.environ.get("OMP_NUM_THREADS"))
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def make_accelerator(cfg: Config) -> Accelerator:
    """An Accelerator whose processes form one group, also on machines without a GPU.

    accelerate only joins CPU processes into a gloo group when built with
    ``cpu=True``; without it, each process of a multi-process CPU launch would
    silently work alone (train on its own, or evaluate the whole set once per process).
    """
    init_method = _elastic_init_method()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with="tensorboard",
        project_dir=cfg.output_dir,
        kwargs_handlers=[InitProcessGroupKwargs(init_method=init_method)] if init_method else None,
    )
    threads = set_torch_threads(cfg, cpu=accelerator.device.type == "cpu")
    omp = os.environ.get("OMP_NUM_THREADS") if cfg.train.threads == "auto" else None
    accelerator.print(f"torch threads: {threads} ({usable_cores()} cores, {cfg.data.num_workers} loader workers"
                      f"{', OMP_NUM_THREADS=' + omp if omp else ''})")
    if accelerator.device.type == "cpu" and cfg.train.mixed_precision == "bf16":
        warning = machine.bf16_warning(machine.cpu_profile())  # bf16 without bf16 hardware is emulated: slower
        if warning and accelerator.is_main_process:
            log.warning(warning)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise TrainingError(
            f"launched {launched} processes but they formed a group of {accelerator.num_processes}; "
            f"refusing to run them separately"
        )
    return accelerator


def _common_data_args(cfg: Config, classes: Sequence[str] | str | None) -> dict[str, Any]:
    d = cfg.data
    return dict(clip_len=d.clip_len, frame_interval=d.frame_interval, decoder=d.decoder, seed=cfg.seed,
                classes=classes, pipeline=d.pipeline, max_bad_fraction=d.max_bad_fraction,
                decode_timeout=d.decode_timeout)


def _clip_transform(cfg: Config, mode: str, num_crops: int = 1) -> ClipTransform:
    """The spatial recipe of ``mode`` from ``data.*``; the augmentations apply to training only."""
    d = cfg.data
    if mode != "train":
        short_side = d.train_short_side if mode == "val" else d.test_short_side
        return ClipTransform(mode, d.crop_size, short_side, num_crops=num_crops, output=d.output)
    return ClipTransform("train", d.crop_size, d.train_short_side, flip=d.flip, scale=tuple(d.crop_scale),
                         rand_augment=tuple(d.rand_augment) if d.rand_augment else None,
                         random_erasing=d.random_erasing, output=d.output)


def build_test_dataset(
    cfg: Config, classes: Sequence[str], views: Views | None = None, *, videos: Sequence[str] | None = None,
    process_index: int = 0, num_processes: int = 1, shards: ShardSet | None = None,
) -> Any:
    """The multi-view test set: ``views`` (default ``eval.views``) per video.

    Args:
        cfg: data settings.
        classes: class names (labels are indices into them).
        views: clips x crops (default ``eval.views``).
        videos: score these files (unlabelled, in the native pipeline, no
            failure fatal) instead of ``data.val_annotations``.
        process_index, num_processes: this process and how many there are
            (with ``data.shards``, each process streams its own part of the val shards).
        shards: the val shards when already found (else found from ``data.shards``).
    """
    clips, crops = views or cfg.eval.parsed_views
    if cfg.data.shards and videos is None:
        return _shard_dataset(cfg, shards or "val", "test", classes, _clip_transform(cfg, "test", crops), num_clips=clips,
                              rank=process_index, world=num_processes)
    args = _common_data_args(cfg, list(classes))
    annotations: Any = annotation_files(cfg)[1]
    root: str | None = cfg.data.root
    if videos is not None:
        args.update(pipeline="native", max_bad_fraction=1.0)
        annotations, root = list(videos), None
    return build_video_dataset(annotations, root, mode="test", num_clips=clips,
                               transform=_clip_transform(cfg, "test", crops), **args)


def _shard_dataset(cfg: Config, shards: ShardSet | str, mode: str, classes: Sequence[str],
                   transform: ClipTransform, *, num_clips: int = 1, rank: int, world: int) -> ShardDataset:
    """A :class:`~video_swin.data.shards.ShardDataset` of ``shards`` (or of that split of ``data.shards``)."""
    d, train = cfg.data, mode == "train"
    return ShardDataset(
        ShardSet.find(d.shards, shards) if isinstance(shards, str) else shards, mode, transform, classes, clip_len=d.clip_len,
        frame_interval=d.frame_interval, num_clips=num_clips, decoder=d.decoder, decode_timeout=d.decode_timeout,
        seed=cfg.seed, rank=rank, world=world, batch_size=cfg.train.batch_size if train else cfg.eval.batch_size,
        grad_accum=cfg.train.grad_accum_steps if train else 1, shuffle_buffer=d.shuffle_buffer if train else 0,
        max_bad_fraction=d.max_bad_fraction,
    )  # fmt: skip


def shard_classes(cfg: Config, train: ShardSet | None = None) -> list[str]:
    """The class list of a run from shards: ``data.classes``, else the sorted labels of the train shards
    (``train`` when already found; the val shards where there are none)."""
    if cfg.data.classes:
        return read_class_file(cfg.data.classes)
    if train is not None:
        return sorted({r.label for r in train.records})
    for split in ("train", "val"):
        try:
            return sorted({r.label for r in ShardSet.find(cfg.data.shards, split).records})
        except Exception as e:  # no train shards: evaluating on val alone
            if split == "val":
                raise
            log.warning("no train shards (%s); taking the class list from the val shards", e)
    raise AssertionError("unreachable")


def build_datasets(cfg: Config, process_index: int = 0, num_processes: int = 1) -> tuple[Any, Any, Any]:
    """Training set, single-view validation set and the multi-view test set.

    With ``data.shards`` they stream the shards (each process its own part;
    :mod:`~video_swin.data.shards`), else they read the annotated files.
    """
    d = cfg.data
    if d.shards:
        found = {split: ShardSet.find(d.shards, split) for split in ("train", "val")}  # once: may be a pass
        classes = shard_classes(cfg, found["train"])
        where = {"rank": process_index, "world": num_processes}
        train = _shard_dataset(cfg, found["train"], "train", classes, _clip_transform(cfg, "train"), **where)
        val = _shard_dataset(cfg, found["val"], "val", classes, _clip_transform(cfg, "val"), **where)
        test = build_test_dataset(cfg, classes, process_index=process_index, num_processes=num_processes,
                                  shards=found["val"])
        return train, val, test
    common = _common_data_args(cfg, d.classes)
    train_annotations, val_annotations = annotation_files(cfg)
    train = build_video_dataset(train_annotations, d.root, mode="train", transform=_clip_transform(cfg, "train"),
                                **common)
    common["classes"] = list(train.classes)
    val = build_video_dataset(val_annotations, d.root, mode="val", transform=_clip_transform(cfg, "val"), **common)
    return train, val, build_test_dataset(cfg, train.classes)


def split_folder(cfg: Config) -> Path:
    """Where a run without validation annotations writes its split (``OUTPUT_DIR/split``)."""
    return Path(cfg.output_dir) / "split"


def annotation_files(cfg: Config) -> tuple[str, str]:
    """The training and validation annotations a run reads: ``data.train_annotations`` and
    ``data.val_annotations``, or with ``data.val_annotations: null`` the lists of the run's split
    (:func:`write_split`)."""
    d = cfg.data
    if d.val_annotations is not None:
        return d.train_annotations, d.val_annotations
    train, val = split_files(split_folder(cfg))
    return str(train), str(val)


def write_split(cfg: Config) -> SplitFiles:
    """With ``data.val_annotations: null``: the run's stratified split of the training videos, written into
    ``OUTPUT_DIR/split`` or, when it is there (a resumed run), checked and reused
    (:func:`~video_swin.data.split.ensure_split`). Main process only."""
    d = cfg.data
    return ensure_split(split_folder(cfg), d.train_annotations, d.root, classes=d.classes, fraction=d.val_fraction,
                        seed=d.split_seed)


def eval_loader(ds: Any, cfg: Config, device: torch.device | str | None = None) -> DataLoader | ShardLoader:
    """The loader of a validation or test set (``eval.batch_size`` videos per process and batch).

    A :class:`~video_swin.data.shards.ShardDataset` gets a :class:`~video_swin.data.shards.ShardLoader`
    that moves batches to ``device``; it must not go through ``accelerator.prepare`` (see there).
    """
    # Worker seeds come from this generator, not the global RNG, so that an
    # evaluation in the middle of training leaves the model's RNG stream alone.
    loader = DataLoader(ds, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(cfg.seed),
                        collate_fn=collate_fn(cfg))
    return ShardLoader(loader, device) if isinstance(ds, ShardDataset) else loader


def collate_fn(cfg: Config) -> Callable[[Sequence[Any]], Any]:
    """The loaders' ``collate_fn``: a ring of ``data.shm_slots`` reused buffers per worker, or the data collate.

    Both batch alike (:func:`~video_swin.data.collate.collate`: decode failures as one flat list of records).
    """
    return SharedRingCollate(cfg.data.shm_slots) if cfg.data.shm_slots and cfg.data.num_workers else collate


def model_from_config(cfg: Config, num_classes: int) -> nn.Module:
    """The architecture of ``cfg.model`` with fresh weights (pretrained files are not read)."""
    m = cfg.model
    keys = ("window_size", "embed_dim", "depths", "num_heads", "attention", "position_bias", "norm",
            "pretrained_window_size")
    overrides = {k: getattr(m, k) for k in keys if getattr(m, k)}
    try:
        return create_model(m.name, num_classes=num_classes, drop_path_rate=m.drop_path_rate,
                            head_dropout=m.head_dropout, use_checkpoint=m.use_checkpoint, **overrides)
    except ValueError as e:  # options that do not fit together (e.g. depths and num_heads of other lengths)
        raise ConfigError(f"model: {e}") from e


def for_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Applies the device's fast paths to a built model (the kernel seam); the reference model elsewhere.

    On CPU that is :func:`~video_swin.models.kernels.accelerate_cpu` (fused
    attention, oneDNN linears, recomputation, chunked inference; same
    weights and state-dict keys, same results within float rounding). On
    GPUs the reference model's SDPA already takes the fused kernels.
    """
    if torch.device(device).type == "cpu":
        accelerate_cpu(model)
    return model


# Debugging knob for ``train.compile``: another dynamo backend than inductor, e.g. "eager"
# (dynamo's graph capture alone) or "aot_eager" (with AOTAutograd's joint graph), which
# compile a model in seconds instead of minutes: it tells a graph-capture problem from an
# inductor one, and the tests train compiled models with it. Not a config key: it changes
# what is checked, not what is trained; the mode applies to inductor only.
COMPILE_BACKEND_ENV = "VIDEO_SWIN_COMPILE_BACKEND"


def compile_for_training(model: nn.Module, setting: bool | str, accelerator: Accelerator) -> nn.Module | None:
    """``torch.compile`` of the prepared ``model`` under ``train.compile`` (None when it is off).

    The result is a separate wrapper over the same module and parameters,
    for the training steps to call; everything else keeps using ``model``.
    That is why this is our own call rather than accelerate's
    (``Accelerator(dynamo_backend=...)``/``TorchDynamoPlugin``), which puts
    the wrapper in place of the prepared model: accelerate 1.15's
    ``save_state`` then writes its ``_orig_mod.``-prefixed keys (so a state
    would not load into an uncompiled run), ``unwrap_model`` keeps it unless
    told, a sharded (fsdp) model, which accelerate does not prepare, would stay
    eager, and ``make_accelerator`` also serves ``evaluate`` and ``predict``,
    which read ``train.compile`` from a checkpoint's config. Here the states,
    the final weights and the evaluations see the prepared model alone: the
    same keys as an uncompiled run, and ``--resume`` may switch it either way.
    Like accelerate, it compiles the prepared model (a DDP wrapper, when there
    is one), so that dynamo splits the graph at DDP's gradient buckets and
    gradient communication still overlaps the backward. Called after
    :func:`for_device`: the CPU fast paths step aside while dynamo traces
    (``kernels.switches``), so inductor sees plain ops.
    """
    if setting is False:
        return None
    mode = None if setting is True else str(setting)
    backend = os.environ.get(COMPILE_BACKEND_ENV, "").strip() or "inductor"
    if backend != "inductor":  # a debugging backend takes no mode
        how, mode = f"backend {backend} from {COMPILE_BACKEND_ENV}{f', mode {mode} ignored' if mode else ''}", None
    else:
        how = f"backend inductor, mode {mode or 'default'}"
    accelerator.print(f"train.compile: training steps run through torch.compile ({how}); the first steps include "
                      f"compiling time (minutes on CPU; again for each new input shape)")
    return torch.compile(model, backend=backend, mode=mode)


def build_model(cfg: Config, num_classes: int, accelerator: Accelerator) -> nn.Module:
    """The model of ``cfg.model``, with pretrained weights inflated or loaded as configured, for the run's device."""
    m = cfg.model
    model = for_device(model_from_config(cfg, num_classes), accelerator.device)
    # Registry names (``swin_t.in1k``) become cached files; the main process downloads, the others wait.
    with accelerator.main_process_first():
        image, video = (resolve_weights(p) if p else None for p in (m.pretrained_image, m.pretrained_video))
    if image:
        report = load_image_pretrained(model, image, temporal_init=m.temporal_init)
        accelerator.print(f"initialised from {m.pretrained_image}\n{report}")
    if video:
        report = load_checkpoint(model, video)
        accelerator.print(f"loaded {m.pretrained_video}\n{report}")
    return model


def config_classes(cfg: Config) -> list[str]:
    """The class list a config trains with: ``data.classes``, else the training annotations' labels.

    Without the training annotations (evaluating downloaded weights on a
    validation set alone), the validation annotations' own labels are used;
    for Kinetics both give the sorted label names.
    """
    d = cfg.data
    if d.shards:
        return shard_classes(cfg)
    if d.classes:
        return read_class_file(d.classes)
    if Path(d.train_annotations).exists():
        return class_names(d.train_annotations)
    val = annotation_files(cfg)[1]  # with data.val_annotations: null, the run's split
    log.warning("%s not found; taking the class list from %s", d.train_annotations, val)
    return class_names(val)


def checkpoint_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names saved in a checkpoint's sidecar, or None (no sidecar, or none saved)."""
    meta = read_sidecar(path) or {}
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: the sidecar's 'classes' is not a list of names")
    return classes


def load_trained_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Loads a complete classifier (backbone and head) into ``model``, or raises.

    Unlike fine-tuning, evaluation cannot use a file that leaves any weight
    freshly initialised, so a missing or mismatched head is an error here.

    Raises:
        CheckpointError: unreadable file, another architecture, or missing weights.
    """
    report = load_checkpoint(model, path)
    if report.missing:
        shown = ", ".join(report.missing[:5]) + (" ..." if len(report.missing) > 5 else "")
        skipped = f" ({'; '.join(report.skipped)})" if report.skipped else ""
        raise CheckpointError(f"{path}: does not hold every weight of the configured model: missing {shown}{skipped}")
    log.info("loaded %s\n%s", path, report)
