"""Figures of the workbook (matplotlib / seaborn), one convention: each returns its figure and takes ``save=``.

``save`` is a path or None; notebooks pass a path under ``<output_dir>/figures`` so figures exist
as files as well as inline. Every figure has a title and axis labels. Maps keep their sign: a
quantity that can be negative (a difference, a margin, a contribution) is drawn with a diverging
colour map centred on zero, with a colour bar; a min-max normalised map would hide the answer.
Head maps put layers in numeric order (top = first layer) and stay legible at 12-32 heads per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["image_grid", "group_accuracy_bars", "head_heatmaps", "layer_contributions", "margin_histograms",
           "strength_sweep", "patch_maps", "scores_vs_oracle", "head_importance", "agreement", "save_figure"]

DIVERGING = "RdBu_r"


def save_figure(fig, save: str | Path | None) -> None:
    """Save ``fig`` to ``save`` (PNG, 120 dpi) when a path is given."""
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120, bbox_inches="tight")


def image_grid(dataset, per_group: int = 6, save: str | Path | None = None, seed: int = 0,
               title: str = "images per group"):
    """A grid of images, one row per group of ``dataset`` (a GroupDataset)."""
    rng = np.random.default_rng(seed)
    G = dataset.n_groups
    fig, axes = plt.subplots(G, per_group, figsize=(1.4 * per_group, 1.5 * G + 0.4), squeeze=False)
    for g in range(G):
        idx = np.flatnonzero(dataset.group == g)
        pick = rng.choice(idx, size=min(per_group, len(idx)), replace=False) if len(idx) else []
        for j in range(per_group):
            ax = axes[g, j]
            ax.axis("off")
            if j < len(pick):
                ax.imshow(dataset.image(int(pick[j])))
        axes[g, 0].set_title(dataset.group_names[g], fontsize=9, loc="left")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def group_accuracy_bars(table: pd.DataFrame, save: str | Path | None = None, title: str = "accuracy per group"):
    """Bars of per-group accuracy; ``table`` has columns group, accuracy and (optional) method."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    hue = "method" if "method" in table.columns else None
    sns.barplot(data=table, x="group", y="accuracy", hue=hue, ax=ax)
    ax.set_ylim(0, 100)
    ax.set_xlabel("group (class / spurious attribute)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def _ticks(n: int, most: int = 16) -> tuple[np.ndarray, int]:
    """Tick positions for ``n`` cells, thinned to at most ``most`` labels."""
    step = max(1, int(np.ceil(n / most)))
    return np.arange(0, n, step), step


def head_heatmaps(maps: dict[str, np.ndarray], layers: Sequence[int], save: str | Path | None = None,
                  fmt: str = ".2f", title: str = "", diverging: Sequence[str] | bool | None = None,
                  colorbar_label: str = ""):
    """Side-by-side ``[layer, head]`` heat maps (e.g. F_wrong, F_correct and their difference).

    Args:
        maps: name -> ``[layer, head]`` values (rows in the order of ``layers``).
        layers: the model layer of each row; rows are drawn in numeric layer order.
        save: where to save the figure (None: not saved).
        fmt: number format of the cell annotations (written when a map has at most 8 x 8 cells).
        title: the figure's title (each map is titled by its name).
        diverging: names drawn with a diverging map centred on zero; True for all, None (default)
            for every map that has negative values.
        colorbar_label: label of the colour bars.

    Returns:
        the figure.
    """
    layers = [int(l) for l in layers]
    order = np.argsort(layers, kind="stable")
    n_heads = max(np.asarray(m).shape[1] for m in maps.values())
    annotated = len(layers) <= 8 and n_heads <= 8  # numbers in the cells only where they fit
    width = max(3.6, (0.62 if annotated else 0.26) * n_heads + 1.8)
    fig, axes = plt.subplots(1, len(maps), figsize=(width * len(maps), 0.42 * len(layers) + 1.8), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        m = np.asarray(m, dtype=float)[order]
        signed = (diverging is True) or (diverging is None and np.nanmin(m) < 0) or \
            (isinstance(diverging, (list, tuple, set)) and name in diverging)
        kw = {"cmap": "viridis"}
        if signed:
            v = float(np.nanmax(np.abs(m))) or 1.0
            kw = {"cmap": DIVERGING, "center": 0.0, "vmin": -v, "vmax": v}
        annot = m.shape[0] <= 8 and m.shape[1] <= 8
        xt, xs = _ticks(m.shape[1])
        sns.heatmap(m, ax=ax, annot=annot, fmt=fmt, annot_kws={"fontsize": 7}, cbar=True, cbar_kws={"label": colorbar_label} if colorbar_label else {},
                    xticklabels=False, yticklabels=False, **kw)
        ax.set_xticks(xt + 0.5, [f"H{h}" for h in range(0, m.shape[1], xs)], rotation=0,
                      fontsize=8 if m.shape[1] <= 16 else 7)
        yt, ys = _ticks(m.shape[0], most=32)
        ax.set_yticks(yt + 0.5, [f"L{layers[order[i]]}" for i in yt], rotation=0, fontsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def layer_contributions(norms: pd.DataFrame, save: str | Path | None = None,
                        title: str = "mean norm of each layer's terms"):
    """Mean norm of each term per layer; ``norms`` has columns term, layer, norm (layer as an int)."""
    fig, ax = plt.subplots(figsize=(7, 3))
    d = norms.sort_values("layer", kind="stable").assign(layer=lambda f: [f"L{int(v)}" for v in f.layer])
    sns.barplot(data=d, x="layer", y="norm", hue="term", ax=ax)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean ||term|| (share of the unit embedding)")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def margin_histograms(margins: dict[str, np.ndarray], conflicting: np.ndarray, save: str | Path | None = None,
                      title: str = "true-class margin per image (> 0: classified correctly)"):
    """Histograms of the true-class margin per method, split into bias-conflicting / aligned images."""
    fig, axes = plt.subplots(1, len(margins), figsize=(3.2 * len(margins), 3.0), sharey=True, squeeze=False)
    conflicting = np.asarray(conflicting, dtype=bool)
    for ax, (name, m) in zip(axes[0], margins.items()):
        m = np.asarray(m)
        bins = np.linspace(min(m.min(), -1e-3), max(m.max(), 1e-3), 30)
        ax.hist(m[~conflicting], bins=bins, alpha=0.6, label="aligned")
        ax.hist(m[conflicting], bins=bins, alpha=0.6, label="conflicting")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("true-class margin")
    axes[0, 0].set_ylabel("images")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def strength_sweep(table: pd.DataFrame, x: str = "strength", save: str | Path | None = None,
                   title: str = "accuracy against injection strength"):
    """Worst-group and group-balanced accuracy against a swept parameter."""
    fig, ax = plt.subplots(figsize=(5, 3))
    long = table.melt(id_vars=[x], value_vars=[c for c in ("wg", "avg_group") if c in table.columns],
                      var_name="metric", value_name="accuracy")
    sns.lineplot(data=long, x=x, y="accuracy", hue="metric", marker="o", ax=ax)
    ax.set_xlabel(x)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def patch_maps(images: Sequence, maps, titles: Sequence[str], save: str | Path | None = None,
               title: str = "", colorbar_label: str = "contribution to the margin"):
    """Signed patch maps over their images, one shared colour scale centred on zero, one colour bar.

    Args:
        images: what the model saw (PIL images or ``[H, W, 3]`` arrays), one per map.
        maps: ``[n, grid, grid]`` (tensor or array) from :func:`ltcutils.interpret.patch_margin_map`.
        titles: one per image (e.g. its group and whether it was classified correctly).
        title, colorbar_label: figure title and colour-bar label.

    Returns:
        the figure.
    """
    from .interpret.patches import plot_patch_map

    maps = np.asarray(maps, dtype=float)
    vmax = float(np.abs(maps).max()) or 1e-12
    fig, axes = plt.subplots(1, len(maps), figsize=(2.6 * len(maps) + 1.0, 3.0), squeeze=False)
    for ax, img, m, t in zip(axes[0], images, maps, titles):
        plot_patch_map(img, m, ax=ax, title=t, vmax=vmax)
        ax.title.set_fontsize(8)
    fig.colorbar(axes[0, -1].get_images()[1], ax=list(axes[0]), label=colorbar_label, shrink=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, save)
    return fig


def scores_vs_oracle(scores: np.ndarray, oracle: np.ndarray, selected, layers: Sequence[int],
                     save: str | Path | None = None, title: str = "what ranked the heads against the truth",
                     xlabel: str = "oracle background effect", ylabel: str = "locate score"):
    """Scatter of each head's locate score against its oracle effect (selected heads in red)."""
    from .interpret.importance import plot_scores_vs_oracle

    fig, ax = plt.subplots(figsize=(5, 4))
    plot_scores_vs_oracle(scores, oracle, selected, ax=ax, layers=list(layers), xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def head_importance(importance: pd.DataFrame, layers: Sequence[int], n_heads: int, value: str = "delta_wg",
                    save: str | Path | None = None, title: str = "change of worst-group accuracy when one head is ablated"):
    """``[layer, head]`` map of an ablation-importance table (diverging, centred on zero)."""
    from .interpret.importance import plot_importance_heatmap

    annotated = len(layers) <= 8 and n_heads <= 8
    fig, ax = plt.subplots(figsize=(max(4.5, (0.62 if annotated else 0.26) * n_heads + 2), 0.42 * len(layers) + 1.8))
    plot_importance_heatmap(importance, len(layers), n_heads, value=value, ax=ax, layers=list(layers),
                            annot=annotated)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def agreement(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str, save: str | Path | None = None):
    """Scatter of two computations of the same quantity against the diagonal (e.g. cached vs live edit)."""
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    ax.scatter(x, y, s=10, alpha=0.7)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, save)
    return fig
