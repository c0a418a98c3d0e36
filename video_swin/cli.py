"""The ``video-swin`` command: train, evaluate, predict, inflate, make-demo-data.

Each subcommand parses its options, loads the config and makes one library
call; :func:`main` maps the library's exceptions to exit codes in one place:
a user mistake (:data:`~video_swin.errors.USAGE_ERRORS`) is one ``error: ...``
line and exit code 2, a run that cannot go on (:data:`~video_swin.errors.RUN_ERRORS`)
exit code 1, Ctrl-C exit code 130; a training run that SIGTERM, SIGINT or
SIGUSR1 stopped after it saved its state (:class:`~video_swin.errors.Preempted`)
one line and exit code 128 + the signal. Torch and the engine are imported only
inside the subcommands, so ``--help`` and config mistakes answer quickly.

Also runs as a module, which is what launchers need::

    python -m video_swin.cli train --config demo.yaml
    accelerate launch -m video_swin.cli train --config k400_swin_t.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import ArgumentParser, check_paths, list_configs, load_config, parse_views
from .errors import RUN_ERRORS, USAGE_ERRORS, ConfigError, Preempted

PROG = "video-swin"
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

EVALUATE_EPILOG = """\
The config defines the model and the data (data.val_annotations is scored);
the checkpoint supplies the weights: our .safetensors files, or official Video
Swin / torchvision swin3d state dicts. Class names come from the checkpoint's
sidecar, else from the config. Writes OUT/metrics.json, OUT/predictions.csv
and OUT/confusion_matrix.png.

examples:
  video-swin evaluate --config demo.yaml --checkpoint runs/demo/model.safetensors --views 1x1
  accelerate launch --multi_gpu --num_processes 2 -m video_swin.cli evaluate --config k400_swin_t.yaml \\
      --checkpoint swin_tiny_patch244_window877_kinetics400_1k.pth --set eval.max_views_per_forward=6
"""

PREDICT_EPILOG = """\
Videos go through the evaluation's test-time pipeline (evenly spaced clips,
crops along the long side) with the settings of the training run saved beside
the checkpoint; --config is only needed for weights without them (official
files). Exit code 1 if any file could not be read, 2 for a usage mistake.

examples:
  video-swin predict --checkpoint runs/demo/model.safetensors data/demo/val/*/*.mp4
  video-swin predict --checkpoint k400.pth --config k400_swin_t.yaml --classes k400_classes.txt \\
      --views 4x3 --top-k 3 --json clip.mp4
"""

INFLATE_DESCRIPTION = """\
Inflate an ImageNet Swin checkpoint into a Video Swin model and save it.

Reads official Microsoft Swin, timm and torchvision 2D files (the layout is
detected), prints what was loaded, converted, missing and unexpected, and
writes our safetensors file plus its JSON sidecar, which load_checkpoint,
load_model and the training config's pretrained weights accept.

example:
  video-swin inflate --image-checkpoint swin_tiny_patch4_window7_224.pth --model swin3d_t \\
      --out swin3d_t_inflated.safetensors
"""


class _CommandListFormatter(argparse.HelpFormatter):
    """Keeps each subcommand and its help on one line.

    argparse sizes the help column without the subcommands' extra indent, which
    pushes the help of the longest name (``make-demo-data``) onto a line of its own.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action.choices, dict):  # the subcommands
            longest = self._current_indent + 2 + max(map(len, action.choices))  # names sit 2 further in
            self._action_max_length = max(self._action_max_length, longest)


def _config_help() -> str:
    return f"YAML config: a path or a shipped recipe ({', '.join(list_configs())})"


def _add_set(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"override config keys, e.g. --set {example} (repeatable)")


# -- subcommands ------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    check_paths(cfg)
    from .engine import train  # heavy: only once the config is known good

    train(cfg, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    views = parse_views(args.views, key="--views") if args.views else cfg.eval.parsed_views
    check_paths(cfg, evaluation=True)
    if not Path(args.checkpoint).is_file():
        raise ConfigError(f"--checkpoint: file not found: {args.checkpoint}")
    from .engine import evaluate_checkpoint, format_summary

    out = Path(args.out or Path(cfg.output_dir) / f"eval_{views}")
    summary = evaluate_checkpoint(cfg, args.checkpoint, out, views=views,
                                  extra={"config": args.config, "overrides": args.set})
    if summary is not None:  # main process only
        print(format_summary(summary))
        print(f"wrote {out}/metrics.json, predictions.csv, confusion_matrix.png")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    views = parse_views(args.views, key="--views") if args.views else None
    if args.top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1, got {args.top_k}")
    for key, path in (("--checkpoint", args.checkpoint), ("--classes", args.classes)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{key}: file not found: {path}")
    cfg = load_config(args.config) if args.config else None
    from .engine import format_predictions, load_predictor, predict_videos

    model, cfg, classes = load_predictor(args.checkpoint, cfg=cfg, classes=args.classes)
    views = views or cfg.eval.parsed_views
    dataset_log = logging.getLogger("video_swin.data.dataset")
    level = dataset_log.level
    dataset_log.setLevel(logging.ERROR)  # failures are reported per file below
    try:
        results = predict_videos(model, cfg, classes, args.videos, views=views, top_k=args.top_k)
    finally:
        dataset_log.setLevel(level)  # main() may be called in-process (tests)
    for r in results:
        if r.error is not None:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "views": str(views),
                          "videos": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_predictions(results))
    return 1 if any(r.error is not None for r in results) else 0


def cmd_inflate(args: argparse.Namespace) -> int:
    if not args.out.endswith(".safetensors"):
        raise ConfigError(f"--out must end in .safetensors, got {args.out!r}")
    from .checkpoints import inflate_image_checkpoint, save_checkpoint
    from .models import create_model

    model = create_model(args.model, num_classes=args.num_classes)
    report = inflate_image_checkpoint(model, args.image_checkpoint, args.temporal_init, keep_head=args.keep_head,
                                      strict=not args.allow_missing)
    path = save_checkpoint(model, args.out, inflated_from=str(args.image_checkpoint), temporal_init=args.temporal_init)
    print(report)
    print(f"wrote {path}")
    return 0


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from .data import make_demo_data

    make_demo_data(args.out, args.seed, args.train_per_class, args.val_per_class, args.workers)
    return 0


# -- the parser ----------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    """The ``video-swin`` parser; each subcommand sets ``handler`` (and what counts as a usage error)."""
    parser = ArgumentParser(
        prog=PROG, description="Video Swin Transformer: train, evaluate, predict, inflate image weights.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options. Exit codes: 0 done, "
               "1 the run failed, 2 a usage or config mistake, 130 interrupted; training stopped by a signal "
               "after saving its state: 128 + the signal (143 SIGTERM, 130 SIGINT, 138 SIGUSR1).",
        formatter_class=_CommandListFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], summary: str, *,
                value_errors: bool = False, log_level: int = logging.WARNING, **kwargs) -> ArgumentParser:
        # value_errors: a ValueError from the library is a bad argument of this command (a model
        # name, a weight file), reported as a usage mistake; in training it would be a bug.
        sub = commands.add_parser(name, help=summary, description=kwargs.pop("description", summary), **kwargs)
        sub.set_defaults(handler=handler, usage_errors=(ValueError,) if value_errors else (), log_level=log_level)
        return sub

    raw = argparse.RawDescriptionHelpFormatter
    train = command("train", cmd_train, "train a model with accelerate (CPU, GPUs, nodes)",
                    epilog="A bare config name is one of the shipped recipes. Examples:\n"
                    f"  {PROG} train --config demo.yaml --set train.epochs=3\n"
                    "  accelerate launch -m video_swin.cli train --config k400_swin_t.yaml", formatter_class=raw)
    train.add_argument("--config", required=True, help=_config_help())
    _add_set(train, "train.batch_size=4 optim.lr=5e-4")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto|STATE",
                       help="continue from the newest complete state in output_dir/checkpoints, or start when "
                            "there is none ('--resume auto', the form for launchers that restart the run: "
                            "torchrun --max-restarts, SLURM --requeue); '--resume STATE': from that state folder")
    train.add_argument("--overwrite", action="store_true",
                       help="start a new run in an output_dir that holds one, removing its files "
                            "(without it, such a folder is refused)")
    train.add_argument("--allow-changes", nargs="+", default=[], metavar="KEY",
                       help="with --resume: accept these config keys or sections differing from the resumed "
                            "run's, e.g. --allow-changes train.epochs (a resumed run then differs from an "
                            "uninterrupted one)")

    evaluate = command("evaluate", cmd_evaluate, "score a checkpoint over CLIPSxCROPS views",
                       value_errors=True, epilog=EVALUATE_EPILOG, formatter_class=raw,
                       description="Score every video of a validation set over CLIPSxCROPS views, "
                       "in one or many processes.")
    evaluate.add_argument("--config", required=True, help=_config_help())
    evaluate.add_argument("--checkpoint", required=True, help="weights to evaluate (.safetensors, .pth, ...)")
    evaluate.add_argument("--views", help="CLIPSxCROPS, e.g. 4x3 (the official Kinetics protocol) or 1x1; "
                          "default: eval.views of the config")
    evaluate.add_argument("--out", help="report folder (default: <output_dir>/eval_<views>)")
    _add_set(evaluate, "eval.average=logit eval.batch_size=2")

    predict = command("predict", cmd_predict, "top-k classes of video files", value_errors=True,
                      epilog=PREDICT_EPILOG, formatter_class=raw,
                      description="Top-k classes with probabilities for each video, averaged over CLIPSxCROPS views.")
    predict.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    predict.add_argument("--checkpoint", required=True, help="trained weights (.safetensors with its .json sidecar)")
    predict.add_argument("--views", help="CLIPSxCROPS, e.g. 4x3 or 1x1 (default: eval.views of the config)")
    predict.add_argument("--top-k", type=int, default=5, help="classes listed per video (default: 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--classes", help="class names, one per line (default: those saved with the checkpoint)")
    predict.add_argument("--config", help="config for weights saved without one (a path or a shipped recipe)")

    inflate = command("inflate", cmd_inflate, "inflate 2D Swin weights into a video model",
                      value_errors=True, description=INFLATE_DESCRIPTION, formatter_class=raw)
    inflate.add_argument("--image-checkpoint", required=True, help="2D Swin weights (.pth/.pt/.bin/.safetensors)")
    inflate.add_argument("--model", default="swin3d_t", help="video preset (default: swin3d_t)")
    inflate.add_argument("--out", required=True,
                         help="output .safetensors path (a .json sidecar is written beside it)")
    inflate.add_argument("--temporal-init", choices=["average", "center"], default="average",
                         help="patch-kernel inflation: repeat / T (average) or middle frame only (center)")
    inflate.add_argument("--num-classes", type=int, default=400, help="classes of the video head (default: 400)")
    inflate.add_argument("--keep-head", action="store_true",
                         help="keep the image classifier when its class count equals --num-classes")
    inflate.add_argument("--allow-missing", action="store_true",
                         help="write the file even if the image weights leave some of the model's weights missing "
                              "(e.g. Swin-T weights into swin3d_s); by default that is an error")

    demo = command("make-demo-data", cmd_make_demo_data, "write the synthetic demo dataset",
                   log_level=logging.INFO,
                   description="Write the demo dataset: ten time-reversed motion classes as H.264 mp4s in "
                   f"Kinetics layout.\n\nexample:\n  {PROG} make-demo-data --out data/demo --seed 0",
                   formatter_class=raw)
    demo.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    demo.add_argument("--seed", type=int, default=0, help="the output depends only on the seed and the counts")
    demo.add_argument("--train-per-class", type=int, default=100, help="training videos per class (default: 100)")
    demo.add_argument("--val-per-class", type=int, default=20, help="validation videos per class (default: 20)")
    demo.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one subcommand; returns the exit code (argparse exits itself on ``--help`` and bad options)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=_LOG_FORMAT)
    try:
        return args.handler(args)
    except (*USAGE_ERRORS, *args.usage_errors) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RUN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)  # may list files, one a line
        return 1
    except Preempted as e:  # a signal during training: the state is saved, the run goes on with --resume
        print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
