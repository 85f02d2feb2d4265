"""Interpretation: what heads say in words, where they look, and how well we found them.

Five tools, all working on tensors the earlier stages already produce:

* **TextSpan descriptions** (Gandelsman et al. 2024, "Interpreting CLIP's Image Representation
  via Text-Based Decomposition"): a greedy basis of text directions that explains a head's
  outputs over many images, with the share of the head's variance each text explains.
* **Text pools**: shipped lists of short image descriptions to draw that basis from
  (``data/text_pools/<name>.txt``).
* **Patch maps**: each image patch's contribution to a class margin through a head set, and an
  overlay of that map on the image.
* **Word attributions**: Shapley values of the words of a caption for a head set, exact for
  short captions and permutation-sampled for long ones (no ``shap`` dependency).
* **Grading and importance**: precision@k and rank correlations of LTC's head scores against a
  ground-truth oracle (the synthetic benchmark knows each head's true background effect), and
  the change in worst-group / average accuracy when single heads or head sets are ablated.

Shapes: ``head_terms [n_images, d_embed]``, ``heads [n_images, layer, head, d_embed]``,
``spatial [batch, pos, d_embed]`` (position 0 is the class token, then patches row-major),
per-head tables ``[layer, head]``.

Example (TextSpan on a stored decomposition)::

    >>> pool = ltc.interpret.load_text_pool("general")                     # doctest: +SKIP
    >>> emb = model.encode_text(pool)                                       # doctest: +SKIP
    >>> tables = ltc.interpret.textspan_heads(store.terms.heads, store.terms.layers, emb, pool,
    ...                                       heads_to_describe=[(3, 1)])   # doctest: +SKIP
    >>> tables["L3H1"].head()                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .decompose import head_label

__all__ = [
    "TEXT_POOL_DIR",
    "load_text_pool",
    "list_text_pools",
    "textspan",
    "textspan_heads",
    "patch_margin_map",
    "model_view",
    "plot_patch_map",
    "shapley_values",
    "word_shapley",
    "CaptionValue",
    "head_text_value",
    "average_ranks",
    "spearman",
    "kendall_tau",
    "grade_heads",
    "plot_scores_vs_oracle",
    "ablation_importance",
    "plot_importance_heatmap",
    "shapley_heads",
]

Head = tuple[int, int]

#: where the shipped text pools live (``general.txt``, ``synthetic.txt``)
TEXT_POOL_DIR = Path(__file__).resolve().parent.parent / "data" / "text_pools"


# --------------------------------------------------------------------------------------------
# Text pools
# --------------------------------------------------------------------------------------------


def list_text_pools() -> list[str]:
    """Names of the shipped text pools (``data/text_pools/*.txt``)."""
    return sorted(p.stem for p in TEXT_POOL_DIR.glob("*.txt"))


def load_text_pool(name_or_path: str | Path) -> list[str]:
    """Load a text pool: one description per line, blanks and ``#`` comments dropped.

    Args:
        name_or_path: a shipped pool name (``"general"``, ``"synthetic"``: read from
            ``data/text_pools/<name>.txt``) or the path of a text file.

    Returns:
        the descriptions in file order, duplicates removed (first occurrence kept).

    Raises:
        FileNotFoundError: neither a shipped pool nor an existing file.
        ValueError: the file holds no descriptions.
    """
    p = Path(name_or_path).expanduser()
    if not p.is_file():
        p = TEXT_POOL_DIR / f"{name_or_path}.txt"
    if not p.is_file():
        raise FileNotFoundError(
            f"no text pool {str(name_or_path)!r}: it is neither a shipped pool nor a file. Shipped pools "
            f"(in {TEXT_POOL_DIR}): {list_text_pools()}; or pass the path of a text file with one "
            "description per line."
        )
    seen: dict[str, None] = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            seen.setdefault(text, None)
    if not seen:
        raise ValueError(f"text pool {p} holds no descriptions (only blank lines or '#' comments)")
    return list(seen)


# --------------------------------------------------------------------------------------------
# TextSpan
# --------------------------------------------------------------------------------------------


def _as_float_tensor(x: Any, name: str, dims: int, device: str | torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float64)


def textspan(
    head_terms: torch.Tensor | np.ndarray,
    text_emb: torch.Tensor | np.ndarray,
    texts: Sequence[str],
    n_texts: int = 10,
    rank: int | None = None,
    renormalize: bool = False,
    min_text_norm: float = 1e-6,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Describe one head by a greedy basis of text directions (TextSpan).

    The text embeddings are L2-normalised and the head terms mean-centred over images.
    Optionally the texts are projected onto the span of the top-``rank`` right singular vectors
    of the centred head matrix (the reference script takes them before centring, where a large
    mean can claim the first direction). Then, ``n_texts`` times: pick the text whose projection
    carries the most variance of the remaining head terms, record the share of the head's total
    variance its unit direction removes, and remove that direction from the head terms and from
    every remaining text (Gram-Schmidt). The chosen directions are orthonormal, so the shares add up and their
    cumulative sum never exceeds 1.

    Choice score: as in the reference, the projection is on the *residual* text, whose length is
    the part of the (unit) text not yet explained by the texts already chosen (or lying outside
    the head's top-``rank`` span). A text that is mostly spanned by earlier picks, or mostly
    outside the head's span, therefore scores low even if its small leftover happens to point
    along a high-variance direction. ``renormalize=True`` instead scores the residual's unit
    direction (pure greedy variance); that is fragile with ``rank``: every projected text then
    counts as a full direction in the head's span.

    Implementation: with ``C = Xc^T Xc / n`` the covariance of the centred terms and ``T_k`` the
    residual texts after ``k`` removals, the projection variance of text ``t`` is ``t^T C t``
    (the removed directions are orthonormal, so projecting the data as well changes nothing).
    ``T_k C`` is kept up to date by rank-one updates: one ``O(n_pool * d_embed)`` step per pick
    after an ``O((n_images + n_pool) * d_embed^2)`` set-up.

    Args:
        head_terms: ``[n_images, d_embed]`` one head's direct contributions.
        text_emb: ``[n_pool, d_embed]`` text embeddings of ``texts`` (normalised or not).
        texts: ``n_pool`` descriptions.
        n_texts: how many texts to pick (fewer when the pool or the variance runs out).
        rank: project the texts onto the top-``rank`` principal directions of the head terms
            first (None: no projection; the reference used 80 for ViT-B/L/H).
        renormalize: score each residual text by the variance along its unit direction instead
            of along the residual itself (see above).
        min_text_norm: a residual text shorter than this (the text has unit length) is no
            longer a candidate (it was spanned by texts already chosen, e.g. a duplicate).
        device: where to compute (float64).

    Returns:
        DataFrame with one row per chosen text: ``rank`` (1-based), ``text``,
        ``explained_variance`` (share of the head's total variance removed by this direction),
        ``cumulative`` and ``text_index`` (row in ``texts``).

    Raises:
        ValueError: shapes disagree, fewer than two images, ``rank`` out of range, or the head
            terms have no variance.
    """
    X = _as_float_tensor(head_terms, "head_terms", 2, device)
    T = _as_float_tensor(text_emb, "text_emb", 2, device)
    n, d = X.shape
    if T.shape[1] != d:
        raise ValueError(f"text_emb has d_embed={T.shape[1]} but head_terms has d_embed={d}; embed the texts "
                         "with the same model whose heads you describe")
    if len(texts) != T.shape[0]:
        raise ValueError(f"{len(texts)} texts but {T.shape[0]} text embeddings; they must match row for row")
    if n < 2:
        raise ValueError(f"need at least two images to measure variance, got {n}")
    if n_texts < 1:
        raise ValueError(f"n_texts must be >= 1, got {n_texts}")
    ref_norm = T.norm(dim=1)
    T = T / ref_norm.clamp_min(torch.finfo(T.dtype).tiny)[:, None]
    Xc = X - X.mean(0, keepdim=True)
    if rank is not None:
        if not 1 <= rank <= min(n, d):
            raise ValueError(f"rank must be in [1, min(n_images, d_embed)] = [1, {min(n, d)}], got {rank}")
        Vh = torch.linalg.svd(Xc, full_matrices=False).Vh[:rank]  # [rank, d_embed]
        T = (T @ Vh.T) @ Vh
    C = Xc.T @ Xc / n  # [d_embed, d_embed]
    total = float(torch.trace(C))
    if not total > 0:
        raise ValueError("the head terms have no variance over images (all identical); nothing to describe")

    B = T @ C  # [n_pool, d_embed], kept equal to T_k @ C
    candidate = ref_norm > 0
    rows = []
    cum = 0.0
    for r in range(min(n_texts, len(texts), d)):
        sq = (T * T).sum(1)  # squared residual norms [n_pool]
        ok = candidate & (sq.sqrt() > min_text_norm)
        if not ok.any():
            break
        quad = (B * T).sum(1)  # t^T C t
        var = torch.where(ok, quad / sq.clamp_min(torch.finfo(sq.dtype).tiny), torch.zeros_like(quad))
        score = var if renormalize else quad
        score = torch.where(ok, score, torch.full_like(score, -torch.inf))
        j = int(score.argmax())
        explained = float(var[j]) / total
        if explained <= 1e-12 and rows:
            break  # the variance is used up; more picks would be arbitrary
        cum += explained
        rows.append({"rank": r + 1, "text": texts[j], "explained_variance": explained, "cumulative": cum,
                     "text_index": j})
        u = T[j] / sq[j].sqrt()  # unit direction [d_embed]
        coef = T @ u  # [n_pool]
        B = B - coef[:, None] * (C @ u)[None, :]
        T = T - coef[:, None] * u[None, :]
        candidate[j] = False
    return pd.DataFrame(rows, columns=["rank", "text", "explained_variance", "cumulative", "text_index"])


def textspan_heads(
    heads: torch.Tensor | np.ndarray,
    layers: Sequence[int],
    text_emb: torch.Tensor | np.ndarray,
    texts: Sequence[str],
    heads_to_describe: Sequence[Head],
    n_texts: int = 10,
    rank: int | None = None,
    **kwargs,
) -> dict[str, pd.DataFrame]:
    """TextSpan tables for several heads of a stored decomposition.

    Args:
        heads: ``[n_images, layer, head, d_embed]`` head terms (a tensor or a memory-mapped
            array, e.g. ``store.heads``).
        layers: the model layer held in each row of ``heads`` dim 1 (``Decomposition.layers``).
        text_emb, texts, n_texts, rank, **kwargs: as in :func:`textspan`.
        heads_to_describe: ``(layer, head)`` pairs, layer as the model's index.

    Returns:
        ``{"L{l}H{h}": DataFrame}`` in the order asked.

    Raises:
        ValueError: ``heads`` is not 4-D, or a head is not in the stored layers.
    """
    if len(getattr(heads, "shape", ())) != 4:
        raise ValueError(f"heads must be [n_images, layer, head, d_embed], got shape {getattr(heads, 'shape', None)}")
    layers = [int(l) for l in layers]
    if len(layers) != heads.shape[1]:
        raise ValueError(f"layers lists {len(layers)} layers but heads holds {heads.shape[1]}")
    out: dict[str, pd.DataFrame] = {}
    for l, h in heads_to_describe:
        l, h = int(l), int(h)
        if l not in layers or not 0 <= h < heads.shape[2]:
            raise ValueError(f"head L{l}H{h} is not in the decomposition (layers {layers}, {heads.shape[2]} heads)")
        col = heads[:, layers.index(l), h]
        out[head_label(l, h)] = textspan(col, text_emb, texts, n_texts=n_texts, rank=rank, **kwargs)
    return out


# --------------------------------------------------------------------------------------------
# Patch maps
# --------------------------------------------------------------------------------------------


def patch_margin_map(
    spatial: torch.Tensor,
    class_dirs: torch.Tensor,
    grid: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch contribution of a head set to a class margin.

    ``spatial`` are per-source-token terms already summed over the head set, e.g.
    ``decompose.spatial_terms(model.hooked, pixels, heads).sum(1)``. Their sum over positions is
    the head set's term, so ``map.sum((1, 2)) + cls == (head set term) @ class_dir`` exactly.

    Args:
        spatial: ``[batch, pos, d_embed]``; position 0 is the class token, then ``grid * grid``
            patches in row-major order.
        class_dirs: ``[d_embed]`` or ``[batch, d_embed]`` direction to read, typically the
            classifier column of the target class minus that of the competitor.
        grid: patches per side (default: inferred from ``pos``).

    Returns:
        ``(map [batch, grid, grid], cls [batch])``: each patch's contribution and the class
        token's own.

    Raises:
        ValueError: shapes disagree or ``pos`` is not ``grid * grid + 1``.
    """
    if spatial.dim() != 3:
        raise ValueError(f"spatial must be [batch, pos, d_embed] (sum spatial_terms over heads first), "
                         f"got shape {tuple(spatial.shape)}")
    B, P, D = spatial.shape
    if grid is None:
        grid = math.isqrt(P - 1)
    if grid * grid + 1 != P:
        raise ValueError(f"spatial has pos={P}; expected grid * grid + 1 = {grid * grid + 1} (class token + patches)")
    dirs = torch.as_tensor(class_dirs, dtype=spatial.dtype, device=spatial.device)
    if dirs.dim() == 1:
        dirs = dirs.expand(B, -1)
    if dirs.shape != (B, D):
        raise ValueError(f"class_dirs must be [d_embed]=[{D}] or [batch, d_embed]=[{B}, {D}], got {tuple(dirs.shape)}")
    contrib = torch.einsum("bpd,bd->bp", spatial, dirs)  # [batch, pos]
    return contrib[:, 1:].reshape(B, grid, grid), contrib[:, 0]


def model_view(image, size: int):
    """The square crop the model sees: resize the short side to ``size``, centre-crop (PIL).

    Matches open_clip's default eval transform, so a patch map of ``image`` lines up with it.
    """
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def plot_patch_map(
    image,
    pmap: torch.Tensor | np.ndarray,
    ax=None,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = None,
):
    """Overlay a patch map on an image (bilinear upsampling, min-max normalised).

    Args:
        image: PIL image or ``[H, W, 3]`` array (uint8, or float in [0, 1]) of what the model saw
            (see :func:`model_view` for images that were resized and cropped).
        pmap: ``[grid, grid]`` map from :func:`patch_margin_map` (one image).
        ax: matplotlib axes (default: a new figure).
        alpha, cmap: overlay opacity and colour map.
        title: axes title.

    Returns:
        the axes.
    """
    import matplotlib.pyplot as plt

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be a PIL image or an [H, W, 3] array, got shape {arr.shape}")
    m = torch.as_tensor(np.asarray(pmap, dtype=np.float64) if not isinstance(pmap, torch.Tensor) else pmap)
    if m.dim() != 2:
        raise ValueError(f"pmap must be [grid, grid] for one image, got shape {tuple(m.shape)}")
    H, W = arr.shape[:2]
    up = F.interpolate(m.double()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    flat = float(hi - lo) <= 1e-9 * max(1.0, float(up.abs().max()))  # constant map (up to rounding)
    up = torch.zeros_like(up) if flat else (up - lo) / (hi - lo)
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(arr)
    ax.imshow(up.numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


# --------------------------------------------------------------------------------------------
# Shapley values (words, heads)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Grading head finding
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Head importance
# --------------------------------------------------------------------------------------------


def _parse_heads(hs: Sequence) -> list[Head]:
    from .locate import parse_head

    return [parse_head(h) for h in hs]


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
