"""Grading located heads against an oracle (precision@k, rank correlations) and head importance by ablation."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..heads import Head, head_label, parse_heads
from .attributions import shapley_values


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (ascending), ties sharing their average rank. ``[n] -> [n]``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(x).any():
        raise ValueError("cannot rank NaN values; fill or drop them first")
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)  # last 1-based rank of each tie group
    start = end - counts + 1
    return ((start + end) / 2.0)[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.shape != ry.shape:
        raise ValueError(f"x and y must have the same number of values, got {rx.size} and {ry.size}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties corrected); NaN when either side is constant. ``O(n^2)`` memory."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same number of values, got {x.size} and {y.size}")
    iu = np.triu_indices(x.size, k=1)
    dx = np.sign(x[:, None] - x[None, :])[iu]
    dy = np.sign(y[:, None] - y[None, :])[iu]
    den = math.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def _head_rows(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    rows = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    if len(rows) != n_layers:
        raise ValueError(f"layers lists {len(rows)} layers but the table has {n_layers} rows")
    return rows


def _top_k(values: np.ndarray, k: int) -> list[int]:
    """Flat indices of the ``k`` largest values; ties broken by the lower flat index."""
    return [int(i) for i in np.argsort(-values.ravel(), kind="stable")[:k]]


def _scores_and_oracle(scores, oracle, layers) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Both tables as float64 ``[layer, head]`` arrays (checked to agree) and their layer numbers."""
    s = np.asarray(scores, dtype=np.float64)
    o = np.asarray(oracle, dtype=np.float64)
    if s.ndim != 2 or s.shape != o.shape:
        raise ValueError(f"scores and oracle must both be [layer, head], got {s.shape} and {o.shape}")
    return s, o, _head_rows(layers, s.shape[0])


def grade_heads(
    scores: np.ndarray | torch.Tensor,
    oracle: np.ndarray | torch.Tensor,
    selected: Sequence[Head] = (),
    k: int | None = None,
    layers: Sequence[int] | None = None,
) -> dict:
    """Grade a head finding against a ground-truth oracle.

    Args:
        scores: ``[layer, head]`` LTC's per-head score (e.g. the frequency difference).
        oracle: ``[layer, head]`` true effect, larger = more of the property (e.g. the background
            effect, water minus land with the object held fixed; pass ``abs()`` if the sign
            does not matter).
        selected: the heads the method selected, ``(layer, head)`` with the model's layer index.
        k: size of the oracle's top set (default ``len(selected)``).
        layers: the model layer of each table row (default ``0..layer-1``).

    Returns:
        dict with ``k``; ``precision_at_k``: share of the selected heads (the top-``k`` by score
        when nothing is selected) among the top-``k`` heads by oracle; ``topk_overlap``: share of
        the top-``k`` by score among the top-``k`` by oracle; ``spearman`` and ``kendall`` rank
        correlations of scores and oracle over all heads; ``n_heads``; and the labels
        ``selected``, ``oracle_top``, ``score_top``, ``hits``. Ties in a top-``k`` go to the
        lower (layer, head).

    Raises:
        ValueError: shapes disagree, nothing selected and no ``k``, ``k`` out of range, or a
            selected head outside the table.
    """
    s, o, rows = _scores_and_oracle(scores, oracle, layers)
    L, H = s.shape
    labels = [head_label(l, h) for l in rows for h in range(H)]
    sel_idx = []
    for l, h in selected:
        l, h = int(l), int(h)
        if l not in rows or not 0 <= h < H:
            raise ValueError(f"selected head L{l}H{h} is not in the table (layers {rows}, {H} heads)")
        sel_idx.append(rows.index(l) * H + h)
    sel_idx = list(dict.fromkeys(sel_idx))
    if k is None:
        if not sel_idx:
            raise ValueError("nothing selected and no k given: pass k to grade the top-k heads by score")
        k = len(sel_idx)
    if not 1 <= k <= L * H:
        raise ValueError(f"k must be in [1, {L * H}], got {k}")
    oracle_top = _top_k(o, k)
    score_top = _top_k(s, k)
    predicted = sel_idx or score_top
    hits = [i for i in predicted if i in set(oracle_top)]
    return {
        "k": int(k),
        "precision_at_k": len(hits) / len(predicted),
        "topk_overlap": len(set(score_top) & set(oracle_top)) / k,
        "spearman": spearman(s, o),
        "kendall": kendall_tau(s, o),
        "n_heads": L * H,
        "selected": [labels[i] for i in sel_idx],
        "oracle_top": [labels[i] for i in oracle_top],
        "score_top": [labels[i] for i in score_top],
        "hits": [labels[i] for i in hits],
    }


def plot_scores_vs_oracle(
    scores: np.ndarray | torch.Tensor,
    oracle: np.ndarray | torch.Tensor,
    selected: Sequence[Head] = (),
    ax=None,
    layers: Sequence[int] | None = None,
    max_labels: int = 64,
    xlabel: str = "oracle effect",
    ylabel: str = "LTC score",
):
    """Scatter of each head's score against its oracle effect, selected heads highlighted.

    Args:
        scores, oracle: ``[layer, head]``.
        selected: ``(layer, head)`` pairs drawn in red.
        ax: matplotlib axes (default: a new figure).
        layers: model layer of each row (default ``0..layer-1``).
        max_labels: label every head with ``L{l}H{h}`` up to this many heads; above it only the
            selected heads are labelled.

    Returns:
        the axes.
    """
    import matplotlib.pyplot as plt

    s, o, rows = _scores_and_oracle(scores, oracle, layers)
    L, H = s.shape
    sel = {(int(l), int(h)) for l, h in selected}
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    is_sel = np.array([(l, h) in sel for l in rows for h in range(H)])
    x, y = o.ravel(), s.ravel()
    ax.scatter(x[~is_sel], y[~is_sel], c="tab:gray", s=25, label="other heads")
    if is_sel.any():
        ax.scatter(x[is_sel], y[is_sel], c="tab:red", s=45, label="selected")
    for i, (l, h) in enumerate((l, h) for l in rows for h in range(H)):
        if L * H <= max_labels or is_sel[i]:
            ax.annotate(head_label(l, h), (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points",
                        color="tab:red" if is_sel[i] else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)
    return ax


def _parse_heads(hs: Sequence) -> list[Head]:
    return parse_heads(hs)


def ablation_importance(
    evaluate: Callable[[list[Head]], Mapping[str, float]],
    heads: Sequence[Head],
    sets: Mapping[str, Sequence] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Worst-group and average accuracy when single heads or head sets are ablated.

    Args:
        evaluate: ablated heads -> metrics dict with at least ``"wg"`` and ``"avg"`` (e.g. mean
            ablation on the logit lens, then :mod:`ltcutils.metrics`). Called once with ``[]``,
            once per head and once per set.
        heads: ``(layer, head)`` pairs (or ``"L{l}H{h}"`` labels) to ablate one at a time.
        sets: named head sets to ablate together, e.g. ``{"Z_SY": [...], "random": [...]}``.
        progress: show a tqdm bar.

    Returns:
        DataFrame with one row per evaluation: ``name`` (``"none"``, ``"L{l}H{h}"`` or the set
        name), ``kind`` (``"none"``, ``"head"``, ``"set"``), ``layer`` and ``head`` (single heads;
        -1 otherwise), ``n_ablated``, ``wg``, ``avg``, ``delta_wg``, ``delta_avg`` (vs no
        ablation), plus any other numeric metric ``evaluate`` returned.

    Raises:
        KeyError: ``evaluate`` returned no ``wg`` or ``avg``.
    """
    jobs: list[tuple[str, str, int, int, list[Head]]] = [("none", "none", -1, -1, [])]
    for l, h in _parse_heads(heads):
        jobs.append((head_label(l, h), "head", l, h, [(l, h)]))
    for name, hs in (sets or {}).items():
        jobs.append((str(name), "set", -1, -1, _parse_heads(hs)))
    from tqdm.auto import tqdm

    rows = []
    for name, kind, l, h, ablated in tqdm(jobs, desc="ablations", disable=not progress):
        res = dict(evaluate(list(ablated)))
        missing = [k for k in ("wg", "avg") if k not in res]
        if missing:
            raise KeyError(f"evaluate({ablated}) returned {sorted(res)}; it must return 'wg' and 'avg' "
                           f"(missing {missing})")
        row = {"name": name, "kind": kind, "layer": l, "head": h, "n_ablated": len(ablated)}
        row.update({k: float(v) for k, v in res.items() if isinstance(v, (int, float, np.number))})
        rows.append(row)
    df = pd.DataFrame(rows)
    base = df.iloc[0]
    df["delta_wg"] = df["wg"] - base["wg"]
    df["delta_avg"] = df["avg"] - base["avg"]
    front = ["name", "kind", "layer", "head", "n_ablated", "wg", "avg", "delta_wg", "delta_avg"]
    return df[front + [c for c in df.columns if c not in front]]


def plot_importance_heatmap(
    df: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    value: str = "delta_wg",
    ax=None,
    layers: Sequence[int] | None = None,
    annot: bool = True,
    cmap: str = "RdBu_r",
):
    """Heat map ``[layer x head]`` of one column of :func:`ablation_importance` (single heads).

    Args:
        df: the ablation table.
        n_layers, n_heads: model size; rows default to layers ``0..n_layers-1``.
        value: column to show (``"delta_wg"``, ``"delta_avg"``, ``"wg"``, ...).
        ax: matplotlib axes (default: a new figure).
        layers: show only these layers (e.g. the last four).
        annot, cmap: seaborn options; the colour scale is centred on 0 for ``delta_*``.

    Returns:
        the axes. Heads not in ``df`` are left blank.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if value not in df.columns:
        raise KeyError(f"no column {value!r} in the table; columns: {list(df.columns)}")
    rows = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    mat = np.full((len(rows), n_heads), np.nan)
    single = df[df["kind"] == "head"]
    for l, h, v in zip(single["layer"], single["head"], single[value]):
        if int(l) in rows and 0 <= int(h) < n_heads:
            mat[rows.index(int(l)), int(h)] = v
    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * n_heads + 2, 0.4 * len(rows) + 1.5))
    sns.heatmap(mat, ax=ax, annot=annot, fmt=".2f", cmap=cmap, center=0.0 if value.startswith("delta") else None,
                xticklabels=[f"H{h}" for h in range(n_heads)], yticklabels=[f"L{l}" for l in rows],
                cbar_kws={"label": value})
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    return ax


def shapley_heads(
    evaluate_value: Callable[[frozenset], float],
    heads: Sequence[Head],
    n_samples: int | None = None,
    seed: int = 0,
    max_exact: int = 10,
) -> pd.DataFrame:
    """Shapley value of each head for a set function of head coalitions.

    What a coalition means is up to ``evaluate_value``: with "WG when exactly these heads are
    ablated" each head gets its share of the WG change from ablating all of them (values sum to
    ``v(all) - v(none)``). Exact for ``<= max_exact`` heads (``2^n`` evaluations), else
    permutation sampling; see :func:`shapley_values`.

    Args:
        evaluate_value: ``frozenset`` of ``(layer, head)`` -> float.
        heads: the players, ``(layer, head)`` pairs or ``"L{l}H{h}"`` labels.

    Returns:
        DataFrame ``[name, layer, head, shapley]``; ``df.attrs`` holds ``value_all`` and
        ``value_empty``.
    """
    hs = list(dict.fromkeys(_parse_heads(heads)))
    phi, v_all, v_empty = shapley_values(hs, lambda kept: float(evaluate_value(frozenset(kept))),
                                         n_samples=n_samples, seed=seed, max_exact=max_exact)
    df = pd.DataFrame({"name": [head_label(l, h) for l, h in hs], "layer": [l for l, _ in hs],
                       "head": [h for _, h in hs], "shapley": phi})
    df.attrs.update(value_all=v_all, value_empty=v_empty)
    return df


def margin_spread(
    margin: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    heads: Sequence[Head],
    layers: Sequence[int] | None = None,
    oracle: np.ndarray | torch.Tensor | None = None,
) -> pd.DataFrame:
    """How steady each head's push is: mean and sd of its margin over the masked images, and how
    often it is the top head there.

    The counting rule sees a head only on images where it is the single largest contributor.
    A head that pushes the same way on every image but is always second never counts; a head
    that carries nothing on average but varies a lot counts whenever it happens to be largest,
    and more often on the images the model gets wrong. This table shows both.

    Args:
        margin: ``[n, layer, head]`` per-head margins (:func:`ltcutils.locate.margins`).
        mask: ``[n]`` the images to summarise (e.g. the wrong bias-conflicting ones).
        heads: the heads to list, ``(layer, head)`` with the model's layer index.
        layers: the model layer of each row of ``margin`` (default ``0..layer-1``).
        oracle: optional ``[layer, head]`` true effect, added as a column.

    Returns:
        one row per head: ``head``, ``mean``, ``sd`` (population sd over the masked images),
        ``top_share`` (share of the masked images whose largest margin is this head's), and
        ``oracle`` when given.

    Raises:
        ValueError: ``mask`` selects no image or does not match ``margin``, or a head is not in the table.
    """
    m = np.asarray(margin.detach().cpu() if isinstance(margin, torch.Tensor) else margin, dtype=np.float64)
    keep = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if m.ndim != 3 or keep.shape != (m.shape[0],):
        raise ValueError(f"margin must be [n, layer, head] and mask [n], got {m.shape} and {keep.shape}")
    if not keep.any():
        raise ValueError("mask selects no image: nothing to summarise")
    rows = _head_rows(layers, m.shape[1])
    sub = m[keep]
    top = np.bincount(sub.reshape(len(sub), -1).argmax(1), minlength=m.shape[1] * m.shape[2]) / len(sub)
    o = None if oracle is None else np.asarray(oracle, dtype=np.float64)
    out = []
    for l, h in heads:
        l, h = int(l), int(h)
        if l not in rows or not 0 <= h < m.shape[2]:
            raise ValueError(f"head L{l}H{h} is not in the table (layers {rows}, {m.shape[2]} heads)")
        r = rows.index(l)
        row = {"head": head_label(l, h), "mean": float(sub[:, r, h].mean()), "sd": float(sub[:, r, h].std()),
               "top_share": float(top[r * m.shape[2] + h])}
        if o is not None:
            row["oracle"] = float(o[r, h])
        out.append(row)
    return pd.DataFrame(out)
