"""Fused kernels for the Swin core: CPU fast paths and recomputation that saves memory.

Where stock PyTorch leaves speed or memory on the table, measured in
``benchmarks/model_speed.py`` (figures in docs/BENCHMARKS.md):

* **Window attention while training (CPU).** ``F.scaled_dot_product_attention``
  with an ``attn_mask`` that needs a gradient (the learned relative-position
  bias) falls back to its math path on CPU: it materialises the attention
  matrix, keeps it for backward and runs an unfused softmax over it. Here the
  forward runs PyTorch's fused CPU flash kernel (nothing of size N x N kept)
  and the backward recomputes the attention a few windows at a time, in
  reused cache-sized buffers, which also gives the bias the gradient the
  flash backward does not compute.
* **Linear layers in float32 (CPU).** MKL's sgemm, which ``torch.mm`` calls,
  takes a slower code path on non-Intel CPUs; oneDNN's matmul
  (``mkldnn._linear_pointwise``, the kernel ``torch.compile`` uses for linear
  layers on CPU) does not: on the project's AMD machine a stage-1 fc1 ran
  1.24x and fc2 2.21x faster through it, the whole training step 1.49x
  (``benchmarks/model_speed.py``, docs/BENCHMARKS.md).
* **Recomputation (any device).** The MLP branch keeps only its input and
  recomputes its hidden layer in backward; the attention can recompute its
  qkv projection instead of keeping it. Both trade one more GEMM for most of
  a block's activation memory.
* **Inference a few windows at a time (CPU).** With grad disabled, a block's
  attention branch runs over a few windows at a time and its MLP over a few
  thousand rows at a time (GELU fused into fc1): full-size temporaries
  above glibc's mmap limit cost a page fault per 4 KiB in every block, which
  made time per clip grow faster than the token count.

The CPU fast paths apply to CPU tensors in float32 (the attention kernels
also under CPU bf16 autocast, in bfloat16) and fall back to the plain ops
otherwise (GPUs, other dtypes, ``torch.compile``, a PyTorch build without
these kernels). :func:`set_fast_paths` turns them off, e.g. to measure them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ENABLED = {"attention": True, "linear": True, "inference_chunks": True}
# Size of the (windows, nH, N, N) float32 blocks the attention backward works
# in: a few windows at a time, in buffers reused across chunks, stay in cache
# and cause no page faults; larger chunks mean fewer, larger operations,
# which matters when other work competes for the cores.
CHUNK_BYTES = 16 * 2**20
# The shifted-window forward adds bias and mask for this many bytes of windows per flash call.
MASK_CHUNK_BYTES = 16 * 2**20


def set_fast_paths(**enabled: bool) -> dict[str, bool]:
    """Turns CPU fast paths on or off (``attention=``, ``linear=``, ``inference_chunks=``); returns the previous settings."""
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


# Checked once: probing torch.ops inside a forward would break torch.compile's graphs.
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_FLASH_CPU = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def _cpu_compute_dtype(*tensors: Tensor | None) -> torch.dtype | None:
    """The dtype a CPU fast path computes in: float32, or bfloat16 under CPU bf16 autocast; None: no fast path.

    Under ``torch.compile`` there is none either, so that inductor sees (and
    fuses) ordinary aten ops.
    """
    if torch.compiler.is_compiling() or not all(t.device.type == "cpu" for t in tensors if t is not None):
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    return torch.float32 if all(t.dtype == torch.float32 for t in tensors if t is not None) else None


def _plain_cpu(*tensors: Tensor | None) -> bool:
    """float32 CPU tensors, no autocast, eager mode: where the float32-only fast paths (oneDNN linears) apply."""
    return _cpu_compute_dtype(*tensors) == torch.float32


# -- linear layers ------------------------------------------------------------------------


def _use_onednn(*tensors: Tensor | None) -> bool:
    return _ENABLED["linear"] and _ONEDNN_LINEAR and _plain_cpu(*tensors)


def _mm(x: Tensor, w: Tensor, bias: Tensor | None = None, onednn: bool = True) -> Tensor:
    """x @ w^T (+ bias): Tensor[M, K] x Tensor[N, K] -> Tensor[M, N]; strided inputs are fine."""
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    return F.linear(x, w, bias)


def _linear_backward(
    x2: Tensor, weight: Tensor, g: Tensor, needs: tuple[bool, ...], onednn: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (input, weight, bias) of ``x2 @ weight^T + bias``; x2 Tensor[M, K], g Tensor[M, N]."""
    n, k = weight.shape
    dx = _mm(g, weight.t(), onednn=onednn) if needs[0] else None  # (M, K)
    dw = None
    if needs[1]:
        # dW = g^T x2, a reduction over the M rows; oneDNN is fastest with the
        # wider of the two matrices as its "weight" operand.
        dw = _mm(x2.t(), g.t(), onednn=onednn).t() if n > k else _mm(g.t(), x2.t(), onednn=onednn)  # (N, K)
    db = g.sum(0) if needs[2] else None
    return dx, dw, db


class _Linear(torch.autograd.Function):
    """``F.linear`` with every product through oneDNN; see :func:`linear`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        return _mm(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, weight = ctx.saved_tensors
        dx, dw, db = _linear_backward(x2, weight, grad.reshape(-1, weight.shape[0]), ctx.needs_input_grad, True)
        return None if dx is None else dx.view(ctx.x_shape), dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; float32 on CPU through oneDNN (forward and backward)."""
    if x.ndim >= 2 and _use_onednn(x, weight, bias):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose forward is :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


# -- window attention ---------------------------------------------------------------------


def gather_bias(table: Tensor, index: Tensor) -> Tensor:
    """Relative-position bias of every token pair: Tensor[rows, nH] at LongTensor[N, N] -> Tensor[nH, N, N].

    Gathered along the table's transpose, so the result is contiguous and its
    gradient is an ``index_add`` (forward and backward of an 8x7x7 window's
    bias with 12 heads on the project's CPU: 1.3 ms, against 16.7 ms for
    ``table[index]``, whose gradient is an ``index_put``; ``model_speed.py --parts micro``).
    """
    n = index.shape[0]
    return table.t().index_select(1, index.reshape(-1)).view(-1, n, n)  # (nH, N, N)


def _chunks(bw: int, nw: int, per_chunk: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, first window)`` over the B*nW windows, never crossing a sample boundary."""
    for sample in range(0, bw, nw):
        for w0 in range(0, nw, per_chunk):
            yield sample + w0, sample + min(w0 + per_chunk, nw), w0


def _flash_forward(qkv: Tensor, bias: Tensor, mask: Tensor | None, heads: int, scale: float, per_chunk: int) -> Tensor:
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


def _chunked_forward(
    qkv: Tensor, bias: Tensor, mask: Tensor | None, heads: int, scale: float, per_chunk: int
) -> Tensor:
    """:func:`_flash_forward` as scores, softmax and product a few windows at a time.

    In bfloat16 this is faster on CPU than the flash kernel (whose inner
    products do not use the bf16 dot-product instructions that ``bmm`` does):
    46.4 vs 69.4 ms for 128 stage-1 windows on the project's AVX-512-bf16 CPU
    (``model_speed.py --parts micro``). In float32 the flash kernel is used.
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
    """Gradients of :func:`_flash_forward` for qkv Tensor[B*nW, N, 3C] and bias Tensor[nH, N, N].

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
        onednn = _use_onednn(x, weight, qkv_bias)
        qkv = x if weight is None else _mm(x.reshape(-1, x.shape[-1]), weight, qkv_bias, onednn).view(*x.shape[:2], -1)
        bias = gather_bias(table, index)  # (nH, N, N); gathered again in backward rather than kept
        window_bytes = heads * qkv.shape[1] ** 2 * 4
        per_chunk = max(1, CHUNK_BYTES // window_bytes)
        if qkv.dtype == torch.float32:
            out = _flash_forward(qkv, bias, mask, heads, scale, max(1, MASK_CHUNK_BYTES // window_bytes))
        else:
            out = _chunked_forward(qkv, bias, mask, heads, scale, per_chunk)
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
            qkv = _mm(x2, weight, qkv_bias, ctx.onednn).view(*x.shape[:2], -1)
        bias = gather_bias(table, index)
        dqkv, dbias = _attention_backward(grad, qkv, bias, mask, ctx.heads, ctx.scale, ctx.per_chunk, needs[3])
        del qkv
        dtable = None
        if dbias is not None:
            dtable = dbias.new_zeros(table.t().shape).index_add_(1, index.reshape(-1), dbias.view(dbias.shape[0], -1))
            dtable = dtable.t().to(table.dtype)
        if weight is None:
            return dqkv, None, None, dtable, None, None, None, None, None
        dx, dw, db = _linear_backward(x2, weight, dqkv.view(x2.shape[0], -1), needs[:3], ctx.onednn)
        return None if dx is None else dx.view(x.shape), dw, db, dtable, None, None, None, None, None


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
    dropout_p: float = 0.0,
    recompute_qkv: bool = False,
) -> Tensor:
    """Multi-head attention within windows, from the tokens or from their qkv projection.

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
        dropout_p: dropout on the attention weights (pass 0 outside training).
        recompute_qkv: on the CPU fast path, keep the tokens (C channels) for
            backward and recompute the projection there, rather than keeping
            the projection (3C channels).

    Returns:
        Tensor[B * nW, N, C], heads concatenated along channels.
    """
    c = (x.shape[-1] if qkv_weight is None else qkv_weight.shape[0]) // 3
    scale = 1 / math.sqrt(c // num_heads) if scale is None else scale
    dtype = _cpu_compute_dtype(x, bias_table, qkv_weight, qkv_bias)
    if _ENABLED["attention"] and _FLASH_CPU and dropout_p == 0.0 and dtype is not None:
        # Under autocast, everything goes to bfloat16 first, as autocast itself
        # does for linear layers and scaled_dot_product_attention (the casts
        # are autograd ops, so gradients come back in each input's dtype).
        args = [None if t is None else t.to(dtype) for t in (x, qkv_weight, qkv_bias, bias_table, mask)]
        with torch.autocast("cpu", enabled=False):
            return _WindowAttention.apply(*args[:4], bias_index, args[4], num_heads, scale, recompute_qkv)
    qkv = x if qkv_weight is None else linear(x, qkv_weight, qkv_bias)  # (B*nW, N, 3C)
    bw, n, _ = qkv.shape
    q, k, v = qkv.view(bw, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B*nW, nH, N, Dh)
    bias = gather_bias(bias_table, bias_index)  # (nH, N, N)
    if mask is None:
        attn_mask = bias.unsqueeze(0)  # (1, nH, N, N)
    else:
        # Fold the windows of one sample into the head axis so a single
        # (1, nW*nH, N, N) mask broadcasts over the batch: q, k, v are
        # in (B, nW, nH) order, so this costs at most one copy.
        nw = mask.shape[0]
        attn_mask = (mask.unsqueeze(1) + bias.unsqueeze(0)).reshape(1, nw * num_heads, n, n)
        q, k, v = (t.reshape(-1, nw * num_heads, n, c // num_heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout_p, scale=scale
    )  # (B*nW, nH, N, Dh) or (B, nW*nH, N, Dh)
    return out.reshape(bw, num_heads, n, c // num_heads).transpose(1, 2).reshape(bw, n, c)  # (B*nW, N, C)


# -- the MLP branch, recomputed in backward -----------------------------------------------


# Rows of the MLP branch processed at a time on CPU: the (rows, hidden) layer
# of a chunk is this many bytes. Chunks well under glibc's 32 MiB mmap limit
# are served again and again from the heap, where full-size hidden layers
# (hundreds of MiB for a 32x224 clip) are mapped fresh, page-faulted and
# unmapped in every block.
MLP_CHUNK_BYTES = 8 * 2**20
MLP_MIN_ROWS = 256  # never fewer rows per chunk (GEMM efficiency)


def _row_chunks(rows: int, hidden: int, itemsize: int, device: torch.device) -> list[slice]:
    """Slices of the rows, one per chunk: :data:`MLP_CHUNK_BYTES` of hidden layer each on CPU, all at once elsewhere."""
    if device.type != "cpu":
        return [slice(0, rows)]
    step = max(MLP_MIN_ROWS, MLP_CHUNK_BYTES // (hidden * itemsize))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _fc1_gelu(y: Tensor, w1: Tensor, b1: Tensor | None, onednn: bool) -> Tensor:
    """gelu(y @ w1^T + b1), exact GELU; through oneDNN as one fused op (bitwise the same values)."""
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(y, w1, b1, "gelu", [], "none")
    return F.gelu(F.linear(y, w1, b1))


def _accumulate(total: Tensor | None, part: Tensor | None) -> Tensor | None:
    """Sum of per-chunk parameter gradients, in float32 (parts may be bfloat16 under autocast)."""
    if part is None:
        return total
    return part.float() if total is None else total.add_(part)


class _RecomputedMlp(torch.autograd.Function):
    """[LayerNorm ->] fc1 -> GELU -> fc2 that keeps only its input for backward; see :func:`recomputed_mlp`."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, w1, b1, w2, b2):  # noqa: ANN001, ANN205 (autograd signature)
        x2 = x.reshape(-1, x.shape[-1])  # (M, C)
        onednn = _use_onednn(x2, w1, w2)
        chunks = _row_chunks(x2.shape[0], w1.shape[0], w1.element_size(), x2.device)
        out = None if len(chunks) == 1 else x2.new_empty(x2.shape[0], w2.shape[0], dtype=w1.dtype)  # (M, C_out)
        for rows in chunks:
            y = x2[rows]
            if norm_weight is not None:
                y = F.layer_norm(y, (y.shape[-1],), norm_weight, norm_bias, eps)
            o = _mm(_fc1_gelu(y.to(w1.dtype), w1, b1, onednn), w2, b2, onednn)  # (rows, C_out), in w1's dtype
            if out is None:
                out = o
            else:
                out[rows] = o
        ctx.save_for_backward(x2, norm_weight, norm_bias, w1, b1, w2)
        ctx.eps, ctx.onednn, ctx.x_shape, ctx.chunks = eps, onednn, x.shape, chunks
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, norm_weight, norm_bias, w1, b1, w2 = ctx.saved_tensors
        needs, onednn, c = ctx.needs_input_grad, ctx.onednn, x2.shape[-1]
        g2 = grad.reshape(-1, w2.shape[0])  # (M, C_out)
        dx = x2.new_empty(x2.shape) if needs[0] else None
        dnw = dnb = dw1 = db1 = dw2 = db2 = None
        for rows in ctx.chunks:
            x_rows, g = x2[rows], g2[rows]
            # Recompute the forward's activations (the same kernels, so the same values).
            y, mean, rstd = x_rows, None, None
            if norm_weight is not None:
                y, mean, rstd = torch.native_layer_norm(x_rows, (c,), norm_weight, norm_bias, ctx.eps)
            y = y.to(w1.dtype)
            h = _mm(y, w1, b1, onednn)  # (rows, hidden)
            da, dw2_part, db2_part = _linear_backward(F.gelu(h), w2, g, (True, needs[6], needs[7]), onednn)
            dw2, db2 = _accumulate(dw2, dw2_part), _accumulate(db2, db2_part)
            dh = torch.ops.aten.gelu_backward(da, h)
            del da, h
            dy, dw1_part, db1_part = _linear_backward(y, w1, dh, (True, needs[4], needs[5]), onednn)
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
                cast(db2, w2))  # fmt: skip


def recomputed_mlp(
    x: Tensor,
    w1: Tensor,
    b1: Tensor | None,
    w2: Tensor,
    b2: Tensor | None,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``fc2(gelu(fc1(layer_norm(x))))`` that stores only ``x`` for backward.

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

    Returns:
        Tensor[..., C_out]; under autocast, the layers run in its dtype (the
        norm in ``x``'s), as they would on their own.
    """
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        w1, b1, w2, b2 = (None if t is None else t.to(dtype) for t in (w1, b1, w2, b2))
    with torch.autocast(device, enabled=False):
        return _RecomputedMlp.apply(x, norm_weight, norm_bias, eps, w1, b1, w2, b2)


# -- window partition as one gather --------------------------------------------------------


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

    With the window orders of :func:`.windows.window_order` this is the cyclic
    shift and the window partition (or their reverse) in one gather of whole
    C-channel rows: 1.4 ms against 3.7 ms for a roll plus the partition's
    permute copy on a 2x8x56x56x96 map (project CPU, ``model_speed.py --parts micro``). ``inverse`` (``index``'s inverse permutation, when ``index`` is one)
    makes the backward a gather as well; otherwise it scatters.
    """
    return _Reorder.apply(x, index, inverse)


# -- inference a few windows at a time ------------------------------------------------------

# Tokens of the windows one chunk of :func:`windowed_residual` gathers, in bytes.
INFERENCE_CHUNK_BYTES = 4 * 2**20


def use_inference_chunks(x: Tensor) -> bool:
    """Whether :func:`windowed_residual` serves this input: grad disabled, CPU, switch on."""
    return _ENABLED["inference_chunks"] and not torch.is_grad_enabled() and x.device.type == "cpu"


def windowed_residual(x: Tensor, order: Tensor, window_tokens: int, branch) -> Tensor:  # noqa: ANN001
    """``x + branch(windows of x)``, each output back at its token, computed a few windows at a time.

    For inference: the windowed branch (norm, shift + partition, attention,
    projection, reverse) over the whole map makes six or so full-size
    temporaries; above glibc's 32 MiB mmap limit each is mapped, page-faulted
    and unmapped again in every block, which made a 448-pixel clip cost 5-7x
    a 224-pixel one instead of 4x. Here only the output is full-size.

    Args:
        x: Tensor[B, L, C], the padded map's tokens in storage order.
        order: LongTensor[L], the first of :func:`.windows.window_order`.
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
