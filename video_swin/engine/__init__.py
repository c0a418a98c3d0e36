"""Training loop, multi-view evaluation and prediction, metrics, optimizer and schedule."""

from .build import TrainingError
from .evaluate import (
    VideoScores,
    evaluate_checkpoint,
    format_summary,
    metrics,
    predict_dataset,
    run_evaluation,
    score_views,
    write_report,
)
from .optim import build_optimizer, lr_factor, param_groups
from .predict import (
    VideoPrediction,
    find_videos,
    format_predictions,
    iter_predictions,
    load_predictor,
    predict_videos,
)
from .state import ResumeError
from .trainer import train

__all__ = [
    "ResumeError",
    "TrainingError",
    "VideoPrediction",
    "VideoScores",
    "build_optimizer",
    "evaluate_checkpoint",
    "find_videos",
    "format_predictions",
    "format_summary",
    "iter_predictions",
    "load_predictor",
    "lr_factor",
    "metrics",
    "param_groups",
    "predict_dataset",
    "predict_videos",
    "run_evaluation",
    "score_views",
    "train",
    "write_report",
]
