"""video-swin: Video Swin Transformer for action recognition.

``create_model``, ``list_models``, ``list_pretrained`` and ``from_pretrained`` are resolved on
first use, so that importing the package (``video-swin --help``, config checks) does not import
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "from_pretrained", "list_models", "list_pretrained"]

if TYPE_CHECKING:
    from .hub import from_pretrained
    from .models import create_model, list_models
    from .pretrained import list_pretrained


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    if name == "list_pretrained":
        from .pretrained import list_pretrained

        return list_pretrained
    if name == "from_pretrained":
        from .hub import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'video_swin' has no attribute {name!r}")
