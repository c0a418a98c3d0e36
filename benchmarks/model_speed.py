"""Model speed and memory: our ``swin3d_t`` against torchvision's ``swin3d_t``, same weights, same inputs.

Parts (``--parts``, comma separated; all by default):

* ``train``: one training step (forward, cross-entropy, backward, AdamW step)
  at ``--train-shape`` (default 2x3x16x224x224), both models in this process,
  interleaved: every repetition runs ours and theirs back to back, the order
  alternating (AB BA AB ...) so that a drift in machine load hits both alike.
* ``infer``: one forward in inference mode at ``--infer-shape`` (default
  1x3x32x224x224), interleaved the same way. Before timing, the two models'
  logits on that input are compared (the weights are torchvision's, loaded
  into ours with ``load_checkpoint``).
* ``memory``: peak memory of a training step (and of an inference forward),
  each model in its own fresh process (see :func:`memory_child`), once with
  glibc's default malloc settings and once with large blocks returned to the
  system as soon as they are freed (then the peak RSS follows the peak of
  live tensors; the default also counts what the allocator keeps).
* ``micro``: single kernels against the stock ops they replace (GEMMs,
  bias gather, bf16 attention, shift + partition), stage-1 sizes.
* ``scaling``: our inference time per clip at ``--scaling-shape`` and with H
  and W doubled (4x tokens) and T doubled (2x tokens).

Every figure is a median over ``--repeats`` repetitions after ``--warmup``
untimed ones, in wall-clock seconds and in process CPU seconds (the CPU time
of this process: steadier than wall time when other work shares the machine,
but it also counts the time OpenMP threads spin while waiting for each other).
Time ratios are theirs / ours (above 1: ours is faster); memory ratios are
ours / theirs (below 1: ours needs less).

Examples:
    python benchmarks/model_speed.py                                   # everything, full sizes (~10 min on 2 cores)
    python benchmarks/model_speed.py --parts train,infer --repeats 5
    python benchmarks/model_speed.py --quick                           # tiny sizes, a smoke run of every part
    python benchmarks/model_speed.py --parts train --autocast bf16     # both models under CPU bf16 autocast
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import video_swin
from video_swin.checkpoints import load_checkpoint
from video_swin.models import kernels

MODEL = "swin3d_t"
QUICK = {"train_shape": "1x3x2x224x224", "infer_shape": "1x3x2x224x224", "scaling_shape": "1x3x2x112x112",
         "repeats": 1, "warmup": 1}  # fmt: skip


def parse_shape(text: str) -> tuple[int, ...]:
    """``"2x3x16x224x224"`` -> (2, 3, 16, 224, 224)."""
    shape = tuple(int(s) for s in text.lower().split("x"))
    if len(shape) != 5 or min(shape) < 1 or shape[1] != 3:
        raise argparse.ArgumentTypeError(f"expected BxCxTxHxW with C=3, got {text!r}")
    return shape


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def build_models(ours_options: dict, *, compile_ours: bool = False) -> dict[str, torch.nn.Module]:
    """torchvision's model with a fixed seed, and ours carrying the same weights."""
    import torchvision  # noqa: PLC0415 (not imported by the memory runs of our model)

    torch.manual_seed(0)
    theirs = getattr(torchvision.models.video, MODEL)()
    ours = video_swin.create_model(MODEL, **ours_options)
    report = load_checkpoint(ours, theirs.state_dict())
    if report.missing or report.unexpected:
        raise RuntimeError(f"torchvision weights did not map onto ours: {report}")
    if compile_ours:
        ours = torch.compile(ours)
    return {"ours": ours, "theirs": theirs}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast: torch.dtype | None) -> None:  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


def infer_step(model: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        return model(x)


def interleave(steps: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Runs the steps in turns, alternating their order each repetition; returns wall/CPU seconds per step."""
    names = list(steps)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for rep in range(warmup + repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            steps[name]()
            if rep >= warmup:
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
    return times


def medians(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per step of :func:`interleave`'s result."""
    return {name: {clock: statistics.median(t[clock]) for clock in ("wall", "cpu")} for name, t in times.items()}


def summarize(times: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Medians per model and clock, the ratio of medians, and the median of the per-repetition ratios."""
    out = {}
    for clock in ("wall", "cpu"):
        ours, theirs = times["ours"][clock], times["theirs"][clock]
        out[f"ours_{clock}"] = statistics.median(ours)
        out[f"theirs_{clock}"] = statistics.median(theirs)
        out[f"ratio_{clock}"] = out[f"theirs_{clock}"] / out[f"ours_{clock}"]
        out[f"pair_ratio_{clock}"] = statistics.median(t / o for o, t in zip(ours, theirs))
    out["ours_all_wall"], out["theirs_all_wall"] = times["ours"]["wall"], times["theirs"]["wall"]
    return out


def time_part(part: str, models: dict[str, torch.nn.Module], shape: tuple[int, ...], args: argparse.Namespace) -> dict:
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


# What each optimisation buys: ours with one of them undone at a time (the
# module attributes and switches below are exactly what the options set).
LEVERS: dict[str, dict] = {
    "all (default)": {},
    "SDPA instead of flash + chunked backward": {"fast_paths": {"attention": False}},
    "MKL (torch.mm) instead of oneDNN linears": {"fast_paths": {"linear": False}},
    "no MLP recompute": {"recompute_mlp": False},
    "no qkv recompute": {"recompute_qkv": False},
    "+ activation checkpointing of every block": {"use_checkpoint": True},
}


def configure(model: torch.nn.Module, lever: dict) -> dict:
    """Sets ``model`` up as ``lever`` says (from the defaults); returns the fast-path switches to use."""
    options = {"recompute_mlp": True, "recompute_qkv": True, "use_checkpoint": False}
    options.update({k: v for k, v in lever.items() if k != "fast_paths"})
    for module in model.modules():
        for name, value in options.items():
            if hasattr(module, name):
                setattr(module, name, value)
    return {"attention": True, "linear": True, **lever.get("fast_paths", {})}


def levers_part(models: dict[str, torch.nn.Module], shape: tuple[int, ...], args: argparse.Namespace) -> dict:
    """Training steps of ours with each lever undone in turn, and of theirs, interleaved."""
    torch.manual_seed(1)
    x, y = torch.randn(shape), torch.randint(0, 400, (shape[0],))
    ours, theirs = models["ours"].train(), models["theirs"].train()
    weights = copy.deepcopy(ours.state_dict())
    opt_ours, opt_theirs = (torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (ours, theirs))

    def ours_step(lever: dict) -> None:
        with kernels.fast_paths(**configure(ours, lever)):
            train_step(ours, opt_ours, x, y, args.autocast_dtype)

    steps = {name: (lambda lever=lever: ours_step(lever)) for name, lever in LEVERS.items()}
    steps["theirs"] = lambda: train_step(theirs, opt_theirs, x, y, args.autocast_dtype)
    times = interleave(steps, args.repeats, args.warmup)
    configure(ours, {})
    ours.load_state_dict(weights)
    return medians(times)


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

    def ours_step(switches: dict) -> None:
        with kernels.fast_paths(**switches):
            infer_step(ours, x, args.autocast_dtype)

    steps = {name: (lambda s=switches: ours_step(s)) for name, switches in INFER_LEVERS.items()}
    steps["theirs"] = lambda: infer_step(theirs, x, args.autocast_dtype)
    times = interleave(steps, args.repeats, args.warmup)
    return medians(times)


def micro_part(args: argparse.Namespace) -> list[dict]:
    """Single kernels against the stock ops they replace, interleaved, on stage-1 sizes of a 2x3x16x224x224 clip."""
    from video_swin.models.windows import relative_position_index, window_order, window_partition  # noqa: PLC0415

    torch.manual_seed(0)
    tokens, c = 2 * 8 * 56 * 56, 96
    x1, w1, b1 = torch.randn(tokens, c), torch.randn(4 * c, c), torch.randn(4 * c)
    x2, w2 = torch.randn(tokens, 4 * c), torch.randn(c, 4 * c)
    index = relative_position_index((8, 7, 7))
    n, rows = index.shape[0], int(index.max()) + 1
    table, bias_grad = torch.randn(rows, 12, requires_grad=True), torch.randn(12, n, n)
    windows, heads = 2 * 64, 3
    qkv = torch.randn(windows, n, 3 * c).bfloat16()
    bias = torch.randn(heads, n, n).bfloat16()
    clip = torch.randn(2, 8, 56, 56, c)
    order, position = window_order((8, 56, 56), (8, 7, 7), (4, 3, 3))

    def bias_step(fast: bool) -> None:
        table.grad = None
        b = kernels.gather_bias(table, index) if fast else table[index.reshape(-1)].view(n, n, 12).permute(2, 0, 1)
        b.backward(bias_grad)

    pairs = {
        "fc1 (50176x96 -> 384)": (lambda: kernels._mm(x1, w1, b1, True), lambda: F.linear(x1, w1, b1),
                                  "oneDNN", "F.linear (MKL)"),
        "fc2 (50176x384 -> 96)": (lambda: kernels._mm(x2, w2, None, True), lambda: F.linear(x2, w2),
                                  "oneDNN", "F.linear (MKL)"),
        "bias gather, forward + backward (8x7x7 window, 12 heads)": (
            lambda: bias_step(True), lambda: bias_step(False), "gather_bias", "table[index]"),
        "bf16 attention, 128 windows of 392 tokens, 3 heads": (
            lambda: kernels._chunked_forward(qkv, bias, None, heads, 0.1, 16),
            lambda: kernels._flash_forward(qkv, bias, None, heads, 0.1, 64), "chunked bmm", "flash kernel"),
        "shift + partition of a 2x8x56x56x96 map": (
            lambda: kernels.reorder_tokens(clip.view(2, -1, c), order, position),
            lambda: window_partition(torch.roll(clip, (-4, -3, -3), (1, 2, 3)), (8, 7, 7)),
            "reorder_tokens", "roll + window_partition"),
    }  # fmt: skip
    out = []
    for name, (ours, stock, ours_name, stock_name) in pairs.items():
        t = medians(interleave({"ours": ours, "stock": stock}, max(args.repeats, 5), max(args.warmup, 1)))
        out.append({"kernel": name, "ours": ours_name, "stock": stock_name, "ours_ms": 1e3 * t["ours"]["wall"],
                    "stock_ms": 1e3 * t["stock"]["wall"]})  # fmt: skip
    return out


def rss_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from /proc, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Resets this process's peak RSS (``VmHWM``) to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: builds one model, then measures how far one step raises resident memory.

    The model (random weights: they do not change memory), its input, its
    AdamW optimizer and, for training, everything a step needs are created
    first; the process's resident set then is the baseline. The peak RSS is
    reset to it (``/proc/self/clear_refs``), the steps run, and the reported
    figure is the peak minus the baseline: activations, gradients, optimizer
    state, temporaries and allocator slack, as the operating system sees them.
    Training runs two steps, so that the second one carries AdamW's state.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kernels.set_fast_paths(**args.fast_paths)
    if args.memory_child == "ours":
        model = video_swin.create_model(MODEL, **args.ours_options)
    else:
        import torchvision  # noqa: PLC0415

        model = getattr(torchvision.models.video, MODEL)()
    shape = args.train_shape if args.memory_mode == "train" else args.infer_shape
    x = torch.randn(shape)
    y = torch.randint(0, 400, (shape[0],))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    baseline = rss_kib("VmRSS")
    if not reset_peak_rss():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); memory part unavailable")
    if args.memory_mode == "train":
        model.train()
        for _ in range(2):
            train_step(model, optimizer, x, y, args.autocast_dtype)
    else:
        model.eval()
        infer_step(model, x, args.autocast_dtype)
    peak = rss_kib("VmHWM")
    print(json.dumps({"baseline_mib": baseline / 1024, "peak_mib": peak / 1024, "step_mib": (peak - baseline) / 1024}))


# glibc serves blocks below a threshold from its heap and keeps them after they
# are freed; the threshold rises (up to 32 MiB) each time a larger block is
# freed. Fixing it at 64 KiB returns every large block at once, so that the
# peak RSS is close to the peak of live tensors.
ALLOCATORS = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def start_memory_child(args: argparse.Namespace, name: str, mode: str, allocator: str,
                       sets: list[str], fast_paths: str) -> subprocess.Popen:  # fmt: skip
    """Starts one :func:`memory_child` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": _pythonpath(), **ALLOCATORS[allocator]}
    cmd = [sys.executable, __file__, "--memory-child", name, "--memory-mode", mode,
           "--threads", str(args.threads), "--autocast", args.autocast, "--fast-paths", fast_paths,
           "--train-shape", shape_text(args.train_shape), "--infer-shape", shape_text(args.infer_shape),
           *sum((["--set", s] for s in sets), [])]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def collect(children: dict[str, subprocess.Popen]) -> dict[str, dict]:
    """The figures of memory children, which run side by side (their RSS does not depend on their speed)."""
    out = {}
    for name, child in children.items():
        stdout, stderr = child.communicate()
        if child.returncode:
            raise RuntimeError(f"memory child {name} failed:\n{stderr}")
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


def memory_part(args: argparse.Namespace, mode: str, allocator: str) -> dict[str, dict]:
    """Peak memory of one step of each model, each in a fresh process (see :func:`memory_child`)."""
    return collect({name: start_memory_child(args, name, mode, allocator, args.set, args.fast_paths_text)
                    for name in ("ours", "theirs")})  # fmt: skip


def levers_memory(args: argparse.Namespace, allocator: str) -> dict[str, float]:
    """Training-step memory of ours with each lever undone (fresh processes, two at a time), in MiB."""
    runs = {name: ([f"{k}={json.dumps(v)}" for k, v in lever.items() if k != "fast_paths"],
                   ",".join(f"{k}={'on' if v else 'off'}" for k, v in lever.get("fast_paths", {}).items()))
            for name, lever in LEVERS.items()}  # fmt: skip
    out = {}
    names = [*runs, "theirs"]
    for i in range(0, len(names), 2):
        children = {name: start_memory_child(args, "theirs" if name == "theirs" else "ours", "train", allocator,
                                             *runs.get(name, ([], "")))
                    for name in names[i : i + 2]}  # fmt: skip
        out.update({name: figures["step_mib"] for name, figures in collect(children).items()})
    return out


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def parse_sets(items: list[str]) -> dict:
    """``["use_checkpoint=true", "drop_path_rate=0"]`` -> create_model overrides (JSON values, else strings)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torchvision  # noqa: PLC0415

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min); {versions}"


def print_report(results: dict, args: argparse.Namespace) -> None:
    print(f"\nmachine: {results['machine']} at start; {machine().split('; ')[0]} at the end")
    print(f"torch threads {args.threads}; autocast {args.autocast}; "
          f"ours: create_model({MODEL!r}, {args.ours_options}), compile: {args.compile}; "
          f"medians of {args.repeats} repetitions after {args.warmup} warm-up\n")  # fmt: skip
    timed = [p for p in ("train", "infer") if p in results]
    if timed:
        print("| part | input | ours (s) | theirs (s) | theirs / ours, wall | per-pair median "
              "| CPU s ours / theirs | theirs / ours, CPU |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for part in timed:
            r = results[part]
            print(f"| {part} | {r['shape']} | {r['ours_wall']:.2f} | {r['theirs_wall']:.2f} "
                  f"| **{r['ratio_wall']:.2f}x** | {r['pair_ratio_wall']:.2f}x "
                  f"| {r['ours_cpu']:.2f} / {r['theirs_cpu']:.2f} | {r['ratio_cpu']:.2f}x |")  # fmt: skip
        if "infer" in results:
            diff = results["infer"]["logits_rel_diff"]
            print(f"\ninference logits, ours vs theirs: max relative difference {diff:.1e}")
    memory = [k for k in results if k.startswith("memory_")]
    if memory:
        print("\n| peak RSS above the built model | input | glibc malloc | ours (MiB) | theirs (MiB) | ours / theirs |")
        print("|---|---|---|---:|---:|---:|")
        for key in memory:
            _, mode, allocator = key.split("_")
            o, t = results[key]["ours"]["step_mib"], results[key]["theirs"]["step_mib"]
            shape = shape_text(args.train_shape if mode == "train" else args.infer_shape)
            label = "default" if allocator == "default" else "mmap threshold 64 KiB"
            print(f"| {mode} | {shape} | {label} | {o:.0f} | {t:.0f} | **{o / t:.2f}x** |")
    if "levers" in results:
        lv, mem = results["levers"], results["levers_memory"]
        base = lv["all (default)"]
        print(f"\n| ours, training step at {shape_text(args.train_shape)} | s (wall) | vs all levers, wall "
              f"| vs all, CPU | theirs / this, wall | step memory, MiB ({' / '.join(mem)}) | / theirs |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, t in lv.items():
            mib = " / ".join(f"{m[name]:.0f}" for m in mem.values())
            rel = " / ".join(f"{m[name] / m['theirs']:.2f}x" for m in mem.values())
            print(f"| {name} | {t['wall']:.2f} | {t['wall'] / base['wall']:.2f}x | {t['cpu'] / base['cpu']:.2f}x "
                  f"| {lv['theirs']['wall'] / t['wall']:.2f}x | {mib} | {rel} |")  # fmt: skip
    if "infer_levers" in results:
        lv = results["infer_levers"]
        base = lv["all (default)"]
        print(f"\n| ours, inference at {shape_text(args.infer_shape)} | s (wall) | vs all, wall | vs all, CPU "
              "| theirs / this, wall |")  # fmt: skip
        print("|---|---:|---:|---:|---:|")
        for name, t in lv.items():
            print(f"| {name} | {t['wall']:.2f} | {t['wall'] / base['wall']:.2f}x | {t['cpu'] / base['cpu']:.2f}x "
                  f"| {lv['theirs']['wall'] / t['wall']:.2f}x |")  # fmt: skip
    if "micro" in results:
        print("\n| kernel | ours | ms | replaces | ms | speed-up |\n|---|---|---:|---|---:|---:|")
        for r in results["micro"]:
            print(f"| {r['kernel']} | {r['ours']} | {r['ours_ms']:.1f} | {r['stock']} | {r['stock_ms']:.1f} "
                  f"| {r['stock_ms'] / r['ours_ms']:.2f}x |")  # fmt: skip
    if "scaling" in results:
        print("\n| ours, inference | input | tokens | s/clip (wall) | cost vs base, wall | cost vs base, CPU |")
        print("|---|---|---:|---:|---:|---:|")
        for r in results["scaling"]:
            print(f"| {r['size']} | {r['shape']} | {r['tokens']:.0f}x | {r['wall']:.2f} "
                  f"| {r['cost_wall']:.2f}x | {r['cost_cpu']:.2f}x |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="train,infer,memory,scaling",
                        help="comma-separated subset of train,infer,memory,scaling,levers,micro "
                             "(default: all but levers)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per part (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default: 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all CPUs)")  # fmt: skip
    parser.add_argument("--train-shape", type=parse_shape, default="2x3x16x224x224",
                        help="BxCxTxHxW of the training step")  # fmt: skip
    parser.add_argument("--infer-shape", type=parse_shape, default="1x3x32x224x224", help="BxCxTxHxW of inference")
    parser.add_argument("--scaling-shape", type=parse_shape, default="1x3x16x224x224",
                        help="base clip of the scaling part; H,W and T are doubled from it")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repetition: a smoke run")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none", help="CPU autocast for both models")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (first step compiles, untimed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="create_model override for ours, e.g. --set use_checkpoint=true")  # fmt: skip
    parser.add_argument("--memory-modes", default="train,infer", help="memory part: train,infer or one of them")
    parser.add_argument("--allocators", default="default,fixed",
                        help="glibc malloc settings of the memory runs: default (as is), "
                             "fixed (mmap threshold 64 KiB)")  # fmt: skip
    parser.add_argument("--fast-paths", default="", metavar="NAME=on|off,...",
                        help="switch our CPU fast paths, e.g. attention=off,linear=off (default: all on)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    parser.add_argument("--memory-child", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-mode", choices=("train", "infer"), default="train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, parse_shape(value) if key.endswith("shape") else value)
    args.autocast_dtype = torch.bfloat16 if args.autocast == "bf16" else None
    args.ours_options = parse_sets(args.set)
    args.fast_paths_text = args.fast_paths
    args.fast_paths = {k: v == "on" for k, v in (item.split("=") for item in args.fast_paths.split(",") if item)}
    if args.memory_child:
        memory_child(args)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"train", "infer", "memory", "scaling", "levers", "micro"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    kernels.set_fast_paths(**args.fast_paths)
    results: dict = {"machine": machine(), "threads": args.threads, "autocast": args.autocast}
    timed = {"train", "infer", "scaling", "levers"} & set(parts)
    models = build_models(args.ours_options, compile_ours=args.compile) if timed else {}
    for part in ("train", "infer"):
        if part in parts:
            shape = args.train_shape if part == "train" else args.infer_shape
            results[part] = {"shape": shape_text(shape), **time_part(part, models, shape, args)}
            print(f"{part}: done ({results[part]['ratio_wall']:.2f}x wall)", file=sys.stderr, flush=True)
    if "memory" in parts:
        for mode in args.memory_modes.split(","):
            for allocator in args.allocators.split(","):
                results[f"memory_{mode}_{allocator}"] = memory_part(args, mode, allocator)
        print("memory: done", file=sys.stderr, flush=True)
    if "scaling" in parts:
        results["scaling"] = scaling_part(models["ours"], args.scaling_shape, args)
        print("scaling: done", file=sys.stderr, flush=True)
    if "micro" in parts:
        results["micro"] = micro_part(args)
        print("micro: done", file=sys.stderr, flush=True)
    if "levers" in parts:
        results["levers"] = levers_part(models, args.train_shape, args)
        allocators = args.allocators.split(",")
        results["levers_memory"] = {allocator: levers_memory(args, allocator) for allocator in allocators}
        results["infer_levers"] = infer_levers_part(models, args.infer_shape, args)
        print("levers: done", file=sys.stderr, flush=True)
    print_report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
