"""What every part shares: the two models, one step of each, interleaved timing and its medians."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import video_swin
from video_swin.checkpoints import load_checkpoint
from video_swin.models.kernels import RECOMPUTE_FROM_BYTES, accelerate_cpu

MODEL = "swin3d_t"
# How users get the CPU speed: accelerate_cpu with its defaults.
SEAM = {"enabled": True, "recompute_mlp": True, "recompute_qkv": True, "recompute_from": RECOMPUTE_FROM_BYTES}


def parse_shape(text: str) -> tuple[int, ...]:
    """``"2x3x16x224x224"`` -> (2, 3, 16, 224, 224)."""
    shape = tuple(int(s) for s in text.lower().split("x"))
    if len(shape) != 5 or min(shape) < 1 or shape[1] != 3:
        raise argparse.ArgumentTypeError(f"expected BxCxTxHxW with C=3, got {text!r}")
    return shape


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def build_ours(options: dict, seam: dict | None = None) -> torch.nn.Module:
    """Our model with ``create_model`` overrides ``options``, the CPU fast paths applied as ``seam`` says."""
    model = video_swin.create_model(MODEL, **options)
    return accelerate_cpu(model, **(SEAM if seam is None else seam))


def build_models(
    ours_options: dict, *, seam: dict | None = None, compile_ours: bool = False
) -> dict[str, torch.nn.Module]:
    """torchvision's model with a fixed seed, and ours carrying the same weights.

    Args:
        ours_options: ``create_model`` overrides for ours.
        seam: ``accelerate_cpu`` arguments for ours (default :data:`SEAM`:
            the fast paths on; ``{"enabled": False}``: the reference model).
        compile_ours: ``torch.compile`` ours (after the seam).
    """
    import torchvision  # noqa: PLC0415 (not imported by the memory runs of our model)

    torch.manual_seed(0)
    theirs = getattr(torchvision.models.video, MODEL)()
    ours = build_ours(ours_options, seam)
    report = load_checkpoint(ours, theirs.state_dict())
    if report.missing or report.unexpected:
        raise RuntimeError(f"torchvision weights did not map onto ours: {report}")
    if compile_ours:
        ours = torch.compile(ours)
    return {"ours": ours, "theirs": theirs}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast: torch.dtype | None) -> None:  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


def infer_step(model: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        return model(x)


def interleave(steps: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Runs the steps in turns, alternating their order each repetition; returns wall/CPU seconds per step."""
    names = list(steps)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for rep in range(warmup + repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            steps[name]()
            if rep >= warmup:
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
    return times


def medians(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per step of :func:`interleave`'s result."""
    return {name: {clock: statistics.median(t[clock]) for clock in ("wall", "cpu")} for name, t in times.items()}


def summarize(times: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Medians per model and clock, the ratio of medians, and the median of the per-repetition ratios."""
    out = {}
    for clock in ("wall", "cpu"):
        ours, theirs = times["ours"][clock], times["theirs"][clock]
        out[f"ours_{clock}"] = statistics.median(ours)
        out[f"theirs_{clock}"] = statistics.median(theirs)
        out[f"ratio_{clock}"] = out[f"theirs_{clock}"] / out[f"ours_{clock}"]
        out[f"pair_ratio_{clock}"] = statistics.median(t / o for o, t in zip(ours, theirs))
    out["ours_all_wall"], out["theirs_all_wall"] = times["ours"]["wall"], times["theirs"]["wall"]
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torchvision  # noqa: PLC0415

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min); {versions}"
