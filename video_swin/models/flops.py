"""FLOP counting with fvcore (multiply-adds, the convention of the Swin papers)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .kernels import fast_paths


def _sdpa_flop(inputs: list[Any], outputs: list[Any]) -> int:
    # fvcore has no rule for scaled_dot_product_attention: q @ k^T and attn @ v,
    # one multiply-add per output element and reduction step.
    q, k, v = (tuple(t.type().sizes()) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * q[-1] + batch * q[-2] * k[-2] * v[-1]


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of ``model`` on ``x`` (fvcore)."""
    from fvcore.nn import FlopCountAnalysis  # installed with pytorchvideo

    analysis = FlopCountAnalysis(model, (x,))
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # Traced with the stock ops, whose FLOP rules fvcore knows (the CPU fast
    # paths compute the same products through custom kernels).
    with torch.no_grad(), fast_paths(attention=False, linear=False, inference_chunks=False):
        return int(analysis.total())
