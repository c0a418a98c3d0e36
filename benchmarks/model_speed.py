"""Model speed and memory: our ``swin3d_t`` against torchvision's ``swin3d_t``, same weights, same inputs.

Ours runs as users get its CPU speed: built by ``create_model`` and passed
through ``video_swin.models.kernels.accelerate_cpu`` (``--seam off``: the
reference model; ``--recompute``, ``--recompute-from``: that call's recompute options).

Parts (``--parts``, comma separated; train, infer, memory and scaling by default):

* ``train``: one training step (forward, cross-entropy, backward, AdamW step)
  at ``--train-shape`` (default 2x3x16x224x224), both models in this process,
  interleaved: every repetition runs ours and theirs back to back, the order
  alternating (AB BA AB ...) so that a drift in machine load hits both alike.
* ``infer``: one forward in inference mode at ``--infer-shape`` (default
  1x3x32x224x224), interleaved the same way. Before timing, the two models'
  logits on that input are compared (the weights are torchvision's, loaded
  into ours with ``load_checkpoint``).
* ``memory``: peak memory of a training step (and of an inference forward),
  each model in its own fresh process (see ``speed.memory.memory_child``), once with
  glibc's default malloc settings and once with large blocks returned to the
  system as soon as they are freed (then the peak RSS follows the peak of
  live tensors; the default also counts what the allocator keeps).
* ``micro``: single kernels against the stock ops they replace (GEMMs,
  bias gather, bf16 attention, shift + partition), stage-1 sizes.
* ``scaling``: our inference time per clip at ``--scaling-shape`` and with H
  and W doubled (4x tokens) and T doubled (2x tokens).
* ``levers``: training steps (and their memory) and inference of ours with
  one optimisation undone at a time, the reference model among them.

One module per part under ``benchmarks/speed/``.

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
    python benchmarks/model_speed.py --parts train --seam off          # our reference model, no CPU fast paths
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed/ next to this file, also when imported
from speed.common import build_models, infer_step, interleave, machine, parse_shape, shape_text, train_step  # noqa: E402
from speed.levers import infer_levers_part, levers_memory, levers_part  # noqa: E402
from speed.memory import memory_child, memory_part  # noqa: E402
from speed.micro import micro_part  # noqa: E402
from speed.report import print_report  # noqa: E402
from speed.timing import gemm_limit, scaling_part, time_part  # noqa: E402

from video_swin.models import kernels  # noqa: E402

QUICK = {"train_shape": "1x3x2x224x224", "infer_shape": "1x3x2x224x224", "scaling_shape": "1x3x2x112x112",
         "repeats": 1, "warmup": 1}  # fmt: skip
# gpu_speed.py imports these from here
__all__ = ["build_models", "infer_step", "interleave", "parse_shape", "shape_text", "train_step"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="train,infer,memory,scaling",
                        help="comma-separated subset of train,infer,memory,scaling,levers,micro "
                             "(default: train,infer,memory,scaling)")  # fmt: skip
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
    parser.add_argument("--seam", choices=("on", "off"), default="on",
                        help="apply accelerate_cpu to ours (default: on)")  # fmt: skip
    parser.add_argument("--recompute", default="mlp,qkv", metavar="mlp,qkv|none",
                        help="accelerate_cpu's recompute options that are on (default: mlp,qkv)")  # fmt: skip
    parser.add_argument("--recompute-from", type=int, default=kernels.RECOMPUTE_FROM_BYTES, metavar="BYTES",
                        help="accelerate_cpu's recompute_from: recompute only in blocks whose input holds at least "
                             "this many bytes (default: accelerate_cpu's, %(default)s; 0: every block)")  # fmt: skip
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
    recompute = {item.strip() for item in args.recompute.split(",")} - {"none", ""}
    if recompute - {"mlp", "qkv"}:
        parser.error(f"--recompute: expected mlp, qkv or none, got {args.recompute!r}")
    args.seam = {"enabled": args.seam == "on", "recompute_mlp": "mlp" in recompute, "recompute_qkv": "qkv" in recompute,
                 "recompute_from": args.recompute_from}  # fmt: skip
    if args.memory_child:
        memory_child(args)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"train", "infer", "memory", "scaling", "levers", "micro"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    kernels.set_fast_paths(**args.fast_paths)
    results: dict = {"machine": machine(), "threads": args.threads, "autocast": args.autocast, "seam": args.seam}
    timed = {"train", "infer", "scaling", "levers"} & set(parts)
    models = build_models(args.ours_options, seam=args.seam, compile_ours=args.compile) if timed else {}
    for part in ("train", "infer"):
        if part in parts:
            shape = args.train_shape if part == "train" else args.infer_shape
            results[part] = {"shape": shape_text(shape), **time_part(part, models, shape, args)}
            print(f"{part}: done ({results[part]['ratio_wall']:.2f}x wall)", file=sys.stderr, flush=True)
    if {"train", "infer"} & set(parts):
        results["limit"] = gemm_limit(models, results, args)
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
