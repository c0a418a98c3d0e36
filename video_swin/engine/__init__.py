"""Training loop, multi-view evaluation, metrics, optimizer and schedule."""

from .evaluate import VideoScores, metrics, predict_dataset, score_views, write_report
from .optim import build_optimizer, lr_factor, param_groups
from .trainer import TrainingError, train

__all__ = [
    "TrainingError",
    "VideoScores",
    "build_optimizer",
    "lr_factor",
    "metrics",
    "param_groups",
    "predict_dataset",
    "score_views",
    "train",
    "write_report",
]
