"""Model presets: ``create_model`` (random weights) and ``list_models``."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from .swin import SwinTransformer

_VIDEO = {"patch_size": (2, 4, 4), "window_size": (8, 7, 7)}
_IMAGE = {"patch_size": (4, 4), "window_size": (7, 7)}
_SIZES: dict[str, dict[str, Any]] = {
    "t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "drop_path_rate": 0.1},
    "s": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24), "drop_path_rate": 0.1},
    "b": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "drop_path_rate": 0.3},
    "l": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48), "drop_path_rate": 0.2},
}

# The Swin V2 options, all three together in the V2 presets; each also works alone on any model.
V2 = {"attention": "cosine", "position_bias": "cpb", "norm": "post"}
# Official Swin V2 image models use window 8 at 256 px.
_IMAGE_V2 = {"patch_size": (4, 4), "window_size": (8, 8)}
_IMAGE_DROP_PATH = {"t": 0.2, "s": 0.3, "b": 0.5, "l": 0.5}

# Swin V2's scaled-up sizes, V2 only. Widths and depths: the Swin V2 paper (arXiv 2111.09883,
# "Model configurations"): L C=192 {2,2,18,2}; H C=352 {2,2,18,2}; G C=512 {2,2,42,4}; H and G add a
# LayerNorm "on the main branch every 6 layers". L's heads and drop path (0.2): Microsoft's
# configs/swinv2/swinv2_large_patch4_window12_192_22k.yaml. The paper gives no heads for H and G:
# 32 channels per head, as in every released Swin (V1 paper: "d = 32"), gives 11/16 heads in stage 1.
# Their drop path is L's (no released config).
_V2_SIZES: dict[str, dict[str, Any]] = {
    "l": {**_SIZES["l"]},
    "h": {"embed_dim": 352, "depths": (2, 2, 18, 2), "num_heads": (11, 22, 44, 88), "drop_path_rate": 0.2,
          "extra_norm_period": 6},
    "g": {"embed_dim": 512, "depths": (2, 2, 42, 4), "num_heads": (16, 32, 64, 128), "drop_path_rate": 0.2,
          "extra_norm_period": 6},
}  # fmt: skip

# Video Swin presets carry the official video head dropout (0.5); image ones none.
PRESETS: dict[str, dict[str, Any]] = {}
for _size, _arch in _SIZES.items():
    PRESETS[f"swin3d_{_size}"] = {**_VIDEO, **_arch, "head_dropout": 0.5}
    PRESETS[f"swin_{_size}"] = {**_IMAGE, **_arch, "drop_path_rate": _IMAGE_DROP_PATH[_size]}
    if _size != "l":
        PRESETS[f"swinv2_3d_{_size}"] = {**_VIDEO, **_arch, "head_dropout": 0.5, **V2}
        PRESETS[f"swinv2_{_size}"] = {**_IMAGE_V2, **_arch, "drop_path_rate": _IMAGE_DROP_PATH[_size], **V2}
for _size, _arch in _V2_SIZES.items():
    PRESETS[f"swinv2_3d_{_size}"] = {**_VIDEO, **_arch, "head_dropout": 0.5, **V2}
    PRESETS[f"swinv2_{_size}"] = {**_IMAGE_V2, **_arch, **V2}


def list_models() -> list[str]:
    """All preset names, sorted."""
    return sorted(PRESETS)


def model_config(name: str, num_classes: int = 400, **overrides: Any) -> dict[str, Any]:
    """The full keyword arguments ``create_model(name, ...)`` builds ``SwinTransformer`` with."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    allowed = set(inspect.signature(SwinTransformer.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown} for {name!r}; allowed: {sorted(allowed)}")
    config = {**PRESETS[name], "num_classes": num_classes, **overrides}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def create_model(name: str, num_classes: int | None = None, **overrides: Any) -> SwinTransformer:
    """Builds a preset with random weights: the plain builder of this layer.

    :func:`video_swin.create_model` (:mod:`video_swin.factory`) is the one users call: the same
    model, plus published weights (``pretrained=``) and the Hugging Face Hub methods.

    Args:
        name: one of :func:`list_models`, e.g. ``"swin3d_t"``, ``"swin_t"`` or ``"swinv2_3d_t"``.
        num_classes: outputs of the linear head (0: no head); default 400.
        **overrides: any ``SwinTransformer`` argument, e.g. ``window_size=(16, 7, 7)``,
            ``drop_path_rate=0.2``, ``use_checkpoint=True``, or a Swin V2 option on
            its own: ``attention="cosine"``, ``position_bias="cpb"``, ``norm="post"``,
            ``pretrained_window_size=(8, 7, 7)``.

    Returns:
        The model; ``model.config`` holds the name and every argument, which
        checkpoints store so the model can be rebuilt from the file alone.
    """
    return build_model(SwinTransformer, name, num_classes, **overrides)


M = TypeVar("M", bound=SwinTransformer)


def build_model(model_class: type[M], name: str, num_classes: int | None = None, **overrides: Any) -> M:
    """:func:`create_model` with ``model_class`` (``SwinTransformer`` or a subclass) in place of ``SwinTransformer``."""
    if overrides.pop("pretrained", None):
        raise ValueError(f"video_swin.models.create_model builds random weights; for published ones call "
                         f"video_swin.create_model({name!r}, pretrained=...)")
    config = model_config(name, 400 if num_classes is None else num_classes, **overrides)
    model = model_class(**config)
    model.config = {"name": name, **config}
    return model
