"""The training loop, on accelerate's idioms, reading top to bottom.

One ``prepare``; ``accumulate``/``backward``/``clip_grad_norm_`` per batch; the
LR is a pure function of the optimizer step; resumable states are complete or
absent (see ``state``), and a resumed run skips the consumed batches without
decoding them and reaches the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..checkpoints import save_checkpoint
from ..config import Config, to_dict
from ..data import BrokenVideoLog, clips_to_float, ensure_demo_data
from . import state as states
from .build import TrainingError, build_datasets, build_model, collate_fn, eval_loader, make_accelerator
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


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Trains ``cfg`` and runs the final evaluation; returns the final metrics."""
    out = Path(cfg.output_dir)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    accelerator.print(f"world size: {accelerator.num_processes} ({accelerator.device}, "
                      f"mixed precision {cfg.train.mixed_precision})")
    torch.manual_seed(cfg.seed)

    # -- data ------------------------------------------------------------------
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

    # -- model, optimizer, loaders: one prepare ------------------------------------
    model = build_model(cfg, num_classes, accelerator)
    o = cfg.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, o.backbone_lr_mult, tuple(o.betas), o.eps)
    train_loader = _train_loader(train_ds, cfg)
    val_loader, test_loader = eval_loader(val_ds, cfg), eval_loader(test_ds, cfg)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader
    )
    accum = cfg.train.grad_accum_steps
    steps_per_epoch = max(1, len(train_loader) // accum)
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = round(cfg.sched.warmup_epochs * steps_per_epoch)
    min_factor = cfg.sched.min_lr / o.lr

    # -- resume ------------------------------------------------------------------
    counters = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "nonfinite_steps": 0}
    metrics_log = MetricsLog(out / "metrics.jsonl", main)
    ckpt_dir = out / "checkpoints"
    if resume:
        if main:
            states.remove_incomplete(ckpt_dir)
        accelerator.wait_for_everyone()
        folder = states.latest_state(ckpt_dir)
        if folder is None:
            accelerator.print(f"--resume: no complete state in {ckpt_dir}; starting from scratch")
            metrics_log.truncate_after(0)  # a run killed before its first save logged steps it will redo
        else:
            counters = states.load_state(accelerator, folder)
            metrics_log.truncate_after(counters["step"])
            accelerator.print(f"resumed from {folder} at step {counters['step']}")
    elif main and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    if main:
        accelerator.init_trackers("tensorboard", config=_flat(to_dict(cfg)))

    # -- loop --------------------------------------------------------------------
    broken = BrokenVideoLog(len(train_ds), cfg.data.max_bad_fraction)
    bar = tqdm(total=total_steps, initial=counters["step"], desc="train", disable=not main, dynamic_ncols=True)
    step_loss, consecutive_bad, bad_cycle = 0.0, 0, False
    t_last, clips_since = time.perf_counter(), 0
    model.train()
    # The bar is closed before an error propagates, so the error is the last line printed;
    # log lines (broken videos) go above the bar instead of through it.
    with contextlib.closing(bar), logging_redirect_tqdm():
        for epoch in range(counters["epoch"], num_epochs):
            if counters["step"] >= total_steps:
                break
            train_ds.set_epoch(epoch)
            loader = train_loader
            if counters["batches_in_epoch"]:
                loader = accelerator.skip_first_batches(train_loader, counters["batches_in_epoch"])
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for batch in loader:
                broken.update(batch)
                with accelerator.accumulate(model):
                    logits = model(clips_to_float(batch["video"]))  # uint8 clips (data.output) normalised here
                    loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=cfg.train.label_smoothing)
                    losses = accelerator.gather(loss.detach()[None])  # (world,)
                    if torch.isfinite(losses).all():
                        accelerator.backward(loss)
                        step_loss += losses.mean().item() / accum
                    else:
                        bad_cycle = True
                    if accelerator.sync_gradients:
                        if bad_cycle:
                            optimizer.zero_grad(set_to_none=True)
                        elif cfg.train.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                        set_lr(optimizer, lr_factor(counters["step"], total_steps, warmup_steps, min_factor))
                        if not bad_cycle:
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                counters["batches_in_epoch"] += 1
                clips_since += batch["video"].shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                # -- one optimizer step done (or skipped) --------------------------------
                counters["step"] += 1
                step = counters["step"]
                if bad_cycle:
                    counters["nonfinite_steps"] += 1
                    consecutive_bad += 1
                    accelerator.print(f"step {step}: non-finite loss, step skipped ({consecutive_bad} in a row)")
                    if consecutive_bad >= cfg.train.max_nonfinite_steps:
                        raise TrainingError(
                            f"{consecutive_bad} optimizer steps in a row had a non-finite loss; stopping "
                            f"(try a lower optim.lr, train.mixed_precision=no or train.max_grad_norm)"
                        )
                else:
                    consecutive_bad = 0
                lr = optimizer.param_groups[-1]["lr"]
                if step % cfg.train.log_every_steps == 0 or step == total_steps:
                    now = time.perf_counter()
                    row = {"step": step, "epoch": epoch, "loss": step_loss, "lr": lr,
                           "clips_per_s": clips_since / max(now - t_last, 1e-9),
                           "nonfinite_steps": counters["nonfinite_steps"]}
                    metrics_log.write(row)
                    accelerator.log({"train/loss": step_loss, "train/lr": lr}, step=step)
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", clips_s=f"{row['clips_per_s']:.1f}")
                    t_last, clips_since = now, 0
                bar.update(1)
                step_loss, bad_cycle = 0.0, False
                if step % cfg.train.save_every_steps == 0 or step == total_steps:
                    states.save_state(accelerator, ckpt_dir, counters, cfg.train.keep_last)
                if step >= total_steps:
                    break
            else:
                counters["epoch"], counters["batches_in_epoch"] = epoch + 1, 0
            broken.end_epoch(epoch)
            if cfg.eval.every_epochs and ((epoch + 1) % cfg.eval.every_epochs == 0 or counters["step"] >= total_steps):
                result = predict_dataset(model, val_loader, accelerator, max_views=cfg.eval.max_views_per_forward,
                                         average=cfg.eval.average, desc="val")
                val = metrics(result, num_classes)
                metrics_log.write({"step": counters["step"], "epoch": epoch, **{f"val_{k}": v for k, v in val.items()}})
                accelerator.log({f"val/{k}": v for k, v in val.items()}, step=counters["step"])
                accelerator.print(f"epoch {epoch}: val top-1 {val['top1']:.1f}% (1 view)")

    # -- final weights and evaluation ----------------------------------------------
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if main:  # the resolved config travels with the weights: scripts/predict.py needs nothing else
        try:
            save_checkpoint(unwrapped, out / "model.safetensors", classes=classes, step=counters["step"],
                            config=to_dict(cfg))
        except OSError as e:  # written atomically: nothing half-written is left behind
            raise TrainingError(
                f"could not write the final weights {out / 'model.safetensors'}: {e.strerror or e}; "
                f"the training state of step {counters['step']} is in {ckpt_dir}"
            ) from e
    summary: dict[str, Any] = {}
    if cfg.eval.final:
        summary = run_evaluation(
            model, test_loader, test_ds, accelerator, out / "eval", classes=classes, views=cfg.eval.views,
            max_views=cfg.eval.max_views_per_forward, average=cfg.eval.average,
            extra={"checkpoint": str(out / "model.safetensors"), "config": str(out / "config.yaml")},
        ) or {}  # fmt: skip
        if main:
            metrics_log.write({"step": counters["step"], "epoch": num_epochs - 1,
                               **{f"test_{k}": summary[k] for k in ("top1", "top5", "mean_class_accuracy")}})
            accelerator.print(f"final {cfg.eval.views} evaluation:\n{format_summary(summary)}")
    if main:
        plot_curves(out / "metrics.jsonl", out / "curves.png")
    accelerator.end_training()
    return summary
