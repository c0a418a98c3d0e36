"""Optimizer parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float
) -> list[dict]:
    """AdamW groups: backbone at ``lr * backbone_lr_mult``, head at ``lr``; no decay on norms, biases, bias tables.

    Each group carries ``base_lr`` so the schedule can scale it.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        groups.setdefault((is_head, name in skip), []).append(p)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        base = lr if is_head else lr * backbone_lr_mult
        out.append(
            {
                "params": params,
                "lr": base,
                "base_lr": base,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{'head' if is_head else 'backbone'}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, backbone_lr_mult), betas=betas, eps=eps)


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
