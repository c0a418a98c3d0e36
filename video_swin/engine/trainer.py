"""The training loop, on accelerate's idioms, reading top to bottom.

:func:`train` is five named steps: build the data (and write the run
folder's config), build model, optimizer and loaders with one ``prepare``,
restore a state when resuming, run the loop, then save the final weights
and evaluate. Inside the loop, one ``accumulate``/``backward``/
``clip_grad_norm_`` per batch; the LR is a pure function of the optimizer
step; resumable states are complete or absent (see :mod:`.state`), and a
resumed run skips the consumed batches without decoding them and reaches
the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..checkpoints import save_checkpoint
from ..config import Config, to_dict
from ..data import BrokenVideoLog, clips_to_float, ensure_demo_data
from ..data.repeated import RepeatedAugmentationSampler, RepeatedVideos
from ..data.shards import ShardDataset, ShardLoader
from ..errors import Preempted, ResumeError, TrainingError
from . import state as states
from .batch_plan import plan_batch, write_plan
from .build import (
    build_datasets,
    build_model,
    collate_fn,
    compile_for_training,
    eval_loader,
    make_accelerator,
    write_split,
)
from .evaluate import format_summary, metrics, predict_dataset, run_evaluation
from .optim import build_optimizer, lr_factor, set_lr
from .plots import plot_curves
from .preemption import StopSignals
from .regularise import BatchMixer, freeze_backbone, make_ema, set_train_mode
from .run_dir import MARKER, RunLock, check_resume_config, check_allow_changes, flat, on_main, prepare_folder
from .sharding import check_can_shard, full_state_dict, shard_model

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): the same order in every process and after resume."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


def _train_loader(ds: Any, cfg: Config, device: torch.device | str | None = None,
                  num_processes: int = 1) -> DataLoader | ShardLoader:
    """The training loader: shuffled by :class:`EpochSampler` (with ``data.repeated_aug``, each video k times:
    :mod:`~video_swin.data.repeated`); a :class:`ShardLoader` (on ``device``) for shards."""
    kwargs: dict[str, Any] = dict(batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers,
                                  pin_memory=torch.cuda.is_available(), drop_last=True, collate_fn=collate_fn(cfg))
    # Iterator seeds come from this generator, not the global RNG, so that
    # creating a loader mid-run (resume) leaves the model's RNG stream alone.
    kwargs["generator"] = torch.Generator().manual_seed(cfg.seed)
    if isinstance(ds, ShardDataset):  # whole batches per worker by construction; order, resume: see .data.shards
        return ShardLoader(DataLoader(ds, **kwargs), device)
    if cfg.data.repeated_aug > 1:  # map-style files only (config.validate)
        k = cfg.data.repeated_aug
        sampler = RepeatedAugmentationSampler(len(ds), k, cfg.seed, cfg.train.batch_size, num_processes)
        return DataLoader(RepeatedVideos(ds, k), sampler=sampler, **kwargs)
    if not isinstance(ds, IterableDataset):
        kwargs["sampler"] = EpochSampler(len(ds), cfg.seed)
    return DataLoader(ds, **kwargs)


class MetricsLog:
    """``metrics.jsonl`` of the run: one JSON object per logged step and per evaluation."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drops lines a crashed run logged after the state it resumes from."""
        if self.enabled and self.path.is_file():
            rows = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            self.path.write_text("".join(r + "\n" for r in rows))

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


@dataclass(frozen=True)
class Schedule:
    """How long the run is, in optimizer steps (one step = ``grad_accum_steps`` batches)."""

    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    warmup_steps: int
    min_factor: float

    @classmethod
    def of(cls, cfg: Config, batches_per_epoch: int) -> Schedule:
        steps_per_epoch = max(1, batches_per_epoch // cfg.train.grad_accum_steps)
        total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        return cls(steps_per_epoch, total_steps, num_epochs=math.ceil(total_steps / steps_per_epoch),
                   warmup_steps=round(cfg.sched.warmup_epochs * steps_per_epoch),
                   min_factor=cfg.sched.min_lr / cfg.optim.lr)  # fmt: skip

    def lr_factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_factor)


@dataclass
class Run:
    """Everything one training run holds: built once by :func:`_build_run`, read by the steps after it."""

    cfg: Config
    accelerator: Accelerator
    out: Path
    classes: list[str]
    num_classes: int
    train_ds: Any
    test_ds: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader | ShardLoader
    val_loader: DataLoader | ShardLoader
    test_loader: DataLoader | ShardLoader
    schedule: Schedule
    metrics_log: MetricsLog
    # what a resumable state saves besides model, optimizer and RNG (with shards also
    # "data_shards": the world size, workers, batch size and shard set a mid-epoch resume needs)
    counters: dict[str, Any] = field(
        default_factory=lambda: {"step": 0, "epoch": 0, "batches_in_epoch": 0, "nonfinite_steps": 0}
    )
    # torch.compile of ``model`` (``train.compile``), which only the training steps call: states,
    # final weights and evaluations use ``model``, so they are those of an uncompiled run
    compiled: nn.Module | None = None
    mixer: BatchMixer | None = None  # train.mixup / train.cutmix
    # train.ema_decay: the average of the (unwrapped) model's weights, saved in every state
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def step_model(self) -> nn.Module:
        """What the training steps call: the compiled model under ``train.compile``, else the model."""
        return self.model if self.compiled is None else self.compiled

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def shards(self) -> tuple[nn.Module, torch.optim.Optimizer] | None:
        """The sharded model and its optimizer (``train.distributed: fsdp``), which each process saves; else None."""
        return (self.model, self.optimizer) if self.cfg.train.distributed == "fsdp" else None


def train(
    cfg: Config, resume: bool | str = False, *, overwrite: bool = False, allow_changes: Sequence[str] = ()
) -> dict[str, Any]:
    """Trains ``cfg`` and runs the final evaluation; returns the final metrics.

    Args:
        cfg: the config.
        resume: False: a new run (``output_dir`` must hold none); True or
            ``"auto"``: continue from the newest complete state if there is
            one, else start; a path: continue from that state folder.
        overwrite: a new run replaces the run ``output_dir`` holds.
        allow_changes: config keys (or sections) allowed to differ from the
            resumed run's (see :func:`.run_dir.check_resume_config`).

    Raises:
        ConfigError: ``output_dir`` in use by another run, a file or not
            writable; holding a run while neither resuming nor overwriting,
            or holding files that are not a run's (see
            :func:`.run_dir.prepare_folder`); a config change that breaks an
            exact resume; ``allow_changes`` without ``resume`` or naming no
            config key; ``train.batch_size: auto`` where one clip does not fit
            (before the run folder is touched); videos of a resumed run's
            split (``data.val_annotations: null``) that are gone.
        ResumeError: the state to resume from cannot be read.
    """
    check_allow_changes(allow_changes, to_dict(cfg), resume)
    accelerator = make_accelerator(cfg)
    cfg, batch_plan = plan_batch(cfg, accelerator, resume=bool(resume))  # train.batch_size: auto; before any model
    accelerator.print(f"world size: {accelerator.num_processes} ({accelerator.device}, "
                      f"mixed precision {cfg.train.mixed_precision})")
    if cfg.train.distributed == "fsdp":
        check_can_shard()  # before anything is written
    torch.manual_seed(cfg.seed)
    lock = RunLock(cfg.output_dir)
    on_main(accelerator, lock.acquire)  # held by the main process until the run ends, however it ends
    try:
        state = _resume_point(cfg, accelerator, resume, overwrite, allow_changes)
        if batch_plan is not None and accelerator.is_main_process:
            write_plan(batch_plan, cfg.output_dir)
        run = _build_run(cfg, accelerator)
        if state is not None:
            _restore(run, state)
        elif resume:
            accelerator.print(f"--resume: no complete state in {run.checkpoints}; starting from scratch")
            run.metrics_log.truncate_after(0)  # a run killed before its first save logged steps it will redo
        elif accelerator.is_main_process and run.metrics_log.path.exists():
            run.metrics_log.path.unlink()
        if accelerator.is_main_process:
            accelerator.init_trackers("tensorboard", config=_tracker_config(cfg))
        _train_loop(run)
        return _finish(run)
    finally:  # a run refused before it marked the folder leaves no lock file in it
        lock.release(discard=not (Path(cfg.output_dir) / MARKER).is_file())


def _tracker_config(cfg: Config) -> dict[str, Any]:
    """The config as TensorBoard's hyperparameters: dotted keys, scalars kept, anything else as text."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat(to_dict(cfg)).items()}


def _resume_point(
    cfg: Config, accelerator: Accelerator, resume: bool | str, overwrite: bool, allow_changes: Sequence[str]
) -> Path | None:
    """The state folder to resume from (None: start), after every check and before anything is written.

    A folder that holds a run is refused unless resuming or overwriting;
    resuming compares the saved config with this one, so that ``config.yaml``
    is only replaced by a config the run can continue with.
    """
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"
    on_main(accelerator, lambda: prepare_folder(out, resume=bool(resume), overwrite=overwrite))
    if not resume:
        return None
    if resume in (True, "auto"):
        if accelerator.is_main_process:
            states.remove_incomplete(checkpoints)
        accelerator.wait_for_everyone()
        folder = states.latest_state(checkpoints)  # raises if the newest state is unreadable
    else:
        folder = Path(resume)
        if not (folder / states.TRAINER_STATE).is_file():
            raise ResumeError(f"--resume {folder}: not a complete training state (no {states.TRAINER_STATE} in it)")
    if folder is not None and (out / "config.yaml").is_file():
        new = {**to_dict(cfg), "world_size": accelerator.num_processes}
        accepted: list[str] = []
        on_main(accelerator, lambda: accepted.extend(check_resume_config(out / "config.yaml", new, allow_changes)))
        if accepted:
            accelerator.print(f"--resume: config changes accepted: {'; '.join(accepted)}")
    return folder


def _build_run(cfg: Config, accelerator: Accelerator) -> Run:
    """Data (generating the demo set if configured), the run folder's files, then model, optimizer and loaders."""
    main, out = accelerator.is_main_process, Path(cfg.output_dir)
    if cfg.data.generate_demo:  # into data.root only if that is where the annotations are (never a mistyped root)
        d = cfg.data
        on_main(accelerator, lambda: ensure_demo_data(d.root, seed=cfg.seed,
                                                      annotations=(d.train_annotations, d.val_annotations)))
    if cfg.data.val_annotations is None and not cfg.data.shards:  # held-out training videos: written, or reused
        on_main(accelerator, lambda: accelerator.print(write_split(cfg).summary))
        accelerator.wait_for_everyone()
    train_ds, val_ds, test_ds = build_datasets(cfg, accelerator.process_index, accelerator.num_processes)
    classes = list(train_ds.classes)
    num_classes = cfg.model.num_classes or len(classes)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {**to_dict(cfg), "world_size": accelerator.num_processes, "classes_found": len(classes)}
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (out / "classes.txt").write_text("".join(c + "\n" for c in classes))

    model = build_model(cfg, num_classes, accelerator)
    if cfg.train.freeze_backbone:  # before sharding and the optimizer, which then hold the head's parameters only
        accelerator.print(f"train.freeze_backbone: {freeze_backbone(model):,} backbone parameters frozen")
    fsdp = cfg.train.distributed == "fsdp"
    if fsdp:  # before the optimizer, which must hold the shards
        model = shard_model(model, accelerator.device, accelerator.num_processes, cfg.train.mixed_precision)
    o = cfg.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, o.backbone_lr_mult, tuple(o.betas), o.eps,
                                layer_decay=o.layer_decay)
    if o.layer_decay is not None:
        lowest = min(g["base_lr"] for g in optimizer.param_groups) / o.lr
        accelerator.print(f"optim.layer_decay {o.layer_decay}: learning rates from lr x{lowest:.3g} (first layer "
                          f"trained) to lr (head); optim.backbone_lr_mult is not used")
    if isinstance(train_ds, ShardDataset):
        # Not prepared: accelerate's prepare_data_loader wraps an IterableDataset in IterableDatasetShard,
        # which makes every process read every shard and keep its share of each batch. The shard datasets
        # split the shards between the processes themselves; ShardLoader moves the batches to the device.
        device = accelerator.device
        train_loader, val_loader, test_loader = (_train_loader(train_ds, cfg, device), eval_loader(val_ds, cfg, device),
                                                 eval_loader(test_ds, cfg, device))  # fmt: skip
        if not fsdp:
            model, optimizer = accelerator.prepare(model, optimizer)
    else:
        loaders = (_train_loader(train_ds, cfg, num_processes=accelerator.num_processes), eval_loader(val_ds, cfg),
                   eval_loader(test_ds, cfg))
        if fsdp:  # accelerate would wrap a sharded model in DDP (see .sharding): it prepares the loaders only
            train_loader, val_loader, test_loader = accelerator.prepare(*loaders)
        else:
            model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(model, optimizer, *loaders)
    run = Run(cfg, accelerator, out, classes, num_classes, train_ds, test_ds, model, optimizer, train_loader,
              val_loader, test_loader, Schedule.of(cfg, len(train_loader)), MetricsLog(out / "metrics.jsonl", main))
    if isinstance(train_loader, ShardLoader):  # what a mid-epoch resume must find unchanged
        run.counters["data_shards"] = train_loader.resume_info()
    # Last, over the prepared (or sharded) model. Evaluations stay eager: each of their
    # shapes (views per forward, a last smaller batch) and eval mode would be another compile.
    run.compiled = compile_for_training(model, cfg.train.compile, accelerator)
    t = cfg.train
    if t.mixup or t.cutmix:
        run.mixer = BatchMixer(num_classes, t.mixup, t.cutmix, t.mix_prob, t.mix_switch_prob)
    if t.ema_decay is not None:  # on the device, after prepare; restored by load_state with the model
        run.ema = make_ema(accelerator.unwrap_model(model), t.ema_decay)
        accelerator.register_for_checkpointing(run.ema)
    return run


def _restore(run: Run, folder: Path) -> None:
    """Model, optimizer, RNG and counters from a complete state; the metrics rows after it are dropped."""
    run.counters = states.load_state(run.accelerator, folder, shards=run.shards)
    if isinstance(run.train_loader, ShardLoader):
        if run.counters["batches_in_epoch"]:  # in the middle of an epoch: the same split of the shards, or refuse
            run.train_loader.check_resume(run.counters.get("data_shards"))
        run.counters["data_shards"] = run.train_loader.resume_info()
    run.metrics_log.truncate_after(run.counters["step"])
    run.accelerator.print(f"resumed from {folder} at step {run.counters['step']}")


class _StepStats:
    """Loss, clip rate and non-finite bookkeeping between two logged optimizer steps."""

    def __init__(self) -> None:
        self.loss, self.bad_cycle, self.consecutive_bad = 0.0, False, 0
        self.t_last, self.clips = time.perf_counter(), 0

    def clips_per_s(self) -> float:
        now = time.perf_counter()
        rate = self.clips / max(now - self.t_last, 1e-9)
        self.t_last, self.clips = now, 0
        return rate


def _train_loop(run: Run) -> None:
    """Epochs of optimizer steps until ``schedule.total_steps``, with the periodic single-view validation.

    SIGTERM, SIGINT and SIGUSR1 are caught for its duration (:mod:`.preemption`):
    after the optimizer step in progress (or the validation), every process saves
    that step and the run stops with :class:`~video_swin.errors.Preempted`.
    """
    cfg, accelerator, counters, schedule = run.cfg, run.accelerator, run.counters, run.schedule
    broken = BrokenVideoLog(len(run.train_ds), cfg.data.max_bad_fraction)
    bar = tqdm(total=schedule.total_steps, initial=counters["step"], desc="train",
               disable=not accelerator.is_main_process, dynamic_ncols=True)  # fmt: skip
    stats = _StepStats()
    _train_mode(run)
    # The bar is closed before an error propagates, so the error is the last line printed;
    # log lines (broken videos) go above the bar instead of through it.
    with contextlib.closing(bar), logging_redirect_tqdm(), StopSignals(below_bar=not bar.disable) as stop:
        for epoch in range(counters["epoch"], schedule.num_epochs):
            if counters["step"] >= schedule.total_steps:
                break
            finished = _train_epoch(run, epoch, broken, bar, stats, stop)
            if finished:
                counters["epoch"], counters["batches_in_epoch"] = epoch + 1, 0
            broken.end_epoch(epoch)
            every = cfg.eval.every_epochs
            if every and ((epoch + 1) % every == 0 or counters["step"] >= schedule.total_steps):
                _validate(run, epoch)
                _train_mode(run)  # the evaluation left the whole model in training mode
            _stop_if_asked(run, stop, saved=False)  # a signal during the validation: the state after it


def _train_mode(run: Run) -> None:
    set_train_mode(run.accelerator.unwrap_model(run.model), run.cfg.train.freeze_backbone)


def _train_epoch(run: Run, epoch: int, broken: BrokenVideoLog, bar: tqdm, stats: _StepStats,
                 stop: StopSignals) -> bool:
    """One epoch's batches (the unconsumed ones when resuming); False if the run ended inside it.

    A stop request is looked at after each optimizer step only, so a signal in
    the middle of an accumulation cycle takes effect at the end of the cycle.
    """
    accelerator, counters = run.accelerator, run.counters
    run.train_ds.set_epoch(epoch)
    # The epoch goes to the prepared loader, before any skipping: it reaches the sampler through
    # accelerate's per-process shard, which the skipping loader of a resumed multi-process run
    # does not look through (the resumed epoch would get epoch 0's order).
    if hasattr(run.train_loader, "set_epoch"):
        run.train_loader.set_epoch(epoch)
    loader = run.train_loader
    if counters["batches_in_epoch"] and isinstance(loader, ShardLoader):  # the shards' own resume: nothing decoded
        loader = loader.resume_at(counters["batches_in_epoch"])
    elif counters["batches_in_epoch"]:
        loader = accelerator.skip_first_batches(run.train_loader, counters["batches_in_epoch"])
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
    for batch in loader:
        broken.update(batch)
        _forward_backward(run, batch, stats)
        counters["batches_in_epoch"] += 1
        stats.clips += batch["video"].shape[0] * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        saved = _after_optimizer_step(run, epoch, bar, stats)
        _stop_if_asked(run, stop, saved=saved)
        if counters["step"] >= run.schedule.total_steps:
            return False
    return True


def _forward_backward(run: Run, batch: dict[str, Any], stats: _StepStats) -> None:
    """Loss and gradients of one batch (Mixup/CutMix'ed if configured); at the end of an accumulation
    cycle, the optimizer step and the EMA's update.

    A non-finite loss on any process marks the whole cycle bad: its
    gradients are dropped and the optimizer step is skipped everywhere.
    """
    cfg, accelerator, optimizer = run.cfg, run.accelerator, run.optimizer
    videos = clips_to_float(batch["video"])  # uint8 clips (data.output) normalised here
    targets = batch["label"]  # (B,) class indices, or (B, K) soft targets once mixed
    if run.mixer is not None:  # its randomness: a function of the batch's place in the run (exact resume)
        key = (cfg.seed, run.counters["epoch"], run.counters["batches_in_epoch"], accelerator.process_index)
        videos, targets = run.mixer(videos, targets, key)
    with accelerator.accumulate(run.model):
        with accelerator.autocast():  # a prepared (DDP) model autocasts itself; a sharded one is not prepared
            logits = run.step_model(videos)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.train.label_smoothing)
        losses = accelerator.gather(loss.detach()[None])  # (world,)
        if torch.isfinite(losses).all():
            accelerator.backward(loss)
            stats.loss += losses.mean().item() / cfg.train.grad_accum_steps
        else:
            stats.bad_cycle = True
        if accelerator.sync_gradients:
            if stats.bad_cycle:
                optimizer.zero_grad(set_to_none=True)
            elif cfg.train.max_grad_norm:
                accelerator.clip_grad_norm_(run.model.parameters(), cfg.train.max_grad_norm)
            set_lr(optimizer, run.schedule.lr_factor(run.counters["step"]))
            if not stats.bad_cycle:
                optimizer.step()
                if run.ema is not None:
                    run.ema.update_parameters(accelerator.unwrap_model(run.model))
            optimizer.zero_grad(set_to_none=True)


def _after_optimizer_step(run: Run, epoch: int, bar: tqdm, stats: _StepStats) -> bool:
    """Counts the step (stopping after too many non-finite ones in a row), logs it and saves a state when due.

    Returns whether it saved one.
    """
    cfg, accelerator, counters = run.cfg, run.accelerator, run.counters
    counters["step"] += 1
    step, total = counters["step"], run.schedule.total_steps
    if stats.bad_cycle:
        counters["nonfinite_steps"] += 1
        stats.consecutive_bad += 1
        accelerator.print(f"step {step}: non-finite loss, step skipped ({stats.consecutive_bad} in a row)")
        if stats.consecutive_bad >= cfg.train.max_nonfinite_steps:
            raise TrainingError(
                f"{stats.consecutive_bad} optimizer steps in a row had a non-finite loss; stopping "
                f"(try a lower optim.lr, train.mixed_precision=no or train.max_grad_norm)"
            )
    else:
        stats.consecutive_bad = 0
    if step % cfg.train.log_every_steps == 0 or step == total:
        lr = run.optimizer.param_groups[-1]["lr"]
        row = {"step": step, "epoch": epoch, "loss": stats.loss, "lr": lr, "clips_per_s": stats.clips_per_s(),
               "nonfinite_steps": counters["nonfinite_steps"]}
        run.metrics_log.write(row)
        accelerator.log({"train/loss": stats.loss, "train/lr": lr}, step=step)
        bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{lr:.2e}", clips_s=f"{row['clips_per_s']:.1f}")
    bar.update(1)
    stats.loss, stats.bad_cycle = 0.0, False
    if step % cfg.train.save_every_steps == 0 or step == total:
        states.save_state(accelerator, run.checkpoints, counters, cfg.train.keep_last, shards=run.shards)
        return True
    return False


def _stop_if_asked(run: Run, stop: StopSignals, *, saved: bool) -> None:
    """If any process received a stop signal, all save this step (unless ``saved`` already) and stop.

    Every process calls it at the same points of the loop (it holds one
    collective), so all agree on the request and save the same step.

    Raises:
        Preempted: a signal asked the run to stop; the state of the current
            step is complete on disk.
    """
    accelerator = run.accelerator
    signum = stop.agreed(accelerator)
    if not signum:
        return
    if not saved:
        states.save_state(accelerator, run.checkpoints, run.counters, run.cfg.train.keep_last, shards=run.shards)
    accelerator.end_training()  # trackers flushed, process group closed: the run ends here
    raise Preempted(run.counters["step"], signum, accelerator.process_index if accelerator.num_processes > 1 else None)


def _validate(run: Run, epoch: int) -> None:
    """Single-view top-1/top-5 on the validation set, logged to ``metrics.jsonl`` and the trackers
    (with ``train.ema_decay``, the EMA's too, as ``val_ema_*``)."""
    cfg, step = run.cfg, run.counters["step"]
    row: dict[str, Any] = {"step": step, "epoch": epoch}
    for prefix, model in (("", run.model), ("ema_", run.ema.module if run.ema is not None else None)):
        if model is None:
            continue
        result = predict_dataset(model, run.val_loader, run.accelerator, max_views=cfg.eval.max_views_per_forward,
                                 average=cfg.eval.average, desc=f"val{' ema' if prefix else ''}")  # fmt: skip
        val = metrics(result, run.num_classes)
        row.update({f"val_{prefix}{k}": v for k, v in val.items()})
        run.accelerator.log({f"val/{prefix}{k}": v for k, v in val.items()}, step=step)
        run.accelerator.print(f"epoch {epoch}: val top-1 {val['top1']:.1f}% (1 view{', EMA' if prefix else ''})")
    run.metrics_log.write(row)


def _finish(run: Run) -> dict[str, Any]:
    """Final weights (with classes and config, all ``predict`` needs), the multi-view evaluation, ``curves.png``.

    With ``train.ema_decay`` the EMA weights too: saved as ``model_ema.safetensors`` (a checkpoint like
    ``model.safetensors``), evaluated into ``eval_ema/`` and returned under the summary's ``"ema"`` key.
    """
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()
    weights = full_state_dict(run.model) if run.shards else None  # every process takes part; process 0 gets them
    if main:
        _save_weights(run, accelerator.unwrap_model(run.model), out / "model.safetensors", weights)
        if run.ema is not None:
            _save_weights(run, run.ema.module, out / "model_ema.safetensors")
    summary: dict[str, Any] = {}
    if cfg.eval.final:
        summary = _final_evaluation(run, run.model, "")
        if run.ema is not None:
            summary["ema"] = _final_evaluation(run, run.ema.module, "_ema")
    if main:
        plot_curves(out / "metrics.jsonl", out / "curves.png")
    accelerator.end_training()
    return summary


def _save_weights(run: Run, model: nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    step = run.counters["step"]
    try:
        save_checkpoint(model, path, state_dict=state_dict, classes=run.classes, step=step, config=to_dict(run.cfg))
    except Exception as e:  # written atomically: nothing half-written is left behind
        raise TrainingError(
            f"could not write the final weights {path}: {states.describe_error(e)}; "
            f"the training state of step {step} is in {run.checkpoints}"
        ) from e


def _final_evaluation(run: Run, model: nn.Module, suffix: str) -> dict[str, Any]:
    """The multi-view evaluation of ``model`` into ``eval{suffix}/``, logged as ``test{suffix}_*``; its summary
    (empty on processes other than the main one)."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    summary = run_evaluation(
        model, run.test_loader, run.test_ds, accelerator, out / f"eval{suffix}", classes=run.classes,
        views=cfg.eval.views, max_views=cfg.eval.max_views_per_forward, average=cfg.eval.average,
        extra={"checkpoint": str(out / f"model{suffix}.safetensors"), "config": str(out / "config.yaml")},
    ) or {}  # fmt: skip
    if accelerator.is_main_process:
        run.metrics_log.write({"step": run.counters["step"], "epoch": run.schedule.num_epochs - 1,
                               **{f"test{suffix}_{k}": summary[k] for k in ("top1", "top5", "mean_class_accuracy")}})
        accelerator.print(f"final {cfg.eval.views} evaluation{' of the EMA weights' if suffix else ''}:\n"
                          f"{format_summary(summary)}")
    return summary
