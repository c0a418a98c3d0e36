"""Predicting the classes of one's own video files with a trained checkpoint.

Files go through exactly the evaluation's test-mode pipeline (decoder, clip
sampling, crops, normalisation: :func:`~video_swin.engine.build.build_test_dataset`)
and the same multi-view scoring (:func:`~video_swin.engine.evaluate.score_views`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checkpoints import CheckpointError
from ..checkpoints.io import read_sidecar
from ..config import Config, ConfigError, Views, config_from_dict, parse_views
from ..data import clips_to_float
from ..data.annotations import read_class_file
from .build import (
    build_test_dataset,
    for_device,
    load_trained_weights,
    model_from_config,
)
from .evaluate import score_views


@dataclass
class VideoPrediction:
    """The top classes of one file, or why it could not be scored.

    Attributes:
        path: the file, as given.
        top: ``(class name, probability)`` pairs, most likely first; empty on error.
        error: None, or the reason the file could not be decoded.
    """

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top], "error": self.error}


def load_predictor(
    checkpoint: str | os.PathLike,
    *,
    cfg: Config | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
) -> tuple[nn.Module, Config, list[str]]:
    """The model, its config and class names for :func:`predict_videos`.

    The config (model architecture and test-time data settings) is ``cfg`` if
    given, else the one the training run saved in the checkpoint's sidecar;
    the class names are ``classes`` (names, or a file with one per line) if
    given, else the sidecar's.

    Returns:
        ``(model in eval mode, config, class names)``.

    Raises:
        CheckpointError: unreadable file, missing weights, or neither a config
            nor class names available for it.
        ConfigError: a saved config that no longer matches the schema.
    """
    meta = read_sidecar(checkpoint) or {}
    if cfg is None:
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(
                f"{checkpoint}: no training config saved beside it (sidecar 'config'); "
                f"pass the config it was trained with (--config)"
            )
        try:
            cfg = config_from_dict(meta["config"])
        except ConfigError as e:
            raise ConfigError(f"{checkpoint}: the saved config is not valid any more ({e}); pass --config") from e
    if isinstance(classes, (str, os.PathLike)):
        classes = read_class_file(classes)
    elif classes is None:
        classes = meta.get("classes")
        if not classes:
            raise CheckpointError(f"{checkpoint}: no class names saved beside it; pass a class file (--classes)")
    model = model_from_config(cfg, len(classes))
    load_trained_weights(model, checkpoint)
    return model.eval(), cfg, list(classes)


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    cfg: Config,
    classes: Sequence[str],
    paths: Sequence[str | os.PathLike],
    *,
    views: Views | str | None = None,
    top_k: int = 5,
    device: str | torch.device | None = None,
) -> list[VideoPrediction]:
    """Top-k classes of each file, with probabilities; a file that cannot be decoded gets its error.

    Args:
        model: classifier with ``len(classes)`` outputs.
        cfg: data settings (``data.*``) and scoring settings (``eval.*``).
        classes: class names, index i = logit i.
        paths: video files.
        views: clips x crops (or ``"CLIPSxCROPS"``), default ``cfg.eval.views``.
        top_k: classes listed per file (at most ``len(classes)``).
        device: where the model runs; default CUDA if available.

    Returns:
        One :class:`VideoPrediction` per path, in order. Probabilities are the
        view-averaged softmax (``eval.average=prob``) or the softmax of the
        view-averaged logits (``logit``).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = for_device(model.to(device).eval(), device)
    views = parse_views(views, key="views") if isinstance(views, str) else views
    dataset = build_test_dataset(cfg, classes, views, videos=[str(p) for p in paths])
    results = []
    for i in range(len(dataset)):
        sample = dataset[i]
        path = str(paths[i])
        if not sample["valid"]:
            results.append(VideoPrediction(path, error=sample["failures"][0].reason))  # its own DecodeFailure
            continue
        videos = clips_to_float(sample["video"][None].to(device))  # (1, V, 3, T, S, S)
        scores = score_views(model, videos, cfg.eval.max_views_per_forward, cfg.eval.average)[0]  # (K,)
        probs = scores if cfg.eval.average == "prob" else scores.softmax(-1)
        top = probs.topk(min(top_k, len(classes)))
        names = [(classes[j], float(p)) for p, j in zip(top.values, top.indices.tolist())]
        results.append(VideoPrediction(path, names))
    return results


def format_predictions(results: Sequence[VideoPrediction]) -> str:
    """A plain-text table: each file, then its classes with probabilities (or its error)."""
    lines = []
    for r in results:
        lines.append(r.path)
        if r.error is not None:
            lines.append(f"    error: {r.error}")
        width = max((len(c) for c, _ in r.top), default=0)
        lines += [f"  {rank:>2}. {name:<{width}}  {prob:6.1%}" for rank, (name, prob) in enumerate(r.top, 1)]
    return "\n".join(lines)
