"""Global on/off switches of the CPU fast paths, and where they may run at all.

The switches exist to measure the fast paths (``benchmarks/model_speed.py``)
and to trace the stock ops (FLOP counting); a model without
:func:`~.seam.accelerate_cpu` applied never looks at them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .checks import usable

_ENABLED = {"attention": True, "linear": True, "inference_chunks": True}

# Whether the private ops are there at all, looked up once at import: probing torch.ops inside a forward
# would break torch.compile's graphs. Whether they also give the reference results is checked once per
# process before first use (checks.py, usable()).
ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
FLASH_CPU = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


# What the fast paths do where two ways compute the same thing and which is faster depends on the
# machine: chosen per machine by measurement when a model is accelerated (machine.py,
# accelerate_cpu), not assumed from the CPU's vendor.
#   linear:      float32 linears (forward, input gradient) through "onednn" or "aten" (MKL/OpenBLAS)
#   weight_grad: float32 weight gradients of the oneDNN linears through "onednn" (which copies its
#                transposed operands first) or "aten" (which takes them as they are)
#   fc1_gelu:    the MLP's fc1 + GELU as one "fused" oneDNN op or "separate" (GEMM, then in-place GELU)
#   bf16_attention: the attention forward under bf16 autocast through "chunked" bmm (bf16 dot-product
#                instructions where the CPU has them) or the "flash" kernel
_CHOICES = {"linear": "onednn", "weight_grad": "onednn", "fc1_gelu": "fused", "bf16_attention": "chunked"}
_ALLOWED = {"linear": ("onednn", "aten"), "weight_grad": ("onednn", "aten"), "fc1_gelu": ("fused", "separate"),
            "bf16_attention": ("chunked", "flash")}  # fmt: skip


def set_machine_choices(**choices: str) -> None:
    """Sets the per-machine choices (``linear=``, ``weight_grad=``, ``fc1_gelu=``, ``bf16_attention=``) for all
    of this process."""
    for name, value in choices.items():
        if name not in _ALLOWED:
            raise ValueError(f"unknown machine choice {name!r}; known: {sorted(_ALLOWED)}")
        if value not in _ALLOWED[name]:
            raise ValueError(f"{name} must be one of {list(_ALLOWED[name])}, got {value!r}")
    _CHOICES.update(choices)


def machine_choice(name: str) -> str:
    """The current value of a per-machine choice (see :func:`set_machine_choices`)."""
    return _CHOICES[name]


@contextmanager
def machine_choices(**choices: str) -> Iterator[None]:
    """:func:`set_machine_choices` for the block only; all choices are as before afterwards (also those
    :func:`~.seam.accelerate_cpu` set inside the block)."""
    previous = dict(_CHOICES)
    try:
        set_machine_choices(**choices)
        yield
    finally:
        _CHOICES.update(previous)


def set_linear_backend(name: str) -> None:
    """"onednn" or "aten" for the float32 linear layers of accelerated models (all of this process)."""
    if name not in ("onednn", "aten"):
        raise ValueError(f"linear backend must be 'onednn' or 'aten', got {name!r}")
    set_machine_choices(linear=name)


def linear_backend() -> str:
    """The float32 linear backend in use: "onednn" or "aten" (also where oneDNN's op failed its check)."""
    return _CHOICES["linear"] if ONEDNN_LINEAR and usable("linear") else "aten"


def set_fast_paths(**enabled: bool) -> dict[str, bool]:
    """Turns CPU fast paths on or off (``attention=``, ``linear=``, ``inference_chunks=``); returns the old settings."""
    unknown = set(enabled) - set(_ENABLED)
    if unknown:
        raise ValueError(f"unknown fast path(s) {sorted(unknown)}; known: {sorted(_ENABLED)}")
    previous = dict(_ENABLED)
    _ENABLED.update(enabled)
    return previous


@contextmanager
def fast_paths(**enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_fast_paths`."""
    previous = set_fast_paths(**enabled)
    try:
        yield
    finally:
        _ENABLED.update(previous)


def enabled(name: str) -> bool:
    """Whether the fast path ``name`` is switched on."""
    return _ENABLED[name]


# torch >= 2.4 asks autocast by device type (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype);
# older releases have a pair of functions per device. Looked up once, not in every forward.
_AUTOCAST_BY_DEVICE = hasattr(torch, "get_autocast_dtype")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on ``device_type`` ("cpu", "cuda", ...); None where it is off there."""
    if _AUTOCAST_BY_DEVICE:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def cpu_compute_dtype(*tensors: Tensor | None) -> torch.dtype | None:
    """The dtype a CPU fast path computes in: float32, or bfloat16 under CPU bf16 autocast; None: no fast path.

    Under ``torch.compile`` there is none either, so that inductor sees (and
    fuses) ordinary aten ops.
    """
    if torch.compiler.is_compiling() or not all(t.device.type == "cpu" for t in tensors if t is not None):
        return None
    autocast = autocast_dtype("cpu")
    if autocast is not None:
        return torch.bfloat16 if autocast == torch.bfloat16 else None
    return torch.float32 if all(t.dtype == torch.float32 for t in tensors if t is not None) else None


def plain_cpu(*tensors: Tensor | None) -> bool:
    """float32 CPU tensors, no autocast, eager mode: where the float32-only fast paths (oneDNN linears) apply."""
    return cpu_compute_dtype(*tensors) == torch.float32


# Blocks recompute activations in backward (their MLP's hidden layer, their attention's qkv projection)
# only where their token map, (B, *S, C), holds at least this many bytes, and keep them elsewhere. A
# Swin stage has a quarter of the previous one's tokens at twice the channels: every block costs about
# the same time, but the activations it keeps halve from stage to stage, so recomputing in the large
# early maps saves most of the memory for a fraction of the time. Measured on AMD EPYC Zen 3, 2 cores,
# 2x3x16x224x224 (docs/BENCHMARKS.md, "Recompute where the maps are large"): stages 1-2 of swin3d_t.
RECOMPUTE_FROM_BYTES = 8 * 2**20


def recompute_here(option: bool, x: Tensor, from_bytes: int) -> bool:
    """Whether a block with recompute ``option`` on recomputes for input ``x``: its bytes at least ``from_bytes``."""
    return option and x.numel() * x.element_size() >= from_bytes
