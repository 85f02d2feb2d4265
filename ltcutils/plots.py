"""Figures of the workbook (matplotlib / seaborn). Each returns its figure and can save it.

Every function takes ``save=`` (a path or None); notebooks pass a path under
``<output_dir>/figures`` so figures exist as files as well as inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

if matplotlib.get_backend().lower() == "agg" or not matplotlib.get_backend():
    pass
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["image_grid", "group_accuracy_bars", "head_heatmaps", "layer_contributions", "margin_histograms",
           "strength_sweep", "save_figure"]


def save_figure(fig, save: str | Path | None) -> None:
    """Save ``fig`` to ``save`` (PNG, 120 dpi) when a path is given."""
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120, bbox_inches="tight")


def image_grid(dataset, per_group: int = 6, save: str | Path | None = None, seed: int = 0):
    """A grid of images, one row per group of ``dataset``."""
    rng = np.random.default_rng(seed)
    G = dataset.n_groups
    fig, axes = plt.subplots(G, per_group, figsize=(1.4 * per_group, 1.5 * G), squeeze=False)
    for g in range(G):
        idx = np.flatnonzero(dataset.group == g)
        pick = rng.choice(idx, size=min(per_group, len(idx)), replace=False) if len(idx) else []
        for j in range(per_group):
            ax = axes[g, j]
            ax.axis("off")
            if j < len(pick):
                ax.imshow(dataset.image(int(pick[j])))
        axes[g, 0].set_title(dataset.group_names[g], fontsize=9, loc="left")
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def group_accuracy_bars(table: pd.DataFrame, save: str | Path | None = None, title: str = ""):
    """Bars of per-group accuracy; ``table`` has columns group, accuracy and (optional) method."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    hue = "method" if "method" in table.columns else None
    sns.barplot(data=table, x="group", y="accuracy", hue=hue, ax=ax)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def head_heatmaps(maps: dict[str, np.ndarray], layers: Sequence[int], save: str | Path | None = None,
                  fmt: str = ".2f", cmap: str = "viridis", center: float | None = None):
    """Side-by-side ``[layer, head]`` heatmaps (e.g. F_wrong, F_correct, their difference)."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 0.5 * len(layers) + 1.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        m = np.asarray(m)
        annot = m.size <= 64
        sns.heatmap(m, ax=ax, annot=annot, fmt=fmt, cmap=cmap if center is None else "RdBu_r", center=center,
                    cbar=True, xticklabels=[f"H{h}" for h in range(m.shape[1])],
                    yticklabels=[f"L{l}" for l in layers])
        ax.set_title(name)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def layer_contributions(norms: pd.DataFrame, save: str | Path | None = None):
    """Mean norm of each term; ``norms`` has columns term, layer, norm."""
    fig, ax = plt.subplots(figsize=(7, 3))
    sns.barplot(data=norms, x="layer", y="norm", hue="term", ax=ax)
    ax.set_ylabel("mean ||term||")
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def margin_histograms(margins: dict[str, np.ndarray], conflicting: np.ndarray, save: str | Path | None = None):
    """Histograms of the true-class margin per method, split into bias-conflicting / aligned images."""
    fig, axes = plt.subplots(1, len(margins), figsize=(3.2 * len(margins), 2.8), sharey=True, squeeze=False)
    for ax, (name, m) in zip(axes[0], margins.items()):
        m = np.asarray(m)
        bins = np.linspace(min(m.min(), -1e-3), max(m.max(), 1e-3), 30)
        ax.hist(m[~conflicting], bins=bins, alpha=0.6, label="aligned")
        ax.hist(m[conflicting], bins=bins, alpha=0.6, label="conflicting")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("true-class margin")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def strength_sweep(table: pd.DataFrame, x: str = "strength", save: str | Path | None = None):
    """Worst-group and average accuracy against a swept parameter."""
    fig, ax = plt.subplots(figsize=(5, 3))
    long = table.melt(id_vars=[x], value_vars=[c for c in ("wg", "avg_group") if c in table.columns],
                      var_name="metric", value_name="accuracy")
    sns.lineplot(data=long, x=x, y="accuracy", hue="metric", marker="o", ax=ax)
    ax.set_ylabel("accuracy (%)")
    fig.tight_layout()
    save_figure(fig, save)
    return fig
