"""Window multi-head self-attention with a relative-position bias, for any dims."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .windows import Size, relative_position_index


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    Parameter names follow the official checkpoints (``qkv``, ``proj``,
    ``relative_position_bias_table``). The bias table has one row per relative
    offset of the configured window, ``prod(2 * w - 1)`` rows and ``num_heads``
    columns: (2P-1)(2M-1)^2 for a 3D (P, M, M) window.

    Attention runs through ``F.scaled_dot_product_attention`` with bias (and, in
    shifted blocks, the shift mask) passed as one additive ``attn_mask``.

    Args:
        dim: channels C.
        window_size: configured window, e.g. (8, 7, 7) or (7, 7).
        num_heads: heads nH; ``dim`` must be divisible by it.
        qkv_bias: learn a bias in the qkv projection.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection (training only).
    """

    def __init__(
        self,
        dim: int,
        window_size: Size,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        rows = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Index for the full window; windows clamped to small inputs get their
        # own index, built on first use and kept per (window, device).
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size), persistent=False
        )
        self._index_cache: dict[tuple[Size, torch.device], Tensor] = {}

    def _index(self, window: Size) -> Tensor:
        if window == self.window_size:
            return self.relative_position_index
        device = self.relative_position_index.device
        key = (window, device)
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(window, self.window_size).to(device)
        return self._index_cache[key]

    def position_bias(self, window: Size) -> Tensor:
        """Relative-position bias for a window in use: Tensor[nH, N, N]."""
        index = self._index(window)
        n = index.shape[0]
        bias = self.relative_position_bias_table[index.reshape(-1)]  # (N*N, nH)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (nH, N, N)

    def forward(self, x: Tensor, window: Size, mask: Tensor | None = None) -> Tensor:
        """Attends within windows.

        Args:
            x: Tensor[B * nW, N, C], windows in raster order per sample.
            window: window in use (``prod(window) == N``).
            mask: Tensor[nW, N, N] additive shift mask, or None.

        Returns:
            Tensor[B * nW, N, C].
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, self.head_dim)  # (B*nW, N, 3, nH, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B*nW, nH, N, Dh)
        bias = self.position_bias(window)  # (nH, N, N)
        if mask is None:
            attn_mask = bias.unsqueeze(0)  # (1, nH, N, N)
        else:
            # Fold the windows of one sample into the head axis so a single
            # (1, nW*nH, N, N) mask broadcasts over the batch: q, k, v are
            # contiguous in (B, nW, nH) order, so this is a view.
            nw = mask.shape[0]
            attn_mask = (mask.unsqueeze(1) + bias.unsqueeze(0)).reshape(1, nw * self.num_heads, n, n)
            q, k, v = (t.reshape(-1, nw * self.num_heads, n, self.head_dim) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=self.attn_drop if self.training else 0.0
        )  # (B*nW, nH, N, Dh) or (B, nW*nH, N, Dh)
        out = rearrange(out.reshape(bw, self.num_heads, n, self.head_dim), "b h n d -> b n (h d)")  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))
