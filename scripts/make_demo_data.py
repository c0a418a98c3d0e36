"""Write the demo dataset: ten time-reversed motion classes as H.264 mp4s in Kinetics layout.

Example:
    python scripts/make_demo_data.py --out data/demo --seed 0
"""

import argparse
import logging

from video_swin.data import make_demo_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0, help="the output depends only on the seed and the counts")
    parser.add_argument("--train-per-class", type=int, default=100, help="training videos per class (default: 100)")
    parser.add_argument("--val-per-class", type=int, default=20, help="validation videos per class (default: 20)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_demo_data(args.out, args.seed, args.train_per_class, args.val_per_class, args.workers)


if __name__ == "__main__":
    main()
