"""Inflate an ImageNet Swin checkpoint into a Video Swin model and save it.

Example:
    python scripts/inflate.py --image-checkpoint swin_tiny_patch4_window7_224.pth \\
        --model swin3d_t --out swin3d_t_inflated.safetensors

Reads official Microsoft Swin, timm and torchvision 2D files (the layout is
detected), prints what was loaded, converted, missing and unexpected, and
writes our safetensors file plus its JSON sidecar, which ``load_checkpoint``,
``load_model`` and the training config's pretrained weights accept.
"""

from __future__ import annotations

import argparse
import logging
import sys

import video_swin
from video_swin.checkpoints import CheckpointError, inflate_image_checkpoint, save_checkpoint
from video_swin.config import ArgumentParser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-checkpoint", required=True, help="2D Swin weights (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("--model", default="swin3d_t", help="video preset (default: swin3d_t)")
    parser.add_argument("--out", required=True, help="output .safetensors path (a .json sidecar is written beside it)")
    parser.add_argument("--temporal-init", choices=["average", "center"], default="average",
                        help="patch-kernel inflation: repeat / T (average) or middle frame only (center)")
    parser.add_argument("--num-classes", type=int, default=400, help="classes of the video head (default: 400)")
    parser.add_argument("--keep-head", action="store_true",
                        help="keep the image classifier when its class count equals --num-classes")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error(f"--out must end in .safetensors, got {args.out!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        model = video_swin.create_model(args.model, num_classes=args.num_classes)
        report = inflate_image_checkpoint(model, args.image_checkpoint, args.temporal_init, keep_head=args.keep_head)
        path = save_checkpoint(
            model, args.out, inflated_from=str(args.image_checkpoint), temporal_init=args.temporal_init
        )
    except (CheckpointError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
