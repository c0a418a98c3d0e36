"""The Swin block with the CPU fast paths: gather partition, recomputed MLP, chunked inference."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..swin import SwinBlock
from ..windows import Size, pad_to_window, padded_size, unpad
from .checks import usable
from .inference import use_inference_chunks, windowed_residual
from .mlp import recomputed_mlp
from .partition import reorder_tokens, window_order
from .switches import RECOMPUTE_FROM_BYTES, recompute_here

ORDER_CACHE_SIZE = 8  # (size, window, shift, device) entries per block: many input sizes must not grow memory


class FastSwinBlock(SwinBlock):
    """:class:`SwinBlock` (same parameters, same outputs) with the CPU fast paths of this package.

    It overrides only the pieces of :class:`SwinBlock` it computes faster
    (``shifted_window_attention``, ``attention_residual``, ``mlp_residual``,
    ``mlp_branch``) and takes the norm placement (``norms_around``) and the
    order of the residual branches from it:

    * the cyclic shift and window partition (and back) as one gather each
      (:func:`.partition.reorder_tokens`), the token orders kept per (padded
      size, window, shift, device) in ``self.order_cache``;
    * the MLP branch, norm included, through :func:`.mlp.recomputed_mlp`
      while training (recomputing the hidden layer in backward where
      ``recompute_mlp`` is set and the block's input holds at least
      ``recompute_from`` bytes, keeping it otherwise), and always for CPU
      inference (where its row chunks are the fast path), unless MLP dropout
      is active or the GELU is approximate;
    * CPU inference with grad disabled: the attention residual a few windows
      at a time (:func:`.inference.windowed_residual`) on maps that need no
      padding, and both residuals added in place.

    Attributes:
        recompute_mlp, recompute_from: set by :func:`~.seam.accelerate_cpu`.
        order_cache: token orders of :func:`.partition.window_order`.
    """

    recompute_mlp: bool = True
    recompute_from: int = RECOMPUTE_FROM_BYTES
    order_cache: dict[tuple, tuple[Tensor, Tensor]]

    # Only the pieces it computes faster: SwinBlock (swin.py) says what a block computes.

    def _inference(self, x: Tensor) -> bool:
        """CPU inference in chunks: grad disabled, switch on, and no stochastic depth to apply."""
        return use_inference_chunks(x) and (not self.training or self.drop_path.p == 0.0)

    def attention_residual(self, x: Tensor, window: Size, shift: Size, mask: Tensor | None) -> Tensor:
        size = tuple(x.shape[1:-1])
        if self._inference(x) and padded_size(size, window) == size:
            return self._attention_residual_in_chunks(x, window, shift, mask)
        return super().attention_residual(x, window, shift, mask)

    def mlp_residual(self, x: Tensor) -> Tensor:
        if self._inference(x):  # the branch's output is a fresh tensor: the residual goes in place
            return self.mlp_branch(x).add_(x)
        return super().mlp_residual(x)

    def _order(self, padded: Size, window: Size, shift: Size, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (padded, window, shift, device)
        order = self.order_cache.get(key)
        if order is None:
            if len(self.order_cache) >= ORDER_CACHE_SIZE:
                self.order_cache.pop(next(iter(self.order_cache)))
            order = self.order_cache[key] = window_order(padded, window, shift, device)
        return order

    def shifted_window_attention(self, x: Tensor, window: Size, shift: Size, mask: Tensor | None) -> Tensor:
        b, *size, c = x.shape
        x = pad_to_window(x, window)  # (B, *Sp, C)
        padded = tuple(x.shape[1:-1])
        order, position = self._order(padded, window, shift, x.device)
        windows = reorder_tokens(x.reshape(b, -1, c), order, position).view(-1, math.prod(window), c)  # (B*nW, N, C)
        windows = self.attn(windows, window, mask)  # (B*nW, N, C)
        x = reorder_tokens(windows.view(b, -1, c), position, order).view(b, *padded, c)  # (B, *Sp, C)
        return unpad(x, tuple(size))  # (B, *S, C)

    def _attention_residual_in_chunks(self, x: Tensor, window: Size, shift: Size, mask: Tensor | None) -> Tensor:
        """``x`` plus its attention branch, a few windows at a time (a map without padding, grad disabled)."""
        b, *size, c = x.shape
        order = self._order(tuple(size), window, shift, x.device)[0]

        def branch(tokens: Tensor, windows: slice) -> Tensor:
            return self.branch(self.attn, self.norm1, tokens, window, None if mask is None else mask[windows])

        out = windowed_residual(x.reshape(b, -1, c), order, math.prod(window), branch)  # (B, L, C)
        return out.view(b, *size, c)

    def mlp_branch(self, x: Tensor) -> Tensor:
        """The MLP branch through the recomputing kernel where it applies, the kernel taking a norm before it."""
        mlp = self.mlp
        grad = torch.is_grad_enabled()
        kernel = (
            usable("mlp")
            and (grad or use_inference_chunks(x))
            and (mlp.drop.p == 0.0 or not self.training)
            and mlp.act.approximate == "none"
        )
        if not kernel:
            return super().mlp_branch(x)
        keep = grad and not recompute_here(self.recompute_mlp, x, self.recompute_from)
        before, after = self.norms_around(self.norm2)
        # A norm before the MLP goes into the kernel (LayerNorm weight, bias, eps); one after it runs as it is.
        norm = (before.weight, before.bias, before.eps) if before is self.norm2 else (None, None, 1e-5)
        return after(recomputed_mlp(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, *norm, keep))
