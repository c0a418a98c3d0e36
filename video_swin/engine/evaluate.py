"""Multi-view evaluation: every video scored once over its clips x crops, across any number of processes."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import Config, ConfigError, Views, parse_views
from ..data import BrokenVideoLog, clips_to_float
from ..data.shards import ShardLoader
from .build import (
    build_test_dataset,
    checkpoint_classes,
    config_classes,
    eval_loader,
    for_device,
    load_trained_weights,
    make_accelerator,
    model_from_config,
)
from .plots import plot_confusion

log = logging.getLogger(__name__)


@dataclass
class VideoScores:
    """Per-video results, one row per distinct video index, sorted by index."""

    index: Tensor  # (N,) long
    label: Tensor  # (N,) long
    scores: Tensor  # (N, K) averaged probabilities (or logits)
    valid: Tensor  # (N,) bool: False if the video could not be decoded


def score_views(model: nn.Module, videos: Tensor, max_views: int, average: str) -> Tensor:
    """Scores a batch of multi-view samples.

    Args:
        model: classifier taking Tensor[B, 3, T, H, W].
        videos: Tensor[B, V, 3, T, H, W].
        max_views: at most this many views per forward (memory bound).
        average: "prob" (mean of softmax, the official default) or "logit".

    Returns:
        Tensor[B, K] float32.
    """
    b, v = videos.shape[:2]
    flat = videos.flatten(0, 1)  # (B*V, 3, T, H, W)
    logits = torch.cat([model(chunk).float() for chunk in flat.split(max_views)])  # (B*V, K)
    per_view = logits.softmax(-1) if average == "prob" else logits
    return per_view.view(b, v, -1).mean(1)  # (B, K)


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    accelerator: Accelerator,
    *,
    max_views: int = 12,
    average: str = "prob",
    desc: str = "eval",
) -> VideoScores:
    """Scores every video of a prepared loader; results gathered on every process.

    Samples may be repeated by the distributed sampler's padding (or a shard
    loader's: every process yields the same number of batches, so the
    gathers below never wait on a process that has finished); they are
    counted once by video index. More broken videos than the loader's dataset
    allows (its ``max_bad_fraction``) raise ``TooManyBrokenVideos`` here, in
    the main process, whether or not DataLoader workers met them.
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {"index": [], "label": [], "scores": [], "valid": []}
    dataset = getattr(loader, "dataset", None)
    max_bad_fraction = getattr(dataset, "max_bad_fraction", None)
    broken = BrokenVideoLog(len(dataset) if max_bad_fraction is not None else 0, max_bad_fraction)
    bar = tqdm(loader, desc=desc, disable=not accelerator.is_main_process, leave=False)
    for batch in bar:
        broken.update(batch)  # names each file once, and stops past the dataset's limit
        videos = clips_to_float(batch["video"])  # uint8 clips (data.output) normalised on the device
        if videos.ndim == 5:  # single view: (B, 3, T, H, W)
            videos = videos.unsqueeze(1)
        with accelerator.autocast():
            scores = score_views(model, videos, max_views, average)
        valid = torch.as_tensor(batch["valid"], device=scores.device).bool()
        gathered = accelerator.gather_for_metrics(
            (batch["index"].to(scores.device), batch["label"].to(scores.device), scores, valid)
        )
        for key, value in zip(parts, gathered):
            parts[key].append(value.cpu())
    model.train(was_training)
    broken.end_epoch(desc)
    index = torch.cat(parts["index"]) if parts["index"] else torch.zeros(0, dtype=torch.long)
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]  # dedupe by video index
    pick = order[keep]
    return VideoScores(
        index=index[keep],
        label=torch.cat(parts["label"])[pick],
        scores=torch.cat(parts["scores"])[pick],
        valid=torch.cat(parts["valid"])[pick],
    )


def metrics(result: VideoScores, num_classes: int) -> dict[str, float]:
    """top-1, top-5 and mean class accuracy (in %) over the videos that could be decoded."""
    ok = result.valid
    scores, labels = result.scores[ok], result.label[ok]
    if len(labels) == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_class_accuracy": 0.0}
    k = min(5, scores.shape[1])
    topk = scores.topk(k, dim=1).indices
    top1 = (topk[:, 0] == labels).float().mean().item()
    top5 = (topk == labels[:, None]).any(1).float().mean().item()
    per_class = [(topk[labels == c, 0] == c).float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return {
        "top1": 100.0 * top1,
        "top5": 100.0 * top5,
        "mean_class_accuracy": 100.0 * sum(per_class) / len(per_class),
    }


def summarize(
    result: VideoScores, *, classes: Sequence[str], paths: Sequence[str], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``metrics.json`` holds: the metrics, the video counts, the failed paths and ``extra``."""
    failed = [paths[i] for i, ok in zip(result.index.tolist(), result.valid.tolist()) if not ok]
    return {
        **metrics(result, len(classes)),
        "num_videos": int(result.valid.sum()),
        "num_failed": len(failed),
        "failed": failed,
        **extra,
    }


def write_report(
    result: VideoScores,
    out_dir: Path,
    *,
    classes: Sequence[str],
    paths: Sequence[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Writes ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png``; returns the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result, classes=classes, paths=paths, extra=extra)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "pred", "score", "top5"])
        k = min(5, result.scores.shape[1])
        for i, label, scores, ok in zip(result.index.tolist(), result.label.tolist(), result.scores, result.valid.tolist()):
            if not ok:
                writer.writerow([paths[i], classes[label], "", "", ""])
                continue
            top = scores.topk(k)
            writer.writerow([paths[i], classes[label], classes[top.indices[0]], f"{top.values[0].item():.4f}",
                             "|".join(classes[j] for j in top.indices.tolist())])
    plot_confusion(result, classes, out_dir / "confusion_matrix.png")
    return summary


def run_evaluation(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    dataset: Any,
    accelerator: Accelerator,
    out_dir: str | os.PathLike,
    *,
    classes: Sequence[str],
    views: str,
    max_views: int,
    average: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Scores a prepared test loader and writes the report: the code behind both the
    training loop's final evaluation and ``scripts/evaluate.py``.

    Args:
        model: prepared classifier.
        loader: prepared loader over ``dataset`` (multi-view samples).
        dataset: the dataset, for the video paths (``dataset.records``).
        accelerator: the run's accelerator; every process must call this.
        out_dir: where ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png`` go.
        classes: class names, index i = logit i.
        views: ``"CLIPSxCROPS"`` of the dataset, recorded in the report.
        max_views: at most this many views per forward.
        average: "prob" or "logit" (see :func:`score_views`).
        extra: more entries for ``metrics.json`` (e.g. ``checkpoint``, ``config``).

    Returns:
        The summary (``metrics.json``'s content) on the main process, None on the others.
    """
    start = time.perf_counter()
    result = predict_dataset(model, loader, accelerator, max_views=max_views, average=average, desc=f"eval {views}")
    seconds = time.perf_counter() - start
    if not accelerator.is_main_process:
        return None
    timing = {"seconds": round(seconds, 3), "videos_per_s": round(len(result.index) / max(seconds, 1e-9), 3)}
    return write_report(
        result, Path(out_dir), classes=classes, paths=[r.path for r in dataset.records],
        extra={"views": views, "num_processes": accelerator.num_processes, **timing, **(extra or {})},
    )  # fmt: skip


def format_summary(summary: Mapping[str, Any]) -> str:
    """A short plain-text table of an evaluation summary (what the scripts print)."""
    clips, crops = parse_views(summary["views"])
    rows = [
        ("checkpoint", str(summary.get("checkpoint", "-"))),
        ("views", f"{summary['views']} ({clips * crops} per video), {summary['num_processes']} process(es)"),
        ("videos", f"{summary['num_videos']} scored, {summary['num_failed']} could not be decoded"),
        ("top-1", f"{summary['top1']:6.2f} %"),
        ("top-5", f"{summary['top5']:6.2f} %"),
        ("mean class", f"{summary['mean_class_accuracy']:6.2f} %"),
    ]
    if "videos_per_s" in summary:
        rows.append(("speed", f"{summary['videos_per_s']:.2f} videos/s ({summary['seconds']:.1f} s)"))
    rows += [("failed", path) for path in summary.get("failed", [])[:10]]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    views: Views | str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Evaluates a checkpoint on ``cfg.data.val_annotations`` (or the val shards of ``data.shards``)
    with multi-view testing.

    The config defines the model, as in training (``cfg.model``; pretrained
    files are not read); the checkpoint supplies every weight, head included:
    our files, official Video Swin or torchvision ``swin3d_*`` state dicts
    (through :func:`~video_swin.checkpoints.load_checkpoint`). Class names
    come from the checkpoint's sidecar, else from the config
    (:func:`~video_swin.engine.build.config_classes`). Run it in every
    process of a launch; each video is counted once.

    Args:
        cfg: the config (data, model, ``eval.*`` and precision settings).
        checkpoint: weights file.
        out_dir: report folder.
        views: clips x crops (or ``"CLIPSxCROPS"``), default ``cfg.eval.views``.
        extra: more entries for ``metrics.json``.

    Returns:
        The summary on the main process, None on the others.

    Raises:
        ConfigError: bad views, or ``model.num_classes`` disagreeing with the class list.
        CheckpointError: unreadable file, another architecture, or missing weights.
    """
    views = parse_views(views, key="views") if isinstance(views, str) else views or cfg.eval.parsed_views
    classes = checkpoint_classes(checkpoint) or config_classes(cfg)
    if cfg.model.num_classes and cfg.model.num_classes != len(classes):
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the class list has {len(classes)} names")
    model = model_from_config(cfg, len(classes))
    load_trained_weights(model, checkpoint)
    accelerator = make_accelerator(cfg)
    dataset = build_test_dataset(cfg, classes, views, process_index=accelerator.process_index,
                                 num_processes=accelerator.num_processes)
    for_device(model, accelerator.device)
    loader = eval_loader(dataset, cfg, accelerator.device)
    if isinstance(loader, ShardLoader):  # never prepared: each process streams its own shards (see ShardLoader)
        model = accelerator.prepare(model)
    else:
        model, loader = accelerator.prepare(model, loader)
    return run_evaluation(
        model, loader, dataset, accelerator, out_dir, classes=classes, views=str(views),
        max_views=cfg.eval.max_views_per_forward, average=cfg.eval.average,
        extra={"checkpoint": str(checkpoint), "config": None, **(extra or {})},
    )  # fmt: skip
