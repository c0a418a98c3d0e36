"""GPU speed: our ``swin3d_t`` against torchvision's on one GPU, FLOP utilisation, the largest ``swin3d_b`` batch.

Written for the GPU part of the performance issue; run it on a machine with a
CUDA GPU (``--device cpu`` with ``--quick`` is a smoke run of the code only).
Our model runs as ``create_model`` builds it: the reference PyTorch ops,
which is what training on a GPU uses; ``--accelerate`` applies
``video_swin.models.kernels.accelerate_cpu`` first (its CPU kernels fall back
to the reference on a GPU; its MLP recomputation works on any device).
Parts (``--parts``, comma separated; all by default):

* ``train``: one training step (forward, cross-entropy, backward, AdamW
  step) under bf16 autocast at ``--train-shape`` (default 8x3x32x224x224), our
  model and torchvision's with the same weights, interleaved in this process
  (order alternating every repetition), the GPU synchronised around each step;
  then the peak memory allocated by one step of each
  (``torch.cuda.max_memory_allocated``).
* ``mfu``: model FLOP utilisation of our training step: 3 x the forward's
  multiply-adds x 2 FLOPs (``video_swin.models.flops.count_flops``, the
  model's own FLOPs, not what recomputation adds) / the median step time /
  the device's dense bf16 peak (``--peak-tflops``, or looked up from the
  device name: H100 SXM/H200 989, H100 PCIe 756, A100 312 TFLOP/s).
* ``batch``: the largest training batch of ``swin3d_b`` at 32x224x224 in
  bf16 that completes a step, with and without activation checkpointing
  (``use_checkpoint``), by doubling and then bisecting; a batch counts as
  fitting when the step finishes without ``torch.cuda.OutOfMemoryError``.

Examples:
    python benchmarks/gpu_speed.py                      # everything (a few minutes on an H100)
    python benchmarks/gpu_speed.py --parts train,mfu --repeats 10
    python benchmarks/gpu_speed.py --device cpu --quick # smoke run without a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import build_models, interleave, parse_shape, shape_text, train_step  # noqa: E402

import video_swin  # noqa: E402
from video_swin.models.flops import count_flops  # noqa: E402
from video_swin.models.kernels import accelerate_cpu  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}  # dense, no sparsity
# A smoke run of the code: tiny clips, and the batch search on the small model (swin3d_b only costs time on CPU).
QUICK = {"train_shape": "1x3x4x64x64", "batch_shape": "1x3x4x64x64", "repeats": 2, "warmup": 1, "max_batch": 2,
         "batch_model": "swin3d_t"}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return value, f"{name}: {key}"
    return None, f"{name}: unknown peak, pass --peak-tflops"


def train_part(args: argparse.Namespace, device: torch.device) -> dict:
    models = {name: m.to(device).train() for name, m in build_models({}, seam={"enabled": args.accelerate}).items()}
    x = torch.randn(args.train_shape, device=device)
    y = torch.randint(0, 400, (args.train_shape[0],), device=device)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    def step(name: str) -> None:  # timed up to the GPU's end of the step; the previous step ended the same way
        train_step(models[name], optimizers[name], x, y, torch.bfloat16)
        sync(device)

    times = {name: t["wall"] for name, t in interleave({n: lambda n=n: step(n) for n in models}, args.repeats,
                                                        args.warmup).items()}  # fmt: skip
    out = {name: statistics.median(t) for name, t in times.items()}
    out["ratio"] = out["theirs"] / out["ours"]
    out["pair_ratio"] = statistics.median(t / o for o, t in zip(times["ours"], times["theirs"], strict=True))
    if device.type == "cuda":
        for name in models:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            step(name)
            out[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["memory_ratio"] = out["ours_peak_gib"] / out["theirs_peak_gib"]
    macs = count_flops(models["ours"].float().eval(), x[:1].float())
    out["train_tflop_per_step"] = 3 * 2 * macs * args.train_shape[0] / 1e12
    return out


def fits(name: str, shape: tuple[int, ...], checkpoint: bool, device: torch.device, accelerate: bool) -> bool:
    model = video_swin.create_model(name, use_checkpoint=checkpoint)
    model = accelerate_cpu(model, enabled=accelerate).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    try:
        x = torch.randn(shape, device=device)
        train_step(model, optimizer, x, torch.zeros(shape[0], dtype=torch.long, device=device), torch.bfloat16)
        sync(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def largest_batch(name: str, clip: tuple[int, ...], checkpoint: bool, device: torch.device, cap: int,
                  accelerate: bool) -> int:  # fmt: skip
    """The largest batch (up to ``cap``) whose training step fits: doubling, then bisecting."""
    low, high = 0, 1
    while high <= cap and fits(name, (high, *clip), checkpoint, device, accelerate):
        low, high = high, high * 2
    high = min(high, cap + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(name, (mid, *clip), checkpoint, device, accelerate) else (low, mid)
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="train,mfu,batch", help="comma-separated parts (default: all)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--train-shape", type=parse_shape, default="8x3x32x224x224", help="BxCxTxHxW of training")
    parser.add_argument("--batch-shape", type=parse_shape, default="1x3x32x224x224",
                        help="batch part: the clip (B is ignored) (default: 1x3x32x224x224)")
    parser.add_argument("--batch-model", default="swin3d_b", help="batch part: the model (default: swin3d_b)")
    parser.add_argument("--max-batch", type=int, default=512, help="batch part: stop searching here (default: 512)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default: 3)")
    parser.add_argument("--peak-tflops", type=float, help="mfu part: the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions: a smoke run")
    parser.add_argument("--accelerate", action="store_true",
                        help="apply accelerate_cpu to our model (MLP recomputation; default: the reference model)")
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, parse_shape(value) if key.endswith("shape") else value)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"train", "mfu", "batch"}
    if unknown:
        parser.error(f"--parts: unknown part(s) {', '.join(sorted(unknown))}; choose from train, mfu, batch")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here (use --device cpu --quick for a smoke run)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results: dict = {"device": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                     "accelerate_cpu": args.accelerate}  # fmt: skip
    print(f"{name}, torch {torch.__version__}, {results['date']}")
    if "train" in parts or "mfu" in parts:
        train = results["train"] = train_part(args, device)
        print(f"\ntraining step, bf16 autocast, {shape_text(args.train_shape)}, median of {args.repeats}:")
        print(f"  ours {train['ours'] * 1e3:.1f} ms, torchvision {train['theirs'] * 1e3:.1f} ms: "
              f"{train['ratio']:.2f}x (median of pair ratios {train['pair_ratio']:.2f}x)")  # fmt: skip
        if "memory_ratio" in train:
            print(f"  peak memory: ours {train['ours_peak_gib']:.2f} GiB, torchvision "
                  f"{train['theirs_peak_gib']:.2f} GiB: {train['memory_ratio']:.2f}x")  # fmt: skip
        if "mfu" in parts:
            peak, source = peak_tflops(device, args.peak_tflops)
            achieved = train["train_tflop_per_step"] / train["ours"]
            results["mfu"] = {"achieved_tflops": achieved, "peak_tflops": peak, "peak_source": source,
                              "mfu": achieved / peak if peak else None}  # fmt: skip
            mfu = f"{achieved / peak:.1%} of {peak:.0f} ({source})" if peak else f"no peak ({source})"
            print(f"  model FLOPs {train['train_tflop_per_step']:.3f} TFLOP per step: {achieved:.1f} TFLOP/s, MFU {mfu}")
    if "batch" in parts:
        clip = args.batch_shape[1:]
        results["batch"] = {}
        for checkpoint in (False, True):
            best = largest_batch(args.batch_model, clip, checkpoint, device, args.max_batch, args.accelerate)
            results["batch"]["checkpointing" if checkpoint else "plain"] = best
            print(f"largest {args.batch_model} batch at {shape_text(clip)}, bf16, "
                  f"{'with' if checkpoint else 'without'} activation checkpointing: {best}"
                  + (f" (the search stops at {args.max_batch})" if best == args.max_batch else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
