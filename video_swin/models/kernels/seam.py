"""The one place the CPU fast paths meet a model: :func:`accelerate_cpu` and :func:`reference`."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from ..attention import WindowAttention
from ..swin import Mlp, PatchMerging, SwinBlock
from .attention import FastWindowAttention
from .block import FastSwinBlock
from .checks import check_ops
from .linear import FastLinear
from .machine import cpu_profile
from .switches import RECOMPUTE_FROM_BYTES, set_machine_choices

M = TypeVar("M", bound=nn.Module)

# Each fast class is a subclass of its reference class that adds no parameters or
# buffers (so the state-dict keys stay the same), only these plain attributes.
_REFERENCE: dict[type[nn.Module], type[nn.Module]] = {
    FastSwinBlock: SwinBlock,
    FastWindowAttention: WindowAttention,
    FastLinear: nn.Linear,
}
_FAST_ATTRIBUTES = ("recompute_mlp", "recompute_qkv", "recompute_from", "order_cache")


def _linears(module: nn.Module) -> list[nn.Module]:
    """The linear layers of the Swin core the oneDNN path serves (not the head, not the V2 CPB MLP)."""
    if isinstance(module, WindowAttention):
        return [module.qkv, module.proj]
    if isinstance(module, Mlp):
        return [module.fc1, module.fc2]
    if isinstance(module, PatchMerging):
        return [module.reduction]
    return []


def accelerate_cpu(
    model: M,
    *,
    recompute_mlp: bool = True,
    recompute_qkv: bool = True,
    recompute_from: int = RECOMPUTE_FROM_BYTES,
    enabled: bool = True,
) -> M:
    """Puts the CPU fast paths into a built model, in place; returns the model.

    Swaps blocks, attentions and the core's linear layers for subclasses
    (:class:`FastSwinBlock`, :class:`FastWindowAttention`, :class:`FastLinear`)
    that have the same parameters, buffers and state-dict keys and compute
    the same outputs and gradients, within float rounding. Each takes its
    fast path only where it applies (CPU, float32 or CPU bf16 autocast, no
    ``torch.compile``, no attention dropout, ...) and the reference
    computation everywhere else, so applying this is always safe. Apply it
    before wrapping the model (``torch.compile``, FSDP); modules whose class
    is neither the reference one nor its fast subclass are left alone.
    Calling it again changes the options.

    Args:
        model: a :class:`~video_swin.models.SwinTransformer` or any module containing its parts.
        recompute_mlp: keep only each MLP branch's input for backward and
            recompute the rest there: 9 of its 10 channels per token, for one
            more fc1 forward per block. False: keep fc1's output too.
        recompute_qkv: keep the attention's input rather than its qkv
            projection for backward: 3 channels per token fewer, for one more
            qkv forward per block.
        recompute_from: both recomputes happen only in blocks whose input
            (B x tokens x C) holds at least this many bytes; smaller maps
            keep their activations. Default
            :data:`~.switches.RECOMPUTE_FROM_BYTES` (8 MiB); 0: every block.
        enabled: False: the same as :func:`reference`.

    Returns:
        ``model``.
    """
    if not enabled:
        return reference(model)
    check_ops()  # the private ops each fast path calls, once per process; a path that fails is off (checks.py)
    set_machine_choices(**cpu_profile().choices())  # measured once per machine (machine.py)
    for module in model.modules():
        for linear in _linears(module):
            if type(linear) is nn.Linear:
                linear.__class__ = FastLinear
        if type(module) is SwinBlock:
            module.__class__ = FastSwinBlock
            module.order_cache = {}
        elif type(module) is WindowAttention:
            module.__class__ = FastWindowAttention
        if type(module) is FastSwinBlock:
            module.recompute_mlp, module.recompute_from = recompute_mlp, recompute_from
        elif type(module) is FastWindowAttention:
            module.recompute_qkv, module.recompute_from = recompute_qkv, recompute_from
    return model


def reference(model: M) -> M:
    """Undoes :func:`accelerate_cpu`, in place: every fast module back to its reference class; returns ``model``."""
    for module in model.modules():
        cls = _REFERENCE.get(type(module))
        if cls is not None:
            module.__class__ = cls
            for name in _FAST_ATTRIBUTES:
                module.__dict__.pop(name, None)
    return model


def is_accelerated(model: nn.Module) -> bool:
    """Whether any module of ``model`` is one of the fast subclasses."""
    return any(type(m) in _REFERENCE for m in model.modules())
