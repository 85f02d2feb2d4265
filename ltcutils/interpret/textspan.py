"""TextSpan descriptions of heads (Gandelsman et al. 2024) and the shipped text pools they draw from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..heads import Head, head_label
from ..resources import data_path


#: where the shipped text pools live (``general.txt``, ``synthetic.txt``)
TEXT_POOL_DIR = data_path("text_pools")


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
