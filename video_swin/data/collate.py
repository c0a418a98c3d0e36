"""Batching: one :func:`collate` for every loader, and batches from workers through reused shared memory.

In a worker, torch's default collate stacks every batch into a newly created
shared-memory segment, and the main process maps it and unmaps it again.
Creating the segment and faulting in its pages cost 11 ms per 19 MB float32
clip on the project's VM (docs/BENCHMARKS.md), more than a fifth of decoding
it. :class:`SharedRingCollate` gives every worker a small ring of segments
and fills them again once the main process is done with them:

* in a worker, the collated batch's tensors are stacked into one free segment
  of the ring, after a 64-byte header whose first byte says "in use";
* the main process gets tensors viewing that segment. When the last of them
  is freed (the batch dropped, or copied into pinned or device memory and
  dropped) a finalizer clears the byte and the worker may fill the segment
  again;
* a worker that finds every segment of its ring in use (a batch kept by the
  caller, a slow consumer) collates that batch the default way. A kept batch
  is never overwritten and no worker waits.

Both ways build the batch with :func:`collate`: torch's
:func:`~torch.utils.data.default_collate`, value for value (mappings,
sequences, namedtuples, numbers and strings are handled by it), except that
the samples' lists of :class:`~video_swin.data.DecodeFailure` records become
one flat list. Only where the tensors live differs. In the main process
(``num_workers=0``) it is :func:`collate` itself.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info
from torch.utils.data._utils.collate import collate as torch_collate
from torch.utils.data._utils.collate import collate_tensor_fn, default_collate_fn_map

from .broken import FAILURES


def collate(samples: Sequence[Any]) -> Any:
    """The batch of ``samples``: :func:`~torch.utils.data.default_collate`, failure records flattened.

    A sample's ``"failures"`` is a list of any length (most often empty), which
    the default collate cannot batch; the batch's ``"failures"`` is the
    concatenation of its samples' lists, in sample order.
    """
    return _collate_with(samples, default_collate)


def _collate_with(samples: Sequence[Any], collate_rest: Callable[[Sequence[Any]], Any]) -> Any:
    """``collate_rest`` over the samples without their failure lists, the lists joined into one."""
    first = samples[0] if len(samples) else None
    if not isinstance(first, Mapping) or FAILURES not in first:
        return collate_rest(samples)
    batch = collate_rest([{key: value for key, value in s.items() if key != FAILURES} for s in samples])
    failures = [failure for s in samples for failure in s.get(FAILURES, ())]
    return {key: failures if key == FAILURES else batch[key] for key in first}  # the samples' key order


_HEADER = 64  # bytes before the payload; byte 0 is 1 while the main process holds the batch
_ALIGN = 64
# Dtypes numpy can view: the main process hands out tensors made with
# torch.from_numpy, whose array carries the finalizer. Other dtypes, and tensors
# not on the CPU, take the default way.
_VIEWABLE = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
             torch.uint8, torch.bool}  # fmt: skip


class _Stack:
    """A tensor leaf of the batch, not yet stacked: ``tensors`` become one tensor of ``shape``."""

    __slots__ = ("tensors", "shape", "dtype", "device")

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tensors
        self.shape = (len(tensors), *tensors[0].shape)
        self.dtype, self.device = tensors[0].dtype, tensors[0].device

    def default(self) -> torch.Tensor:
        return collate_tensor_fn(self.tensors)


class _Leaf:
    """Where the ``index``-th ring tensor goes in the batch's structure (pickled in its place)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _defer(batch: Sequence[torch.Tensor], *, collate_fn_map: Any = None) -> Any:
    if batch[0].is_nested or batch[0].layout != torch.strided:
        return collate_tensor_fn(batch)  # raises torch's own message
    return _Stack(batch)


_DEFERRING_MAP = {**default_collate_fn_map, torch.Tensor: _defer}


def _map_leaves(obj: Any, fn: Any) -> Any:
    """``obj`` with ``fn`` applied to its ``_Stack``, ``_Leaf`` and tensor leaves (the containers collate makes)."""
    if isinstance(obj, (_Stack, _Leaf, torch.Tensor)):
        return fn(obj)
    if isinstance(obj, Mapping):
        items = {key: _map_leaves(value, fn) for key, value in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_leaves(value, fn) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_leaves(value, fn) for value in obj)
    return obj


def _default(leaf: _Stack | torch.Tensor) -> torch.Tensor:
    """The leaf as the default collate makes it (stacked into a new shared-memory tensor in a worker)."""
    return leaf.default() if isinstance(leaf, _Stack) else leaf


def _materialise(obj: Any) -> Any:
    return _map_leaves(obj, _default)


Layout = list[tuple[int, tuple[int, ...], torch.dtype]]  # (byte offset in the segment, shape, dtype) per tensor


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def _view(flat: torch.Tensor, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The tensor of ``shape`` and ``dtype`` at byte ``offset`` of the uint8 tensor ``flat``."""
    return flat[offset : offset + _nbytes(shape, dtype)].view(dtype).view(shape)


class _RingBatch:
    """A batch whose tensors lie in one ring segment; unpickles (in the main process) as the batch itself."""

    def __init__(self, structure: Any, segment: torch.Tensor, layout: Layout) -> None:
        self.structure, self.segment, self.layout = structure, segment, layout

    def __reduce__(self) -> tuple:
        return (_unpack, (self.structure, self.segment, self.layout))


def _release(header: torch.Tensor) -> None:
    header.zero_()


def _unpack(structure: Any, segment: torch.Tensor, layout: Layout) -> Any:
    """The batch, its tensors viewing ``segment``; the segment is freed for reuse when they are all gone."""
    array = segment.numpy()
    weakref.finalize(array, _release, segment[:1])
    base = torch.from_numpy(array)
    tensors = [_view(base, *entry) for entry in layout]
    return _map_leaves(structure, lambda leaf: tensors[leaf.index] if isinstance(leaf, _Leaf) else leaf)


class SharedRingCollate:
    """A ``collate_fn`` that sends batches from workers through a reused ring of shared-memory segments.

    Args:
        slots: segments per worker. A worker has at most ``prefetch_factor``
            batches queued; the main process holds one or two more (the batch in
            use, one read ahead by accelerate or the pin-memory thread). With
            every segment in use a batch takes torch's default way.
    """

    def __init__(self, slots: int = 4) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"SharedRingCollate: slots must be an integer >= 1, got {slots!r}")
        self.slots = slots
        self._ring: list[torch.Tensor] = []
        self._pid = -1

    def __getstate__(self) -> dict:
        return {"slots": self.slots}  # a spawned worker starts its own ring

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(slots={self.slots})"

    def _segment(self, nbytes: int) -> torch.Tensor | None:
        """A free segment of at least ``nbytes`` payload bytes, marked in use; None when all are in use."""
        if self._pid != os.getpid():  # a forked worker must not share its parent's ring
            self._ring, self._pid = [], os.getpid()
        free = next((i for i, segment in enumerate(self._ring) if segment[0].item() == 0), None)
        if free is None:
            if len(self._ring) == self.slots:
                return None
            free = len(self._ring)
            self._ring.append(_new_segment(nbytes))
        elif self._ring[free].numel() < _HEADER + nbytes:  # a larger batch than this segment had
            self._ring[free] = _new_segment(nbytes)
        segment = self._ring[free]
        segment[0] = 1
        return segment

    def __call__(self, samples: Sequence[Any]) -> Any:
        if get_worker_info() is None:
            return collate(samples)
        deferred = _collate_with(samples, lambda rest: torch_collate(rest, collate_fn_map=_DEFERRING_MAP))
        leaves: list[Any] = []

        def collect(leaf: Any) -> Any:
            if leaf.dtype not in _VIEWABLE or leaf.device.type != "cpu":
                return _default(leaf)
            leaves.append(leaf)
            return _Leaf(len(leaves) - 1)

        structure = _map_leaves(deferred, collect)
        if not leaves:
            return _materialise(deferred)
        layout: Layout = []
        end = _HEADER
        for leaf in leaves:
            shape = tuple(leaf.shape)
            layout.append((end, shape, leaf.dtype))
            end += -(-_nbytes(shape, leaf.dtype) // _ALIGN) * _ALIGN
        segment = self._segment(end - _HEADER)
        if segment is None:  # every segment in use: a fresh one, the default way
            return _materialise(deferred)
        for leaf, entry in zip(leaves, layout, strict=True):
            out = _view(segment, *entry)
            if isinstance(leaf, _Stack):
                torch.stack(leaf.tensors, 0, out=out)
            else:
                out.copy_(leaf)
        return _RingBatch(structure, segment[:end], layout)


def _new_segment(nbytes: int) -> torch.Tensor:
    storage = torch.UntypedStorage._new_shared(_HEADER + nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage)
