"""Memory per device of one training step: DDP and FSDP, with and without activation checkpointing.

Parameters, gradients and AdamW states are counted from the model built on the
meta device. Activations are *traced*, not estimated by a formula: the model
runs one forward and backward on fake tensors (``FakeTensorMode``: shapes,
dtypes and aliasing, no data, no memory) while a dispatch mode adds the bytes
of every storage an operation creates and takes them off when the storage is
freed. The trace runs the model's own code, so everything that code does is
counted as it is: padding to windows, the shift masks, V2's cosine attention
and main-branch norms, checkpointing's recomputation during backward,
autocast's bf16 copies; a formula would have to follow every change to the
model by hand. A trace of ``swinv2_3d_g`` at 32x224x224 takes about ten seconds.

The one place the trace does not run what a GPU runs is attention. There,
``F.scaled_dot_product_attention`` takes a fused kernel (memory-efficient
attention, which also gives the relative-position bias its gradient): it
keeps q, k, v, the bias, the output and a log-sum-exp for backward, never the
N x N weights, and writes the bias gradient at the batch-expanded size. Fake
CPU tensors would take the math path, which keeps the weights of every head.
With ``attention="fused"`` (the default), attention modules are swapped for a
subclass in which a ``TorchFunctionMode`` stands in for the fused kernel,
keeping exactly those tensors; ``attention="cpu"`` traces what PyTorch runs on
a CPU (the math path while the bias learns), which is what the tests measure
on the CPU allocator.

Peaks are not sums: gradients appear during backward while activations are
freed, so the trace records (working set, gradients so far) at every local
maximum and each strategy takes the maximum of its own combination.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..models import SwinBlock, create_model
from ..models.attention import WindowAttention
from ..models.kernels.switches import autocast_dtype
from ..models.windows import Size

GIB = 2**30
ATTENTIONS = ("fused", "cpu")
PRECISIONS = ("fp32", "bf16")
# A device never gives all its memory to tensors: the CUDA context, NCCL's buffers and the
# caching allocator's fragmentation take a share. "Fits" leaves them this much.
HEADROOM = 0.10


# -- the trace ------------------------------------------------------------------------------------


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage()._cdata


class _Allocations(TorchDispatchMode):
    """Live bytes of the storages that operations create, by kind, with the local maxima over time.

    A storage counts from the operation that creates it (an output that shares
    no storage with the inputs; views and in-place results do not allocate)
    until it is freed. Gradients count as such once accumulated into a
    parameter's ``.grad``; "casts" are copies of parameters (autocast's bf16
    weights), which FSDP's low-precision all-gather replaces.
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__()
        self.param_keys = {_storage_key(p) for p in params}
        self.sizes: dict[int, int] = {}
        self.cast_keys: set[int] = set()
        self.live = self.grads = self.casts = 0
        self.samples: list[tuple[int, int, int]] = []  # (working set, gradients, casts) at local maxima
        self._rising = False
        for p in params:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._grad_landed)

    def finish(self) -> None:
        """Records the state at the end of the trace."""
        self._rising = True
        self._sample()

    def _sample(self) -> None:
        if self._rising:
            self.samples.append((self.live - self.grads, self.grads, self.casts))
            self._rising = False

    def _grad_landed(self, p: Tensor) -> None:
        self._sample()
        self.grads += p.grad.untyped_storage().nbytes()

    def _free(self, key: int) -> None:
        self._sample()
        size = self.sizes.pop(key)
        self.live -= size
        if key in self.cast_keys:
            self.cast_keys.discard(key)
            self.casts -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        is_cast = func is torch.ops.aten._to_copy.default and bool(inputs & self.param_keys)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or _storage_key(t) in inputs or _storage_key(t) in self.sizes:
                continue
            storage = t.untyped_storage()
            key, size = storage._cdata, storage.nbytes()
            self.sizes[key] = size
            self.live += size
            self._rising = True
            if is_cast:
                self.cast_keys.add(key)
                self.casts += size
            weakref.finalize(storage, self._free, key)
        return out


class _FusedAttentionKernel(torch.autograd.Function):
    """What a GPU's fused attention allocates and keeps, without computing anything (fake tensors only)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        out = torch.empty_like(q)  # (B, nH, N, Dh)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, nH, N): the softmax's log-sum-exp
        ctx.save_for_backward(q, k, v, mask, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, mask, _, _ = ctx.saved_tensors
        grads = [torch.empty_like(t) for t in (q, k, v)]
        grad_mask = None
        if mask is not None and ctx.needs_input_grad[3]:
            # The kernel writes the bias gradient at the expanded (B, nH, N, N) size, then it is
            # summed down to the bias's broadcast shape.
            expanded = q.new_empty((*q.shape[:2], q.shape[2], k.shape[2]), dtype=mask.dtype)
            grad_mask = expanded.sum_to_size(mask.shape)
        return (*grads, grad_mask)


class _FusedAttentionMode(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` through :class:`_FusedAttentionKernel`, with autocast's casts."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        tensors = [q, k, v, mask]
        dtype = autocast_dtype(q.device.type)
        if dtype is not None:
            tensors = [None if t is None else t.to(dtype) for t in tensors]
        return _FusedAttentionKernel.apply(*tensors)


class _FusedWindowAttention(WindowAttention):
    """:class:`WindowAttention` whose attention is the fused kernel's stand-in, swapped in for a trace.

    The mode is entered here, in the module, rather than around the whole step:
    torch-function modes do not reach into backward, where checkpointing runs
    the forward again.
    """

    def forward(self, x: Tensor, window: Size, mask: Tensor | None = None) -> Tensor:
        with _FusedAttentionMode():
            return super().forward(x, window, mask)


@dataclass(frozen=True)
class StepTrace:
    """One forward and backward of a model, traced on fake tensors.

    Attributes:
        samples: (working set, gradients, casts) in bytes at each local maximum of
            the live bytes: working set = everything the step allocated except the
            accumulated gradients (activations kept for backward, temporaries, the
            input clip, autocast's weight copies); casts = those weight copies.
        grad_bytes: the gradients at the end of backward, as traced (unsharded).
    """

    samples: tuple[tuple[int, int, int], ...]
    grad_bytes: int

    def peak(self, grad_bytes: float, *, casts: bool = True) -> float:
        """The largest working set plus gradients so far, the gradients rescaled to a total of ``grad_bytes``.

        ``casts=False`` leaves out autocast's parameter copies (FSDP gathers
        low-precision parameters instead).
        """
        scale = grad_bytes / self.grad_bytes if self.grad_bytes else 0.0
        return max(w - (0 if casts else c) + scale * g for w, g, c in self.samples)

    def activations(self, *, casts: bool = True) -> int:
        """The largest working set (activations and temporaries), gradients left out."""
        return max(w - (0 if casts else c) for w, _, c in self.samples)


def trace_step(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    precision: str = "fp32",
    attention: str = "fused",
) -> StepTrace:
    """Traces forward, cross-entropy loss and backward of ``model`` on a fake float input of ``input_shape``.

    Args:
        model: built on the meta device (``with torch.device("meta"): ...``); its
            parameters and buffers become fake CPU tensors in place, so the model
            is of no further use.
        input_shape: (B, 3, T, H, W) or (B, 3, H, W).
        precision: ``"fp32"``, or ``"bf16"``: the forward under bf16 autocast.
        attention: ``"fused"`` (what GPUs run) or ``"cpu"`` (see the module docstring).

    Returns:
        The trace; the input clip counts in its working set.
    """
    if precision not in PRECISIONS or attention not in ATTENTIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} and attention one of {ATTENTIONS}, "
                         f"got {precision!r}, {attention!r}")  # fmt: skip
    model.train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")  # fake CPU tensors: the CPU autocast rules apply
        params = list(model.parameters())
        tracker = _Allocations(params)
        if attention == "fused":
            for module in model.modules():
                if type(module) is WindowAttention:
                    module.__class__ = _FusedWindowAttention
        with tracker:
            x = torch.empty(tuple(input_shape))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            labels = torch.zeros(x.shape[0], dtype=torch.long)
            F.cross_entropy(logits.float(), labels).backward()
            tracker.finish()
        grad_bytes = tracker.grads
        del x, logits, labels
        for p in params:
            p.grad = None
    return StepTrace(tuple(tracker.samples), grad_bytes)


# -- the plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    """Bytes per device of one way to train.

    ``buffers``: DDP's gradient buckets (its all-reduce copies of the gradients,
    with more than one device); FSDP's gathered units (the root's parameters and
    gradients, two blocks' parameters and one block's gradients unsharded at a time).
    ``peak`` is the larger of the forward/backward peak and the optimizer step's,
    not the sum of the columns: gradients appear while activations are freed.
    """

    strategy: str
    checkpointing: bool
    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float
    peak: float
    fits: bool

    @property
    def name(self) -> str:
        return self.strategy + (" + checkpointing" if self.checkpointing else "")


@dataclass(frozen=True)
class MemoryPlan:
    """:func:`plan_memory`'s answer: one row per strategy and checkpointing choice."""

    model: str
    num_params: int
    clip: tuple[int, ...]
    batch: int
    gpus: int
    gpu_memory: float  # GiB
    precision: str
    rows: tuple[PlanRow, ...] = field(default_factory=tuple)

    @property
    def usable(self) -> float:
        """Bytes of a device that tensors may use (the rest is headroom, see :data:`HEADROOM`)."""
        return self.gpu_memory * GIB * (1 - HEADROOM)


def _unit_params(model: nn.Module) -> tuple[int, int]:
    """(largest Swin block, everything outside the blocks) in parameters: FSDP's per-block units and its root."""
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, SwinBlock)]
    total = sum(p.numel() for p in model.parameters())
    return max(blocks, default=0), total - sum(blocks)


def plan_memory(
    model: str,
    clip: Sequence[int],
    *,
    gpus: int = 1,
    gpu_memory: float = 80.0,
    batch: int = 1,
    precision: str = "bf16",
    num_classes: int = 400,
    attention: str = "fused",
    checkpointing: Sequence[bool] = (False, True),
    model_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> MemoryPlan:
    """Memory per device of training ``model`` with AdamW, for DDP and FSDP, with and without checkpointing.

    Args:
        model: a preset of :func:`~video_swin.models.list_models`.
        clip: (T, H, W) for video presets, (H, W) for image presets.
        gpus: devices; DDP replicates, FSDP shards parameters, gradients and
            optimizer states over all of them (one Swin block per unit).
        gpu_memory: GiB per device.
        batch: clips per device and step.
        precision: ``"bf16"`` (autocast, fp32 master weights, gradients and
            AdamW states; FSDP gathers bf16 parameters) or ``"fp32"``.
        num_classes: classes of the head.
        attention: ``"fused"`` (GPUs) or ``"cpu"``; see the module docstring.
        checkpointing: the activation-checkpointing choices to plan (each is one trace).
        model_options: model options, as ``overrides``; for names this function takes itself
            (a model's ``attention``, dot or cosine).
        **overrides: model options, as for :func:`~video_swin.models.create_model`.

    Returns:
        The plan, in bytes per device.
    """
    for name, value in (("gpus", gpus), ("batch", batch), ("num_classes", num_classes)):
        if value < 1:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be >= 1, got {value}")
    if not (math.isfinite(gpu_memory) and gpu_memory > 0):
        raise ValueError(f"gpu_memory (--gpu-memory) must be a finite size in GiB > 0, got {gpu_memory}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    overrides = {**overrides, **(model_options or {})}
    if "use_checkpoint" in overrides:
        raise ValueError("use_checkpoint: the plan has rows with and without checkpointing")
    with torch.device("meta"):
        probe = create_model(model, num_classes=num_classes, **overrides)
    clip = tuple(int(s) for s in clip)
    if len(clip) != probe.ndim or min(clip) < 1:
        names = "TxHxW" if probe.ndim == 3 else "HxW"
        raise ValueError(f"{model} takes a clip of {names} with sizes >= 1, got {'x'.join(map(str, clip))}")
    num_params = sum(p.numel() for p in probe.parameters())
    block, root = _unit_params(probe)
    param_bytes = 4 * num_params  # fp32 master weights; gradients alike
    states = 2 * param_bytes  # AdamW: exp_avg and exp_avg_sq
    low = 2 if precision == "bf16" else 4  # bytes of a parameter FSDP gathers (train.distributed=fsdp: bf16)
    plan = MemoryPlan(model, num_params, clip, batch, gpus, gpu_memory, precision)
    rows = []
    for checkpoint in dict.fromkeys(checkpointing):
        with torch.device("meta"):
            traced = create_model(model, num_classes=num_classes, use_checkpoint=checkpoint, **overrides)
        trace = trace_step(traced, (batch, probe.in_chans, *clip), precision=precision, attention=attention)
        # DDP: a full replica; AdamW's foreach step holds one more fp32 copy of the parameters.
        buckets = param_bytes if gpus > 1 else 0
        forward_backward = param_bytes + states + buckets + trace.peak(param_bytes)
        step = 3 * param_bytes + states + buckets
        peak = max(forward_backward, step)
        rows.append(PlanRow("DDP", checkpoint, param_bytes, param_bytes, states, trace.activations(), buckets,
                            peak, peak <= plan.usable))  # fmt: skip
        # FSDP: shards of everything, plus the units it gathers (the root for the whole step, two blocks,
        # one block's gradients before their fp32 reduce-scatter); no autocast copies of the weights.
        shard = param_bytes / gpus
        gathered = root * (low + 4) + block * (2 * low + 4)
        forward_backward = shard + states / gpus + gathered + trace.peak(shard, casts=False)
        step = 3 * shard + states / gpus
        peak = max(forward_backward, step)
        rows.append(PlanRow("FSDP", checkpoint, shard, shard, states / gpus, trace.activations(casts=False),
                            gathered, peak, peak <= plan.usable))  # fmt: skip
    order = {"DDP": 0, "FSDP": 1}
    rows.sort(key=lambda r: (order[r.strategy], r.checkpointing))
    return MemoryPlan(model, num_params, clip, batch, gpus, gpu_memory, precision, tuple(rows))


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a table in GiB, with what each column holds."""
    precision = "bf16 autocast, fp32 master weights" if plan.precision == "bf16" else "fp32"
    clip = "x".join(map(str, plan.clip))
    gpus = f"{plan.gpus} GPU{'s' if plan.gpus > 1 else ''} of {plan.gpu_memory:g} GiB"
    casts = "; under DDP, autocast's bf16 weight copies" if plan.precision == "bf16" else ""
    lines = [
        (f"{plan.model}: {plan.num_params:,} parameters; clip {clip}, batch {plan.batch} per GPU, {precision}, "
         f"AdamW; {gpus}"),
        "",
        f"{'GiB per GPU':<24}{'params':>8}{'grads':>8}{'AdamW':>8}{'activ.':>8}{'buffers':>9}{'peak':>8}  fits",
    ]
    for r in plan.rows:
        cells = "".join(f"{c / GIB:>8.1f}" for c in (r.params, r.grads, r.optimizer, r.activations))
        lines.append(f"{r.name:<24}{cells}{r.buffers / GIB:>9.1f}{r.peak / GIB:>8.1f}  {'yes' if r.fits else 'no'}")
    usable = f"{plan.usable / GIB:.1f} GiB ({1 - HEADROOM:.0%} of the GPU"
    lines += [
        "",
        f"fits: peak <= {usable}; the CUDA context, NCCL and the allocator's fragmentation need the rest).",
        (f"activ.: the largest working set of forward and backward (kept activations, temporaries, the input "
         f"clip{casts}), traced on fake tensors."),
        "buffers: DDP's gradient buckets (more than one GPU); FSDP's gathered parameters and gradients (root, blocks).",
        "peak: the forward/backward or optimizer-step maximum, not the column sum (gradients grow as activations go).",
    ]
    return "\n".join(lines)
