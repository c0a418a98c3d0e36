"""Reading and writing weight files safely.

Only tensors are ever read: ``.safetensors`` through safetensors, anything
else through ``torch.load(weights_only=True)``. A pickle that would build
arbitrary objects (and so could run code) is refused; there is no fallback.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import CheckpointError

StateDict = dict[str, Tensor]
# Containers that wrap the weights in the common formats: mmaction ("state_dict"),
# official Microsoft Swin ("model"), DeepSpeed/DDP dumps ("module"), ours ("model_state").
_WRAPPERS = ("state_dict", "model", "module", "model_state")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON file beside a weights file: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """Metadata written by :func:`save_checkpoint` beside ``path``, or None."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{side}: sidecar is not valid JSON ({e})") from e


@dataclass(frozen=True)
class WeightFile:
    """A checkpoint read once: its tensors, the name it is reported under and its sidecar (if any).

    Every loading function accepts it in place of a path, so a caller that
    must look at a file before choosing how to load it reads it only once.
    """

    state: StateDict
    name: str
    meta: dict[str, Any] | None = None


def read_weight_file(source: str | os.PathLike | Mapping[str, Any] | WeightFile) -> WeightFile:
    """Reads a checkpoint (and its sidecar) once; see :class:`WeightFile`."""
    if isinstance(source, WeightFile):
        return source
    if isinstance(source, Mapping):
        return WeightFile(read_state_dict(source), "state dict")
    return WeightFile(read_state_dict(source), str(source), read_sidecar(source))


def read_state_dict(source: str | os.PathLike | Mapping[str, Any] | WeightFile, *, name: str | None = None
                    ) -> StateDict:
    """Loads the tensors of a checkpoint, unwrapping the common containers.

    Args:
        source: a path (.safetensors, .pth, .pt, .bin, .ckpt) or a mapping.
        name: what to call the file in messages, and whose suffix tells the
            format (a download's URL while the bytes still sit in a temporary file).

    Returns:
        A flat ``name -> Tensor`` dict (``module.`` prefixes removed).

    Raises:
        CheckpointError: missing, truncated or unsafe files, or no tensors.
    """
    if isinstance(source, WeightFile):
        return dict(source.state)
    if isinstance(source, Mapping):
        obj: Any = source
        where = "state dict"
    else:
        path = Path(source)
        where = name or str(path)
        if not path.is_file():
            raise CheckpointError(f"{where}: checkpoint file not found")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{where}: checkpoint file is empty")
        obj = _load_file(path, where, Path(name.split("?")[0]).suffix if name else path.suffix)
    for _ in range(3):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict of tensors, found {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if isinstance(value, Tensor):
            state[key[len("module.") :] if key.startswith("module.") else key] = value
    if not state:
        raise CheckpointError(f"{where}: holds no tensors (keys: {list(obj)[:8]})")
    return state


def content_kind(head: bytes) -> str | None:
    """What the first bytes of a would-be weights file really are, when that is something else.

    ``"an HTML page"`` (a server's error or sign-in page saved under the
    weights' name), ``"a JSON document"`` or ``"a text file"``; None for
    anything that may be weights (zip, pickle, safetensors, binary).
    """
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in text[:1024]:
        return "an HTML page"
    if not text:
        return None
    if text[:1] in (b"{", b"[") and len(head) >= 8 and _looks_textual(head):
        # A safetensors file starts with an 8-byte little-endian length, then "{": never "{" first.
        return "a JSON document"
    if text[:1] == b"<" or _looks_textual(head):
        return "a text file"
    return None


def _looks_textual(head: bytes) -> bool:
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
        decoded = head[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\r\n\t" for c in decoded)


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _load_file(path: Path, where: str, suffix: str) -> Any:
    kind = content_kind(_head(path))
    if kind is not None:
        raise CheckpointError(f"{where}: the file is {kind}, not weights; get the real file again")
    if suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{where}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(unpickling_refusal(where, e)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{where}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{torch_reason(e)}") from None


# torch's refusal opens with the advice to load again with weights_only=False ("will likely
# succeed"): the one thing never to do with a file that was refused. Lines carrying it are dropped.
_TORCH_ADVICE = ("weights_only", "will likely succeed", "file an issue", "check the documentation of torch.load",
                 "trusted source", "weights only load failed")


def torch_reason(error: BaseException) -> str:
    """The first line of a torch loading error that says what is wrong, its advice left out."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [line for line in lines if not any(a in line.lower() for a in _TORCH_ADVICE)]
    return kept[0][:300] if kept else type(error).__name__


def unpickling_detail(error: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names what the pickle wanted to build (e.g. ``GLOBAL posix.system``).

    torch's first line advises retrying with ``weights_only=False``, which is
    exactly what must not be done with such a file; it is left out.
    """
    reason = torch_reason(error)
    named = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "global" in line]
    return named[0] if named else reason


def unpickling_refusal(where: str | os.PathLike, error: pickle.UnpicklingError) -> str:
    """The message for a pickle that ``torch.load(weights_only=True)`` refused: what the file is, what to do.

    A pickle that asks for Python objects (a ``GLOBAL``) could run code and is
    refused as such; anything else the unpickler stops on is not a checkpoint
    (corrupt, or some other file under the checkpoint's name).
    """
    detail = unpickling_detail(error)
    if "GLOBAL" in detail or "global" in detail:
        return (f"{where}: refused to unpickle: the file holds Python objects other than tensors, "
                f"which could run code when loaded. Re-save only the state dict "
                f"(torch.save(model.state_dict(), ...)) or use safetensors. Details: {detail}")
    return (f"{where}: not a PyTorch checkpoint: the weights-only unpickler stopped ({detail}), "
            f"so the file is corrupt or something else saved under this name; get the real file again")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_weights(state: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    """Writes tensors as safetensors and ``metadata`` as the JSON sidecar, each atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"refusing to save non-finite weights: {name} has NaN or Inf values")
    _atomic_write(path, lambda tmp: save_file(tensors, tmp))
    text = json.dumps(dict(metadata), indent=2, sort_keys=True, default=str)
    _atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(text))
    return path
