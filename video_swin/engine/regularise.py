"""Regularisers of fine-tuning recipes: Mixup/CutMix of batches, an EMA of the weights, a frozen backbone.

Each is off by default and switched on by a config key (docs/TRAINING.md,
"Regularisers for small datasets"). The layer-wise lr decay lives with the
other parameter groups (:mod:`.optim`), repeated augmentation with the data
(:mod:`video_swin.data.repeated`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

# Parameters and modules whose names start with this are the classifier; everything else is the backbone.
HEAD = "head"


class BatchMixer:
    """Mixup and/or CutMix of a training batch (torchvision.transforms.v2), with seeded randomness.

    torchvision pairs each clip with the one before it in the batch
    (``roll(1, 0)``) and draws lambda and the box from the global CPU
    generator. Here that generator is seeded, for the duration of one call
    only, from ``(seed, epoch, batch index, process)``: the mixing of a batch
    is a function of where it sits in the run, so a resumed run mixes its
    batches exactly as the uninterrupted one did, and the RNG stream of the
    model (drop path) is left as it was.

    Args:
        num_classes: K, for the one-hot targets.
        mixup: Beta(alpha, alpha) of Mixup; 0 = off.
        cutmix: Beta(alpha, alpha) of CutMix; 0 = off.
        prob: chance that a batch is mixed at all (else its targets are one-hot).
        switch_prob: chance of CutMix rather than Mixup when both are on.
    """

    def __init__(self, num_classes: int, mixup: float, cutmix: float, prob: float = 1.0,
                 switch_prob: float = 0.5) -> None:
        from torchvision.transforms import v2  # on use: importing torchvision takes a second or more

        self.num_classes, self.prob = num_classes, prob
        kinds: list[v2.Transform] = []
        weights: list[float] = []
        if mixup > 0:
            kinds.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
            weights.append(1.0 - switch_prob if cutmix > 0 else 1.0)
        if cutmix > 0:
            kinds.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
            weights.append(switch_prob if mixup > 0 else 1.0)
        if not kinds:
            raise ValueError("BatchMixer needs mixup > 0 or cutmix > 0")
        self.transform = kinds[0] if len(kinds) == 1 else v2.RandomChoice(kinds, p=weights)

    def __call__(
        self, videos: torch.Tensor, labels: torch.Tensor, key: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixes one batch.

        Args:
            videos: float ``Tensor[B, 3, T, H, W]`` (normalised; mixing commutes with the normalisation).
            labels: int ``Tensor[B]``.
            key: where the batch sits in the run, e.g. ``(seed, epoch, batch, process)``; the same key
                gives the same mixing.

        Returns:
            The mixed clips ``Tensor[B, 3, T, H, W]`` (new tensors; the inputs are not modified) and
            the soft targets ``Tensor[B, K]`` float, each row summing to one.
        """
        from torchvision.tv_tensors import Video

        seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global CPU generator
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would reseed CUDA's too
            if float(torch.rand(())) >= self.prob:
                return videos, F.one_hot(labels, self.num_classes).float()
            # As a tv_tensors.Video the 5-d batch passes torchvision's checks; Mixup is elementwise and
            # CutMix cuts the last two dims (H, W) across all frames, so the (C, T) order does not matter.
            mixed, targets = self.transform(Video(videos), labels)
        return mixed.as_subclass(torch.Tensor), targets


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters (a copy of it; update with ``update_parameters``).

    ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: the
    first update copies the weights, each later one does
    ``ema = decay * ema + (1 - decay) * w``. Buffers are not averaged: the
    Swin models' buffers are integer index tables and masks, constant in
    training (averaging them would round indices). Its ``state_dict`` (the
    average and the update count) goes into the resumable states.
    """
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def freeze_backbone(model: nn.Module) -> int:
    """Stops gradients to every parameter but the head's (``requires_grad=False``); returns how many are frozen.

    Frozen parameters are left out of the optimizer (:func:`.optim.param_groups`
    skips them) and DDP neither reduces nor waits for them, so no
    ``find_unused_parameters`` is needed: the head's parameters all get gradients.
    """
    frozen = 0
    for name, p in model.named_parameters():
        if not name.startswith(HEAD):
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def set_train_mode(model: nn.Module, freeze_backbone: bool) -> None:
    """Training mode, with a frozen backbone in eval mode (no drop path or dropout in it: a linear probe
    reads the backbone's evaluation features); the head (and its dropout) trains either way."""
    model.train()
    if freeze_backbone:
        for name, child in model.named_children():
            if not name.startswith(HEAD):
                child.eval()
