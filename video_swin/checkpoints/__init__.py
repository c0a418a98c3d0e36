"""Reading and writing weights: our format, official/timm/torchvision layouts, inflation 2D -> 3D."""

from .io import CheckpointError, read_state_dict
from .formats import detect_layout
from .inflate import inflate_image_checkpoint
from .loading import LoadReport, load_checkpoint, load_model, save_checkpoint

__all__ = [
    "CheckpointError",
    "LoadReport",
    "detect_layout",
    "inflate_image_checkpoint",
    "load_checkpoint",
    "load_model",
    "read_state_dict",
    "save_checkpoint",
]
