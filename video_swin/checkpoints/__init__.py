"""Reading and writing weights: our format, official/timm/torchvision layouts, inflation 2D -> 3D."""

from .io import CheckpointError, WeightFile, read_state_dict, read_weight_file
from .formats import detect_layout
from .inflate import inflate_image_checkpoint, load_image_pretrained
from .loading import LoadReport, load_checkpoint, load_model, save_checkpoint

__all__ = [
    "CheckpointError",
    "LoadReport",
    "WeightFile",
    "detect_layout",
    "inflate_image_checkpoint",
    "load_checkpoint",
    "load_image_pretrained",
    "load_model",
    "read_state_dict",
    "read_weight_file",
    "save_checkpoint",
]
