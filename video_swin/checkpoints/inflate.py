"""Inflating image (2D) Swin weights into a video (3D) Swin.

Only three kinds of tensors differ between an image Swin (V1 or V2) and its
video counterpart; everything else (qkv and its V2 q/v biases, logit scales,
proj, MLPs, norms, patch merging) keeps its shape and is copied as is:

* ``patch_embed.proj.weight``, Tensor[C, Cin, ph, pw] -> Tensor[C, Cin, pt, ph, pw]:
  ``"average"`` repeats the kernel over the patch's ``pt`` frames and divides
  by ``pt``; ``"center"`` puts it in frame ``pt // 2`` with zeros elsewhere.
  Either way a clip of one repeated image embeds exactly like the image.
* ``*.relative_position_bias_table``, Tensor[(2M-1)^2, nH] ->
  Tensor[(2P-1)(2M'-1)^2, nH]: bicubically resized per head when the image
  window M differs from the video window's spatial part M' (e.g. a
  window-12 Swin-B from 384 px into window 7), then repeated over the
  2P-1 temporal offsets, so attention never prefers one frame over another.
* ``*.cpb_mlp.0.weight`` (Swin V2), Tensor[512, 2] -> Tensor[512, 3]: the
  continuous-bias MLP's first layer gains a zero-initialised input for the
  time coordinate (column 0: coordinates are ordered (t, h, w)), so the bias
  starts equal at every time offset. No resizing: the bias is a function of
  the offset, for any window.

Together these pin the invariant the tests check: an inflated model run on
a static clip gives, at every output time step, the image model's features.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .formats import describe, infer_window, repeat_over_time, resize_bias_table, to_canonical
from .io import CheckpointError, StateDict, WeightFile, read_state_dict, read_weight_file
from .loading import LoadReport, assign, check_complete, check_finite, check_variant, load_checkpoint, source_name

log = logging.getLogger(__name__)
TEMPORAL_INITS = ("average", "center")
_PATCH = "patch_embed.proj.weight"
_TABLE = "relative_position_bias_table"
_CPB_IN = "cpb_mlp.0.weight"


def inflate_patch_kernel(weight: Tensor, frames: int, temporal_init: str = "average") -> Tensor:
    """Turns a 2D patch-embedding kernel into a 3D one.

    Args:
        weight: Tensor[C, Cin, ph, pw].
        frames: temporal patch size pt.
        temporal_init: ``"average"`` (kernel / pt in every frame) or
            ``"center"`` (kernel in frame pt // 2, zeros elsewhere).

    Returns:
        Tensor[C, Cin, pt, ph, pw]; a new tensor, ``weight`` is untouched.
    """
    if temporal_init not in TEMPORAL_INITS:
        raise ValueError(f"temporal_init must be one of {TEMPORAL_INITS}, got {temporal_init!r}")
    if temporal_init == "average":
        return weight.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames  # (C, Cin, pt, ph, pw)
    out = weight.new_zeros(weight.shape[:2] + (frames,) + weight.shape[2:])  # (C, Cin, pt, ph, pw)
    out[:, :, frames // 2] = weight
    return out


def inflate_bias_table(table: Tensor, source_window: tuple[int, int], window: tuple[int, int, int]) -> Tensor:
    """Turns a 2D relative-position bias table into a 3D one.

    Args:
        table: Tensor[(2M-1)^2, nH] of an image window ``source_window`` = (M, M).
        source_window: the image window.
        window: the video window (P, M', M').

    Returns:
        Tensor[(2P-1)(2M'-1)^2, nH], rows ordered (dt, dh, dw) like the model's index.
    """
    spatial = resize_bias_table(table, tuple(source_window), tuple(window[1:]))  # ((2M'-1)^2, nH)
    return repeat_over_time(spatial, window[0])  # ((2P-1)(2M'-1)^2, nH)


def inflate_cpb_input(weight: Tensor) -> Tensor:
    """Gives a Swin V2 position-bias MLP's first layer a zero-initialised time input.

    Args:
        weight: Tensor[hidden, 2], inputs (h, w).

    Returns:
        Tensor[hidden, 3], inputs (t, h, w) with the t column zero; a new tensor.
    """
    return torch.cat([weight.new_zeros(weight.shape[0], 1), weight], dim=1)  # (hidden, 3)


def inflate_state_dict(
    state: StateDict, model3d: nn.Module, temporal_init: str = "average"
) -> tuple[StateDict, dict[str, str]]:
    """Inflates the 2D tensors of an image state dict (our names) to ``model3d``'s shapes.

    Tensors the model has no use for, or whose head count or spatial patch
    differ, pass through unchanged so that :func:`assign` reports them.

    Args:
        state: an image Swin state dict already renamed to our names.
        model3d: the video model; its shapes and per-block windows are the targets.
        temporal_init: see :func:`inflate_patch_kernel`.

    Returns:
        ``(state3d, notes)``: a new state dict and, for each inflated tensor,
        a note on what was done.

    Raises:
        CheckpointError: a bias table whose row count is no square window.
    """
    own = model3d.state_dict()
    out: StateDict = {}
    notes: dict[str, str] = {}
    for name, value in state.items():
        target = own.get(name)
        if target is None or value.shape == target.shape:
            out[name] = value
        elif name == _PATCH and value.ndim == 4 and target.ndim == 5 and value.shape[2:] == target.shape[3:]:
            out[name] = inflate_patch_kernel(value, target.shape[2], temporal_init)
            notes[name] = f"2D kernel {tuple(value.shape)} inflated to {tuple(target.shape)}, {temporal_init}"
        elif name.endswith(_TABLE) and value.ndim == 2 and value.shape[1] == target.shape[1]:
            window = tuple(model3d.get_submodule(name.rsplit(".", 1)[0]).window_size)
            source = infer_window(value.shape[0], window[1:])
            if source is None:
                raise CheckpointError(f"{name}: {value.shape[0]} rows is no (2M-1)^2 table of a square image window")
            out[name] = inflate_bias_table(value, source, window)
            notes[name] = f"2D window {source} -> {window}"
        elif name.endswith(_CPB_IN) and value.ndim == 2 and value.shape[1] == 2 and target.shape == (value.shape[0], 3):
            out[name] = inflate_cpb_input(value)
            notes[name] = "(h, w) inputs -> (t, h, w), zero time column"
        else:
            out[name] = value
    return out, notes


def inflate_image_checkpoint(
    model3d: nn.Module,
    source: str | os.PathLike | Mapping[str, Any] | WeightFile,
    temporal_init: str = "average",
    *,
    keep_head: bool = False,
    strict: bool = True,
) -> LoadReport:
    """Loads image Swin weights into a video Swin, inflating them over time.

    Reads official Microsoft Swin V1 and V2 files (``{"model": ...}``, saved
    index, coordinate and mask buffers dropped), timm's and torchvision's 2D
    layouts, detected from the names. The patch embedding, V1 bias tables and
    V2 position-bias MLP inputs are inflated (see the module docstring);
    everything else is copied.

    Args:
        model3d: a video :class:`~video_swin.models.SwinTransformer` (``ndim == 3``).
        source: path (.pth, .pt, .bin, .safetensors) or state dict of a 2D Swin.
        temporal_init: ``"average"`` or ``"center"`` patch-kernel inflation.
        keep_head: load the image classifier too when its class count equals
            the model's; by default it is left freshly initialised.
        strict: refuse a file that leaves any weight of the backbone
            missing (e.g. Swin-T weights for a ``swin3d_s``, whose third stage
            is deeper); False loads what matches and reports the rest as missing.

    Returns:
        A :class:`LoadReport`; inflated tensors are listed under ``converted``,
        and a partial match is logged as a warning.

    Raises:
        CheckpointError: ``model3d`` is no video model, ``source`` is already
            a video checkpoint (use ``load_checkpoint``), is no Swin at all, is
            Swin V1 for a V2 model (or the reverse), does not fit the model's
            architecture, or (``strict``) leaves backbone weights missing.
        ValueError: an unknown ``temporal_init``.
    """
    if temporal_init not in TEMPORAL_INITS:
        raise ValueError(f"temporal_init must be one of {TEMPORAL_INITS}, got {temporal_init!r}")
    if getattr(model3d, "ndim", None) != 3:
        raise CheckpointError(
            "inflate_image_checkpoint needs a video model (e.g. create_model('swin3d_t')); "
            "to load image weights into an image model use load_checkpoint(model, path)"
        )
    where = source_name(source)
    raw = read_state_dict(source)
    state, layout, dropped = to_canonical(raw)
    patch = state.get(_PATCH)
    if patch is not None and patch.ndim == 5:
        raise CheckpointError(
            f"{where} is already a video (3D) Swin checkpoint; load it with "
            f"video_swin.checkpoints.load_checkpoint(model, path) instead of inflating it"
        )
    if patch is None or patch.ndim != 4:
        raise CheckpointError(f"{where}: cannot inflate it into a video Swin: it looks like {describe(raw)}")
    check_finite(state, where)
    check_variant(model3d, state, where)
    inflated, notes = inflate_state_dict(state, model3d, temporal_init)
    report = LoadReport(layout=layout, dropped_buffers=dropped)
    if strict:
        check_complete(model3d, inflated, where, raw)
    assign(model3d, inflated, report, source_window=None, keep_head=keep_head, where=where, converted=notes)
    log.info("inflated %s (%s layout, %s) into %s", where, layout, temporal_init, type(model3d).__name__)
    return report


def load_image_pretrained(
    model3d: nn.Module,
    source: str | os.PathLike | Mapping[str, Any] | WeightFile,
    temporal_init: str = "average",
    *,
    strict: bool = True,
) -> LoadReport:
    """Initialises a video model from ImageNet weights: a 2D file is inflated, an already inflated one loaded.

    What ``model.pretrained_image`` does at the start of training: the file
    is read once, and its patch embedding tells which of the two it is (the
    output of ``video-swin inflate`` is a 3D file). The classifier is never
    taken over.
    """
    weights = read_weight_file(source)
    state, _, _ = to_canonical(weights.state)
    patch = state.get(_PATCH)
    if patch is not None and patch.ndim == 5:
        return load_checkpoint(model3d, weights, keep_head=False)
    return inflate_image_checkpoint(model3d, weights, temporal_init, strict=strict)


__all__ = [
    "TEMPORAL_INITS",
    "load_image_pretrained",
    "inflate_bias_table",
    "inflate_cpb_input",
    "inflate_image_checkpoint",
    "inflate_patch_kernel",
    "inflate_state_dict",
]
