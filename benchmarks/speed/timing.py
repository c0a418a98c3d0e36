"""The ``train``, ``infer`` and ``scaling`` parts: time per step, ours against theirs, and ours as the clip grows."""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from .common import infer_step, interleave, shape_text, summarize, train_step


def time_part(part: str, models: dict[str, torch.nn.Module], shape: tuple[int, ...], args: argparse.Namespace) -> dict:
    """``part`` "train" or "infer": both models interleaved at ``shape``; inference also compares the logits."""
    torch.manual_seed(1)
    x = torch.randn(shape)
    if part == "train":
        y = torch.randint(0, 400, (shape[0],))
        optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}
        weights = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
        for m in models.values():
            m.train()
        steps = {name: (lambda m=m, o=optimizers[name]: train_step(m, o, x, y, args.autocast_dtype))
                 for name, m in models.items()}  # fmt: skip
        result = summarize(interleave(steps, args.repeats, args.warmup))
        for name, m in models.items():  # dropout made the two drift apart: back to the shared weights
            m.zero_grad(set_to_none=True)
            m.load_state_dict(weights[name])
        return result
    for m in models.values():
        m.eval()
    logits = {name: infer_step(m, x, args.autocast_dtype).float() for name, m in models.items()}
    diff = (logits["ours"] - logits["theirs"]).abs().max() / logits["theirs"].abs().max()
    steps = {name: (lambda m=m: infer_step(m, x, args.autocast_dtype)) for name, m in models.items()}
    return {**summarize(interleave(steps, args.repeats, args.warmup)), "logits_rel_diff": diff.item()}


def scaling_part(model: torch.nn.Module, base: tuple[int, ...], args: argparse.Namespace) -> list[dict]:
    """Our inference time as the clip grows, one size after the other, each a median of the repeats."""
    b, c, t, h, w = base
    sizes = {"base": base, "2x H, 2x W": (b, c, t, 2 * h, 2 * w), "2x T": (b, c, 2 * t, h, w)}
    model.eval()
    times = {}
    for name, shape in sizes.items():
        x = torch.randn(shape)
        times[name] = interleave({name: lambda: infer_step(model, x, args.autocast_dtype)}, args.repeats, args.warmup)
    rows = []
    base_wall = statistics.median(times["base"]["base"]["wall"])
    base_cpu = statistics.median(times["base"]["base"]["cpu"])
    for name, shape in sizes.items():
        wall = statistics.median(times[name][name]["wall"])
        cpu = statistics.median(times[name][name]["cpu"])
        tokens = (shape[2] * shape[3] * shape[4]) / (t * h * w)
        rows.append({"size": name, "shape": shape_text(shape), "tokens": tokens, "wall": wall, "cpu": cpu,
                     "cost_wall": wall / base_wall, "cost_cpu": cpu / base_cpu})  # fmt: skip
    return rows
