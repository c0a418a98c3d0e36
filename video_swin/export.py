"""Exporting a model for deployment: ``torch.export`` programs (.pt2) and ONNX files.

>>> program = export_model(model, "pt2", (1, 3, 32, 224, 224), path="swin3d_t.pt2")
>>> program = export_model(model, "onnx", (1, 3, 32, 224, 224), path="swin3d_t.onnx")

The batch dimension stays dynamic (any batch size runs); every other input
size is fixed at the example's, since the windows, padding and shift masks
depend on it. The exported graph is the reference model of
:mod:`video_swin.models` in eval mode: the CPU fast paths
(:func:`~video_swin.models.kernels.accelerate_cpu`) are undone on a copy, the
caller's model is left as it was.

Three things stand in the way of exporting a Swin model; the model takes care
of the last two itself, so that a plain ``torch.export.export``/``torch.onnx.export``
of a model as built passes too, and this module of all three:

* Dimensions of size 0 or 1 are specialised by PyTorch's symbolic shapes, so
  an example batch of 1 yields "batch ... specialized to be a constant (1)";
  the program is traced with a batch of 2 instead.
* With parameters that require grad, the relative-position bias (the
  attention's ``attn_mask``) requires grad, and ``scaled_dot_product_attention``
  is then traced through another kernel (math instead of the fused one) than
  the one the ONNX exporter's decomposition assumes; the head merge after it
  fails with "Cannot view a tensor with shape ..." (pytorch/pytorch#136543,
  #141107). The attention is therefore written out as matmuls and a softmax
  while exporting with gradients (:func:`~video_swin.models.attention.attend`);
  an inference export has no use for gradients anyway: the copy is frozen and
  keeps the fused call.
* Index tables and shift masks are built on first use for an input size and
  cached on the modules; built during tracing they are part of the graph
  (and never stored on the modules), rebuilt in every call. One eager forward
  on the example size first fills the caches, and the tracer takes them as
  constants.

ONNX needs the ``onnx`` and ``onnxscript`` packages (``pip install
video-swin[export]``, which adds onnxruntime to run the file).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import load_checkpoint, load_model
from .checkpoints.io import read_sidecar
from .errors import CheckpointError
from .factory import create_model
from .models.kernels import reference
from .outputs import check_file_destination
from .pretrained import get_pretrained, is_pretrained_name

FORMATS = ("onnx", "pt2")
# At least 17, the first opset with LayerNormalization as one operator.
ONNX_OPSET = 18


def export_model(
    model: nn.Module,
    format: str,
    example_shape: Sequence[int],
    dynamic_batch: bool = True,
    *,
    path: str | os.PathLike | None = None,
    opset: int = ONNX_OPSET,
) -> Any:
    """Exports the reference computation of ``model`` in eval mode for inputs of ``example_shape``.

    Args:
        model: a :class:`~video_swin.models.SwinTransformer` (fast paths or not; not modified).
        format: ``"pt2"`` (:func:`torch.export.export`) or ``"onnx"`` (the dynamo ONNX exporter).
        example_shape: input shape (B, C, T, H, W) for clips or (B, C, H, W) for images;
            all but the batch are fixed in the exported program.
        dynamic_batch: let the batch size vary (input and output dim 0 named ``batch``).
        path: write the program there too (``torch.export.save`` or an ``.onnx`` file).
        opset: ONNX opset version (>= 17).

    Returns:
        A :class:`torch.export.ExportedProgram` (``program.module()(x)`` runs it)
        or a :class:`torch.onnx.ONNXProgram` (``program.model_proto``, ``program.save(path)``).
        Both take one input, Tensor[B, C, T, H, W] or Tensor[B, C, H, W] (ONNX name
        ``video`` or ``image``), and return Tensor[B, num_classes] (ONNX name
        ``logits``; ``features`` for a model without head).

    Raises:
        ValueError: an unknown format or an input shape the model does not take.
        ConfigError: ``path`` is a folder or cannot be written (read-only, under a file).
        ImportError: ONNX without the onnx or onnxscript package (``pip install 'video-swin[export]'``).
    """
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {list(FORMATS)}, got {format!r}")
    missing = [m for m in ("onnx", "onnxscript") if format == "onnx" and importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}")
    if path is not None:  # a folder, a read-only place: before the export, which takes minutes for large models
        check_file_destination(path, "export path")
    shape = tuple(int(s) for s in example_shape)
    model = _inference_copy(model)
    model.check_input(torch.empty(shape, device="meta"))
    device = next(model.parameters()).device
    with torch.no_grad():
        model(torch.zeros((1, *shape[1:]), device=device))  # fills the index and mask caches for this size
    batch = max(shape[0], 2) if dynamic_batch else shape[0]
    x = torch.randn((batch, *shape[1:]), device=device)
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    if format == "pt2":
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
        if path is not None:
            torch.export.save(program, _parent_made(path))
        return program
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        dynamic_shapes=dynamic,
        input_names=["video" if len(shape) == 5 else "image"],
        output_names=["logits" if getattr(model, "num_classes", 1) > 0 else "features"],
        opset_version=opset,
        verbose=False,
    )
    if path is not None:
        program.save(_parent_made(path))
    return program


def run_exported(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """Runs an exported file on ``x``: a .pt2 program through PyTorch, an .onnx file through onnxruntime."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
        return torch.from_numpy(out)
    with torch.no_grad():
        return torch.export.load(path).module()(x)


def check_export(
    model: nn.Module, path: str | os.PathLike, example_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 3)
) -> float:
    """Largest difference between an exported file's outputs and ``model``'s in eval mode, on random inputs.

    One random input per batch size in ``batch_sizes`` (other sizes from
    ``example_shape``); the difference is relative to the largest output.
    """
    model = _inference_copy(model).cpu()
    worst = 0.0
    for batch in batch_sizes:
        x = torch.randn((batch, *tuple(example_shape)[1:]))
        with torch.no_grad():
            expected = model(x)
        got = run_exported(path, x)
        if got.shape != expected.shape:
            raise ValueError(f"{path}: output shape {tuple(got.shape)} for batch {batch}, expected {tuple(expected.shape)}")
        worst = max(worst, ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item())
    return worst


def load_for_export(weights: str | os.PathLike, model_name: str | None = None,
                    num_classes: int = 400) -> tuple[nn.Module, tuple[int, ...] | None]:
    """A model with the given weights, and the input size (T, H, W) or (H, W) they were evaluated at, if known.

    Args:
        weights: a registry name (:func:`video_swin.list_pretrained`), one of
            our weight files (with the JSON sidecar that names the model), or
            any other weight file when ``model_name`` says which preset it fits.
        model_name: the preset for a file without our sidecar (official, timm, torchvision files).
        num_classes: the head of ``model_name``'s model.

    Raises:
        CheckpointError: a file that is missing, unreadable or incomplete for the model.
    """
    if is_pretrained_name(str(weights)) and not Path(weights).exists():
        entry = get_pretrained(str(weights))
        model = create_model(entry.model, pretrained=entry.name)
        size = entry.eval.get("crop_size")
        return model, _input_size(model, entry.eval.get("clip_len"), size)
    if not Path(weights).is_file():
        raise CheckpointError(f"{weights}: file not found and not a registry name (see video_swin.list_pretrained())")
    meta = read_sidecar(weights)
    if meta and isinstance(meta.get("model"), dict) and model_name is None:
        model, meta = load_model(weights)
        data = (meta.get("config") or {}).get("data") or {}
        return model, _input_size(model, data.get("clip_len"), data.get("crop_size"))
    if model_name is None:
        raise CheckpointError(f"{weights}: no video-swin sidecar naming the model; say which preset it fits (--model)")
    model = create_model(model_name, num_classes=num_classes)
    report = load_checkpoint(model, weights)
    if report.missing:
        raise CheckpointError(f"{weights}: {len(report.missing)} weights of {model_name} missing, "
                              f"e.g. {report.missing[:3]}")
    return model, None


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """The Kinetics recipes' clip, 32x224x224, for a video model; 224x224 for an image model."""
    return (32, 224, 224) if model.ndim == 3 else (224, 224)


def _input_size(model: nn.Module, clip_len: int | None, crop: int | None) -> tuple[int, ...] | None:
    if not crop or (model.ndim == 3 and not clip_len):
        return None
    return (clip_len, crop, crop) if model.ndim == 3 else (crop, crop)


def _inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the reference modules, in eval mode, without gradients."""
    copied = reference(copy.deepcopy(model)).eval()
    return copied.requires_grad_(False)


def _parent_made(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["FORMATS", "ONNX_OPSET", "check_export", "default_input_size", "export_model", "load_for_export", "run_exported"]
