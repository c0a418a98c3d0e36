"""Optimizer parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn


def layer_id(name: str, num_stages: int) -> int:
    """The depth of parameter ``name`` for the layer-wise lr decay, counted over Swin stages.

    0: the patch embedding (everything before the first stage); ``i + 1``:
    stage ``layers.i`` (its blocks and the patch merging at its end);
    ``num_stages + 1``: what follows the last stage (final norm and head).
    This is BEiT's and VideoMAE's numbering with a Swin stage in place of a
    ViT block.
    """
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("norm.", "head.", "head_drop.")):
        return num_stages + 1
    return 0


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float, layer_decay: float | None = None
) -> list[dict]:
    """AdamW groups; no weight decay on norms, biases and bias tables (``model.no_weight_decay()``).

    Without ``layer_decay``: the backbone at ``lr * backbone_lr_mult``, the head at ``lr``.
    With it (``d``), ``backbone_lr_mult`` is not used: a parameter of
    :func:`layer_id` ``k`` gets ``lr * d ** (num_stages + 1 - k)``, so the
    head and final norm get ``lr``, the last stage ``lr * d``, ..., the patch
    embedding ``lr * d ** (num_stages + 1)``. Parameters that do not require
    gradients (a frozen backbone) are left out. Each group carries ``base_lr``,
    which the schedule scales (:func:`set_lr`): the ratios hold at every step.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    num_stages = len(model.layers) if hasattr(model, "layers") else 0
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if layer_decay is None:  # 0: backbone, 1: head
            key = int(name.startswith("head."))
        else:
            key = layer_id(name, num_stages)
        groups.setdefault((key, name in skip), []).append(p)
    out = []
    for (key, no_decay), params in sorted(groups.items()):
        if layer_decay is None:
            base, label = (lr, "head") if key else (lr * backbone_lr_mult, "backbone")
        else:
            base, label = lr * layer_decay ** (num_stages + 1 - key), f"layer_{key}"
        out.append(
            {
                "params": params,
                "lr": base,
                "base_lr": base,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{label}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    groups = param_groups(model, lr, weight_decay, backbone_lr_mult, layer_decay)
    return torch.optim.AdamW(groups, betas=betas, eps=eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_factor``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Sets every group's LR to ``base_lr * factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
