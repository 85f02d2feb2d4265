"""Word attributions: Shapley values of caption words (exact or permutation-sampled) for a head set."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def _evaluate_masks(items: Sequence, masks: Sequence[int], value_fn: Callable) -> np.ndarray:
    """Value of each coalition (bit ``i`` of a mask keeps ``items[i]``), batched when possible."""
    subsets = [[it for i, it in enumerate(items) if (m >> i) & 1] for m in masks]
    many = getattr(value_fn, "many", None)
    if callable(many):
        vals = np.asarray(many(subsets), dtype=np.float64)
    else:
        vals = np.array([float(value_fn(s)) for s in subsets], dtype=np.float64)
    if vals.shape != (len(masks),):
        raise ValueError(f"value function returned {vals.shape} values for {len(masks)} coalitions")
    return vals


def shapley_values(
    items: Sequence,
    value_fn: Callable[[list], float],
    n_samples: int | None = None,
    seed: int = 0,
    max_exact: int = 10,
) -> tuple[np.ndarray, float, float]:
    """Shapley values of ``items`` for a set function of the items kept (order preserved).

    Exact when ``len(items) <= max_exact`` (all ``2^n`` coalitions, each evaluated once).
    Otherwise ``n_samples`` random permutations (default 200), drawn from
    ``np.random.default_rng(seed)`` in antithetic pairs (a permutation, then its reverse); each
    item's value is its mean marginal contribution. Either way the values sum *exactly* to
    ``v(all) - v(empty)`` (efficiency).

    Args:
        items: the players (words, heads); ``value_fn`` receives the kept ones as a list in the
            original order.
        value_fn: ``list -> float``. If it has a ``many(list_of_lists) -> sequence of floats``
            method, all coalitions are evaluated in one batched call.
        n_samples: permutations when sampling.
        seed: sampling seed.
        max_exact: largest ``n`` enumerated exactly.

    Returns:
        ``(phi [n], v_all, v_empty)``.
    """
    n = len(items)
    if n == 0:
        v0 = float(_evaluate_masks(items, [0], value_fn)[0])
        return np.zeros(0), v0, v0
    full = (1 << n) - 1
    if n <= max_exact:
        masks = np.arange(1 << n, dtype=np.int64)
        v = _evaluate_masks(items, masks.tolist(), value_fn)
        bits = (masks[:, None] >> np.arange(n)) & 1  # [2^n, n]
        size = bits.sum(1)
        # weight of a coalition of size s not containing i: s! (n - s - 1)! / n!
        w = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
        phi = np.empty(n)
        for i in range(n):
            without = masks[bits[:, i] == 0]
            phi[i] = (w[size[without]] * (v[without | (1 << i)] - v[without])).sum()
        return phi, float(v[full]), float(v[0])

    n_samples = 200 if n_samples is None else int(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rng = np.random.default_rng(seed)
    perms = []
    for k in range(n_samples):
        perms.append(rng.permutation(n) if k % 2 == 0 else perms[-1][::-1])
    # prefix coalitions of every permutation, as Python ints (n may exceed 63)
    chains = []
    for p in perms:
        m, chain = 0, [0]
        for i in p:
            m |= 1 << int(i)
            chain.append(m)
        chains.append(chain)
    unique = sorted({m for c in chains for m in c})
    vals = dict(zip(unique, _evaluate_masks(items, unique, value_fn)))
    phi = np.zeros(n)
    for p, chain in zip(perms, chains):
        v = np.array([vals[m] for m in chain])
        phi[p] += np.diff(v)
    return phi / n_samples, float(vals[full]), float(vals[0])


def word_shapley(
    words: Sequence[str],
    value_fn: Callable[[list[str]], float],
    n_samples: int | None = None,
    seed: int = 0,
    max_exact: int = 10,
) -> pd.DataFrame:
    """Shapley value of each word of a caption for a set function of the words kept.

    Masked words are removed (not replaced), so ``value_fn(["a", "duck"])`` scores the caption
    "a duck". See :func:`shapley_values` for exact vs sampled computation.

    Args:
        words: the caption split into words (``caption.split()``).
        value_fn: kept words (in order) -> float, e.g. :func:`head_text_value`.
        n_samples, seed, max_exact: as in :func:`shapley_values`.

    Returns:
        DataFrame ``[word, shapley, share]`` in word order (``share = |phi| / sum |phi|``, the
        normalisation of the LTC paper's SHAP figures); ``df.attrs`` holds ``value_all`` and
        ``value_empty``.
    """
    if isinstance(words, str):
        raise TypeError("words must be a list of words; use caption.split()")
    words = [str(w) for w in words]
    phi, v_all, v_empty = shapley_values(words, value_fn, n_samples=n_samples, seed=seed, max_exact=max_exact)
    tot = np.abs(phi).sum()
    df = pd.DataFrame({"word": words, "shapley": phi, "share": np.abs(phi) / tot if tot > 0 else np.zeros_like(phi)})
    df.attrs.update(value_all=v_all, value_empty=v_empty)
    return df


class CaptionValue:
    """Scores captions against a head-set direction: ``normalise(text_emb(caption)) . direction``.

    Call it with a list of words (joined by spaces); :meth:`many` scores many word lists with one
    batched text-encoder call. Embeddings of captions already seen are cached.
    """

    def __init__(self, model, direction: torch.Tensor, normalize_direction: bool = False, batch_size: int = 256):
        d = torch.as_tensor(direction, dtype=torch.float32)
        if d.dim() != 1:
            raise ValueError(f"direction must be [d_embed], got shape {tuple(d.shape)}; pick one image's terms")
        self.model = model
        self.direction = F.normalize(d, dim=0) if normalize_direction else d
        self.batch_size = batch_size
        self.cache: dict[str, float] = {}

    def many(self, word_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores ``[len(word_lists)]`` of the captions ``" ".join(words)``."""
        captions = [" ".join(w) for w in word_lists]
        todo = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if todo:
            emb = self.model.encode_text(todo, normalize=True, batch_size=self.batch_size)  # [n, d_embed]
            if emb.shape[1] != self.direction.shape[0]:
                raise ValueError(f"text embeddings have d_embed={emb.shape[1]} but direction has "
                                 f"{self.direction.shape[0]}")
            scores = (emb.float() @ self.direction.to(emb.device)).cpu().tolist()
            self.cache.update(zip(todo, scores))
        return np.array([self.cache[c] for c in captions], dtype=np.float64)

    def __call__(self, words: Sequence[str]) -> float:
        return float(self.many([list(words)])[0])


def head_text_value(model, direction: torch.Tensor, normalize_direction: bool = False) -> CaptionValue:
    """A caption value function for :func:`word_shapley` through a head set.

    Args:
        model: a :class:`~ltcutils.models.LoadedModel` (anything with ``encode_text``).
        direction: ``[d_embed]`` the head set's direction for one image, e.g. its head terms
            summed over the set, ``decomposition.heads[i, li, hi].sum(0)``.
        normalize_direction: use the unit direction (cosine) instead of the raw terms (dot).

    Returns:
        a :class:`CaptionValue`: ``words -> normalise(text_emb(" ".join(words))) . direction``.
    """
    return CaptionValue(model, direction, normalize_direction=normalize_direction)
