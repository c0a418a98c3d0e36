"""``curves.png``: loss, learning rate and accuracy of a run, from its ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path


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
