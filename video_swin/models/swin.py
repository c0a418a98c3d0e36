"""The Swin Transformer core: one implementation for images (2D) and clips (3D).

The dimensionality is ``len(patch_size)``: (4, 4) gives the image Swin,
(2, 4, 4) the Video Swin. The backbone is channels-last, (B, *S, C), from
patch embedding to the final norm; ``forward_features`` turns it
channels-first once at the end.

The Swin V2 ideas are options of the same modules: ``attention="cosine"``
and ``position_bias="cpb"`` (see :mod:`.attention`) and ``norm="post"``
(res-post-norm blocks, patch merging that normalises after its reduction).
``extra_norm_period`` adds the LayerNorm on the main branch that Swin V2
uses in its largest models (H and G), after every few blocks.

This file and :mod:`.attention` are the reference, in standard PyTorch ops.
Faster CPU paths with the same weights and outputs are applied to a built
model by :func:`video_swin.models.kernels.accelerate_cpu`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import WindowAttention, check_choice, is_exporting
from .windows import (
    Size,
    fit_window,
    pad_to_window,
    padded_size,
    shift_mask,
    unpad,
    window_partition,
    window_reverse,
)

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORMS = ("pre", "post")


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zeroes whole samples of a residual branch with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path`."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two-layer feed-forward block (``fc1`` -> GELU -> ``fc2``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PatchEmbed(nn.Module):
    """Cuts the input into patches and embeds them with one strided convolution.

    Input sizes that are not multiples of the patch are zero-padded at the end.

    Args:
        patch_size: (4, 4) or (2, 4, 4).
        in_chans: input channels.
        embed_dim: output channels C.
        norm: apply LayerNorm after the projection (official ``patch_norm``).
    """

    def __init__(self, patch_size: Size, in_chans: int, embed_dim: int, norm: bool = True) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = _CONV[len(patch_size)](in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, Cin, *S] -> Tensor[B, *S', C] with S' = ceil(S / patch)."""
        size = x.shape[2:]
        pad: list[int] = []
        for s, p in zip(reversed(size), reversed(self.patch_size)):
            pad += [0, (p - s % p) % p]
        if any(pad):
            x = F.pad(x, pad)
        x = self.proj(x)  # (B, C, *S')
        x = x.movedim(1, -1)  # (B, *S', C)
        return self.norm(x)


class PatchMerging(nn.Module):
    """Halves H and W (the last two spatial dims, never T) and doubles the channels.

    Neighbours are concatenated in the official order x0=(0,0), x1=(1,0),
    x2=(0,1), x3=(1,1) in (h, w) offsets; official, timm and torchvision
    weights all assume it.

    Args:
        dim: input channels C.
        norm: ``"pre"`` (V1): LayerNorm(4C) then reduction; ``"post"`` (V2):
            reduction then LayerNorm(2C).
    """

    def __init__(self, dim: int, norm: str = "pre") -> None:
        super().__init__()
        self.post_norm = check_choice("norm", norm, NORMS) == "post"
        self.norm = nn.LayerNorm(2 * dim if self.post_norm else 4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, *S, H, W, C] -> Tensor[B, *S, ceil(H/2), ceil(W/2), 2C]."""
        h, w = x.shape[-3], x.shape[-2]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Channel blocks in (dw, dh) order, dh fastest: the official x0..x3.
        x = rearrange(x, "... (h dh) (w dw) c -> ... h w (dw dh c)", dh=2, dw=2)  # (B, *S, H/2, W/2, 4C)
        if self.post_norm:
            return self.norm(self.reduction(x))  # (B, *S, H/2, W/2, 2C)
        return self.reduction(self.norm(x))  # (B, *S, H/2, W/2, 2C)


def _same(x: Tensor) -> Tensor:
    """The identity: the norm of a branch on the side where it has none."""
    return x


class SwinBlock(nn.Module):
    """Swin block: (shifted) window attention and an MLP, each a residual branch.

    ``norm="pre"`` (V1): ``x + f(norm(x))``; ``norm="post"`` (V2 res-post-norm):
    ``x + norm(f(x))``, which keeps the residual branches' output bounded in
    deep models. Post-norms start at zero weight and bias (as in the official
    V2 code), so a new block starts as the identity.

    With ``main_norm``, the block ends with a LayerNorm of the main branch
    itself, ``norm3(x)`` after both residuals: Swin V2's stabiliser for its
    largest models (see :class:`SwinTransformer`, ``extra_norm_period``).

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: configured window.
        shifted: whether this block shifts its windows by half a window.
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias: learn a qkv bias.
        drop: dropout after projections.
        attn_drop: dropout on attention weights.
        drop_path: stochastic depth rate of both residual branches.
        attention: ``"dot"`` or ``"cosine"`` (see :class:`WindowAttention`).
        position_bias: ``"table"`` or ``"cpb"``.
        norm: ``"pre"`` or ``"post"``.
        pretrained_window_size: for ``"cpb"``, the window the weights were trained with.
        main_norm: end the block with a LayerNorm of the main branch (``norm3``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Size,
        *,
        shifted: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attention: str = "dot",
        position_bias: str = "table",
        norm: str = "pre",
        pretrained_window_size: Size | None = None,
        main_norm: bool = False,
    ) -> None:
        super().__init__()
        self.shifted = shifted
        self.post_norm = check_choice("norm", norm, NORMS) == "post"
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            window_size,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            attention=attention,
            position_bias=position_bias,
            pretrained_window_size=pretrained_window_size,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        # Named after timm's swinv2_cr (the public code with this norm); an Identity
        # adds no state-dict keys, so models without it keep their checkpoints.
        self.norm3 = nn.LayerNorm(dim) if main_norm else nn.Identity()

    def init_post_norm(self) -> None:
        """Zeroes the res-post-norms (official V2 init); a no-op for pre-norm blocks."""
        if self.post_norm:
            for norm in (self.norm1, self.norm2):
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)

    def forward(self, x: Tensor, window: Size, shift: Size, mask: Tensor | None) -> Tensor:
        """Tensor[B, *S, C] -> Tensor[B, *S, C].

        ``window``/``shift`` are the ones in use for this input size (see
        :func:`fit_window`); ``shift`` is ignored by non-shifted blocks and
        ``mask`` is the shift mask for the padded map (None if no shift).
        """
        if not self.shifted:
            shift, mask = (0,) * len(window), None
        x = self.attention_residual(x, window, shift, mask)
        x = self.mlp_residual(x)
        return self.norm3(x)

    # The pieces below are the model's meaning, written once; the CPU fast paths
    # (models/kernels/block.py) override some of them with faster ways to compute the same.

    def attention_residual(self, x: Tensor, window: Size, shift: Size, mask: Tensor | None) -> Tensor:
        """``x`` plus its (stochastic-depth) window-attention branch."""
        return x + self.drop_path(self.branch(self.shifted_window_attention, self.norm1, x, window, shift, mask))

    def mlp_residual(self, x: Tensor) -> Tensor:
        """``x`` plus its (stochastic-depth) MLP branch."""
        return x + self.drop_path(self.mlp_branch(x))

    def mlp_branch(self, x: Tensor) -> Tensor:
        """The MLP branch without its residual."""
        return self.branch(self.mlp, self.norm2, x)

    def norms_around(self, norm: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """Where a branch's norm goes: ``(before, after)`` the branch's function, the other one the identity."""
        if self.post_norm:
            return _same, norm  # res-post-norm (V2): norm(f(x))
        return norm, _same  # pre-norm (V1): f(norm(x))

    def branch(self, f: Callable[..., Tensor], norm: nn.Module, x: Tensor, *args: Any) -> Tensor:
        """A residual branch without its residual: ``f(norm(x))`` (pre-norm) or ``norm(f(x))`` (post-norm)."""
        before, after = self.norms_around(norm)
        return after(f(before(x), *args))

    def shifted_window_attention(self, x: Tensor, window: Size, shift: Size, mask: Tensor | None) -> Tensor:
        """Attention within (cyclically shifted) windows of the map: Tensor[B, *S, C] -> Tensor[B, *S, C].

        The map is zero-padded to window multiples at its end; padded tokens
        take part in attention, as in the official code, and are cut off after.
        """
        size = tuple(x.shape[1:-1])
        dims = tuple(range(1, len(size) + 1))
        x = pad_to_window(x, window)  # (B, *Sp, C)
        padded = tuple(x.shape[1:-1])
        if any(shift):
            x = torch.roll(x, tuple(-s for s in shift), dims)  # (B, *Sp, C)
        windows = window_partition(x, window)  # (B*nW, N, C)
        windows = self.attn(windows, window, mask)  # (B*nW, N, C)
        x = window_reverse(windows, window, padded)  # (B, *Sp, C)
        if any(shift):
            x = torch.roll(x, shift, dims)  # (B, *Sp, C)
        return unpad(x, size)  # (B, *S, C)


class SwinStage(nn.Module):
    """A stage of blocks alternating regular and shifted windows, then optional merging.

    The window and shift in use and the shift mask depend only on the input
    size; the mask is built once per (padded size, window, shift, device) and
    kept in ``self.mask_cache``. With ``extra_norm_period`` N > 0, blocks N,
    2N, ... of the stage (counted from 1) end with a main-branch LayerNorm.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Size,
        *,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
        norm: str = "pre",
        extra_norm_period: int = 0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(w // 2 for w in window_size)
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                shifted=i % 2 == 1,
                drop_path=drop_path[i],
                norm=norm,
                main_norm=extra_norm_period > 0 and (i + 1) % extra_norm_period == 0,
                **block_kwargs,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, norm=norm) if downsample else None
        self.mask_cache: dict[tuple, Tensor] = {}

    def shift_mask(self, size: Size, window: Size, shift: Size, device: torch.device) -> Tensor | None:
        """The shift mask of the shifted blocks for a map of ``size``, cached; None where nothing shifts."""
        if not any(shift) or len(self.blocks) < 2:
            return None
        padded = padded_size(size, window)
        key = (padded, window, shift, device)
        mask = self.mask_cache.get(key)
        if mask is None:
            if is_exporting():  # a traced tensor: part of the graph, never a module attribute
                return shift_mask(padded, window, shift, device)
            if len(self.mask_cache) >= 8:  # bounded: many input sizes must not grow memory
                self.mask_cache.pop(next(iter(self.mask_cache)))
            mask = self.mask_cache[key] = shift_mask(padded, window, shift, device)
        return mask

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, *S, C] -> Tensor[B, *S', C'] (halved H, W and doubled C when merging)."""
        x = self.forward_blocks(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def forward_blocks(self, x: Tensor) -> Tensor:
        """The stage's blocks without the merging after them: Tensor[B, *S, C] -> Tensor[B, *S, C]."""
        size = tuple(x.shape[1:-1])
        window, shift = fit_window(size, self.window_size, self.shift_size)
        mask = self.shift_mask(size, window, shift, x.device)  # (nW, N, N) or None
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, window, shift, mask, use_reentrant=False)
            else:
                x = block(x, window, shift, mask)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer for images (2D patch) or clips (3D patch).

    Args:
        patch_size: (4, 4) for images, (2, 4, 4) for clips; its length sets the dims.
        window_size: same length as ``patch_size``, e.g. (7, 7) or (8, 7, 7).
        embed_dim: channels of the first stage; doubled by each merging.
        depths: blocks per stage.
        num_heads: heads per stage.
        num_classes: classes of the linear head (0 for no head).
        in_chans: input channels.
        mlp_ratio: MLP hidden width over the channels.
        qkv_bias: learn qkv biases.
        drop_rate: dropout after attention/MLP projections.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly to this rate over all blocks.
        head_dropout: dropout before the head (official Video Swin head: 0.5).
        patch_norm: LayerNorm after the patch embedding.
        use_checkpoint: activation checkpointing of every block while training.
        attention: ``"dot"`` (V1) or ``"cosine"`` (V2 scaled cosine attention).
        position_bias: ``"table"`` (V1 learned table) or ``"cpb"`` (V2 continuous
            position bias, which holds no per-window weights).
        norm: ``"pre"`` (V1) or ``"post"`` (V2 res-post-norm blocks and merging).
        pretrained_window_size: ``"cpb"`` only: the window the weights were
            trained with, e.g. (8, 7, 7) when fine-tuning them with window
            (16, 14, 14); one window for all stages, or a list of one window
            (or None) per stage. None: coordinates are normalised by the window in use.
        extra_norm_period: N > 0: a LayerNorm on the main branch after every N-th
            block of each stage (counted from 1 within the stage); 0: none. The
            Swin V2 paper (arXiv 2111.09883, "Model configurations") adds one "on the
            main branch every 6 layers" to SwinV2-H and SwinV2-G for stability; Microsoft's
            released code (models/swin_transformer_v2.py) stops at SwinV2-L and has
            no such norm, so the placement (after the block, counted per stage)
            follows timm's swin_transformer_v2_cr, ``extra_norm_period=6`` for its
            huge and giant models.
    """

    def __init__(
        self,
        *,
        patch_size: Sequence[int],
        window_size: Sequence[int],
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        num_classes: int = 400,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        head_dropout: float = 0.0,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        attention: str = "dot",
        position_bias: str = "table",
        norm: str = "pre",
        pretrained_window_size: Sequence[int] | Sequence[Sequence[int] | None] | None = None,
        extra_norm_period: int = 0,
    ) -> None:
        super().__init__()
        patch_size, window_size = tuple(patch_size), tuple(window_size)
        if len(patch_size) not in _CONV or len(window_size) != len(patch_size):
            raise ValueError(
                f"patch_size {patch_size} and window_size {window_size} must both have 2 (image) or 3 (clip) entries"
            )
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        check_choice("norm", norm, NORMS)
        if not isinstance(extra_norm_period, int) or extra_norm_period < 0:
            raise ValueError(f"extra_norm_period must be an integer >= 0 (0: none), got {extra_norm_period!r}")
        if pretrained_window_size is not None and position_bias != "cpb":
            raise ValueError(
                f"pretrained_window_size applies to position_bias='cpb' only, got position_bias={position_bias!r}"
            )
        stage_pretrained = _stage_windows(pretrained_window_size, len(depths), len(window_size))
        self.ndim = len(patch_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        # On the CPU even when built under ``torch.device("meta")`` (counting parameters without memory).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    embed_dim * 2**i,
                    depth,
                    heads,
                    window_size,
                    drop_path=rates[start : start + depth],
                    downsample=i < len(depths) - 1,
                    use_checkpoint=use_checkpoint,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    attention=attention,
                    position_bias=position_bias,
                    norm=norm,
                    pretrained_window_size=stage_pretrained[i],
                    extra_norm_period=extra_norm_period,
                )
            )
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, SwinBlock):
                module.init_post_norm()

    # -- uniform model interface (timm style) --------------------------------
    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay: bias tables, norms, biases, V2 logit scales and CPB MLPs."""
        names = set()
        for name, p in self.named_parameters():
            if p.ndim <= 1 or name.endswith(("relative_position_bias_table", "logit_scale")) or ".cpb_mlp." in name:
                names.add(name)
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turns activation checkpointing of every block on or off."""
        for stage in self.layers:
            stage.use_checkpoint = enable

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the head with a freshly initialised one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def check_input(self, x: Tensor) -> None:
        """Raises ValueError unless ``x`` is a float (B, C, T, H, W) clip or (B, C, H, W) image batch."""
        names = "(B, C, T, H, W)" if self.ndim == 3 else "(B, C, H, W)"
        expected = f"a float tensor of shape {names} with C={self.in_chans}"
        if not isinstance(x, Tensor):
            raise ValueError(f"expected {expected}, got {type(x).__name__}")
        if x.ndim != self.ndim + 2:
            raise ValueError(f"expected {expected}, got shape {tuple(x.shape)} ({x.ndim} dims)")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {expected}, got {x.shape[1]} channels in shape {tuple(x.shape)}")
        if any(s == 0 for s in x.shape):
            raise ValueError(f"expected {expected} with every size >= 1, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert and normalise the input first)")

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone up to the final norm.

        Args:
            x: Tensor[B, C, T, H, W] (clips) or Tensor[B, C, H, W] (images).

        Returns:
            Tensor[B, C_last, T', H', W'] or Tensor[B, C_last, H', W'], channels-first.
        """
        self.check_input(x)
        x = self.pos_drop(self.patch_embed(x))  # (B, *S, C)
        for stage in self.layers:
            x = stage(x)  # (B, *S', C')
        x = self.norm(x)
        return x.movedim(-1, 1)  # (B, C_last, *S')

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str | None = None,
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Per-stage features, with the arguments of timm's ``forward_intermediates``.

        Stage i's feature is the output of its blocks, before the patch merging
        that leads to stage i + 1: C * 2**i channels at H and W over
        patch * 2**i, T over the temporal patch (time is never merged). These
        are the maps of timm's Swin stages (which merge at their start) and of
        the official detection/segmentation backbones (without their per-stage norms).

        Args:
            x: Tensor[B, C, T, H, W] (clips) or Tensor[B, C, H, W] (images).
            indices: the stages to return: None all, an int n the last n, or a
                sequence of indices (negative ones count from the end).
            norm: apply the final LayerNorm to the last stage's feature (the
                only stage it is sized for).
            stop_early: run no stage after the last one asked for.
            output_fmt: ``"NCTHW"``/``"NCHW"`` channels-first (the default, as
                :meth:`forward_features`), or ``"NTHWC"``/``"NHWC"`` channels-last.
            intermediates_only: return the list of features only.

        Returns:
            The features of the chosen stages in stage order, Tensor[B, C_i, *S_i]
            (or channels-last), after ``(final, ...)`` unless ``intermediates_only``:
            ``final`` is :meth:`forward_features`'s output when every stage ran,
            else the last stage run, channels-first and without the final norm.
        """
        self.check_input(x)
        stages = len(self.layers)
        take = _stage_indices(stages, indices)
        first, last = ("NCHW", "NHWC") if self.ndim == 2 else ("NCTHW", "NTHWC")
        if output_fmt not in (None, first, last):
            raise ValueError(f"output_fmt must be {first!r} or {last!r} for this model, got {output_fmt!r}")
        channels_last = output_fmt == last
        end = max(take) if stop_early else stages - 1
        intermediates = []
        x = self.pos_drop(self.patch_embed(x))  # (B, *S, C)
        for i, stage in enumerate(self.layers[: end + 1]):
            x = stage.forward_blocks(x)  # (B, *S_i, C_i)
            if i in take:
                feature = self.norm(x) if norm and i == stages - 1 else x
                intermediates.append(feature if channels_last else feature.movedim(-1, 1))  # (B, C_i, *S_i)
            if i < end:
                x = stage.downsample(x)  # (B, *S_i+1, C_i+1)
        if intermediates_only:
            return intermediates
        if end == stages - 1:
            x = self.norm(x)
        return x.movedim(-1, 1), intermediates  # (B, C_end, *S_end)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Average-pools channels-first features and applies the head: Tensor[B, num_classes]."""
        x = features.flatten(2).mean(-1)  # (B, C_last)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, C, T, H, W] or Tensor[B, C, H, W] -> logits Tensor[B, num_classes]."""
        return self.forward_head(self.forward_features(x))


def _stage_indices(stages: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's ``indices`` as stage numbers: None all, n the last n, else those listed (negative from the end)."""
    if indices is None:
        return list(range(stages))
    if isinstance(indices, int):
        if not 0 < indices <= stages:
            raise ValueError(f"indices: the last {indices} stages asked for, the model has {stages}")
        return list(range(stages - indices, stages))
    taken = [i + stages if i < 0 else i for i in indices]
    if not taken or any(not 0 <= i < stages for i in taken):
        raise ValueError(f"indices {list(indices)}: expected stage numbers in [{-stages}, {stages - 1}]")
    return taken


def _stage_windows(
    pretrained: Sequence[int] | Sequence[Sequence[int] | None] | None, stages: int, ndim: int
) -> list[Size | None]:
    """``pretrained_window_size`` as one window (or None) per stage."""
    if pretrained is None:
        return [None] * stages
    items = list(pretrained)
    if all(isinstance(v, int) for v in items):
        items = [items] * stages
    elif len(items) != stages:
        raise ValueError(f"pretrained_window_size {pretrained}: expected one window, or one per stage ({stages})")
    out = []
    for w in items:
        if w is not None and (len(w) != ndim or not all(isinstance(v, int) and v >= 1 for v in w)):
            raise ValueError(f"pretrained_window_size {pretrained}: {w} is no window of {ndim} positive sizes")
        out.append(None if w is None else tuple(w))
    return out


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def num_params(model: nn.Module) -> int:
    """Number of parameters (each tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["PatchEmbed", "PatchMerging", "SwinBlock", "SwinStage", "SwinTransformer", "num_params"]
