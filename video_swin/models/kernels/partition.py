"""Cyclic shift + window partition (and back) as one gather of whole token rows.

The reference rolls the map and cuts it into windows with a permute copy: two
full passes. Both are a fixed permutation of the tokens for a given size,
window and shift, so :func:`window_order` computes it once and
:func:`reorder_tokens` applies it in one gather, whose gradient is a gather
by the inverse permutation. Figures: docs/BENCHMARKS.md, "Single kernels".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..windows import Size, window_partition


def window_order(size: Size, window: Size, shift: Size, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Token indices that fuse the cyclic shift with the window partition (one gather each way).

    Args:
        size: padded spatial sizes (multiples of ``window``).
        window: window in use.
        shift: shift in use (zeros: no shift).

    Returns:
        ``(order, position)``, two LongTensor[prod(size)] inverse to each other.
        For x Tensor[B, *size, C], ``x.view(B, -1, C).index_select(1, order)``
        viewed as (B*nW, N, C) equals ``window_partition(roll(x, -shift), window)``;
        ``windows.view(B, -1, C).index_select(1, position)`` undoes it
        (``window_reverse`` and the roll back).
    """
    dims = tuple(range(1, len(size) + 1))
    flat = torch.arange(math.prod(size), device=device).view(1, *size, 1)
    if any(shift):
        flat = torch.roll(flat, shifts=tuple(-s for s in shift), dims=dims)
    order = window_partition(flat, window).reshape(-1)  # (prod(size),)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=device)
    return order, position


class _Reorder(torch.autograd.Function):
    """``x.index_select(1, index)`` whose gradient is a gather too; see :func:`reorder_tokens`."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor | None) -> Tensor:
        ctx.save_for_backward(index, inverse)
        ctx.length = x.shape[1]
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        index, inverse = ctx.saved_tensors
        if inverse is not None:
            return grad.index_select(1, inverse), None, None
        shape = (grad.shape[0], ctx.length, *grad.shape[2:])
        return grad.new_zeros(shape).index_add_(1, index, grad), None, None


def reorder_tokens(x: Tensor, index: Tensor, inverse: Tensor | None = None) -> Tensor:
    """Tokens in another order: Tensor[B, L, C] -> Tensor[B, len(index), C], ``x[:, index]``.

    With the orders of :func:`window_order` this is the cyclic shift and the
    window partition (or their reverse). ``inverse`` (``index``'s inverse
    permutation, when ``index`` is one) makes the backward a gather as well;
    otherwise it scatters.
    """
    return _Reorder.apply(x, index, inverse)
