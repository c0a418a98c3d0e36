"""Inference a few windows at a time (CPU, grad disabled).

The windowed branch of a block (norm, shift + partition, attention,
projection, reverse) over the whole map makes six or so full-size
temporaries; above glibc's 32 MiB mmap limit each is mapped, page-faulted
and unmapped again in every block, which made time per clip grow faster than
the token count. :func:`windowed_residual` keeps only the output full-size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .switches import enabled

# Tokens of the windows one chunk of :func:`windowed_residual` gathers, in bytes.
INFERENCE_CHUNK_BYTES = 4 * 2**20


def use_inference_chunks(x: Tensor) -> bool:
    """Whether the chunked inference paths serve this input: grad disabled, CPU, switch on."""
    return enabled("inference_chunks") and not torch.is_grad_enabled() and x.device.type == "cpu"


def windowed_residual(
    x: Tensor, order: Tensor, window_tokens: int, branch: Callable[[Tensor, slice], Tensor]
) -> Tensor:
    """``x + branch(windows of x)``, each output back at its token, computed a few windows at a time.

    Args:
        x: Tensor[B, L, C], the padded map's tokens in storage order.
        order: LongTensor[L], the first of :func:`.partition.window_order`.
        window_tokens: N, tokens per window (L is a multiple).
        branch: ``branch(tokens, windows)``: Tensor[B * w, N, C] of the
            windows ``windows`` (a slice of the nW windows of every sample),
            to Tensor[B * w, N, C].

    Returns:
        Tensor[B, L, C].
    """
    b, length, c = x.shape
    nw = length // window_tokens
    per = max(1, INFERENCE_CHUNK_BYTES // (b * window_tokens * c * x.element_size()))
    out = x.clone()
    for w0 in range(0, nw, per):
        w = min(per, nw - w0)
        index = order[w0 * window_tokens : (w0 + w) * window_tokens]
        tokens = x.index_select(1, index).view(b * w, window_tokens, c)  # (B*w, N, C), windows in (B, w) order
        result = branch(tokens, slice(w0, w0 + w))  # (B*w, N, C)
        out.index_add_(1, index, result.view(b, w * window_tokens, c).to(out.dtype))
    return out
