"""Train a Video Swin: ``accelerate launch scripts/train.py --config k400_swin_t.yaml [--set KEY=VALUE ...]``."""

from __future__ import annotations

import logging
import sys

from video_swin.checkpoints import CheckpointError
from video_swin.config import ArgumentParser, ConfigError, check_paths, load_config
from video_swin.data import TooManyBrokenVideos


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description="Train a Video Swin Transformer with accelerate (CPU, one or many GPUs, many nodes).",
        epilog="A bare config name is looked up in configs/. Example: "
        "accelerate launch scripts/train.py --config demo.yaml --set train.epochs=3",
    )
    parser.add_argument("--config", required=True, help="YAML config: a path or a name in configs/")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set train.batch_size=4 optim.lr=5e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete state in output_dir/checkpoints")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.set)
        check_paths(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from video_swin.engine import ResumeError, TrainingError, train  # heavy imports after the config is known good

    try:
        train(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, CheckpointError, ResumeError, TrainingError, TooManyBrokenVideos) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, FileNotFoundError, CheckpointError, ResumeError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
