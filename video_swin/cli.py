"""The ``video-swin`` command: train, evaluate, predict, timeline, extract, inflate, plan, prepare, export, ...

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
The config defines the model and the data (data.val_annotations is scored; null:
the split a training run wrote, OUTPUT_DIR/split/val.txt);
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
--weights is a registry name (video_swin.list_pretrained(), e.g. swin3d_t.k400:
downloaded once, evaluated with the publisher's clips and crops, Kinetics class
names) or a file; a file's test-time settings are those of the training run
saved beside it, or --config for weights without them (official files).
Folders are searched for videos recursively. Videos are decoded by --workers
processes ahead of the model and scored --batch-size at a time. A file that
cannot be read is reported on its own line and the others go on; the exit code
is then 1 (2 for a usage mistake).

examples:
  video-swin predict --weights swin3d_t.k400 clips/ --out predictions.csv
  video-swin predict --weights runs/demo/model.safetensors data/demo/val --views 1x1 --features feats/
  video-swin predict --weights swin3d_t.k400 clips/ --out p.csv --features f.safetensors --feature-stages all
  video-swin predict --weights k400.pth --config k400_swin_t.yaml --classes k400_classes.txt \\
      --views 4x3 --top-k 3 --json clip.mp4
"""
TIMELINE_EPILOG = """\
Windows are the weights' own clips (clip_len frames every frame_interval
frames) with the test crop, starting every --stride frames ('16f', '16') or
seconds ('1s'; VFR files stay right); default: one window's span. Frame numbers
are positions in presentation order; end_frame is one past the window's last
frame and seconds come from the frames' timestamps. Each video is decoded once,
front to back, in a worker process while the model scores the windows before.
A video shorter than one window gets one (its frames loop) and says so in the
note column; a stream that breaks keeps the windows before the break. Exit
code 1 when some video gave no window, 2 for a usage mistake.

examples:
  video-swin timeline --weights swin3d_t.k400 match.mp4 --stride 1s --out tl.csv --plot tl.png
  video-swin timeline --weights runs/demo/model.safetensors long.mp4 --segments seg.csv --threshold 0.6
"""

EXTRACT_EPILOG = """\
Writes DIR/<name>.npy (float32, windows x C: the pooled last stage after the
final norm, averaged over crops) and DIR/<name>.json (fps, frames, window,
stride, each window's frames and seconds, model, weights and their sha256)
per video, <name> being the video's path under the folder given, so DIR
mirrors the inputs. A rerun skips videos whose files are complete for the same
settings. Videos that cannot be read, or break part-way (the windows before
are kept), are listed in DIR/broken.csv and the others go on. Several processes
split the videos: accelerate launch --num_processes N -m video_swin.cli extract ...

examples:
  video-swin extract videos/ --weights swin3d_b.k400 --out feats/ --stride 16f
  video-swin extract a.mp4 b.mp4 --weights runs/demo/model.safetensors --out feats/ --feature-stages all
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


PLAN_DESCRIPTION = """\
Memory per GPU of training a model with AdamW: parameters, gradients, optimizer
states and activations, for DDP (a full replica per GPU) and FSDP (parameters,
gradients and states sharded over the GPUs, one Swin block per unit), with and
without activation checkpointing, and whether each fits.

Activations are traced: the model runs one forward and backward on fake tensors
(shapes only, no memory, a few seconds for the largest presets), with attention
as a GPU's fused kernel computes it. Nothing is downloaded, no GPU is needed.

examples:
  video-swin plan --model swinv2_3d_g --clip 32x224x224 --gpus 8 --gpu-memory 80
  video-swin plan --model swin3d_b --clip 32x224x224 --gpus 1 --gpu-memory 24 --batch 2 --precision fp32
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
    key, weights = ("--weights", args.weights) if args.weights else ("--checkpoint", args.checkpoint)
    views = parse_views(args.views, key="--views") if args.views else None
    for name, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers: must be >= 0, got {args.workers}")
    from .pretrained import is_pretrained_name

    if not Path(weights).is_file() and not is_pretrained_name(weights):
        raise ConfigError(f"{key}: file not found and not a registry name: {weights} (see video_swin.list_pretrained())")
    if args.classes is not None and not Path(args.classes).is_file():
        raise ConfigError(f"--classes: file not found: {args.classes}")
    if args.feature_stages is not None and not args.features:
        raise ConfigError("--feature-stages: needs --features DIR (where the features are written)")
    cfg = load_config(args.config) if args.config else None
    from .engine.predict import (
        find_videos,
        format_prediction,
        iter_predictions,
        load_predictor,
        parse_feature_stages,
    )
    from .engine.predict_output import FeatureWriter, PredictionTable, check_destinations

    videos = find_videos(args.videos)
    check_destinations(args.out, args.features)  # a wrong suffix, kind of path or a read-only one: before loading
    if args.feature_stages is not None:
        parse_feature_stages(args.feature_stages, 64)  # the wording, before loading; the model's stages below
    model, cfg, classes = load_predictor(weights, cfg=cfg, classes=args.classes)
    stages = parse_feature_stages(args.feature_stages, len(model.layers))
    if classes is None:
        logging.getLogger(__name__).warning("%s carries no class names; showing class indices (--classes names them)",
                                            weights)
    views = views or cfg.eval.parsed_views
    table = PredictionTable(args.out, args.top_k) if args.out else None  # written under a temporary name
    features = FeatureWriter(args.features, videos, precision=args.precision) if args.features else None
    writers = [w for w in (table, features) if w is not None]
    dataset_log = logging.getLogger("video_swin.data.dataset")
    level = dataset_log.level
    dataset_log.setLevel(logging.ERROR)  # failures are reported per file below
    entries, failed = [], 0
    try:
        for r in iter_predictions(model, cfg, classes, videos, views=views, top_k=args.top_k,
                                  batch_size=args.batch_size, workers=args.workers, features=features is not None,
                                  feature_stages=stages, precision=args.precision,
                                  progress=len(videos) > 1):
            if r.error is not None:
                failed += 1
                print(f"error: {r.path}: {r.error}", file=sys.stderr)
            for writer in (table, features):
                if writer is not None:
                    writer.write(r)
            if args.json:
                entries.append(r.to_dict())
            elif not args.out:
                print(format_prediction(r), flush=True)
        for writer in writers:
            writer.close()  # moved into place, complete
    except BaseException as e:
        kept = []
        for writer in writers:  # nothing scored is thrown away: what was written so far, named .partial
            try:
                kept.append(writer.abort())
            except OSError as again:
                print(f"error: could not keep the partial results: {_one_line(again)}", file=sys.stderr)
        kept = [str(p) for p in kept if p is not None]
        if kept:
            print(f"stopped early; the results so far are in {', '.join(kept)}", file=sys.stderr)
        if isinstance(e, OSError):  # writing the results failed (a full disk): the run failed, one line
            print(f"error: writing the results: {_one_line(e)}", file=sys.stderr)
            return 1
        raise
    finally:
        dataset_log.setLevel(level)  # main() may be called in-process (tests)
    if args.json:
        print(json.dumps({"weights": str(weights), "views": str(views), "precision": args.precision,
                          "videos": entries}, indent=2))
    done = [f"{len(videos) - failed} of {len(videos)} videos scored"]
    done += [f"wrote {path}" for path in (args.out, args.features) if path]
    if args.out or args.features:
        print("; ".join(done), file=sys.stderr)
    return 1 if failed else 0


def _long_video_model(args: argparse.Namespace):
    """The model, config and class names of ``--weights`` for timeline/extract, after the cheap checks."""
    from .pretrained import is_pretrained_name

    if not Path(args.weights).is_file() and not is_pretrained_name(args.weights):
        raise ConfigError(f"--weights: file not found and not a registry name: {args.weights} "
                          f"(see video_swin.list_pretrained())")
    if getattr(args, "classes", None) is not None and not Path(args.classes).is_file():
        raise ConfigError(f"--classes: file not found: {args.classes}")
    for name, value in (("--batch-size", args.batch_size), ("--top-k", getattr(args, "top_k", 1))):
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    if args.workers < 0:
        raise ConfigError(f"--workers: must be >= 0, got {args.workers}")
    from .data.long_video import parse_stride
    from .engine.predict import load_predictor

    parse_stride(args.stride) if args.stride is not None else None
    cfg = load_config(args.config) if args.config else None
    return load_predictor(args.weights, cfg=cfg, classes=getattr(args, "classes", None))


def cmd_timeline(args: argparse.Namespace) -> int:
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold: a probability in [0, 1], got {args.threshold}")
    from .engine.long_video import expand_videos
    from .engine.long_video_output import (
        check_timeline_destinations,
        plot_timeline,
        timeline_header,
        timeline_rows,
        write_segments,
        write_timeline,
    )

    videos = [v for v, _ in expand_videos(args.videos)]  # a missing file or folder: before loading anything
    check_timeline_destinations(args.out, args.segments, args.plot)
    model, cfg, classes = _long_video_model(args)
    from .engine.long_video import default_stride, iter_windows

    stride = args.stride or str(default_stride(cfg))
    results = []
    if not args.out:
        import csv

        table = csv.writer(sys.stdout)
        table.writerow(timeline_header(args.top_k))
    for r in iter_windows(model, cfg, classes or [str(i) for i in range(model.head.out_features)], videos,
                          stride=stride, crops=args.crops, batch_size=args.batch_size, workers=args.workers,
                          precision=args.precision, progress=True):
        results.append(r)
        if r.error:
            print(f"{'warning' if r.num_windows else 'error'}: {r.path}: {r.error}", file=sys.stderr)
        if not args.out:
            table.writerows(timeline_rows(r, args.top_k))
            sys.stdout.flush()
    about = {"weights": str(args.weights), "clip_len": cfg.data.clip_len, "frame_interval": cfg.data.frame_interval,
             "stride": stride, "crops": args.crops}
    if args.out:
        write_timeline(args.out, results, args.top_k, about)
    if args.segments:
        write_segments(args.segments, results, args.threshold)
    if args.plot:
        plot_timeline(args.plot, results, args.threshold)
    windows = sum(r.num_windows for r in results)
    written = [p for p in (args.out, args.segments, args.plot) if p]
    print(f"{windows} windows of {len(results)} videos" + (f"; wrote {', '.join(written)}" if written else ""),
          file=sys.stderr)
    return 1 if any(not r.num_windows for r in results) else 0


def cmd_extract(args: argparse.Namespace) -> int:
    from .outputs import check_folder_destination

    from .engine.long_video import expand_videos

    named = expand_videos(args.videos)
    check_folder_destination(args.out, "--out")
    if args.feature_stages is not None:
        from .engine.predict import parse_feature_stages

        parse_feature_stages(args.feature_stages, 64)  # the wording, before loading
    model, cfg, classes = _long_video_model(args)
    from .engine.long_video import default_stride
    from .engine.long_video_output import extract_to_folder

    stride = args.stride or str(default_stride(cfg))
    done = extract_to_folder(model, cfg, args.weights, named, args.out, stride=stride, crops=args.crops,
                             feature_stages=args.feature_stages, batch_size=args.batch_size, workers=args.workers,
                             precision=args.precision)
    return 0 if done else 1


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


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        clip = tuple(int(s) for s in args.clip.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--clip: expected sizes joined by x, e.g. 32x224x224 (or 224x224), got {args.clip!r}") from None
    from .engine.plan import format_plan, plan_memory

    plan = plan_memory(args.model, clip, gpus=args.gpus, gpu_memory=args.gpu_memory, batch=args.batch,
                       precision=args.precision, num_classes=args.num_classes)
    print(format_plan(plan))
    return 0

def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import find_splits, prepare

    lists = {}
    for item in args.annotations:
        split, sep, file = item.partition("=")
        if not sep or not split or not file:
            raise ConfigError(f"--annotations: expected SPLIT=FILE, e.g. train=lists/train.txt, got {item!r}")
        lists[split] = file
    counts = prepare(args.src, args.out, short_side=args.short_side, keyframe_interval=args.keyframe_interval,
                     jobs=args.jobs, reencode=not args.no_reencode, annotations=lists, timeout=args.timeout,
                     shards=args.shards, shard_size=args.shard_size, skip_failed=args.skip_failed)
    out = args.out if not args.no_reencode else args.src
    written = list(find_splits(Path(args.src), lists))  # the tables prepare wrote: OUT/{split}.csv
    keys = {"train": "data.train_annotations", "val": "data.val_annotations", "validate": "data.val_annotations"}
    tables = " ".join(dict.fromkeys(f"{keys[s]}={args.out}/{s}.csv" for s in written if s in keys))
    others = [f"{args.out}/{s}.csv" for s in written if s not in keys]
    print(f"{counts['prepared']} videos ready, {counts['broken']} broken (listed in {args.out}/broken.csv); "
          f"train with data.root={out}{' ' + tables if tables else ''}"
          f"{'; also written: ' + ', '.join(others) if others else ''}")
    if args.shards:
        print(f"{counts['shards']} shards in {args.out}/shards; stream them with data.shards={args.out}/shards")
    if counts.get("failed"):
        print(f"error: {counts['failed']} of the broken videos failed for another reason than being bad videos "
              f"(a timeout, a crashed worker, an error writing {args.out}; see {args.out}/broken.csv); run prepare "
              "again to retry them", file=sys.stderr)
        return 1
    return 0


EXPORT_DESCRIPTION = f"""\
Export a model and its weights for deployment: a torch.export program (.pt2; run it with
torch.export.load(PATH).module()(x)) or an ONNX file (opset 18; onnxruntime runs it). The batch
size stays dynamic unless --batch fixes it; the clip size is fixed at --clip, since the windows,
padding and masks depend on it. The exported graph is the plain-PyTorch reference model in eval
mode. ONNX needs: pip install 'video-swin[export]'.

--weights is a registry name (video_swin.list_pretrained(), downloaded once), one of our weight
files (.safetensors with its .json sidecar), or another weight file (official Video Swin,
torchvision, timm) with --model naming its preset.

examples:
  {PROG} export --weights swin3d_t.k400 --format onnx --check
  {PROG} export --weights runs/demo/model.safetensors --format pt2 --clip 16x112x112 --out demo.pt2
  {PROG} export --weights swin_tiny_patch244_window877_kinetics400_1k.pth --model swin3d_t --format onnx
"""


def cmd_export(args: argparse.Namespace) -> int:
    size = None
    if args.clip is not None:
        try:
            size = tuple(int(s) for s in args.clip.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--clip: expected sizes joined by x, e.g. 32x224x224 (or 224x224), got {args.clip!r}") from None
    if args.batch == "dynamic":
        batch, dynamic = 1, True
    elif args.batch.isdigit() and int(args.batch) >= 1:
        batch, dynamic = int(args.batch), False
    else:
        raise ConfigError(f"--batch: expected 'dynamic' or a batch size >= 1, got {args.batch!r}")
    from .export import check_export, default_input_size, export_model, load_for_export
    from .pretrained import is_pretrained_name

    from .outputs import check_file_destination

    stem = args.weights if is_pretrained_name(args.weights) and not Path(args.weights).exists() else Path(args.weights).stem
    out = check_file_destination(args.out or f"{stem}.{args.format}", "--out")  # before the (slow) load and export
    model, known = load_for_export(args.weights, args.model, args.num_classes)
    size = size or known or default_input_size(model)
    if len(size) != model.ndim or min(size) < 1:
        sizes = "TxHxW" if model.ndim == 3 else "HxW"
        raise ConfigError(f"--clip: {model.config['name']} takes {sizes} (sizes >= 1), got {args.clip!r}")
    shape = (batch, model.in_chans, *size)
    try:
        export_model(model, args.format, shape, dynamic_batch=dynamic, path=out)
        print(f"wrote {out} (input {'B' if dynamic else batch}x{'x'.join(map(str, shape[1:]))})")
        diff = check_export(model, out, shape, batch_sizes=(1, 3) if dynamic else (batch,)) if args.check else None
    except ImportError as e:  # onnx, onnxscript or onnxruntime missing
        raise ConfigError(f"{e} (pip install 'video-swin[export]')") from None
    if diff is not None:
        if diff > 1e-3:
            print(f"error: {out} differs from the PyTorch model by {diff:.1e} (relative)", file=sys.stderr)
            return 1
        print(f"checked: outputs equal the PyTorch model's within {diff:.1e} (relative)")
    return 0


def cmd_export_hub(args: argparse.Namespace) -> int:
    from .hub import export_run

    out = export_run(args.run_dir, args.out_dir)
    print(f"wrote {out} (config.json, model.safetensors, README.md); load it with "
          f"video_swin.from_pretrained({str(out)!r}), upload it with huggingface-cli upload REPO_ID {out}")
    return 0


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from .data import make_demo_data

    make_demo_data(args.out, args.seed, args.train_per_class, args.val_per_class, args.workers)
    return 0


PREPARE_DESCRIPTION = f"""\
Check, re-encode and index every video of a dataset once, before training: H.264 with the
short side resized (--short-side) and a keyframe every --keyframe-interval frames, rotation
applied, the frame index stored beside each video (<video>.index.npz). Writes OUT/{{split}}.csv
(official Kinetics columns) and OUT/broken.csv (path, reason). A video that crashes or hangs
the decoder is listed as broken; an interrupted run continues where it stopped, and a video
that failed is tried again (--skip-failed keeps the verdict). SRC is only read: OUT must lie
outside it. Exit code 1 when a video failed for another reason than being a bad video (a
timeout, a crash, an error writing OUT) or the disk filled up; bad videos alone keep exit 0.

SRC layouts: annotations/{{train,val,test}}.csv with the videos in SRC/{{train,val,test}}/ (the
common Kinetics download scripts), {{train,val,test}}/<class>/ folders, or --annotations.

examples:
  {PROG} prepare k400 k400_320 --jobs 16
  {PROG} prepare ucf101 ucf101_prep --annotations train=lists/train.txt val=lists/val.txt
"""


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
                       help="start a new run in an output_dir that holds one, removing that run's own files "
                            "(without it, such a folder is refused; a folder holding anything else is always "
                            "refused, and nothing of it removed)")
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
    predict.add_argument("videos", nargs="+", metavar="PATH", help="video files, folders (searched recursively) "
                         "or glob patterns")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="NAME_OR_FILE",
                        help="a registry name (e.g. swin3d_t.k400) or a weight file (.safetensors with its "
                             ".json sidecar, or an official .pth with --config)")
    source.add_argument("--checkpoint", metavar="FILE", help="the same as --weights (older name)")
    predict.add_argument("--views", help="CLIPSxCROPS, e.g. 4x3 or 1x1 (default: the weights' evaluation setting)")
    predict.add_argument("--top-k", type=int, default=5, help="classes listed per video (default: 5)")
    predict.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    predict.add_argument("--out", metavar="FILE",
                         help="write the predictions to FILE instead of printing them: .csv (path, error, "
                              "class_i, probability_i) or .jsonl (one object per video)")
    predict.add_argument("--features", metavar="DIR",
                         help="save each video's pooled features (averaged over views): DIR/<video>.npy, "
                              "or one file if DIR ends in .safetensors (keys: the video paths)")
    predict.add_argument("--feature-stages", metavar="STAGES", default=None,
                         help="with --features, also save per-stage features: each stage's map "
                              "(forward_intermediates, before the final norm) average-pooled over T,H,W "
                              "and averaged over views, Tensor[C_stage]: DIR/<video>.stage<i>.npy, or keys "
                              "'<video path>#stage<i>' in the .safetensors file. STAGES: all, last, none "
                              "(default) or stage numbers such as 0,1,2,3")
    predict.add_argument("--batch-size", type=int, default=None,
                         help="videos per forward (default: eval.batch_size of the config)")
    predict.add_argument("--workers", type=int, default=None,
                         help="processes decoding videos ahead of the model (default: min(4, CPUs); 0: none)")
    predict.add_argument("--classes", help="class names, one per line (default: those the weights carry)")
    predict.add_argument("--config", help="config for weights saved without one (a path or a shipped recipe)")
    predict.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                         help="dtype of the weights and inputs (default: fp32); bf16 halves the model's memory "
                              "and suits GPUs and CPUs with AVX512-BF16/AMX; other CPUs emulate it, slower than "
                              "fp32 (a warning says so). Probabilities and saved features are float32 either way")

    def long_video_options(sub: ArgumentParser, workers: int) -> None:
        sub.add_argument("--weights", required=True, metavar="NAME_OR_FILE",
                         help="a registry name (e.g. swin3d_t.k400) or a weight file (.safetensors with its "
                              ".json sidecar, or an official .pth with --config)")
        sub.add_argument("--stride", metavar="Nf|Ss", default=None,
                         help="between window starts: frames (16f) or seconds (1s); default: one window's span")
        sub.add_argument("--crops", type=int, choices=[1, 3], default=1,
                         help="views per window: 1 centre crop (default) or 3 along the long side")
        sub.add_argument("--batch-size", type=int, default=8, help="windows per forward (default: 8)")
        sub.add_argument("--workers", type=int, default=workers,
                         help="processes decoding videos ahead of the model, each reading whole videos, "
                              "isolated (an FFmpeg crash costs one video); 0: one decoding thread in this "
                              f"process, no start-up time (default: {workers})")
        sub.add_argument("--config", help="config for weights saved without one (a path or a shipped recipe)")
        sub.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                         help="dtype of the weights and inputs (default: fp32)")

    timeline = command("timeline", cmd_timeline, "class probabilities over a long video, window by window",
                       value_errors=True, epilog=TIMELINE_EPILOG, formatter_class=raw,
                       description="Score windows at a fixed stride along each video: which action happens when.")
    timeline.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, folders or glob patterns")
    long_video_options(timeline, workers=0)
    timeline.add_argument("--top-k", type=int, default=5, help="classes per window (default: 5)")
    timeline.add_argument("--classes", help="class names, one per line (default: those the weights carry)")
    timeline.add_argument("--out", metavar="FILE.csv|FILE.json",
                          help="write the windows here (default: CSV on stdout): video, start_frame, end_frame, "
                               "start_sec, end_sec, top1, score1, ..., note")
    timeline.add_argument("--segments", metavar="FILE.csv",
                          help="merge consecutive windows with the same leading class (probability >= "
                               "--threshold) into video, start_frame, end_frame, start_sec, end_sec, label, "
                               "score rows")
    timeline.add_argument("--threshold", type=float, default=0.5,
                          help="least leading-class probability of a window in a segment (default: 0.5)")
    timeline.add_argument("--plot", metavar="FILE.png",
                          help="draw the leading classes' probabilities over time, segments shaded")

    extract = command("extract", cmd_extract, "features of windows at a fixed stride, one .npy per video",
                      value_errors=True, epilog=EXTRACT_EPILOG, formatter_class=raw,
                      description="Per-window features of each video for temporal localization and retrieval.")
    extract.add_argument("videos", nargs="+", metavar="VIDEOS_OR_FOLDERS",
                         help="video files, folders (searched recursively) or glob patterns")
    extract.add_argument("--out", required=True, metavar="DIR", help="where the .npy and .json files go")
    long_video_options(extract, workers=1)
    extract.add_argument("--feature-stages", metavar="STAGES", default=None,
                         help="also save per-stage features, each stage's map average-pooled over T,H,W: "
                              "DIR/<name>.stage<i>.npy. STAGES: all, last, none (default) or numbers like 0,2")

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

    plan = command("plan", cmd_plan, "memory per GPU of training a model: DDP and FSDP", value_errors=True,
                   description=PLAN_DESCRIPTION, formatter_class=raw)
    plan.add_argument("--model", required=True, help="a preset, e.g. swinv2_3d_g, swin3d_b or swinv2_g")
    plan.add_argument("--clip", required=True, metavar="TxHxW",
                      help="input size per sample: TxHxW for video presets (e.g. 32x224x224), HxW for image ones")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs of the run: DDP replicas or FSDP shards (default: 1)")
    plan.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB",
                      help="memory of one GPU in GiB (default: 80)")
    plan.add_argument("--batch", type=int, default=1, help="clips per GPU and step, as train.batch_size (default: 1)")
    plan.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                      help="bf16: autocast with fp32 weights, gradients and AdamW states, FSDP gathering bf16 "
                           "(train.mixed_precision=bf16); fp32: everything in fp32 (default: bf16)")
    plan.add_argument("--num-classes", type=int, default=400, help="classes of the head (default: 400)")

    prep = command("prepare", cmd_prepare, "check, re-encode and index a video dataset before training",
                   log_level=logging.INFO, description=PREPARE_DESCRIPTION, formatter_class=raw)
    prep.add_argument("src", metavar="SRC", help="the dataset as downloaded")
    prep.add_argument("out", metavar="OUT", help="where the prepared videos, CSVs and broken.csv go")
    prep.add_argument("--short-side", type=int, default=320,
                      help="resize so the shorter side is this many pixels (never enlarged; default: 320)")
    prep.add_argument("--keyframe-interval", type=int, default=16, help="a keyframe every N frames (default: 16)")
    prep.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
    prep.add_argument("--no-reencode", action="store_true",
                      help="only check and index the videos where they are; the CSVs then point into SRC")
    prep.add_argument("--annotations", nargs="+", default=[], metavar="SPLIT=FILE",
                      help="annotation files instead of the layouts found in SRC: Kinetics CSVs or mmaction lists")
    prep.add_argument("--timeout", type=float, default=600.0,
                      help="seconds one video may take before it is listed as broken (default: 600)")
    prep.add_argument("--shards", action="store_true",
                      help="also write WebDataset tar shards of every split to OUT/shards (for data.shards)")
    prep.add_argument("--shard-size", type=int, default=256, metavar="N",
                      help="videos per shard with --shards (default: 256)")
    prep.add_argument("--skip-failed", action="store_true",
                      help="keep the verdict of videos that failed in an earlier run instead of trying them again")

    export = command("export", cmd_export, "export a model for deployment: ONNX or torch.export (.pt2)",
                     value_errors=True, description=EXPORT_DESCRIPTION, formatter_class=raw)
    export.add_argument("--weights", required=True, metavar="NAME_OR_FILE",
                        help="a registry name (e.g. swin3d_t.k400) or a weight file")
    export.add_argument("--format", required=True, choices=["onnx", "pt2"], help="onnx or pt2 (torch.export)")
    export.add_argument("--out", help="the file to write (default: <weights name>.<format> here)")
    export.add_argument("--clip", metavar="TxHxW",
                        help="input size: TxHxW for video models, HxW for image models (default: the size the "
                             "weights were evaluated at when known, else 32x224x224 or 224x224)")
    export.add_argument("--batch", default="dynamic", metavar="dynamic|N",
                        help="'dynamic' (any batch size; the default) or a fixed batch size")
    export.add_argument("--model", help="the preset a weight file without our sidecar fits (e.g. swin3d_t)")
    export.add_argument("--num-classes", type=int, default=400,
                        help="with --model: classes of the file's head (default: 400)")
    export.add_argument("--check", action="store_true",
                        help="run the written file (onnxruntime for ONNX) at batch 1 and 3 and compare with PyTorch")

    hub = command("export-hub", cmd_export_hub, "a training run as a Hugging Face Hub model folder",
                  description="Turn a finished training run (RUN_DIR/model.safetensors and its sidecar) into a "
                  "folder that video_swin.from_pretrained reads and the Hub serves: config.json (model arguments, "
                  "class names, test-time settings), model.safetensors and a README model card with the training "
                  f"config and the final metrics (RUN_DIR/eval/metrics.json) when present.\n\nexample:\n"
                  f"  {PROG} export-hub runs/demo hub/demo-swin && huggingface-cli upload me/demo-swin hub/demo-swin",
                  formatter_class=raw)
    hub.add_argument("run_dir", metavar="RUN_DIR", help="the training run's output_dir")
    hub.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write")

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
    except BrokenPipeError:  # stdout closed by the reader (| head): stop quietly, as Unix tools do
        sys.stdout = None  # nothing more is flushed into the closed pipe at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
