"""Figures the chapters share: image grids and training curves.

Kept here so that notebooks stay short and every chapter draws the same thing the same way.
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch


def to_display(images: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """uint8 or (normalised) float [B,3,H,W] -> float [B,H,W,3] in [0,1] for imshow."""
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif mean is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def image_grid(images: torch.Tensor, titles: Optional[Sequence[str]] = None, ncols: int = 8, size: float = 1.3,
               mean=None, std=None, suptitle: Optional[str] = None):
    """Show a batch of images in a grid; returns the figure."""
    x = to_display(images, mean, std)
    nrows = -(-len(x) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * (1.15 if titles else 1)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(x):
            ax.imshow(x[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def training_curves(runs: dict, baseline: Optional[float] = None, metric: str = "knn200_top1"):
    """Loss per step and kNN top-1 per evaluation for one or more runs ({label: RunResult}); returns the figure."""
    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(11, 3.6))
    for label, run in runs.items():
        log = run.log()
        steps = [r for r in log if "loss" in r and "step" in r]
        ax_loss.plot([r["train_minutes"] for r in steps], [r["loss"] for r in steps], label=label)
        evals = [r["eval"] for r in log if "eval" in r] + [r["final"] for r in log if "final" in r]
        points = [(e["train_minutes"], e[metric]) for e in evals if metric in e]
        if points:
            ax_knn.plot(*zip(*points), marker="o", label=label)
    if baseline is not None:
        ax_knn.axhline(baseline, color="gray", linestyle="--", label="raw pixels")
    ax_loss.set(xlabel="training minutes", ylabel="loss", title="training loss")
    ax_knn.set(xlabel="training minutes", ylabel="kNN top-1 (%)", title="kNN monitor (test set)")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
