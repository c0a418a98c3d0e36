"""The ``memory`` part: how far one step raises the resident set, each model in a fresh process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from video_swin.models import kernels

from .common import MODEL, build_ours, infer_step, shape_text, train_step

SCRIPT = Path(__file__).resolve().parents[1] / "model_speed.py"  # the children run its --memory-child mode

# glibc serves blocks below a threshold from its heap and keeps them after they
# are freed; the threshold rises (up to 32 MiB) each time a larger block is
# freed. Fixing it at 64 KiB returns every large block at once, so that the
# peak RSS is close to the peak of live tensors.
ALLOCATORS = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def rss_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from /proc, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Resets this process's peak RSS (``VmHWM``) to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: builds one model, then measures how far one step raises resident memory.

    The model (random weights: they do not change memory), its input, its
    AdamW optimizer and, for training, everything a step needs are created
    first; the process's resident set then is the baseline. The peak RSS is
    reset to it (``/proc/self/clear_refs``), the steps run, and the reported
    figure is the peak minus the baseline: activations, gradients, optimizer
    state, temporaries and allocator slack, as the operating system sees them.
    Training runs two steps, so that the second one carries AdamW's state.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kernels.set_fast_paths(**args.fast_paths)
    if args.memory_child == "ours":
        model = build_ours(args.ours_options, args.seam)
    else:
        import torchvision  # noqa: PLC0415

        model = getattr(torchvision.models.video, MODEL)()
    shape = args.train_shape if args.memory_mode == "train" else args.infer_shape
    x = torch.randn(shape)
    y = torch.randint(0, 400, (shape[0],))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    baseline = rss_kib("VmRSS")
    if not reset_peak_rss():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); memory part unavailable")
    if args.memory_mode == "train":
        model.train()
        for _ in range(2):
            train_step(model, optimizer, x, y, args.autocast_dtype)
    else:
        model.eval()
        infer_step(model, x, args.autocast_dtype)
    peak = rss_kib("VmHWM")
    print(json.dumps({"baseline_mib": baseline / 1024, "peak_mib": peak / 1024, "step_mib": (peak - baseline) / 1024}))


def seam_cli(seam: dict) -> list[str]:
    """``accelerate_cpu`` arguments as the script's ``--seam``/``--recompute``/``--recompute-from`` options."""
    recompute = [name for name in ("mlp", "qkv") if seam.get(f"recompute_{name}", True)]
    return ["--seam", "on" if seam.get("enabled", True) else "off", "--recompute", ",".join(recompute) or "none",
            "--recompute-from", str(seam.get("recompute_from", kernels.RECOMPUTE_FROM_BYTES))]  # fmt: skip


def start_memory_child(args: argparse.Namespace, name: str, mode: str, allocator: str, *, sets: list[str],
                       fast_paths: str, seam: dict) -> subprocess.Popen:  # fmt: skip
    """Starts one :func:`memory_child` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": _pythonpath(), **ALLOCATORS[allocator]}
    cmd = [sys.executable, str(SCRIPT), "--memory-child", name, "--memory-mode", mode,
           "--threads", str(args.threads), "--autocast", args.autocast, "--fast-paths", fast_paths,
           "--train-shape", shape_text(args.train_shape), "--infer-shape", shape_text(args.infer_shape),
           *seam_cli(seam), *sum((["--set", s] for s in sets), [])]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def collect(children: dict[str, subprocess.Popen]) -> dict[str, dict]:
    """The figures of memory children, which run side by side (their RSS does not depend on their speed)."""
    out = {}
    for name, child in children.items():
        stdout, stderr = child.communicate()
        if child.returncode:
            raise RuntimeError(f"memory child {name} failed:\n{stderr}")
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


def memory_part(args: argparse.Namespace, mode: str, allocator: str) -> dict[str, dict]:
    """Peak memory of one step of each model, each in a fresh process (see :func:`memory_child`)."""
    return collect({name: start_memory_child(args, name, mode, allocator, sets=args.set,
                                             fast_paths=args.fast_paths_text, seam=args.seam)
                    for name in ("ours", "theirs")})  # fmt: skip


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
