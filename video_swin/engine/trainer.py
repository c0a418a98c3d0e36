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
from ..errors import TrainingError
from . import state as states
from .build import (
    build_datasets,
    build_model,
    collate_fn,
    eval_loader,
    make_accelerator,
)
from .evaluate import format_summary, metrics, predict_dataset, run_evaluation
from .optim import build_optimizer, lr_factor, set_lr
from .plots import plot_curves

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


def _train_loader(ds: Any, cfg: Config) -> DataLoader:
    kwargs: dict[str, Any] = dict(batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers,
                                  pin_memory=torch.cuda.is_available(), drop_last=True, collate_fn=collate_fn(cfg))
    # Iterator seeds come from this generator, not the global RNG, so that
    # creating a loader mid-run (resume) leaves the model's RNG stream alone.
    kwargs["generator"] = torch.Generator().manual_seed(cfg.seed)
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


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


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
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    schedule: Schedule
    metrics_log: MetricsLog
    # what a resumable state saves besides model, optimizer and RNG
    counters: dict[str, int] = field(
        default_factory=lambda: {"step": 0, "epoch": 0, "batches_in_epoch": 0, "nonfinite_steps": 0}
    )

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Trains ``cfg`` and runs the final evaluation; returns the final metrics."""
    accelerator = make_accelerator(cfg)
    accelerator.print(f"world size: {accelerator.num_processes} ({accelerator.device}, "
                      f"mixed precision {cfg.train.mixed_precision})")
    torch.manual_seed(cfg.seed)
    run = _build_run(cfg, accelerator)
    if resume:
        _restore(run)
    elif accelerator.is_main_process and run.metrics_log.path.exists():
        run.metrics_log.path.unlink()
    if accelerator.is_main_process:
        accelerator.init_trackers("tensorboard", config=_flat(to_dict(cfg)))
    _train_loop(run)
    return _finish(run)


def _build_run(cfg: Config, accelerator: Accelerator) -> Run:
    """Data (generating the demo set if configured), the run folder's files, then model, optimizer and loaders."""
    main, out = accelerator.is_main_process, Path(cfg.output_dir)
    if cfg.data.generate_demo and main:
        ensure_demo_data(cfg.data.root, seed=cfg.seed)
    accelerator.wait_for_everyone()
    train_ds, val_ds, test_ds = build_datasets(cfg)
    classes = list(train_ds.classes)
    num_classes = cfg.model.num_classes or len(classes)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {**to_dict(cfg), "world_size": accelerator.num_processes, "classes_found": len(classes)}
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (out / "classes.txt").write_text("".join(c + "\n" for c in classes))

    model = build_model(cfg, num_classes, accelerator)
    o = cfg.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, o.backbone_lr_mult, tuple(o.betas), o.eps)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, _train_loader(train_ds, cfg), eval_loader(val_ds, cfg), eval_loader(test_ds, cfg)
    )
    return Run(cfg, accelerator, out, classes, num_classes, train_ds, test_ds, model, optimizer, train_loader,
               val_loader, test_loader, Schedule.of(cfg, len(train_loader)), MetricsLog(out / "metrics.jsonl", main))


def _restore(run: Run) -> None:
    """``--resume``: the newest complete state (model, optimizer, RNG, counters), or a fresh start if none."""
    accelerator = run.accelerator
    if accelerator.is_main_process:
        states.remove_incomplete(run.checkpoints)
    accelerator.wait_for_everyone()
    folder = states.latest_state(run.checkpoints)
    if folder is None:
        accelerator.print(f"--resume: no complete state in {run.checkpoints}; starting from scratch")
        run.metrics_log.truncate_after(0)  # a run killed before its first save logged steps it will redo
        return
    run.counters = states.load_state(accelerator, folder)
    run.metrics_log.truncate_after(run.counters["step"])
    accelerator.print(f"resumed from {folder} at step {run.counters['step']}")


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
    """Epochs of optimizer steps until ``schedule.total_steps``, with the periodic single-view validation."""
    cfg, accelerator, counters, schedule = run.cfg, run.accelerator, run.counters, run.schedule
    broken = BrokenVideoLog(len(run.train_ds), cfg.data.max_bad_fraction)
    bar = tqdm(total=schedule.total_steps, initial=counters["step"], desc="train",
               disable=not accelerator.is_main_process, dynamic_ncols=True)  # fmt: skip
    stats = _StepStats()
    run.model.train()
    # The bar is closed before an error propagates, so the error is the last line printed;
    # log lines (broken videos) go above the bar instead of through it.
    with contextlib.closing(bar), logging_redirect_tqdm():
        for epoch in range(counters["epoch"], schedule.num_epochs):
            if counters["step"] >= schedule.total_steps:
                break
            finished = _train_epoch(run, epoch, broken, bar, stats)
            if finished:
                counters["epoch"], counters["batches_in_epoch"] = epoch + 1, 0
            broken.end_epoch(epoch)
            every = cfg.eval.every_epochs
            if every and ((epoch + 1) % every == 0 or counters["step"] >= schedule.total_steps):
                _validate(run, epoch)


def _train_epoch(run: Run, epoch: int, broken: BrokenVideoLog, bar: tqdm, stats: _StepStats) -> bool:
    """One epoch's batches (the unconsumed ones when resuming); False if the run ended inside it."""
    accelerator, counters = run.accelerator, run.counters
    run.train_ds.set_epoch(epoch)
    loader = run.train_loader
    if counters["batches_in_epoch"]:
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
        _after_optimizer_step(run, epoch, bar, stats)
        if counters["step"] >= run.schedule.total_steps:
            return False
    return True


def _forward_backward(run: Run, batch: dict[str, Any], stats: _StepStats) -> None:
    """Loss and gradients of one batch; at the end of an accumulation cycle, the optimizer step.

    A non-finite loss on any process marks the whole cycle bad: its
    gradients are dropped and the optimizer step is skipped everywhere.
    """
    cfg, accelerator, optimizer = run.cfg, run.accelerator, run.optimizer
    with accelerator.accumulate(run.model):
        logits = run.model(clips_to_float(batch["video"]))  # uint8 clips (data.output) normalised here
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=cfg.train.label_smoothing)
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
            optimizer.zero_grad(set_to_none=True)


def _after_optimizer_step(run: Run, epoch: int, bar: tqdm, stats: _StepStats) -> None:
    """Counts the step (stopping after too many non-finite ones in a row), logs it and saves a state when due."""
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
        states.save_state(accelerator, run.checkpoints, counters, cfg.train.keep_last)


def _validate(run: Run, epoch: int) -> None:
    """Single-view top-1/top-5 on the validation set, logged to ``metrics.jsonl`` and the trackers."""
    cfg, step = run.cfg, run.counters["step"]
    result = predict_dataset(run.model, run.val_loader, run.accelerator, max_views=cfg.eval.max_views_per_forward,
                             average=cfg.eval.average, desc="val")  # fmt: skip
    val = metrics(result, run.num_classes)
    run.metrics_log.write({"step": step, "epoch": epoch, **{f"val_{k}": v for k, v in val.items()}})
    run.accelerator.log({f"val/{k}": v for k, v in val.items()}, step=step)
    run.accelerator.print(f"epoch {epoch}: val top-1 {val['top1']:.1f}% (1 view)")


def _finish(run: Run) -> dict[str, Any]:
    """Final weights (with classes and config, all ``predict`` needs), the multi-view evaluation, ``curves.png``."""
    cfg, accelerator, out, step = run.cfg, run.accelerator, run.out, run.counters["step"]
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()
    if main:
        try:
            save_checkpoint(accelerator.unwrap_model(run.model), out / "model.safetensors", classes=run.classes,
                            step=step, config=to_dict(cfg))  # fmt: skip
        except OSError as e:  # written atomically: nothing half-written is left behind
            raise TrainingError(
                f"could not write the final weights {out / 'model.safetensors'}: {e.strerror or e}; "
                f"the training state of step {step} is in {run.checkpoints}"
            ) from e
    summary: dict[str, Any] = {}
    if cfg.eval.final:
        summary = run_evaluation(
            run.model, run.test_loader, run.test_ds, accelerator, out / "eval", classes=run.classes,
            views=cfg.eval.views, max_views=cfg.eval.max_views_per_forward, average=cfg.eval.average,
            extra={"checkpoint": str(out / "model.safetensors"), "config": str(out / "config.yaml")},
        ) or {}  # fmt: skip
        if main:
            run.metrics_log.write({"step": step, "epoch": run.schedule.num_epochs - 1,
                                   **{f"test_{k}": summary[k] for k in ("top1", "top5", "mean_class_accuracy")}})
            accelerator.print(f"final {cfg.eval.views} evaluation:\n{format_summary(summary)}")
    if main:
        plot_curves(out / "metrics.jsonl", out / "curves.png")
    accelerator.end_training()
    return summary
