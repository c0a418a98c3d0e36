"""The Markdown tables of ``model_speed.py``."""

from __future__ import annotations

import argparse

from .common import MODEL, machine, shape_text


def print_report(results: dict, args: argparse.Namespace) -> None:
    print(f"\nmachine: {results['machine']} at start; {machine().split('; ')[0]} at the end")
    print(f"torch threads {args.threads}; autocast {args.autocast}; "
          f"ours: create_model({MODEL!r}, {args.ours_options}), accelerate_cpu: {args.seam}, compile: {args.compile}; "
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
        if "limit" in results:
            lim = results["limit"]
            print(f"\nGEMM limit, measured in this run: {lim['profile']['cpu']} ({lim['profile']['capability']}): "
                  f"float32 {lim['profile']['fp32_gflops']:.0f} GFLOP/s, bf16 {lim['profile']['bf16_gflops']:.0f} "
                  f"GFLOP/s ({'native' if lim['profile']['bf16_native'] else 'emulated'}); this run's precision: "
                  f"{lim['rate_gflops']:.0f} GFLOP/s\n")
            print("| part | GFLOP | GEMM-limited time (s) | ours / limit | theirs / limit |\n|---|---:|---:|---:|---:|")
            for part in timed:
                p = lim[part]
                print(f"| {part} | {p['gflop']:.0f} | {p['limit_s']:.2f} | {p['ours_distance']:.2f}x "
                      f"| {p['theirs_distance']:.2f}x |")
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
            measured = all(name in m for m in mem.values())  # not for the per-machine choices
            mib = " / ".join(f"{m[name]:.0f}" for m in mem.values()) if measured else "not measured"
            rel = " / ".join(f"{m[name] / m['theirs']:.2f}x" for m in mem.values()) if measured else ""
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
