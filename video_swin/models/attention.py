"""Window multi-head self-attention with a relative-position bias, for any dims.

One module serves Swin V1 and the Swin V2 ideas, chosen per model:

* ``attention="dot"``: scaled dot-product attention (V1); ``"cosine"``:
  scaled cosine attention (V2), cosine similarity of L2-normalised q and k
  times a learnable per-head ``logit_scale``, clamped at log(100).
* ``position_bias="table"``: a learned bias per relative offset (V1);
  ``"cpb"``: continuous position bias (V2), an MLP over log-spaced relative
  coordinates, ``16 * sigmoid(mlp(coords))``.

Written in standard PyTorch: ``nn.Linear`` projections and
``F.scaled_dot_product_attention`` with the bias (plus, in shifted blocks,
the shift mask) as its additive ``attn_mask``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .windows import Size, log_spaced_coords, relative_position_index

ATTENTIONS = ("dot", "cosine")
POSITION_BIASES = ("table", "cpb")
# Swin V2 clamps the learned temperature at 1/0.01: logits never exceed 100x the cosine.
LOGIT_SCALE_MAX = math.log(1.0 / 0.01)
CPB_HIDDEN = 512


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """Returns ``value`` or raises ValueError naming the option and its choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def gather_bias(table: Tensor, index: Tensor) -> Tensor:
    """Relative-position bias of every token pair: Tensor[rows, nH] at LongTensor[N, N] -> Tensor[nH, N, N].

    The same values as ``table[index].permute(2, 0, 1)``, gathered along the
    table's transpose instead: the result is contiguous and the gradient is
    an ``index_add`` rather than an ``index_put`` (several times faster in
    backward; docs/BENCHMARKS.md, "Single kernels").
    """
    n = index.shape[0]
    return table.t().index_select(1, index.reshape(-1)).view(-1, n, n)  # (nH, N, N)


def is_exporting() -> bool:
    """Whether ``torch.export`` is tracing this call (``torch.compiler.is_exporting``; False on a torch without it, e.g. 2.4)."""
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check and check())


def attend(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor, dropout_p: float, scale: float | None) -> Tensor:
    """``F.scaled_dot_product_attention`` with an additive mask; written out while exporting with gradients.

    ``torch.export`` traces the attention of a model whose parameters require
    grad (the mask then requires grad) through another kernel than the one
    the ONNX exporter's decomposition assumes, and the head merge after it
    fails ("Cannot view a tensor with shape ...", pytorch/pytorch#136543).
    The same computation as matmuls and a softmax exports either way, as
    torchvision's Swin does; eager calls, ``torch.compile`` and exports
    without gradients keep the fused call.

    Args:
        q, k, v: Tensor[B, H, N, D].
        attn_mask: additive mask broadcasting to Tensor[B, H, N, N].

    Returns:
        Tensor[B, H, N, D].
    """
    if is_exporting() and torch.is_grad_enabled() and (q.requires_grad or attn_mask.requires_grad):
        logits = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1) + attn_mask
        weights = F.dropout(logits.softmax(-1), dropout_p) if dropout_p else logits.softmax(-1)  # (B, H, N, N)
        return weights @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a relative-position bias.

    Parameter names follow the official checkpoints. V1 (``"dot"``,
    ``"table"``): ``qkv`` (with bias), ``proj``, ``relative_position_bias_table``
    of ``prod(2 * w - 1)`` rows and ``num_heads`` columns, (2P-1)(2M-1)^2 for a
    3D (P, M, M) window. V2 (``"cosine"``, ``"cpb"``): ``qkv`` without bias
    plus ``q_bias`` and ``v_bias`` (the key has none), ``logit_scale``
    Tensor[nH, 1, 1], ``cpb_mlp`` = Linear(n, 512) -> ReLU -> Linear(512, nH, no bias)
    with n = 2 or 3 coordinate inputs.

    The continuous bias takes the relative offsets of the window in use,
    normalised per axis by ``window - 1`` (the window in use: the configured
    one, or the feature size where that is smaller, as the official code
    does) or, when given, by ``pretrained_window_size - 1``.

    Index and MLP inputs depend only on the window in use: those of the
    configured window are buffers; those of windows clamped to small inputs
    are built on first use and kept in ``index_cache`` and ``coords_cache``,
    per (window, device). The bias itself is gathered from the learnable
    table in every forward.

    Args:
        dim: channels C.
        window_size: configured window, e.g. (8, 7, 7) or (7, 7).
        num_heads: heads nH; ``dim`` must be divisible by it.
        qkv_bias: learn a bias in the qkv projection (V2: q and v biases).
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection (training only).
        attention: ``"dot"`` or ``"cosine"``.
        position_bias: ``"table"`` or ``"cpb"``.
        pretrained_window_size: for ``"cpb"``, the window the weights were
            trained with, whose edge keeps mapping to the same coordinate
            after the window changes; None: the window in use.
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
        attention: str = "dot",
        position_bias: str = "table",
        pretrained_window_size: Size | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.attention = check_choice("attention", attention, ATTENTIONS)
        self.position_bias_kind = check_choice("position_bias", position_bias, POSITION_BIASES)
        if pretrained_window_size is not None and len(pretrained_window_size) != len(self.window_size):
            raise ValueError(
                f"pretrained_window_size {tuple(pretrained_window_size)} and window_size {self.window_size} "
                f"differ in length"
            )
        self.pretrained_window_size = None if pretrained_window_size is None else tuple(pretrained_window_size)

        if attention == "cosine":
            # Official V2 layout: a bias-free qkv with separate q and v biases.
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
            self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
            self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        if position_bias == "table":
            rows = math.prod(2 * w - 1 for w in self.window_size)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        else:
            self.cpb_mlp = nn.Sequential(
                nn.Linear(len(self.window_size), CPB_HIDDEN),
                nn.ReLU(inplace=True),
                nn.Linear(CPB_HIDDEN, num_heads, bias=False),
            )
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size), persistent=False
        )
        if position_bias == "cpb":
            self.register_buffer("relative_coords_table", self._coords(self.window_size), persistent=False)
        self.index_cache: dict[tuple[Size, torch.device], Tensor] = {}
        self.coords_cache: dict[tuple[Size, torch.device], Tensor] = {}

    def _coords(self, window: Size) -> Tensor:
        return log_spaced_coords(window, self.pretrained_window_size)  # (rows, n)

    def bias_index(self, window: Size) -> Tensor:
        """Table row of every token pair of a window in use: LongTensor[N, N]."""
        if window == self.window_size:
            return self.relative_position_index
        device = self.relative_position_index.device
        key = (window, device)
        if key not in self.index_cache:
            # A bias table is indexed at its true offsets with the table's strides;
            # the continuous bias is evaluated on the window in use itself.
            table_window = self.window_size if self.position_bias_kind == "table" else window
            index = relative_position_index(window, table_window).to(device)
            if is_exporting():  # a traced tensor: part of the graph, never a module attribute
                return index
            self.index_cache[key] = index
        return self.index_cache[key]

    def _cpb_inputs(self, window: Size) -> Tensor:
        if window == self.window_size:
            return self.relative_coords_table
        device = self.relative_position_index.device
        key = (window, device)
        if key not in self.coords_cache:
            coords = self._coords(window).to(device)
            if is_exporting():  # as in bias_index
                return coords
            self.coords_cache[key] = coords
        return self.coords_cache[key]

    def bias_table(self, window: Size) -> Tensor:
        """Bias per relative offset: Tensor[rows, nH], rows indexed by :meth:`bias_index`.

        The learned table (V1), or ``16 * sigmoid(cpb_mlp(coords))`` over the
        offsets of ``window`` (V2).
        """
        if self.position_bias_kind == "table":
            return self.relative_position_bias_table
        coords = self._cpb_inputs(window)  # (rows, n)
        # The sigmoid is elementwise, so it is applied to the rows before the
        # gather (the official code applies it after, to N*N entries).
        return 16 * torch.sigmoid(self.cpb_mlp(coords.to(self.cpb_mlp[0].weight.dtype)))  # (rows, nH)

    def position_bias(self, window: Size) -> Tensor:
        """Relative-position bias for a window in use: Tensor[nH, N, N]."""
        return gather_bias(self.bias_table(window), self.bias_index(window))  # (nH, N, N)

    def qkv_bias(self) -> Tensor | None:
        """The packed projection's bias: Tensor[3C] (or None), ``qkv.bias``, or V2's q and v biases with no key bias."""
        if self.attention == "cosine" and self.q_bias is not None:
            return torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))  # (3C,)
        return self.qkv.bias

    def project_qkv(self, x: Tensor) -> Tensor:
        """The packed projection: Tensor[B*nW, N, C] -> Tensor[B*nW, N, 3C], q, k, v one after the other."""
        bias = self.qkv_bias()
        return self.qkv(x) if bias is self.qkv.bias else F.linear(x, self.qkv.weight, bias)

    def qk_as_projected(self) -> bool:
        """Whether :meth:`scaled_qk` leaves q and k as projected (dot attention, scale 1 / sqrt(Dh))."""
        return self.attention != "cosine"

    def scaled_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        """``(q, k, scale)`` whose ``q k^T * scale`` are the attention logits; q, k Tensor[..., nH, N, Dh].

        Dot attention: q and k as projected, scale None (1 / sqrt(Dh)). Cosine
        attention: cos(q, k) * temperature, the temperature going into q so
        that scale 1 gives exactly these logits.
        """
        if self.qk_as_projected():
            return q, k, None
        return F.normalize(q, dim=-1) * self.temperature(), F.normalize(k, dim=-1), 1.0

    def temperature(self) -> Tensor:
        """Cosine attention's per-head logit scale, ``min(exp(logit_scale), 100)``: Tensor[nH, 1, 1]."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def forward(self, x: Tensor, window: Size, mask: Tensor | None = None) -> Tensor:
        """Attends within windows.

        Args:
            x: Tensor[B * nW, N, C], windows in raster order per sample.
            window: window in use (``prod(window) == N``).
            mask: Tensor[nW, N, N] additive shift mask, or None.

        Returns:
            Tensor[B * nW, N, C].
        """
        qkv = self.project_qkv(x)  # (B*nW, N, 3C)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)  # (B*nW, nH, N, Dh)
        q, k, scale = self.scaled_qk(q, k)
        bias = self.position_bias(window)  # (nH, N, N)
        dropout_p = self.attn_drop if self.training else 0.0
        if mask is None:
            out = attend(q, k, v, bias.unsqueeze(0).to(q.dtype), dropout_p, scale)  # (B*nW, nH, N, Dh)
        else:
            # Bias and shift mask as one additive mask. The windows of a sample
            # are folded into the head axis, so that one (1, nW*nH, N, N) mask
            # broadcasts over the batch instead of being repeated B times.
            nw = mask.shape[0]
            attn_mask = rearrange(mask.unsqueeze(1) + bias, "w h n m -> 1 (w h) n m")  # (1, nW*nH, N, N)
            q, k, v = (rearrange(t, "(b w) h n d -> b (w h) n d", w=nw) for t in (q, k, v))  # (B, nW*nH, N, Dh)
            out = attend(q, k, v, attn_mask.to(q.dtype), dropout_p, scale)  # (B, nW*nH, N, Dh)
            out = rearrange(out, "b (w h) n d -> (b w) h n d", w=nw)  # (B*nW, nH, N, Dh)
        out = rearrange(out, "b h n d -> b n (h d)")  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        extra = f", pretrained_window_size={self.pretrained_window_size}" if self.pretrained_window_size else ""
        return (
            f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
            f"attention={self.attention!r}, position_bias={self.position_bias_kind!r}{extra}"
        )
