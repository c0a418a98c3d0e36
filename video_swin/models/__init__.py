"""Swin core (windows, attention, blocks, stages) and presets."""

from .registry import PRESETS, build_model, create_model, list_models, model_config
from .swin import PatchEmbed, PatchMerging, SwinBlock, SwinStage, SwinTransformer, num_params

__all__ = [
    "PRESETS",
    "PatchEmbed",
    "PatchMerging",
    "SwinBlock",
    "SwinStage",
    "SwinTransformer",
    "build_model",
    "create_model",
    "list_models",
    "model_config",
    "num_params",
]
