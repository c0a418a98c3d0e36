"""``load_checkpoint`` / ``save_checkpoint``: weights of the same dimensionality."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models import create_model
from .formats import describe, infer_window, resize_bias_table, to_canonical, variant_of
from .io import (
    CheckpointError,
    StateDict,
    WeightFile,
    read_sidecar,
    read_state_dict,
    write_weights,
)

log = logging.getLogger(__name__)
FORMAT = "video-swin"
_HEAD = ("head.weight", "head.bias")
# Speed switches that older files stored among the model's arguments; they
# belong to video_swin.models.kernels.accelerate_cpu now, not to the model.
_LEGACY_MODEL_KEYS = ("recompute_mlp", "recompute_qkv")


@dataclass
class LoadReport:
    """What a load did, name by name (model names unless stated).

    Attributes:
        layout: detected layout of the source (see ``formats``).
        loaded: parameters copied as they were.
        converted: parameters computed from the source (renamed layouts are
            ``loaded``; interpolated tables and inflated kernels are ``converted``).
        missing: model parameters the source did not provide.
        unexpected: source names (after renaming) the model has no use for.
        skipped: source tensors deliberately not used, with the reason.
        dropped_buffers: saved index/mask buffers, which the model rebuilds itself.
    """

    layout: str
    loaded: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dropped_buffers: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"layout: {self.layout}",
            f"loaded: {len(self.loaded)}, converted: {len(self.converted)}, missing: {len(self.missing)}, "
            f"unexpected: {len(self.unexpected)}, skipped: {len(self.skipped)}, "
            f"saved buffers dropped: {len(self.dropped_buffers)}",
        ]
        for title, names in (
            ("converted", self.converted),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("skipped", self.skipped),
        ):
            if names:
                shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
                lines.append(f"{title}: {shown}")
        return "\n".join(lines)


def check_finite(state: Mapping[str, Tensor], where: str) -> None:
    """Raises CheckpointError naming the first tensor with NaN or Inf values."""
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: weight {name} holds NaN or Inf values; refusing to load it")


def check_variant(model: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Raises CheckpointError when ``state`` (our names) is Swin V1 and ``model`` V2, or the reverse.

    Without this, V2 weights would load into a V1 model (or the reverse) with
    most names matching and compute nonsense.
    """
    ours, theirs = variant_of(model.state_dict()), variant_of(dict(state))
    differ = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
    if differ:
        said = ", ".join(f"{k}={theirs[k]!r}" for k in differ)
        have = ", ".join(f"{k}={ours[k]!r}" for k in differ)
        raise CheckpointError(
            f"{where}: the checkpoint was built with {said} but the model has {have}; build the model "
            f"with the checkpoint's options (create_model(..., {said}), or a swinv2_* preset for Swin V2 weights)"
        )


def _model_window(model: nn.Module) -> tuple[int, ...]:
    return tuple(model.layers[0].window_size)


def source_name(source: Any) -> str:
    """How a checkpoint source is named in messages: its path, or "state dict"."""
    if isinstance(source, WeightFile):
        return source.name
    return str(source) if isinstance(source, (str, os.PathLike)) else "state dict"


def check_complete(model: nn.Module, state: Mapping[str, Tensor], where: str, raw: Mapping[str, Tensor]) -> None:
    """Raises CheckpointError if ``state`` (our names) lacks any backbone weight of ``model`` (the head may be absent)."""
    missing = [k for k in model.state_dict() if k not in state and k not in _HEAD]
    if missing:
        shown = ", ".join(missing[:4]) + (f", ... ({len(missing) - 4} more)" if len(missing) > 4 else "")
        depths = _depths(state)
        arch = f" with depths {depths}" if depths else ""
        raise CheckpointError(
            f"{where} ({describe(dict(raw))}{arch}) leaves {len(missing)} weights of the model missing: {shown}; "
            f"pick the matching model, or load what matches knowingly (strict=False, --allow-missing)"
        )


def _depths(state: Mapping[str, Tensor]) -> tuple[int, ...] | None:
    """Blocks per stage of a state dict in our names, e.g. (2, 2, 6, 2) for Swin-T."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        parts = key.split(".")
        if len(parts) > 3 and parts[0] == "layers" and parts[2] == "blocks" and parts[1].isdigit() and parts[3].isdigit():
            blocks.setdefault(int(parts[1]), set()).add(int(parts[3]))
    return tuple(len(blocks[i]) for i in sorted(blocks)) if blocks else None


def assign(
    model: nn.Module,
    state: StateDict,
    report: LoadReport,
    *,
    source_window: tuple[int, ...] | None,
    keep_head: bool,
    where: str,
    converted: Mapping[str, str] | None = None,
) -> None:
    """Copies ``state`` (our names) into ``model``, resizing bias tables; fills ``report``.

    ``converted`` names tensors the caller already computed from the source
    (e.g. inflated kernels), with a note; they are reported as converted.
    """
    converted = converted or {}
    own = model.state_dict()
    window = _model_window(model)
    new: StateDict = {}
    for name, value in state.items():
        if name not in own:
            report.unexpected.append(name)
            continue
        target = own[name]
        if name in _HEAD and (not keep_head or value.shape != target.shape):
            why = "not requested" if keep_head is False else f"shape {tuple(value.shape)} != {tuple(target.shape)}"
            report.skipped.append(f"{name} (head: {why}; left freshly initialised)")
            continue
        if value.shape == target.shape:
            new[name] = value
            if name in converted:
                report.converted.append(f"{name} ({converted[name]})")
            else:
                report.loaded.append(name)
        elif name.endswith("relative_position_bias_table") and value.shape[1] == target.shape[1]:
            old = source_window or infer_window(value.shape[0], window)
            if old is None or len(old) != len(window):
                raise CheckpointError(f"{where}: cannot tell the window of {name} ({value.shape[0]} rows)")
            new[name] = resize_bias_table(value, old, window)
            report.converted.append(f"{name} (window {old} -> {window})")
        else:
            raise CheckpointError(
                f"{where}: {name} has shape {tuple(value.shape)} but the model expects {tuple(target.shape)}; "
                f"the file is for another architecture ({describe(state)})"
            )
    report.missing.extend(k for k in own if k not in new and k not in _HEAD)
    report.missing.extend(k for k in _HEAD if k in own and k not in new)
    wanted = sum(v.numel() for k, v in own.items() if k not in _HEAD)
    got = sum(v.numel() for k, v in new.items() if k not in _HEAD)
    if wanted and got < 0.5 * wanted:
        raise CheckpointError(
            f"{where}: only {got:,} of {wanted:,} backbone values match this model; the file looks like "
            f"{describe(state)}"
        )
    model.load_state_dict(new, strict=False)
    # A dropped head is the normal fine-tuning case; only a partial backbone is loud.
    if report.unexpected or any(k not in _HEAD for k in report.missing):
        log.warning("partial load from %s\n%s", where, report)


def load_checkpoint(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Any] | WeightFile, *, keep_head: bool = True
) -> LoadReport:
    """Loads weights of the same dimensionality (2D into 2D, 3D into 3D).

    Reads our files (safetensors + JSON sidecar), official Video Swin
    (mmaction and mmaction2), torchvision ``swin3d_*``, and for image models
    official Microsoft Swin, timm and torchvision layouts, detected from the
    names. A video model given a different window (e.g. (8, 7, 7) weights into
    a (16, 7, 7) model) gets its bias tables interpolated; a Swin V2 model
    (continuous position bias) holds no per-window weights and loads as is
    (see ``pretrained_window_size`` in ``SwinTransformer``).

    Args:
        model: a :class:`~video_swin.models.SwinTransformer`.
        source: path, state dict or :class:`~video_swin.checkpoints.io.WeightFile`.
        keep_head: load the classifier when its shape matches.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: unreadable or unsafe file, wrong dimensionality
            (with a pointer to the right function), Swin V1 weights for a V2
            model or the reverse, or a file that is no match.
    """
    where = source_name(source)
    raw = read_state_dict(source)
    state, layout, dropped = to_canonical(raw)
    check_finite(state, where)
    patch = state.get("patch_embed.proj.weight")
    if patch is None:
        raise CheckpointError(f"{where}: no patch embedding found; the file looks like {describe(raw)}")
    if patch.ndim != model.ndim + 2:
        found = describe(raw)  # the file's real dimensionality and layout
        if patch.ndim == 4 and model.ndim == 3:
            raise CheckpointError(
                f"{where} is {found}, but the model is a video model; "
                f"use video_swin.checkpoints.inflate_image_checkpoint(model, path) to inflate it"
            )
        if patch.ndim == 5 and model.ndim == 2:
            raise CheckpointError(
                f"{where} is {found}, but the model is an image model; "
                f"build a video model (e.g. create_model('swin3d_t')) and call load_checkpoint on it"
            )
        raise CheckpointError(f"{where} is {found}; it fits no {model.ndim}D Swin model")
    check_variant(model, state, where)
    meta = source.meta if isinstance(source, WeightFile) else (
        read_sidecar(source) if isinstance(source, (str, os.PathLike)) else None
    )
    source_window = tuple(meta["model"]["window_size"]) if meta and "model" in meta else None
    report = LoadReport(layout=layout, dropped_buffers=dropped)
    assign(model, state, report, source_window=source_window, keep_head=keep_head, where=where)
    return report


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, state_dict: dict[str, Tensor] | None = None, **metadata: Any
) -> Path:
    """Writes ``model``'s weights as safetensors plus a JSON sidecar, atomically.

    The sidecar holds ``model.config`` (the preset name and every constructor
    argument) and ``metadata`` (e.g. ``classes=[...]``), so
    :func:`load_model` can rebuild the model from the file alone.
    ``state_dict``: the weights to write instead of ``model.state_dict()``,
    e.g. a sharded model's, consolidated.
    """
    config = getattr(model, "config", None)
    meta = {"format": FORMAT, "model": config, **metadata}
    return write_weights(model.state_dict() if state_dict is None else state_dict, path, meta)


def load_model(path: str | os.PathLike, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds a model from one of our checkpoints and loads its weights.

    Args:
        path: a ``.safetensors`` file written by :func:`save_checkpoint`.
        **overrides: model arguments to change (e.g. ``window_size``).

    Returns:
        ``(model, metadata)`` with the sidecar's metadata (``classes`` etc.). The model is
        :func:`video_swin.models.create_model`'s; :func:`video_swin.load_model` gives the same
        with the Hub methods (``save_pretrained``, ``push_to_hub``).
    """
    return load_model_as(create_model, path, **overrides)


def load_model_as(build: Callable[..., nn.Module], path: str | os.PathLike, **overrides: Any
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model` with the model built by ``build(name, **arguments)`` (the factory passes its own)."""
    meta = read_sidecar(path)
    if not meta or not isinstance(meta.get("model"), dict):
        raise CheckpointError(
            f"{path}: no video-swin sidecar ({Path(path).with_suffix('.json').name}) with the model's "
            f"arguments; build the model with create_model(...) and call load_checkpoint(model, path)"
        )
    config = {k: v for k, v in meta["model"].items() if k not in _LEGACY_MODEL_KEYS}
    config.update(overrides)
    name = config.pop("name")
    model = build(name, **config)
    report = load_checkpoint(model, path)
    if report.missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {report.missing[:5]}")
    return model, meta
