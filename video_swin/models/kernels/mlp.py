"""The MLP branch of a block ([LayerNorm ->] fc1 -> GELU -> fc2) as one kernel that keeps only its input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import usable
from .linear import linear_backward, mm, use_onednn
from .switches import autocast_dtype, machine_choice

# Rows of the MLP branch processed at a time on CPU: the (rows, hidden) layer
# of a chunk is this many bytes. Chunks well under glibc's 32 MiB mmap limit
# are served again and again from the heap, where full-size hidden layers
# (hundreds of MiB for a 32x224 clip) are mapped fresh, page-faulted and
# unmapped in every block.
MLP_CHUNK_BYTES = 8 * 2**20
MLP_MIN_ROWS = 256  # never fewer rows per chunk (GEMM efficiency)


def row_chunks(rows: int, hidden: int, itemsize: int, device: torch.device) -> list[slice]:
    """Slices of the rows, one per chunk: :data:`MLP_CHUNK_BYTES` of hidden layer each on CPU, all at once elsewhere."""
    if device.type != "cpu":
        return [slice(0, rows)]
    step = max(MLP_MIN_ROWS, MLP_CHUNK_BYTES // (hidden * itemsize))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _fc1_gelu(y: Tensor, w1: Tensor, b1: Tensor | None, onednn: bool) -> Tensor:
    """gelu(y @ w1^T + b1), exact GELU; through oneDNN fused or as GEMM + in-place GELU (bitwise the same values),
    whichever :mod:`.machine` measured faster (on AMD EPYC Zen 3 the fused op is ~1.2x slower)."""
    if not onednn:
        return F.gelu(F.linear(y, w1, b1))
    if machine_choice("fc1_gelu") == "fused" and usable("fc1_gelu_fused"):
        return torch.ops.mkldnn._linear_pointwise(y, w1, b1, "gelu", [], "none")
    return torch.ops.aten.gelu_(mm(y, w1, b1, True))


def _accumulate(total: Tensor | None, part: Tensor | None) -> Tensor | None:
    """Sum of per-chunk parameter gradients, in float32 at least (parts may be bfloat16 under autocast)."""
    if part is None:
        return total
    return part.to(torch.promote_types(part.dtype, torch.float32)) if total is None else total.add_(part)


class _RecomputedMlp(torch.autograd.Function):
    """[LayerNorm ->] fc1 -> GELU -> fc2 that keeps only its input for backward; see :func:`recomputed_mlp`."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, w1, b1, w2, b2, keep_hidden):  # noqa: ANN001, ANN205
        x2 = x.reshape(-1, x.shape[-1])  # (M, C)
        onednn = use_onednn(x2, w1, w2)
        # Keeping the hidden layer: one pass over all rows, its pre-GELU values kept for backward.
        chunks = (
            [slice(0, x2.shape[0])] if keep_hidden
            else row_chunks(x2.shape[0], w1.shape[0], w1.element_size(), x2.device)
        )  # fmt: skip
        out = None if len(chunks) == 1 else x2.new_empty(x2.shape[0], w2.shape[0], dtype=w1.dtype)  # (M, C_out)
        hidden = None
        for rows in chunks:
            y = x2[rows]
            if norm_weight is not None:
                y = F.layer_norm(y, (y.shape[-1],), norm_weight, norm_bias, eps)
            if keep_hidden:
                hidden = mm(y.to(w1.dtype), w1, b1, onednn)  # (M, hidden), before GELU
                o = mm(F.gelu(hidden), w2, b2, onednn)
            else:
                o = mm(_fc1_gelu(y.to(w1.dtype), w1, b1, onednn), w2, b2, onednn)  # (rows, C_out), in w1's dtype
            if out is None:
                out = o
            else:
                out[rows] = o
        ctx.save_for_backward(x2, norm_weight, norm_bias, w1, b1, w2, hidden)
        ctx.eps, ctx.onednn, ctx.x_shape, ctx.chunks = eps, onednn, x.shape, chunks
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, norm_weight, norm_bias, w1, b1, w2, hidden = ctx.saved_tensors
        needs, onednn, c = ctx.needs_input_grad, ctx.onednn, x2.shape[-1]
        g2 = grad.reshape(-1, w2.shape[0])  # (M, C_out)
        dx = x2.new_empty(x2.shape) if needs[0] else None
        dnw = dnb = dw1 = db1 = dw2 = db2 = None
        for rows in ctx.chunks:
            x_rows, g = x2[rows], g2[rows]
            # Recompute the forward's activations (the same kernels, so the same values);
            # the hidden layer only where the forward did not keep it.
            y, mean, rstd = x_rows, None, None
            if norm_weight is not None:
                y, mean, rstd = torch.native_layer_norm(x_rows, (c,), norm_weight, norm_bias, ctx.eps)
            y = y.to(w1.dtype)
            h = mm(y, w1, b1, onednn) if hidden is None else hidden[rows]  # (rows, hidden)
            da, dw2_part, db2_part = linear_backward(F.gelu(h), w2, g, (True, needs[6], needs[7]), onednn)
            dw2, db2 = _accumulate(dw2, dw2_part), _accumulate(db2, db2_part)
            dh = torch.ops.aten.gelu_backward(da, h)
            del da, h
            dy, dw1_part, db1_part = linear_backward(y, w1, dh, (True, needs[4], needs[5]), onednn)
            dw1, db1 = _accumulate(dw1, dw1_part), _accumulate(db1, db1_part)
            del dh
            dy = dy.to(x2.dtype)
            if norm_weight is None:
                if dx is not None:
                    dx[rows] = dy
                continue
            dx_rows, dnw_part, dnb_part = torch.ops.aten.native_layer_norm_backward(
                dy, x_rows, (c,), mean, rstd, norm_weight, norm_bias, [needs[0], needs[1], needs[2]]
            )
            if dx is not None:
                dx[rows] = dx_rows
            dnw, dnb = _accumulate(dnw, dnw_part), _accumulate(dnb, dnb_part)
        dx = None if dx is None else dx.view(ctx.x_shape)
        cast = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return (dx, cast(dnw, x2), cast(dnb, x2), None, cast(dw1, w1), cast(db1, w1), cast(dw2, w2),
                cast(db2, w2), None)  # fmt: skip


def recomputed_mlp(
    x: Tensor,
    w1: Tensor,
    b1: Tensor | None,
    w2: Tensor,
    b2: Tensor | None,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    eps: float = 1e-5,
    keep_hidden: bool = False,
) -> Tensor:
    """``fc2(gelu(fc1(layer_norm(x))))`` that stores only ``x`` (and optionally fc1's output) for backward.

    A Swin MLP branch keeps 10 channels' worth of activations per token for
    backward (the norm's input and output, the 4C hidden layer before and
    after GELU); recomputing them from ``x`` costs one more fc1 forward and
    saves 9 of those 10. On CPU the rows go through in chunks of
    :data:`MLP_CHUNK_BYTES` of hidden layer, forward and backward, so the
    full (tokens, hidden) layer never exists; with grad disabled this is
    also the fastest inference path (GELU fused into fc1 through oneDNN).

    Args:
        x: Tensor[..., C].
        w1, b1: fc1, Tensor[hidden, C] and Tensor[hidden] (or None).
        w2, b2: fc2, Tensor[C_out, hidden] and Tensor[C_out] (or None).
        norm_weight, norm_bias: LayerNorm over C applied first (pre-norm
            blocks), or None for no norm.
        eps: the LayerNorm's eps.
        keep_hidden: also keep fc1's output (4 channels per token for a
            Swin MLP) and recompute only the norm and the GELU in backward:
            no second fc1 GEMM, 5 of the 10 channels kept. The hidden layer
            is then computed whole, not in row chunks.

    Returns:
        Tensor[..., C_out]; under autocast, the layers run in its dtype (the
        norm in ``x``'s), as they would on their own.
    """
    device = x.device.type
    dtype = autocast_dtype(device)
    if dtype is not None:
        w1, b1, w2, b2 = (None if t is None else t.to(dtype) for t in (w1, b1, w2, b2))
    with torch.autocast(device, enabled=False):
        return _RecomputedMlp.apply(x, norm_weight, norm_bias, eps, w1, b1, w2, b2, keep_hidden)
