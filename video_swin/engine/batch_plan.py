"""``train.batch_size: auto``: batch per device, accumulation and checkpointing for a global batch.

The memory planner (:mod:`.plan`, what ``video-swin plan`` prints) gives the
peak of a training step per device for a batch, with and without activation
checkpointing, by tracing the model on fake tensors (no memory, no device).
:func:`choose_batch` asks it for the largest batch per device that fits
``train.memory`` (default: the device's free memory) and divides
``train.global_batch`` (clips per optimizer step) exactly, so that

    batch per device x processes x accumulation steps == global batch

(the nearest multiple of the processes below it, with a warning, when the
processes do not divide it). Checkpointing recomputes every block's forward
in backward (about a third more compute), so it is chosen only when not even
one clip per device fits without it; where one clip does not fit with it
either, the run stops with a one-line error before the model is built.

The choice goes into the run's config (``train.batch_size``,
``train.grad_accum_steps``, ``model.use_checkpoint``: what ``config.yaml``
records) and ``OUTPUT_DIR/batch_plan.json``, which a resumed run reuses: a
state continues only with the batch it was saved with, whatever memory is
free when it resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from ..config import Config
from ..errors import ConfigError
from .plan import GIB, HEADROOM, PlanRow, plan_memory

log = logging.getLogger(__name__)

PLAN_FILE = "batch_plan.json"


def free_memory_gib(device: torch.device) -> tuple[float, str]:
    """GiB free on ``device`` now, and where the figure comes from.

    A GPU: ``torch.cuda.mem_get_info`` (free bytes, other processes' use
    already taken off). The CPU: the RAM available to new allocations
    (psutil, which accelerate depends on).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / GIB, f"free memory of {device}"
    import psutil

    return psutil.virtual_memory().available / GIB, "available RAM"


@dataclass(frozen=True)
class BatchPlan:
    """What ``train.batch_size: auto`` chose, and from what (the content of ``batch_plan.json``)."""

    batch_size: int  # clips per device and forward
    grad_accum_steps: int
    use_checkpoint: bool
    processes: int
    global_batch: int  # batch_size x processes x grad_accum_steps
    requested_global_batch: int  # train.global_batch
    memory_gib: float  # per device
    memory_source: str
    peak_gib: float  # the planner's peak per device for the choice
    usable_gib: float  # memory_gib less the planner's headroom
    inputs: dict[str, Any]  # what the choice depends on besides the memory (a resumed run compares them)

    def line(self) -> str:
        """The choice in one line."""
        short = "" if self.global_batch == self.requested_global_batch else \
            f" (train.global_batch {self.requested_global_batch} is not a multiple of {self.processes} processes)"
        return (f"train.batch_size auto: {self.batch_size} clips per device x {self.processes} process(es) x "
                f"{self.grad_accum_steps} accumulation step(s) = {self.global_batch} clips per optimizer step{short}; "
                f"activation checkpointing {'on' if self.use_checkpoint else 'off'}; planned peak "
                f"{self.peak_gib:.2f} of {self.usable_gib:.2f} GiB usable ({self.memory_gib:.2f} GiB, "
                f"{self.memory_source})")


# The planner's rows already traced in this process, by (planner inputs, batch, checkpointing):
# a row depends on neither the memory nor the run, and a trace of a full-size model takes seconds.
_ROWS: dict[tuple[str, int, bool], PlanRow] = {}


class _Peaks:
    """The planner's row for (batch, checkpointing) of one model, clip, precision and strategy."""

    def __init__(self, model: str, clip: tuple[int, ...], processes: int, precision: str, attention: str,
                 strategy: str, num_classes: int, model_options: dict[str, Any]) -> None:
        self.args = dict(model=model, clip=clip, gpus=processes, precision=precision, attention=attention,
                         num_classes=num_classes, model_options=model_options)
        self.strategy = strategy
        self._key = json.dumps([self.args, strategy], sort_keys=True)

    def __call__(self, batch: int, checkpointing: bool) -> PlanRow:
        key = (self._key, batch, checkpointing)
        if key not in _ROWS:
            plan = plan_memory(**self.args, batch=batch, checkpointing=(checkpointing,))
            _ROWS[key] = next(r for r in plan.rows if r.strategy == self.strategy)
        return _ROWS[key]


def choose_batch(peaks: _Peaks, *, global_batch: int, processes: int, memory_gib: float,
                 memory_source: str) -> BatchPlan:
    """The largest batch per device dividing the per-process share of ``global_batch`` that fits ``memory_gib``.

    Raises:
        ConfigError: fewer clips than processes, or one clip does not fit even with checkpointing.
    """
    if global_batch < processes:
        raise ConfigError(f"train.global_batch: {global_batch} clips cannot be shared by {processes} processes")
    share = global_batch // processes
    usable = memory_gib * GIB * (1 - HEADROOM)

    def fits(batch: int, checkpointing: bool) -> bool:
        return peaks(batch, checkpointing).peak <= usable

    checkpointing = not fits(1, False)
    if checkpointing and not fits(1, True):
        row = peaks(1, True)
        a = peaks.args
        raise ConfigError(
            f"train.batch_size auto: one clip ({'x'.join(map(str, a['clip']))}, {a['model']}, {a['precision']}) needs "
            f"{row.peak / GIB:.1f} GiB per device even with activation checkpointing, more than the "
            f"{usable / GIB:.1f} GiB usable of {memory_gib:.1f} GiB ({memory_source}); use shorter or smaller clips "
            f"(data.clip_len, data.crop_size), train.mixed_precision, train.distributed: fsdp or more memory"
        )
    divisors = [d for d in range(1, share + 1) if share % d == 0]
    lo, hi = 0, len(divisors) - 1  # divisors[lo] fits; the answer is the last divisor that fits (peaks grow with it)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(divisors[mid], checkpointing):
            lo = mid
        else:
            hi = mid - 1
    batch = divisors[lo]
    a = peaks.args
    inputs = {"model": a["model"], "clip": list(a["clip"]), "precision": a["precision"], "attention": a["attention"],
              "strategy": peaks.strategy, "num_classes": a["num_classes"], "model_options": a["model_options"]}
    return BatchPlan(batch, share // batch, checkpointing, processes, share * processes, global_batch, memory_gib,
                     memory_source, peaks(batch, checkpointing).peak / GIB, usable / GIB, inputs)


def planner_for(cfg: Config, processes: int, device: torch.device) -> _Peaks:
    """The planner's questions for this config: its model, clip, precision and strategy on ``processes`` devices.

    fp16 autocast keeps 2-byte copies as bf16 does: both are planned as bf16. On
    a CPU, attention is planned as PyTorch runs it there (see :mod:`.plan`).
    The head is planned at ``model.num_classes`` or 400 classes (a head is a few
    hundred thousand parameters: a rounding error in the peak).
    """
    m, d = cfg.model, cfg.data
    keys = ("window_size", "embed_dim", "depths", "num_heads", "attention", "position_bias", "norm",
            "pretrained_window_size")  # as engine.build.model_from_config
    options = {k: getattr(m, k) for k in keys if getattr(m, k)}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    options.update(drop_path_rate=m.drop_path_rate, head_dropout=m.head_dropout)
    precision = "fp32" if cfg.train.mixed_precision == "no" else "bf16"
    return _Peaks(m.name, (d.clip_len, d.crop_size, d.crop_size), processes, precision,
                  "fused" if device.type == "cuda" else "cpu", cfg.train.distributed.upper(), m.num_classes or 400,
                  options)


def apply(cfg: Config, plan: BatchPlan) -> Config:
    """``cfg`` with the plan's batch, accumulation and checkpointing."""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=plan.batch_size, grad_accum_steps=plan.grad_accum_steps),
        model=dataclasses.replace(cfg.model, use_checkpoint=plan.use_checkpoint))


def _saved_plan(path: Path, peaks: _Peaks, requested: int, processes: int) -> BatchPlan | None:
    """The plan a run recorded, if it was made for the same model, clip, precision, processes and global batch."""
    try:
        saved = BatchPlan(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    a = peaks.args
    same = {"model": a["model"], "clip": list(a["clip"]), "precision": a["precision"], "strategy": peaks.strategy}
    if any(saved.inputs.get(k) != v for k, v in same.items()):
        return None
    return saved if (saved.requested_global_batch, saved.processes) == (requested, processes) else None


def plan_batch(cfg: Config, accelerator: Accelerator, *, resume: bool) -> tuple[Config, BatchPlan | None]:
    """Resolves ``train.batch_size: auto`` (other configs come back as they are, with None).

    The main process plans (from the smallest ``train.memory`` or free memory
    of all processes' devices) and every process takes its answer; a resumed
    run whose ``batch_plan.json`` was made for the same inputs takes that.
    Prints the choice in one line and sets the accelerator's accumulation steps.

    Raises:
        ConfigError: one clip does not fit (see :func:`choose_batch`).
    """
    if cfg.train.batch_size != "auto":
        return cfg, None
    processes = accelerator.num_processes
    if cfg.train.memory is not None:
        memory, source = float(cfg.train.memory), "train.memory"
    else:
        memory, source = free_memory_gib(accelerator.device)
        if processes > 1:  # the tightest device decides: every process trains the same batch
            memory = min(gather_object([memory]))
    answer: list[Any] = [None, ""]  # the plan (or the error's message), and where a reused plan came from
    if accelerator.is_main_process:
        peaks = planner_for(cfg, processes, accelerator.device)
        path = Path(cfg.output_dir) / PLAN_FILE
        saved = _saved_plan(path, peaks, cfg.train.global_batch, processes) if resume else None
        try:
            answer[0] = saved or choose_batch(peaks, global_batch=cfg.train.global_batch, processes=processes,
                                              memory_gib=memory, memory_source=source)
            answer[1] = f"; reused from {path}" if saved else ""
        except ConfigError as e:
            answer[0] = str(e)
    if processes > 1:
        broadcast_object_list(answer)
    if isinstance(answer[0], str):
        raise ConfigError(answer[0])
    plan: BatchPlan = answer[0]
    accelerator.print(plan.line() + answer[1])
    if plan.global_batch != plan.requested_global_batch and accelerator.is_main_process:
        log.warning("train.global_batch %d is not a multiple of the %d processes: training with %d clips per "
                    "optimizer step", plan.requested_global_batch, processes, plan.global_batch)  # fmt: skip
    accelerator.gradient_accumulation_steps = plan.grad_accum_steps
    return apply(cfg, plan), plan


def write_plan(plan: BatchPlan, folder: str | Path) -> Path:
    """``folder/batch_plan.json``."""
    path = Path(folder) / PLAN_FILE
    path.write_text(json.dumps(dataclasses.asdict(plan), indent=2) + "\n")
    return path


__all__ = ["BatchPlan", "PLAN_FILE", "apply", "choose_batch", "free_memory_gib", "plan_batch", "planner_for",
           "write_plan"]
