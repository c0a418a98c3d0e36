"""Kinetics-style video data: annotations, decoders, clip sampling, transforms, datasets, batching, demo data.

Importing this package imports neither decord nor PyAV nor pytorchvideo; each
is loaded the first time it is used.
"""

from .annotations import VideoRecord, class_names, read_annotations
from .broken import BrokenVideoLog, TooManyBrokenVideos, failed_paths, failed_reasons
from .collate import SharedRingCollate
from .dataset import VideoDataset
from .decoders import DecodeError, Decoder, get_decoder
from .demo import DEMO_CLASSES, ensure_demo_data, make_demo_data
from .pipeline import build_video_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, clips_to_float

__all__ = [
    "DEMO_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BrokenVideoLog",
    "DecodeError",
    "Decoder",
    "SharedRingCollate",
    "TooManyBrokenVideos",
    "VideoDataset",
    "VideoRecord",
    "build_video_dataset",
    "class_names",
    "clips_to_float",
    "ensure_demo_data",
    "failed_paths",
    "failed_reasons",
    "get_decoder",
    "make_demo_data",
    "read_annotations",
]
