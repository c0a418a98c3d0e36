"""The ``levers`` part: what each optimisation buys, ours with one of them undone at a time."""

from __future__ import annotations

import argparse
import copy
import json

import torch

from video_swin.models import kernels
from video_swin.models.kernels.machine import cpu_profile
from video_swin.models.kernels.switches import machine_choices

from .common import SEAM, infer_step, interleave, medians, train_step
from .memory import collect, start_memory_child

# Training: each lever is what accelerate_cpu gets ("seam"), the global
# fast-path switches ("fast_paths") and activation checkpointing, from the defaults.
LEVERS: dict[str, dict] = {
    "all (default)": {},
    "SDPA instead of flash + chunked backward": {"fast_paths": {"attention": False}},
    "MKL (torch.mm) instead of oneDNN linears": {"fast_paths": {"linear": False}},
    "MLP and qkv recompute in every block (recompute_from=0)": {"seam": {"recompute_from": 0}},
    "no MLP recompute (hidden layer kept in every block)": {"seam": {"recompute_mlp": False}},
    "no qkv recompute": {"seam": {"recompute_qkv": False}},
    "+ activation checkpointing of every block": {"use_checkpoint": True},
    "reference model (no accelerate_cpu)": {"seam": {"enabled": False}},
}


_OTHER = {"onednn": "aten", "aten": "onednn", "fused": "separate", "separate": "fused"}


def choice_levers() -> dict[str, dict]:
    """The per-machine choices (machine.py) made the other way: names say which way this machine chose."""
    profile = cpu_profile()
    wg, gelu = profile.weight_grad, profile.fc1_gelu
    return {
        f"weight gradients: {_OTHER[wg]} instead of {wg} (this machine's choice)": {"choices": {"weight_grad": _OTHER[wg]}},
        f"fc1 + GELU: {_OTHER[gelu]} instead of {gelu} (this machine's choice)": {"choices": {"fc1_gelu": _OTHER[gelu]}},
    }  # fmt: skip


def configure(model: torch.nn.Module, lever: dict) -> dict:
    """Sets ``model`` up as ``lever`` says (from the defaults); returns the fast-path switches to use."""
    kernels.accelerate_cpu(model, **{**SEAM, **lever.get("seam", {})})
    for module in model.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = lever.get("use_checkpoint", False)
    return {"attention": True, "linear": True, **lever.get("fast_paths", {})}


def levers_part(models: dict[str, torch.nn.Module], shape: tuple[int, ...], args: argparse.Namespace) -> dict:
    """Training steps of ours with each lever undone in turn, and of theirs, interleaved."""
    torch.manual_seed(1)
    x, y = torch.randn(shape), torch.randint(0, 400, (shape[0],))
    ours, theirs = models["ours"].train(), models["theirs"].train()
    plain = kernels.reference(copy.deepcopy(ours))  # the reference lever gets its own copy: no swapping back and forth
    weights = copy.deepcopy(ours.state_dict())
    opt_ours, opt_plain, opt_theirs = (torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (ours, plain, theirs))

    def ours_step(lever: dict) -> None:
        model, optimizer = (ours, opt_ours) if lever.get("seam", {}).get("enabled", True) else (plain, opt_plain)
        with kernels.fast_paths(**configure(model, lever)), machine_choices(**lever.get("choices", {})):
            train_step(model, optimizer, x, y, args.autocast_dtype)

    levers = {**LEVERS, **choice_levers()}
    steps = {name: (lambda lever=lever: ours_step(lever)) for name, lever in levers.items()}
    steps["theirs"] = lambda: train_step(theirs, opt_theirs, x, y, args.autocast_dtype)
    times = interleave(steps, args.repeats, args.warmup)
    configure(ours, {})
    ours.load_state_dict(weights)
    return medians(times)


def levers_memory(args: argparse.Namespace, allocator: str) -> dict[str, float]:
    """Training-step memory of ours with each lever undone (fresh processes, two at a time), in MiB.

    Not for the per-machine choices (``choice_levers``): their memory is not measured."""
    runs = {}
    for name, lever in LEVERS.items():
        checkpointing = [f"use_checkpoint={json.dumps(lever['use_checkpoint'])}"] if "use_checkpoint" in lever else []
        switches = ",".join(f"{k}={'on' if v else 'off'}" for k, v in lever.get("fast_paths", {}).items())
        runs[name] = {"sets": checkpointing, "fast_paths": switches, "seam": {**SEAM, **lever.get("seam", {})}}
    out = {}
    names = [*runs, "theirs"]
    for i in range(0, len(names), 2):
        children = {name: start_memory_child(args, "theirs" if name == "theirs" else "ours", "train", allocator,
                                             **runs.get(name, {"sets": [], "fast_paths": "", "seam": SEAM}))
                    for name in names[i : i + 2]}  # fmt: skip
        out.update({name: figures["step_mib"] for name, figures in collect(children).items()})
    return out


# The same for inference: ours with one fast path off at a time.
INFER_LEVERS: dict[str, dict] = {
    "all (default)": {},
    "whole map at once instead of a few windows at a time": {"inference_chunks": False},
    "SDPA instead of the flash kernel": {"attention": False},
    "MKL (torch.mm) instead of oneDNN linears": {"linear": False},
    "none of the CPU fast paths": {"attention": False, "linear": False, "inference_chunks": False},
}


def infer_levers_part(models: dict[str, torch.nn.Module], shape: tuple[int, ...], args: argparse.Namespace) -> dict:
    """Inference of ours with each fast path switched off in turn, and of theirs, interleaved."""
    torch.manual_seed(1)
    x = torch.randn(shape)
    ours, theirs = models["ours"].eval(), models["theirs"].eval()
    plain = kernels.reference(copy.deepcopy(ours))

    def ours_step(switches: dict, lever: dict) -> None:
        with kernels.fast_paths(**switches), machine_choices(**lever.get("choices", {})):
            infer_step(ours, x, args.autocast_dtype)

    steps = {name: (lambda s=switches: ours_step(s, {})) for name, switches in INFER_LEVERS.items()}
    gelu = next((name, lever) for name, lever in choice_levers().items() if "fc1_gelu" in lever["choices"])
    steps[gelu[0]] = lambda: ours_step({}, gelu[1])
    steps["reference model (no accelerate_cpu)"] = lambda: infer_step(plain, x, args.autocast_dtype)
    steps["theirs"] = lambda: infer_step(theirs, x, args.autocast_dtype)
    times = interleave(steps, args.repeats, args.warmup)
    return medians(times)
