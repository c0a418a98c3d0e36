"""Window attention on CPU: PyTorch's fused flash kernel forward, a chunked backward.

``F.scaled_dot_product_attention`` with an ``attn_mask`` that needs a
gradient (the learned relative-position bias) falls back to its math path
on CPU: it materialises the attention matrix, keeps it for backward and runs
an unfused softmax over it. Here the forward runs the fused CPU flash kernel
(nothing of size N x N kept) and the backward recomputes the attention a few
windows at a time, in reused cache-sized buffers, which also gives the bias
the gradient the flash backward does not compute. The qkv projection can go
into the kernel too, which can then keep the tokens (C channels per token)
for backward instead of the projection (3C).

:class:`FastWindowAttention` takes this path for float32 CPU tensors (and
under CPU bf16 autocast, in bfloat16) without attention dropout, and runs
the reference :class:`~video_swin.models.attention.WindowAttention` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ..attention import WindowAttention, gather_bias
from ..windows import Size
from .checks import usable
from .linear import linear, linear_backward, mm, use_onednn
from .switches import FLASH_CPU, RECOMPUTE_FROM_BYTES, cpu_compute_dtype, enabled, machine_choice, recompute_here

# Size of the (windows, nH, N, N) float32 blocks the attention backward works
# in: a few windows at a time, in buffers reused across chunks, stay in cache
# and cause no page faults; larger chunks mean fewer, larger operations,
# which matters when other work competes for the cores.
CHUNK_BYTES = 16 * 2**20
# The shifted-window forward adds bias and mask for this many bytes of windows per flash call.
MASK_CHUNK_BYTES = 16 * 2**20


def _chunks(bw: int, nw: int, per_chunk: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, first window)`` over the B*nW windows, never crossing a sample boundary."""
    for sample in range(0, bw, nw):
        for w0 in range(0, nw, per_chunk):
            yield sample + w0, sample + min(w0 + per_chunk, nw), w0


def flash_forward(qkv: Tensor, bias: Tensor, mask: Tensor | None, heads: int, scale: float, per_chunk: int) -> Tensor:
    """softmax(q k^T * scale + bias + mask) v with the CPU flash kernel: Tensor[B*nW, N, 3C] -> Tensor[B*nW, N, C]."""
    bw, n, c3 = qkv.shape
    dh = c3 // 3 // heads
    q, k, v = qkv.view(bw, n, 3, heads, dh).permute(2, 0, 3, 1, 4)  # 3 x (B*nW, nH, N, Dh)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if mask is None:
        # One call; the kernel writes (B*nW, N, nH, Dh) and returns it as a transposed view.
        return flash(q, k, v, attn_mask=bias.unsqueeze(0), scale=scale)[0].transpose(1, 2).reshape(bw, n, -1)
    nw = mask.shape[0]
    out = qkv.new_empty(bw, n, heads, dh)  # (B*nW, N, nH, Dh)
    mask_buf = qkv.new_empty(min(per_chunk, nw), heads, n, n)  # bias + mask of a few windows, reused
    for start, stop, w0 in _chunks(bw, nw, per_chunk):
        attn_mask = torch.add(mask[w0 : w0 + stop - start].unsqueeze(1), bias, out=mask_buf[: stop - start])
        o = flash(q[start:stop], k[start:stop], v[start:stop], attn_mask=attn_mask, scale=scale)[0]
        out[start:stop] = o.transpose(1, 2)
    return out.view(bw, n, -1)  # (B*nW, N, C)


def chunked_forward(
    qkv: Tensor, bias: Tensor, mask: Tensor | None, heads: int, scale: float, per_chunk: int
) -> Tensor:
    """:func:`flash_forward` as scores, softmax and product a few windows at a time.

    In bfloat16 on a CPU with AVX512-BF16 this was 1.5x faster than the flash
    kernel (whose inner products do not use the bf16 dot-product instructions
    that ``bmm`` does); where bf16 is emulated (AVX2) it was 18x slower, so
    which one runs under bf16 autocast is measured per machine
    (:mod:`.machine`, ``bf16_attention``; docs/BENCHMARKS.md, "Single
    kernels"). In float32 the flash kernel is used.
    """
    bw, n, c3 = qkv.shape
    dh = c3 // 3 // heads
    nw = bw if mask is None else mask.shape[0]
    q, k, v = qkv.view(bw, n, 3, heads, dh).permute(2, 0, 3, 1, 4).reshape(3, bw * heads, n, dh)  # head-major
    out = qkv.new_empty(bw * heads, n, dh)
    rows_max = min(per_chunk, nw) * heads
    s_buf, p_buf = qkv.new_empty(rows_max, n, n), qkv.new_empty(rows_max, n, n)
    for start, stop, w0 in _chunks(bw, nw, per_chunk):
        w, rows = stop - start, slice(start * heads, stop * heads)
        s = s_buf[: w * heads]
        if mask is None:
            s.view(w, heads, n, n).copy_(bias.expand(w, heads, n, n))
        else:
            torch.add(mask[w0 : w0 + w].unsqueeze(1), bias, out=s.view(w, heads, n, n))
        s.baddbmm_(q[rows], k[rows].transpose(1, 2), alpha=scale)  # (w*nH, N, N) scores
        torch.bmm(torch.ops.aten._softmax.out(s, -1, False, out=p_buf[: w * heads]), v[rows], out=out[rows])
    return out.view(bw, heads, n, dh).transpose(1, 2).reshape(bw, n, heads * dh)  # (B*nW, N, C)


def _attention_backward(
    grad: Tensor, qkv: Tensor, bias: Tensor, mask: Tensor | None, heads: int, scale: float, per_chunk: int,
    bias_grad: bool,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Gradients of :func:`flash_forward` for qkv Tensor[B*nW, N, 3C] and bias Tensor[nH, N, N].

    Recomputes the attention a few windows at a time: scores (with bias and
    mask), softmax, then softmax's own fused backward, P * (dP - rowsum(P * dP)).
    Operands are put head-major once, so that every chunk works on views and
    writes its results in place: few, large operations.
    """
    bw, n, c3 = qkv.shape
    dh = c3 // 3 // heads
    nw = bw if mask is None else mask.shape[0]
    qkv_h = qkv.view(bw, n, 3, heads, dh).permute(2, 0, 3, 1, 4).contiguous()  # (3, B*nW, nH, N, Dh)
    qkv_h[0].mul_(scale)
    q, k, v = qkv_h.view(3, bw * heads, n, dh)  # 3 x (B*nW*nH, N, Dh), q scaled
    g = grad.reshape(bw, n, heads, dh).transpose(1, 2).reshape(bw * heads, n, dh)  # (B*nW*nH, N, Dh)
    dqkv_h = qkv.new_empty(3, bw * heads, n, dh)
    dq, dk, dv = dqkv_h
    dbias = torch.zeros(bias.shape, dtype=torch.float32) if bias_grad else None  # summed over all windows, in float32
    # (windows*nH, N, N) buffers reused by every chunk: fresh ones would cost a
    # page fault per 4 KiB in every chunk.
    rows_max = min(per_chunk, nw) * heads
    s_buf, p_buf, dp_buf = (qkv.new_empty(rows_max, n, n) for _ in range(3))
    for start, stop, w0 in _chunks(bw, nw, per_chunk):
        w = stop - start
        rows = slice(start * heads, stop * heads)
        s = s_buf[: w * heads]
        if mask is None:
            s.view(w, heads, n, n).copy_(bias.expand(w, heads, n, n))
        else:
            torch.add(mask[w0 : w0 + w].unsqueeze(1), bias, out=s.view(w, heads, n, n))
        s.baddbmm_(q[rows], k[rows].transpose(1, 2))  # scores (w*nH, N, N)
        p = torch.ops.aten._softmax.out(s, -1, False, out=p_buf[: w * heads])
        torch.bmm(p.transpose(1, 2), g[rows], out=dv[rows])
        dp = torch.bmm(g[rows], v[rows].transpose(1, 2), out=dp_buf[: w * heads])
        ds = torch.ops.aten._softmax_backward_data.out(dp, p, -1, p.dtype, grad_input=s)
        if dbias is not None:
            for window_grad in ds.view(w, heads, n, n):  # in place: a fresh sum per chunk would page-fault
                dbias += window_grad
        torch.baddbmm(dq[rows], ds, k[rows], beta=0, alpha=scale, out=dq[rows])
        torch.bmm(ds.transpose(1, 2), q[rows], out=dk[rows])
    del qkv_h, q, k, v, g, s_buf, p_buf, dp_buf
    dqkv = dqkv_h.view(3, bw, heads, n, dh).permute(1, 3, 0, 2, 4).reshape(bw, n, c3)  # (B*nW, N, 3C)
    return dqkv, dbias


class _WindowAttention(torch.autograd.Function):
    """[qkv projection ->] window attention; see :func:`window_attention`."""

    @staticmethod
    def forward(ctx, x, weight, qkv_bias, table, index, mask, heads, scale, recompute):  # noqa: ANN001, ANN205
        onednn = use_onednn(x, weight, qkv_bias)
        qkv = x if weight is None else mm(x.reshape(-1, x.shape[-1]), weight, qkv_bias, onednn).view(*x.shape[:2], -1)
        bias = gather_bias(table, index)  # (nH, N, N); gathered again in backward rather than kept
        window_bytes = heads * qkv.shape[1] ** 2 * 4
        per_chunk = max(1, CHUNK_BYTES // window_bytes)
        if qkv.dtype == torch.float32 or machine_choice("bf16_attention") == "flash":
            out = flash_forward(qkv, bias, mask, heads, scale, max(1, MASK_CHUNK_BYTES // window_bytes))
        else:
            out = chunked_forward(qkv, bias, mask, heads, scale, per_chunk)
        # out: (B*nW, N, C)
        kept = None if weight is None or recompute else qkv
        ctx.save_for_backward(x, weight, qkv_bias, kept, table, index, mask)
        ctx.heads, ctx.scale, ctx.per_chunk, ctx.onednn = heads, scale, per_chunk, onednn
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, qkv_bias, kept, table, index, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        x2 = x.reshape(-1, x.shape[-1])
        qkv = x if weight is None else kept
        if qkv is None:  # recompute the projection rather than having kept it
            qkv = mm(x2, weight, qkv_bias, ctx.onednn).view(*x.shape[:2], -1)
        bias = gather_bias(table, index)
        dqkv, dbias = _attention_backward(grad, qkv, bias, mask, ctx.heads, ctx.scale, ctx.per_chunk, needs[3])
        del qkv
        dtable = None
        if dbias is not None:
            dtable = dbias.new_zeros(table.t().shape).index_add_(1, index.reshape(-1), dbias.view(dbias.shape[0], -1))
            dtable = dtable.t().to(table.dtype)
        if weight is None:
            return dqkv, None, None, dtable, None, None, None, None, None
        dx, dw, db = linear_backward(x2, weight, dqkv.view(x2.shape[0], -1), needs[:3], ctx.onednn)
        return None if dx is None else dx.view(x.shape), dw, db, dtable, None, None, None, None, None


def fused_dtype(*tensors: Tensor | None, dropout_p: float = 0.0) -> torch.dtype | None:
    """The dtype :func:`window_attention` computes in for these inputs; None where it does not apply."""
    if not (enabled("attention") and FLASH_CPU and dropout_p == 0.0 and usable("attention")):
        return None
    return cpu_compute_dtype(*tensors)


def window_attention(
    x: Tensor,
    num_heads: int,
    bias_table: Tensor,
    bias_index: Tensor,
    mask: Tensor | None = None,
    *,
    qkv_weight: Tensor | None = None,
    qkv_bias: Tensor | None = None,
    scale: float | None = None,
    recompute_qkv: bool = False,
) -> Tensor:
    """Multi-head attention within windows through the fused CPU kernel, from the tokens or their projection.

    Only where :func:`fused_dtype` gives a dtype (CPU, float32 or bf16
    autocast, eager mode, switch on); raises RuntimeError elsewhere.

    Args:
        x: Tensor[B * nW, N, C_in] tokens, projected by ``qkv_weight``/``qkv_bias``;
            or, without ``qkv_weight``, Tensor[B * nW, N, 3C], the packed projection
            (q, k, v one after the other, each split into nH heads of C / nH channels).
        num_heads: nH.
        bias_table: Tensor[rows, nH], relative-position bias per offset (may need a gradient).
        bias_index: LongTensor[N, N], the table row of every token pair.
        mask: Tensor[nW, N, N] additive shift mask shared by every sample, or None.
        qkv_weight: Tensor[3C, C_in] of the qkv projection, or None (``x`` is projected already).
        qkv_bias: Tensor[3C] or None.
        scale: factor of q k^T; None: 1 / sqrt(C / nH).
        recompute_qkv: keep the tokens (C channels) for backward and
            recompute the projection there, rather than keeping the
            projection (3C channels).

    Returns:
        Tensor[B * nW, N, C], heads concatenated along channels.
    """
    c = (x.shape[-1] if qkv_weight is None else qkv_weight.shape[0]) // 3
    scale = 1 / math.sqrt(c // num_heads) if scale is None else scale
    dtype = fused_dtype(x, bias_table, qkv_weight, qkv_bias)
    if dtype is None:
        raise RuntimeError("the fused CPU window attention does not apply to these inputs; use WindowAttention")
    # Under autocast, everything goes to bfloat16 first, as autocast itself
    # does for linear layers and scaled_dot_product_attention (the casts
    # are autograd ops, so gradients come back in each input's dtype).
    args = [None if t is None else t.to(dtype) for t in (x, qkv_weight, qkv_bias, bias_table, mask)]
    with torch.autocast("cpu", enabled=False):
        return _WindowAttention.apply(*args[:4], bias_index, args[4], num_heads, scale, recompute_qkv)


class FastWindowAttention(WindowAttention):
    """:class:`WindowAttention` (same parameters, same outputs) through :func:`window_attention` where it applies.

    Attributes:
        recompute_qkv: dot attention: recompute the qkv projection in
            backward instead of keeping it, where the windows hold at least
            ``recompute_from`` bytes (both set by :func:`~.seam.accelerate_cpu`).
    """

    recompute_qkv: bool = True
    recompute_from: int = RECOMPUTE_FROM_BYTES

    # Only the pieces it computes faster: WindowAttention (attention.py) says what the projection,
    # the q/k normalisation and the biases are.

    def project_qkv(self, x: Tensor) -> Tensor:
        return linear(x, self.qkv.weight, self.qkv_bias())

    def forward(self, x: Tensor, window: Size, mask: Tensor | None = None) -> Tensor:
        table = self.relative_position_bias_table if self.position_bias_kind == "table" else self.cpb_mlp[0].weight
        dropout_p = self.attn_drop if self.training else 0.0
        if fused_dtype(x, self.qkv.weight, self.qkv.bias, table, dropout_p=dropout_p) is None:
            return super().forward(x, window, mask)
        table, index = self.bias_table(window), self.bias_index(window)  # (rows, nH), (N, N)
        if self.qk_as_projected():
            # Dot attention: the projection goes into the kernel,
            # which can then keep the tokens (C) for backward instead of the projection (3C).
            out = window_attention(
                x, self.num_heads, table, index, mask, qkv_weight=self.qkv.weight, qkv_bias=self.qkv_bias(),
                recompute_qkv=recompute_here(self.recompute_qkv, x, self.recompute_from),
            )  # (B*nW, N, C)
            return self.proj_drop(self.proj(out))
        bw, n, _ = x.shape
        qkv = self.project_qkv(x).view(bw, n, 3, self.num_heads, self.head_dim)  # (B*nW, N, 3, nH, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B*nW, nH, N, Dh)
        q, k, scale = self.scaled_qk(q, k)
        qkv = torch.stack((q, k, v)).permute(1, 3, 0, 2, 4).reshape(bw, n, -1)  # (B*nW, N, 3C)
        out = window_attention(qkv, self.num_heads, table, index, mask, scale=scale)  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))
