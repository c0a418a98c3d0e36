"""Write the demo dataset: ``scripts/make_demo_data.py --out data/demo --seed 0``.

A shim over ``video-swin make-demo-data`` (video_swin/cli.py), kept so these paths work
under ``python`` and ``accelerate launch``; the options are the command's.
"""

import sys

from video_swin.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    return cli(["make-demo-data", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
