"""The private ops the CPU fast paths call, checked once per process before any path uses them.

The fast paths call ATen and oneDNN ops that are not part of PyTorch's public
API (``aten._scaled_dot_product_flash_attention_for_cpu``, ``aten._softmax.out``,
``mkldnn._linear_pointwise``, ...): any release may rename them, change their
arguments or their results. So each op is called once on a tiny input and
compared with the public computation it stands for; a path any of whose ops
is missing, raises or differs turns itself off, with one warning naming the
op and why, and the reference computation runs in its place. Never an error,
never a different result.

The verdicts are computed on first use (:func:`~.seam.accelerate_cpu` asks
first, outside any forward) and kept for the life of the process: a few
milliseconds, once. Under ``torch.compile`` nothing is probed; an unchecked
path is then simply not taken.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

# Path -> the ops it calls, each with a check that raises AssertionError (or anything else) where the
# op is missing or computes something other than the public reference. A path listed in _NEEDS is
# only checked (and only usable) where the one it builds on is.
#   attention: the fused CPU window attention (kernels/attention.py), forward and chunked backward
#   linear:    float32 linears through oneDNN (kernels/linear.py), the separate fc1 + GELU
#   fc1_gelu_fused: fc1 + GELU as one oneDNN op (kernels/mlp.py)
#   mlp:       the recomputing MLP branch's backward (kernels/mlp.py, kernels/block.py)
_NEEDS = {"fc1_gelu_fused": "linear"}

_VERDICTS: dict[str, str | None] = {}  # path -> None (usable) or why it is off
_TORCH: str | None = None  # the torch version the verdicts are for


def _close(got: Tensor, want: Tensor, what: str) -> None:
    if not isinstance(got, Tensor) or got.shape != want.shape:
        shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
        raise AssertionError(f"{what} has shape {shape}, the reference {tuple(want.shape)}")
    if not torch.allclose(got.double(), want.double(), rtol=1e-4, atol=1e-5):
        error = (got.double() - want.double()).abs().max().item()
        raise AssertionError(f"{what} differs from the reference by up to {error:.3g}")


def _inputs(*shapes: tuple[int, ...]) -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen) for s in shapes]


def _flash() -> None:
    q, k, v, mask = _inputs((2, 2, 5, 4), (2, 2, 5, 4), (2, 2, 5, 4), (1, 2, 5, 5))
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=0.3)[0]
    want = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.3 + mask.double(), -1) @ v.double()
    _close(out, want, "its output")


def _softmax_out() -> None:
    (s,) = _inputs((3, 5, 5))
    out = torch.empty_like(s)
    torch.ops.aten._softmax.out(s, -1, False, out=out)
    _close(out, torch.softmax(s.double(), -1), "its output")


def _softmax_backward_out() -> None:
    s, g = _inputs((3, 5, 5), (3, 5, 5))
    p = torch.softmax(s, -1)
    out = torch.empty_like(s)
    torch.ops.aten._softmax_backward_data.out(g, p, -1, p.dtype, grad_input=out)
    # The gradients here are worked out by hand, in float64: a first autograd call costs ~0.5 s in a process.
    p64, g64 = p.double(), g.double()
    _close(out, p64 * (g64 - (g64 * p64).sum(-1, keepdim=True)), "its gradient")


def _linear_pointwise(attr: str) -> Callable[[], None]:
    def check() -> None:
        x, w, b, g = _inputs((6, 8), (4, 8), (4,), (6, 4))
        want = x.double() @ w.double().t() + b.double()
        if attr == "gelu":
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            want = F.gelu(want)
        else:
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            # Transposed operands and no bias, as the weight gradient passes them: x^T g.
            _close(torch.ops.mkldnn._linear_pointwise(x.t(), g.t(), None, "none", [], ""),
                   x.double().t() @ g.double(), "its output for transposed operands")  # fmt: skip
        _close(out, want, "its output")

    return check


def _gelu_inplace() -> None:
    (x,) = _inputs((4, 6))
    _close(torch.ops.aten.gelu_(x.clone()), F.gelu(x.double()), "its output")


def _gelu_backward() -> None:
    x, g = _inputs((4, 6), (4, 6))
    x64 = x.double()
    slope = 0.5 * (1 + torch.erf(x64 / math.sqrt(2))) + x64 * torch.exp(-0.5 * x64**2) / math.sqrt(2 * math.pi)
    _close(torch.ops.aten.gelu_backward(g, x), g.double() * slope, "its gradient")


def _layer_norm_backward() -> None:
    x, g, w, b = _inputs((4, 6), (4, 6), (6,), (6,))
    _, mean, rstd = torch.native_layer_norm(x, (6,), w, b, 1e-5)
    dx, dw, db = torch.ops.aten.native_layer_norm_backward(g, x, (6,), mean, rstd, w, b, [True, True, True])
    x64, g64 = x.double(), g.double()
    rstd64 = 1 / torch.sqrt(x64.var(-1, unbiased=False, keepdim=True) + 1e-5)
    xhat = (x64 - x64.mean(-1, keepdim=True)) * rstd64
    dxhat = g64 * w.double()
    want_dx = rstd64 * (dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    for got, ref, name in zip((dx, dw, db), (want_dx, (g64 * xhat).sum(0), g64.sum(0)), ("input", "weight", "bias")):
        _close(got, ref, f"its {name} gradient")


_CHECKS: dict[str, list[tuple[str, Callable[[], None]]]] = {
    "attention": [
        ("aten._scaled_dot_product_flash_attention_for_cpu", _flash),
        ("aten._softmax.out", _softmax_out),
        ("aten._softmax_backward_data.out", _softmax_backward_out),
    ],
    "linear": [("mkldnn._linear_pointwise", _linear_pointwise("none")), ("aten.gelu_", _gelu_inplace)],
    "fc1_gelu_fused": [("mkldnn._linear_pointwise (gelu)", _linear_pointwise("gelu"))],
    "mlp": [("aten.gelu_backward", _gelu_backward), ("aten.native_layer_norm_backward", _layer_norm_backward)],
}
PATHS = tuple(_CHECKS)


def _why_off(path: str) -> str | None:
    """None where every op of ``path`` is there and gives the reference result; else one line saying why not."""
    if path == "linear" and not torch.backends.mkldnn.is_available():
        return "this torch is built without oneDNN"
    for op, check in _CHECKS[path]:
        try:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                check()
        except AssertionError as e:
            return f"{op}: {e}"
        except Exception as e:  # missing (AttributeError), new arguments (RuntimeError, TypeError), ...
            return f"{op} is unusable in torch {torch.__version__} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return None


def check_ops(refresh: bool = False) -> dict[str, str | None]:
    """Checks the ops of every fast path (once per process and torch version); path -> None or why it is off.

    Logs one warning per path turned off.
    """
    global _TORCH
    if refresh or _TORCH != torch.__version__:
        _VERDICTS.clear()
        _TORCH = torch.__version__
    for path in PATHS:
        if path in _VERDICTS:
            continue
        need = _NEEDS.get(path)
        if need is not None and _VERDICTS[need] is not None:  # PATHS lists it first
            _VERDICTS[path] = f"needs the {need} path, which is off"  # no line of its own: its parent's says it
            continue
        why = _VERDICTS[path] = _why_off(path)
        if why is not None:
            logger.warning("CPU fast path %r off, the reference computation runs instead: %s", path, why)
    return dict(_VERDICTS)


def usable(path: str) -> bool:
    """Whether the fast path ``path`` may run: its ops checked and found good (checked now if not yet)."""
    if path not in _VERDICTS:
        if torch.compiler.is_compiling():  # probing inside a traced forward would break the graph
            return False
        check_ops()
    return _VERDICTS[path] is None
