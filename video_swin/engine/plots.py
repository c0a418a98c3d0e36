"""Every figure the engine draws: ``curves.png`` of a run and ``confusion_matrix.png`` of an evaluation.

matplotlib is imported inside each function (with the file-only Agg backend),
so importing the engine does not import it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .evaluate import VideoScores


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Draws loss and LR per logged step and validation/test accuracy per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line] if metrics_path.is_file() else []
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_top1" in r]
    test = [r for r in rows if "test_top1" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate (head)", xlabel="step")
    axes[2].plot([r["step"] for r in val], [r["val_top1"] for r in val], "o-", label="val top-1 (1 view)")
    if test:
        axes[2].plot([r["step"] for r in test], [r["test_top1"] for r in test], "*", ms=12, label="test top-1 (multi-view)")
    axes[2].set(title="accuracy (%)", xlabel="step", ylim=(0, 100))
    axes[2].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_confusion(result: "VideoScores", classes: Sequence[str], path: Path) -> None:
    """Row-normalised heat map for up to 40 classes; the 20 most frequent confusions otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    ok = result.valid
    pred = result.scores[ok].argmax(1)
    cm = torch.zeros(n, n)
    cm.index_put_((result.label[ok], pred), torch.ones(len(pred)), accumulate=True)
    if n <= 40:
        norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    else:
        off = cm.clone()
        off.fill_diagonal_(0)
        values, flat = off.flatten().topk(min(20, int((off > 0).sum()) or 1))
        names = [f"{classes[i // n]} -> {classes[i % n]}" for i in flat.tolist()]
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
        ax.barh(range(len(names))[::-1], values.tolist())
        ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
        ax.set_xlabel("videos")
    ax.set_title("confusions (true -> predicted)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
