"""Evaluate a checkpoint with multi-view testing: ``scripts/evaluate.py --config CONFIG --checkpoint CKPT``.

A shim over ``video-swin evaluate`` (video_swin/cli.py), kept so these paths work
under ``python`` and ``accelerate launch``; the options are the command's.
"""

import sys

from video_swin.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    return cli(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
