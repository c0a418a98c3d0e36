"""video-swin: Video Swin Transformer for action recognition.

``create_model``, ``list_models``, ``list_pretrained``, ``from_pretrained``, ``load_model``,
``timeline`` and ``extract_features`` are resolved on first use, so that importing the package
(``video-swin --help``, config checks) does not import torch. The models come from :mod:`video_swin.factory`; docs/ARCHITECTURE.md ("Layering, one
way") says which module may import which, and tests/test_layers.py checks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["__version__", "create_model", "extract_features", "from_pretrained", "list_models", "list_pretrained",
           "load_model", "timeline"]

if TYPE_CHECKING:
    from .factory import create_model, from_pretrained, load_model
    from .models import list_models
    from .pretrained import list_pretrained
    from .engine.long_video import extract_features, timeline


def __getattr__(name: str) -> Any:
    # Imported on first use (torch comes with them): see the module's docstring.
    if name in ("create_model", "from_pretrained", "load_model"):
        from . import factory

        return getattr(factory, name)
    if name == "list_models":
        from .models import list_models

        return list_models
    if name in ("timeline", "extract_features"):
        from .engine import long_video

        return getattr(long_video, name)
    if name == "list_pretrained":
        from .pretrained import list_pretrained

        return list_pretrained
    raise AttributeError(f"module 'video_swin' has no attribute {name!r}")
