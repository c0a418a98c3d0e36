"""Models as users get them: ``create_model(name, pretrained=...)``, ``load_model``, ``from_pretrained``, Hub methods.

The one module that composes the layers under it, as timm's ``_builder.py`` does:

* :mod:`video_swin.models` builds a preset with random weights (torch and einops only);
* :mod:`video_swin.checkpoints` reads and writes state dicts;
* :mod:`video_swin.pretrained` names, downloads and loads published weights;
* :mod:`video_swin.hub` writes and reads Hugging Face Hub folders.

Every model built here is a :class:`SwinTransformer`: :class:`video_swin.models.SwinTransformer`
plus the Hub methods of :class:`HubMixin`, with the same arguments, state dict and outputs. Nothing
under this module imports it; ``video_swin.create_model``, ``video_swin.from_pretrained`` and
``video_swin.load_model`` are its functions.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from . import models
from .checkpoints.loading import load_model_as
from .pretrained import get_pretrained, load_pretrained


class HubMixin:
    """``save_pretrained`` and ``push_to_hub`` for a model from :func:`create_model` (its ``config`` names the preset).

    :mod:`video_swin.hub` (and with it huggingface_hub, about 0.4 s) is imported when one of them
    runs, not with every model.
    """

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Writes config.json, model.safetensors and a model card: :func:`video_swin.hub.save_pretrained`."""
        from . import hub  # on use: see the class's docstring

        return hub.save_pretrained(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Uploads the :meth:`save_pretrained` folder to a Hub repository: :func:`video_swin.hub.push_to_hub`."""
        from . import hub  # on use: see the class's docstring

        return hub.push_to_hub(self, repo_id, **kwargs)


class SwinTransformer(HubMixin, models.SwinTransformer):
    """:class:`video_swin.models.SwinTransformer` with the Hub methods: the class of every model built here."""


_build = functools.partial(models.build_model, SwinTransformer)


def create_model(
    name: str, num_classes: int | None = None, *, pretrained: str | bool | None = None, **overrides: Any
) -> SwinTransformer:
    """Builds a preset, with random weights unless ``pretrained`` names published ones.

    Args:
        name: one of :func:`video_swin.list_models`, e.g. ``"swin3d_t"``, ``"swin_t"`` or ``"swinv2_3d_t"``.
        num_classes: outputs of the linear head (0: no head); default 400, or the
            pretrained file's count (another count gets a fresh head).
        pretrained: ``True`` (the preset's default weights), a tag (``"k400"``) or a
            ``"MODEL.TAG"`` name from :func:`video_swin.list_pretrained`; downloaded to
            the cache, checked and loaded (``model.classes`` then holds the class names).
        **overrides: any ``SwinTransformer`` argument, e.g. ``window_size=(16, 7, 7)``,
            ``drop_path_rate=0.2``, ``use_checkpoint=True``, or a Swin V2 option on
            its own: ``attention="cosine"``, ``position_bias="cpb"``, ``norm="post"``,
            ``pretrained_window_size=(8, 7, 7)``.

    Returns:
        The model; ``model.config`` holds the name and every argument, which
        checkpoints store so the model can be rebuilt from the file alone.
    """
    if not pretrained:
        return _build(name, num_classes, **overrides)
    entry = get_pretrained(name, pretrained)
    model = _build(entry.model, entry.num_classes if num_classes is None else num_classes,
                   **{**entry.model_args, **overrides})
    load_pretrained(model, entry)
    return model


def load_model(path: str | os.PathLike, **overrides: Any) -> tuple[SwinTransformer, dict[str, Any]]:
    """:func:`video_swin.checkpoints.load_model`, the model with the Hub methods.

    Args:
        path: a ``.safetensors`` file written by :func:`video_swin.checkpoints.save_checkpoint`.
        **overrides: model arguments to change (e.g. ``window_size``).

    Returns:
        ``(model, metadata)`` with the sidecar's metadata (``classes`` etc.).
    """
    return load_model_as(_build, path, **overrides)


def from_pretrained(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    **overrides: Any,
) -> SwinTransformer:
    """The model saved by ``model.save_pretrained``, from a folder or a Hub repository id.

    Args:
        source: a local folder, or ``"owner/name"`` on the Hub (downloaded
            into huggingface_hub's cache, or read from it when offline).
        revision, cache_dir, token: passed to :func:`huggingface_hub.hf_hub_download`.
        **overrides: constructor arguments to change (e.g. ``drop_path_rate``).

    Returns:
        The model in eval mode, ``model.classes`` set (or None) and
        ``model.hub_config`` holding the whole ``config.json``.

    ``config.json`` is checked against the weights' header before the model is
    built (:func:`video_swin.hub.check_config`): a malformed file, a field of the
    wrong type, a class list of another length than the head, or sizes the
    tensors do not have (a huge ``embed_dim`` included) fail before any memory
    is allocated.

    Raises:
        CheckpointError: not a saved model, offline without a cached copy, or
            a config.json that is malformed or does not fit the weights (naming
            the file and the field).
    """
    from . import hub  # on use: huggingface_hub, see HubMixin

    config, args, weights_file = hub.read_saved(source, revision=revision, cache_dir=cache_dir, token=token,
                                                **overrides)
    return hub.load_saved(_build(config["model_name"], **args), config, weights_file)


__all__ = ["HubMixin", "SwinTransformer", "create_model", "from_pretrained", "load_model"]
