"""Kinetics-style video data: annotations, decoders, clip sampling, transforms, datasets, batching, demo data.

Importing this package imports neither decord nor PyAV nor pytorchvideo; each
is loaded the first time it is used.
"""

from .annotations import VideoRecord, class_names, read_annotations
from .broken import BrokenVideoLog, DecodeFailure, TooManyBrokenVideos
from .collate import SharedRingCollate
from .dataset import VideoDataset
from .decoder_base import DecodeError, Decoder
from .decoders import get_decoder
from .demo import DEMO_CLASSES, ensure_demo_data, make_demo_data
from .pipeline import build_video_dataset
from .shards import ShardDataset, ShardError, ShardLoader, ShardSet
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, clips_to_float

__all__ = [
    "DEMO_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BrokenVideoLog",
    "ClipTransform",
    "DecodeError",
    "DecodeFailure",
    "Decoder",
    "ShardDataset",
    "ShardError",
    "ShardLoader",
    "ShardSet",
    "SharedRingCollate",
    "TooManyBrokenVideos",
    "VideoDataset",
    "VideoRecord",
    "build_video_dataset",
    "class_names",
    "clips_to_float",
    "ensure_demo_data",
    "get_decoder",
    "make_demo_data",
    "read_annotations",
]
