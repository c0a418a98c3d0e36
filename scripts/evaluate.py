"""Evaluate a checkpoint with multi-view testing: ``scripts/evaluate.py --config CONFIG --checkpoint CKPT``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from video_swin.checkpoints import CheckpointError
from video_swin.config import ArgumentParser, ConfigError, check_paths, load_config, parse_views
from video_swin.data import TooManyBrokenVideos

EPILOG = """\
The config defines the model and the data (data.val_annotations is scored);
the checkpoint supplies the weights: our .safetensors files, or official Video
Swin / torchvision swin3d state dicts. Class names come from the checkpoint's
sidecar, else from the config. Writes OUT/metrics.json, OUT/predictions.csv
and OUT/confusion_matrix.png.

examples:
  python scripts/evaluate.py --config demo.yaml --checkpoint runs/demo/model.safetensors --views 1x1
  accelerate launch --multi_gpu --num_processes 2 scripts/evaluate.py --config k400_swin_t.yaml \\
      --checkpoint swin_tiny_patch244_window877_kinetics400_1k.pth --set eval.max_views_per_forward=6
"""


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description="Score every video of a validation set over CLIPSxCROPS views, in one or many processes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", required=True, help="YAML config: a path or a name in configs/")
    parser.add_argument("--checkpoint", required=True, help="weights to evaluate (.safetensors, .pth, ...)")
    parser.add_argument("--views", help="CLIPSxCROPS, e.g. 4x3 (the official Kinetics protocol) or 1x1; "
                        "default: eval.views of the config")
    parser.add_argument("--out", help="report folder (default: <output_dir>/eval_<views>)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set eval.average=logit eval.batch_size=2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.set)
        if args.views:
            parse_views(args.views, key="--views")
        check_paths(cfg, evaluation=True)
        if not Path(args.checkpoint).is_file():
            raise ConfigError(f"--checkpoint: file not found: {args.checkpoint}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    views = args.views or cfg.eval.views
    from video_swin.engine import TrainingError, evaluate_checkpoint, format_summary  # heavy imports

    out = Path(args.out or Path(cfg.output_dir) / f"eval_{views}")
    try:
        summary = evaluate_checkpoint(cfg, args.checkpoint, out, views=views,
                                      extra={"config": args.config, "overrides": args.set})
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (TrainingError, TooManyBrokenVideos) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary is not None:  # main process only
        print(format_summary(summary))
        print(f"wrote {out}/metrics.json, predictions.csv, confusion_matrix.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
