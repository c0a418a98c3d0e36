"""Linear layers through oneDNN on CPU (float32), forward and backward.

MKL's sgemm, which ``torch.mm`` calls, takes a slower code path on non-Intel
CPUs; oneDNN's matmul (``mkldnn._linear_pointwise``, the kernel
``torch.compile`` uses for linear layers on CPU) does not. Which of the two
is faster is measured on each machine (:mod:`.machine`); the oneDNN path is
taken only where it won. Figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .switches import enabled, linear_backend, machine_choice, plain_cpu


def use_onednn(*tensors: Tensor | None) -> bool:
    """Whether products of these tensors go through oneDNN: switch on, chosen for this machine
    (:mod:`.machine`), float32 CPU tensors, eager mode."""
    return enabled("linear") and linear_backend() == "onednn" and plain_cpu(*tensors)


def mm(x: Tensor, w: Tensor, bias: Tensor | None = None, onednn: bool = True) -> Tensor:
    """x @ w^T (+ bias): Tensor[M, K] x Tensor[N, K] -> Tensor[M, N]; strided inputs are fine."""
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    return F.linear(x, w, bias)


def linear_backward(
    x2: Tensor, weight: Tensor, g: Tensor, needs: tuple[bool, ...], onednn: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (input, weight, bias) of ``x2 @ weight^T + bias``; x2 Tensor[M, K], g Tensor[M, N]."""
    n, k = weight.shape
    dx = mm(g, weight.t(), onednn=onednn) if needs[0] else None  # (M, K)
    dw = None
    if needs[1]:
        if onednn and machine_choice("weight_grad") == "onednn":
            # dW = g^T x2, a reduction over the M rows; oneDNN copies both transposed
            # operands first and is fastest with the wider one as its "weight" operand.
            dw = mm(x2.t(), g.t(), onednn=True).t() if n > k else mm(g.t(), x2.t(), onednn=True)  # (N, K)
        else:
            # ATen (MKL/OpenBLAS) takes the transposed operands without copying them; on AMD
            # EPYC Zen 3 1.1x-1.8x faster than oneDNN's copies + product (docs/BENCHMARKS.md).
            dw = torch.mm(g.t(), x2)  # (N, K)
    db = g.sum(0) if needs[2] else None
    return dx, dw, db


class _Linear(torch.autograd.Function):
    """``F.linear`` with every product through oneDNN; see :func:`linear`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        return mm(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, weight = ctx.saved_tensors
        dx, dw, db = linear_backward(x2, weight, grad.reshape(-1, weight.shape[0]), ctx.needs_input_grad, True)
        return None if dx is None else dx.view(ctx.x_shape), dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; float32 on CPU through oneDNN (forward and backward)."""
    if x.ndim >= 2 and use_onednn(x, weight, bias):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose forward is :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
