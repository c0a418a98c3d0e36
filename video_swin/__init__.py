"""video-swin: Video Swin Transformer for action recognition.

``create_model`` and ``list_models`` are resolved on first use, so that
importing the package (``video-swin --help``, config checks) does not import
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]

if TYPE_CHECKING:
    from .models import create_model, list_models


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'video_swin' has no attribute {name!r}")
