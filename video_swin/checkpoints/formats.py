"""Checkpoint layouts of the field, detected and mapped onto our parameter names.

Our names are the official Microsoft Swin / Video Swin ones (downsample at the
end of each stage), so official files need almost no renaming:

========================  ===========================================================
layout                    how it is recognised / what changes
========================  ===========================================================
``ours`` / ``official``   ``patch_embed.*``, ``layers.{i}.downsample`` at stage end
``official_video``        ``backbone.*`` + ``cls_head.fc_cls.*`` (mmaction 0.x; mmaction2
                          1.x names the final norm ``backbone.norm3``)
``timm``                  ``layers.{i}.downsample`` at the *start* of stage i, ``head.fc``
``torchvision_video``     ``patch_embed.*`` + ``features.{k}``: k even = blocks, odd = merging
``torchvision``           ``features.0.{0,2}`` = patch embed, then blocks/merging alternate
========================  ===========================================================

Saved buffers (``relative_position_index``, ``attn_mask``, ``relative_coords_table``,
and the zero key bias ``k_bias`` some Swin V2 ports keep) are dropped: the
model derives them. Swin V2 files (official and timm) use the same layouts
with V2 names inside the blocks (``attn.logit_scale``, ``attn.q_bias``,
``attn.v_bias``, ``attn.cpb_mlp.{0,2}``); :func:`variant_of` tells V1 from V2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from .io import StateDict

_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table", "k_bias")


def _is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _BUFFERS


def _torchvision_block(rest: str) -> str:
    # torchvision's MLP is a Sequential: 0 = fc1, 3 = fc2.
    return re.sub(r"^mlp\.0\.", "mlp.fc1.", re.sub(r"^mlp\.3\.", "mlp.fc2.", rest))


def _from_torchvision_video(key: str) -> str:
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if not m:
        return key
    k, rest = int(m.group(1)), m.group(2)
    if k % 2 == 0:
        j, tail = rest.split(".", 1)
        return f"layers.{k // 2}.blocks.{j}.{_torchvision_block(tail)}"
    return f"layers.{k // 2}.downsample.{rest}"


def _from_torchvision_image(key: str) -> str:
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if not m:
        return key
    k, rest = int(m.group(1)), m.group(2)
    if k == 0:
        return {"0": "patch_embed.proj", "2": "patch_embed.norm"}[rest.split(".", 1)[0]] + "." + rest.split(".", 1)[1]
    if k % 2 == 1:
        j, tail = rest.split(".", 1)
        return f"layers.{(k - 1) // 2}.blocks.{j}.{_torchvision_block(tail)}"
    return f"layers.{(k - 2) // 2}.downsample.{rest}"


def _from_timm(key: str) -> str:
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    if m:
        return f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    return re.sub(r"^head\.fc\.", "head.", key)


def _from_official_video(key: str) -> str:
    if key.startswith("cls_head."):
        return re.sub(r"^cls_head\.fc_cls\.", "head.", key)
    key = re.sub(r"^backbone\.", "", key)
    return re.sub(r"^norm3\.", "norm.", key)


def detect_layout(state: StateDict) -> str:
    """Names the layout of a state dict (see the module table), or ``"unknown"``."""
    keys = list(state)
    if any(k.startswith("backbone.") or k.startswith("cls_head.") for k in keys):
        return "official_video"
    if any(k.startswith("features.") for k in keys):
        return "torchvision_video" if "patch_embed.proj.weight" in state else "torchvision"
    if any(k.startswith("layers.") for k in keys):
        stages = {int(m.group(1)) for k in keys if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}
        if stages and 0 not in stages:
            return "timm"
        if any(k.startswith("head.fc.") for k in keys):
            return "timm"
        return "ours"
    return "unknown"


_RENAMES: dict[str, Callable[[str], str]] = {
    "official_video": _from_official_video,
    "torchvision_video": _from_torchvision_video,
    "torchvision": _from_torchvision_image,
    "timm": _from_timm,
    "ours": lambda k: k,
}


def to_canonical(state: StateDict) -> tuple[StateDict, str, list[str]]:
    """Renames a state dict to our parameter names.

    Returns:
        ``(state, layout, dropped)``: the renamed tensors, the detected layout,
        and the saved buffers that were dropped.
    """
    layout = detect_layout(state)
    rename = _RENAMES.get(layout, lambda k: k)
    out: StateDict = {}
    dropped = []
    for key, value in state.items():
        if _is_buffer(key):
            dropped.append(key)
            continue
        out[rename(key)] = value
    return out, layout, dropped


def describe(state: StateDict) -> str:
    """A short guess at what a state dict holds, for error messages."""
    keys = list(state)
    patch = state.get("patch_embed.proj.weight")
    if patch is None:
        patch = next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight")), None)
    if patch is None and "features.0.0.weight" in state:
        patch = state["features.0.0.weight"]
    if patch is not None:
        kind = {4: "a 2D (image) Swin", 5: "a 3D (video) Swin"}.get(patch.ndim, "a Swin-like model")
        return f"{kind} checkpoint in the {detect_layout(state)} layout"
    if any(k.startswith(("layer1.", "conv1.", "bn1.")) for k in keys):
        return "a ResNet-style CNN checkpoint (conv1/layer1 keys), not a Swin"
    if any(("embeddings" in k or "encoder.layer" in k or "attention.self" in k) for k in keys):
        return "a text/BERT-style transformer checkpoint, not a Swin"
    return f"no Swin checkpoint (first keys: {keys[:5]})"


def variant_of(state: StateDict) -> dict[str, str]:
    """The Swin options a state dict (our names) was built with, as far as its names and shapes tell.

    Returns:
        A subset of ``{"attention": "dot" | "cosine", "position_bias": "table" | "cpb",
        "norm": "pre" | "post"}``; the norm placement is read from a patch
        merging (LayerNorm over 4C before the reduction, or over 2C after it).
    """
    keys = list(state)
    out = {}
    if any(k.endswith(".attn.logit_scale") for k in keys):
        out["attention"] = "cosine"
    elif any(k.endswith(".attn.qkv.weight") for k in keys):
        out["attention"] = "dot"
    if any(".attn.cpb_mlp." in k for k in keys):
        out["position_bias"] = "cpb"
    elif any(k.endswith(".attn.relative_position_bias_table") for k in keys):
        out["position_bias"] = "table"
    for key in keys:
        m = re.fullmatch(r"(layers\.\d+\.downsample\.)norm\.weight", key)
        reduction = state.get(f"{m.group(1)}reduction.weight") if m else None
        if reduction is not None:
            out["norm"] = "post" if state[key].shape[0] == reduction.shape[0] else "pre"
            break
    return out


def infer_window(rows: int, like: tuple[int, ...]) -> tuple[int, ...] | None:
    """The window whose bias table has ``rows`` rows, preferring one close to ``like``.

    Used when a file carries no window size: a (2P-1)(2M-1)^2-row table is
    solved for (P, M, M), trying the model's own spatial window first.
    """
    if len(like) == 2:
        side = math.isqrt(rows)
        return ((side + 1) // 2,) * 2 if side * side == rows and side % 2 else None
    candidates = []
    for m in range(1, 65):
        spatial = (2 * m - 1) ** 2
        if rows % spatial == 0 and (rows // spatial) % 2 == 1:
            p = (rows // spatial + 1) // 2
            candidates.append((p, m, m))
    if not candidates:
        return None
    candidates.sort(key=lambda w: (w[1] != like[1], w[0] != like[0], abs(w[1] - like[1])))
    return candidates[0]


def resize_bias_table(table: Tensor, old: tuple[int, ...], new: tuple[int, ...]) -> Tensor:
    """Interpolates a relative-position bias table to another window.

    Args:
        table: Tensor[prod(2 * old - 1), nH].
        old: window the table was trained with.
        new: window of the model that loads it (same number of dims).

    Returns:
        Tensor[prod(2 * new - 1), nH]: bicubic for 2D tables, trilinear for 3D.
    """
    if tuple(old) == tuple(new):
        return table
    heads = table.shape[1]
    old_grid = [2 * w - 1 for w in old]
    new_grid = [2 * w - 1 for w in new]
    grid = table.T.reshape(1, heads, *old_grid).float()  # (1, nH, *grid)
    mode = "bicubic" if len(old) == 2 else "trilinear"
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    return grid.reshape(heads, -1).T.contiguous().to(table.dtype)  # (rows', nH)


def repeat_over_time(table: Tensor, temporal: int) -> Tensor:
    """Turns a (2M-1)^2-row 2D table into a (2P-1)(2M-1)^2-row 3D one (same bias at every time offset)."""
    return table.repeat(2 * temporal - 1, 1)  # rows ordered (dt, dh, dw), dt slowest


__all__ = [
    "describe",
    "detect_layout",
    "infer_window",
    "repeat_over_time",
    "resize_bias_table",
    "to_canonical",
    "variant_of",
]
