"""Window helpers for any number of spatial dims (2D images, 3D clips).

Everything here is written once for ``n = len(window)`` spatial dims; the
image model and the video model are the same code with 2- or 3-tuples.
Tensors are channels-last: ``(B, *S, C)`` with ``S`` the ``n`` spatial sizes.
All functions are pure: they never mutate their arguments.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

Size = tuple[int, ...]

# Official Swin and Video Swin fill masked pairs with -100 rather than -inf;
# kept so that logits match official weights bit for bit in spirit.
MASK_VALUE = -100.0


def fit_window(size: Size, window: Size, shift: Size) -> tuple[Size, Size]:
    """Clamps the window to the feature size, as the official Video Swin does.

    Where a dimension is not larger than the window, the window shrinks to the
    dimension and that dimension is not shifted (a single window covers it).

    Args:
        size: spatial sizes of the feature map, one per window dim.
        window: the configured window size.
        shift: the configured shift size (0 in non-shifted blocks).

    Returns:
        ``(window, shift)`` actually used for this size.
    """
    if not (len(size) == len(window) == len(shift)):
        raise ValueError(f"size {size}, window {window} and shift {shift} must have the same length")
    used_window = tuple(s if s <= w else w for s, w in zip(size, window))
    used_shift = tuple(0 if s <= w else sh for s, w, sh in zip(size, window, shift))
    return used_window, used_shift


def padded_size(size: Size, window: Size) -> Size:
    """Sizes rounded up to multiples of ``window``."""
    return tuple(math.ceil(s / w) * w for s, w in zip(size, window))


def pad_to_window(x: Tensor, window: Size) -> Tensor:
    """Zero-pads the spatial dims of ``x`` (B, *S, C) at their end to window multiples."""
    size = tuple(x.shape[1:-1])
    target = padded_size(size, window)
    if target == size:
        return x
    pad: list[int] = [0, 0]  # channels
    for s, t in zip(reversed(size), reversed(target)):
        pad += [0, t - s]
    return F.pad(x, pad)


def unpad(x: Tensor, size: Size) -> Tensor:
    """Undoes :func:`pad_to_window`: the first ``size`` entries of each spatial dim of ``x`` (B, *Sp, C), a view."""
    if tuple(x.shape[1:-1]) == tuple(size):
        return x
    return x[(slice(None), *(slice(0, s) for s in size))]  # (B, *S, C)


def window_partition(x: Tensor, window: Size) -> Tensor:
    """Cuts ``x`` (B, *S, C) into windows.

    Args:
        x: channels-last tensor whose spatial sizes are multiples of ``window``.
        window: window size per spatial dim.

    Returns:
        Tensor[B * nW, N, C] with ``N = prod(window)``; windows in raster order.
    """
    b, *size, c = x.shape
    n = len(window)
    grid = [s // w for s, w in zip(size, window)]
    interleaved = [d for pair in zip(grid, window) for d in pair]
    x = x.view(b, *interleaved, c)  # (B, g1, w1, g2, w2, ..., C)
    perm = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 1]
    x = x.permute(*perm)  # (B, g1, g2, ..., w1, w2, ..., C)
    return x.reshape(-1, math.prod(window), c)  # (B*nW, N, C)


def window_reverse(windows: Tensor, window: Size, size: Size) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: Tensor[B * nW, N, C].
        window: window size per spatial dim.
        size: padded spatial sizes of the map the windows came from.

    Returns:
        Tensor[B, *size, C].
    """
    n = len(window)
    c = windows.shape[-1]
    grid = [s // w for s, w in zip(size, window)]
    x = windows.view(-1, *grid, *window, c)  # (B, g1, g2, ..., w1, w2, ..., C)
    perm = [0] + [d for i in range(n) for d in (1 + i, 1 + n + i)] + [2 * n + 1]
    x = x.permute(*perm)  # (B, g1, w1, g2, w2, ..., C)
    return x.reshape(-1, *size, c)  # (B, *S, C)


def relative_position_index(window: Size, table_window: Size | None = None) -> Tensor:
    """Index into a relative-position bias table for every token pair of a window.

    The table has ``prod(2 * t - 1)`` rows for ``t`` in ``table_window`` (the
    configured window). ``window`` is the window actually used, which may be
    smaller where the input was smaller than the window; its offsets are looked
    up with the table's strides, so every pair gets the bias of its true offset.
    (Official Video Swin and torchvision slice the full index ``[:N, :N]``
    instead, which is only right when no more than the leading dim shrinks.)

    Args:
        window: window in use, e.g. (8, 7, 7) or (7, 7).
        table_window: window the table was built for; defaults to ``window``.

    Returns:
        LongTensor[N, N] with ``N = prod(window)``.
    """
    table_window = tuple(window) if table_window is None else tuple(table_window)
    if any(w > t for w, t in zip(window, table_window)):
        raise ValueError(f"window {window} exceeds the bias table's window {table_window}")
    axes = [torch.arange(w) for w in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (n, N)
    stride_list = [math.prod(2 * u - 1 for u in table_window[i + 1 :]) for i in range(len(window))]
    strides = torch.tensor(stride_list)
    # The row sum_i (rel_i + t_i - 1) * stride_i is linear in the coordinates, so
    # it is one difference of per-token sums: no (n, N, N) intermediate, which
    # for large windows (N = 3136 at (16, 14, 14)) would cost seconds and GBs.
    linear = (coords * strides[:, None]).sum(0)  # (N,)
    offset = sum((t - 1) * s for t, s in zip(table_window, stride_list))  # plain ints: also builds on meta
    return linear[:, None] - linear[None, :] + offset  # (N, N)


def relative_coords_table(table_window: Size) -> Tensor:
    """All relative offsets covered by a bias table, in table-row order.

    Returns:
        LongTensor[prod(2 * t - 1), n]: row ``r`` holds the offset that
        :func:`relative_position_index` maps to ``r``.
    """
    axes = [torch.arange(-(t - 1), t) for t in table_window]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(table_window))


def shift_mask(size: Size, window: Size, shift: Size, device: torch.device | None = None) -> Tensor:
    """Attention mask for shifted windows on a padded map.

    After the cyclic shift, tokens that came from different regions of the
    map share a window; pairs from different regions are masked.

    Args:
        size: padded spatial sizes (multiples of ``window``).
        window: window in use.
        shift: shift in use (> 0 in at least one dim).

    Returns:
        Tensor[nW, N, N] float, 0 for allowed pairs and ``MASK_VALUE`` otherwise.
    """
    labels = torch.zeros(size, dtype=torch.long, device=device)
    per_dim = [
        [slice(None)] if s == 0 else [slice(0, -w), slice(-w, -s), slice(-s, None)]
        for w, s in zip(window, shift)
    ]
    for region, slices in enumerate(itertools.product(*per_dim)):
        labels[slices] = region
    labels = window_partition(labels[None, ..., None], window).squeeze(-1)  # (nW, N)
    different = labels[:, None, :] != labels[:, :, None]  # (nW, N, N)
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)


def log_spaced_coords(window: Size, scale_window: Size | None = None) -> Tensor:
    """Log-spaced relative coordinates of a window, the input of Swin V2's position-bias MLP.

    Every offset of :func:`relative_coords_table` is divided per axis by
    ``scale_window - 1``, times 8 (so the window's edge sits at +-8), then mapped
    through ``sign(x) * log2(1 + |x|) / log2(8)``, as in the Swin V2 paper and
    its official code. Dividing by a ``scale_window`` other than ``window`` (a
    pretraining window) keeps each absolute offset at the coordinate it was
    trained with.

    Args:
        window: window in use, e.g. (8, 7, 7) or (8, 8).
        scale_window: window whose edge maps to +-8; defaults to ``window``.

    Returns:
        Tensor[prod(2 * w - 1), n] float32, rows in :func:`relative_position_index`
        order for ``window``.
    """
    scale_window = tuple(window) if scale_window is None else tuple(scale_window)
    if len(scale_window) != len(window):
        raise ValueError(f"scale_window {scale_window} and window {tuple(window)} differ in length")
    coords = relative_coords_table(window).float()  # (rows, n)
    # A window of 1 only has the offset 0; max(..., 1) avoids 0 / 0 there.
    coords = coords / torch.tensor([max(s - 1, 1) for s in scale_window], dtype=torch.float32) * 8
    return torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)  # (rows, n)
