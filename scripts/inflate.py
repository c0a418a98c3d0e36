"""Inflate an ImageNet Swin checkpoint into a Video Swin model: ``scripts/inflate.py --image-checkpoint IMG --out OUT``.

A shim over ``video-swin inflate`` (video_swin/cli.py), kept so these paths work
under ``python`` and ``accelerate launch``; the options are the command's.
"""

import sys

from video_swin.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    return cli(["inflate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
