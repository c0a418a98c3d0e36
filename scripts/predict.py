"""Classify video files: ``scripts/predict.py --checkpoint CKPT VIDEO [VIDEO ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from video_swin.checkpoints import CheckpointError
from video_swin.config import ArgumentParser, ConfigError, load_config, parse_views

EPILOG = """\
Videos go through the evaluation's test-time pipeline (evenly spaced clips,
crops along the long side) with the settings of the training run saved beside
the checkpoint; --config is only needed for weights without them (official
files). Exit code 1 if any file could not be read, 2 for a usage mistake.

examples:
  python scripts/predict.py --checkpoint runs/demo/model.safetensors data/demo/val/*/*.mp4
  python scripts/predict.py --checkpoint k400.pth --config k400_swin_t.yaml --classes k400_classes.txt \\
      --views 4x3 --top-k 3 --json clip.mp4
"""


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description="Top-k classes with probabilities for each video, averaged over CLIPSxCROPS views.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    parser.add_argument("--checkpoint", required=True, help="trained weights (.safetensors with its .json sidecar)")
    parser.add_argument("--views", help="CLIPSxCROPS, e.g. 4x3 or 1x1 (default: eval.views of the config)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per video (default: 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--classes", help="class names, one per line (default: those saved with the checkpoint)")
    parser.add_argument("--config", help="config for weights saved without one (a path or a name in configs/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dataset_log = logging.getLogger("video_swin.data.dataset")
    level = dataset_log.level
    dataset_log.setLevel(logging.ERROR)  # failures are reported per file below
    try:
        return _run(args)
    finally:
        dataset_log.setLevel(level)  # main() may be called in-process (tests)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.views:
            parse_views(args.views, key="--views")
        if args.top_k < 1:
            raise ConfigError(f"--top-k: must be >= 1, got {args.top_k}")
        for key, path in (("--checkpoint", args.checkpoint), ("--classes", args.classes)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{key}: file not found: {path}")
        cfg = load_config(args.config) if args.config else None
        from video_swin.engine import format_predictions, load_predictor, predict_videos  # heavy imports

        model, cfg, classes = load_predictor(args.checkpoint, cfg=cfg, classes=args.classes)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    results = predict_videos(model, cfg, classes, args.videos, views=args.views, top_k=args.top_k)
    for r in results:
        if r.error is not None:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "views": args.views or cfg.eval.views,
                          "videos": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_predictions(results))
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
