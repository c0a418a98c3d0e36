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


def gemm_limit(models: dict[str, torch.nn.Module], results: dict, args: argparse.Namespace) -> dict:
    """This machine's GEMM rates, measured now, and how far each timed part is from them.

    The limit of a part is its FLOPs at the GEMM rate of its precision (float32, or bf16
    under ``--autocast bf16``): 2 FLOPs per multiply-add of fvcore's forward count, and 3
    forward passes' worth for a training step (forward, and backward's two products per
    layer), recomputation not counted. A distance of 1.5x means 1.5x the GEMM-limited time.
    """
    from video_swin.models.flops import count_flops  # noqa: PLC0415
    from video_swin.models.kernels.machine import measure  # noqa: PLC0415

    profile = measure()
    rate = profile.bf16_gflops if args.autocast_dtype is not None else profile.fp32_gflops
    out = {"profile": profile.__dict__, "rate_gflops": rate}
    for part in ("train", "infer"):
        if part not in results:
            continue
        shape = args.train_shape if part == "train" else args.infer_shape
        macs = count_flops(models["ours"].eval(), torch.randn(shape))
        flops = 2 * macs * (3 if part == "train" else 1)
        limit_s = flops / (rate * 1e9)
        out[part] = {"gflop": flops / 1e9, "limit_s": limit_s,
                     **{f"{name}_distance": results[part][f"{name}_wall"] / limit_s for name in ("ours", "theirs")}}
    return out


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
