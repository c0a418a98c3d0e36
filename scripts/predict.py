"""Classify video files: ``scripts/predict.py --checkpoint CKPT VIDEO [VIDEO ...]``.

A shim over ``video-swin predict`` (video_swin/cli.py), kept so these paths work
under ``python`` and ``accelerate launch``; the options are the command's.
"""

import sys

from video_swin.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    return cli(["predict", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
