"""The logit lens over stored decompositions: every head read through the zero-shot classifier.

Because the decomposition is linear, one pass over a store gives everything the linear parts of
the method need: each head's direct logits ``[n, layer, head, n_class]``, the logits of the
non-head terms ``[n, n_class]`` and the summed embedding ``[n, d_embed]``. Mean ablation, random
head controls and TextSpan ablation are then arithmetic on these logits (exactly equal to
editing the terms and re-classifying, since ``(sum of terms) @ W == sum of (term @ W)``).

Predictions everywhere in the package go through :func:`predict_logits` (the argmax among each
image's candidate classes): ``EvalSplit.predict``, ``baselines.predict`` and ``locate.margins``
call it, so there is one prediction rule.

Shapes (checked at test time with jaxtyping): ``batch`` images, ``layer`` captured layers,
``head`` heads per layer, ``n_class`` classes, ``d_embed`` the joint space.

Example::

    >>> lens = ltc.lens.logit_lens(store.terms, classifier)          # doctest: +SKIP
    >>> predict_logits(lens.logits())                                 # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .store import Terms

#: per-image candidate classes: ``[batch, k]`` global class indices (numpy, torch or nested lists)
Candidates = Int[np.ndarray, "batch k"] | Int[Tensor, "batch k"] | Sequence[Sequence[int]]

__all__ = ["LogitLens", "logit_lens", "predict_logits", "mask_candidates", "MAX_LENS_BYTES"]

#: refuse to build a lens larger than this (the head logits are held in RAM as float32)
MAX_LENS_BYTES = 4 * 1024**3


@dataclass
class LogitLens:
    """Direct logits of each term of a set of images.

    Attributes:
        head: ``[n, layer, head, n_class]`` each head's term @ classifier.
        static: ``[n, n_class]`` the non-head terms (embedding, MLPs, rest) @ classifier.
        total: ``[n, d_embed]`` the summed embedding (unit norm when the terms are normalized).
        classifier: ``[d_embed, n_class]``.
        layers: the layer index of each ``head`` row.
    """

    head: Float[Tensor, "batch layer head n_class"]
    static: Float[Tensor, "batch n_class"]
    total: Float[Tensor, "batch d_embed"]
    classifier: Float[Tensor, "d_embed n_class"]
    layers: tuple[int, ...]

    def __len__(self) -> int:
        return self.head.shape[0]

    @property
    def n_heads(self) -> int:
        return self.head.shape[2]

    def logits(self) -> Float[Tensor, "batch n_class"]:
        """Zero-shot logits of the unedited embedding ``[n, n_class]``."""
        return self.static + self.head.sum((1, 2))

    def layer_pos(self, layer: int) -> int:
        """Row of ``head`` that holds ``layer``."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise ValueError(f"layer {layer} was not captured per head; captured layers: {list(self.layers)}") from None

    def take(self, rows: np.ndarray | torch.Tensor | slice) -> "LogitLens":
        """The lens restricted to some images."""
        r = torch.as_tensor(rows) if not isinstance(rows, slice) else rows
        return LogitLens(self.head[r], self.static[r], self.total[r], self.classifier, self.layers)


@torch.inference_mode()
def logit_lens(terms: Terms, classifier: Float[Tensor, "_ n_class"], chunk: int = 256) -> LogitLens:
    """One streaming pass over ``terms`` computing per-head logits, static logits and totals.

    Args:
        terms: decomposition terms (e.g. ``store.terms``; memory-mapped arrays are read in chunks).
        classifier: ``[d_embed, n_class]`` zero-shot classifier (columns are class directions).
        chunk: images per chunk.

    Raises:
        MemoryError: if the head logits would exceed :data:`MAX_LENS_BYTES` (restrict the
            captured layers or the classes).
    """
    W = classifier.detach().float().cpu()
    n, L, H, D = terms.heads.shape
    if W.shape[0] != D:
        raise ValueError(f"classifier has d_embed={W.shape[0]} but the terms have d_embed={D}")
    need = n * L * H * W.shape[1] * 4
    if need > MAX_LENS_BYTES:
        raise MemoryError(
            f"per-head logits would take {need / 1024**3:.1f} GiB; capture fewer layers (layers=...) or "
            "classify among fewer classes"
        )
    head = torch.empty(n, L, H, W.shape[1])
    static = torch.empty(n, W.shape[1])
    total = torch.empty(n, D)
    for sl in terms.chunks(chunk):
        h = terms.heads_t(sl)
        s = terms.static_t(sl)
        head[sl] = h @ W
        static[sl] = s @ W
        total[sl] = s + h.sum((1, 2))
    return LogitLens(head, static, total, W, tuple(terms.layers))


def mask_candidates(logits: Float[Tensor, "batch n_class"],
                    candidates: Candidates | None) -> Float[Tensor, "batch n_class"]:
    """``logits [batch, n_class]`` with every class outside each row's ``candidates [batch, k]`` set to -inf.

    Global class indexing is kept. ``candidates=None`` returns ``logits`` unchanged.

    Example::

        >>> mask_candidates(torch.tensor([[5.0, 1.0, 2.0]]), [[1, 2]])
        tensor([[-inf, 1., 2.]])

    Raises:
        ValueError: on a candidates array of the wrong shape or with indices out of range.
    """
    if candidates is None:
        return logits
    cand = torch.as_tensor(np.asarray(candidates), dtype=torch.long, device=logits.device)
    if cand.dim() != 2 or cand.shape[0] != logits.shape[0] or cand.shape[1] == 0:
        raise ValueError(f"candidates must be [n={logits.shape[0]}, k>=1] class indices, got shape {tuple(cand.shape)}")
    if cand.min() < 0 or cand.max() >= logits.shape[1]:
        raise ValueError(f"candidate class indices must be in 0..{logits.shape[1] - 1}, "
                         f"got {int(cand.min())}..{int(cand.max())}")
    masked = torch.full_like(logits, float("-inf"))
    return masked.scatter(1, cand, logits.gather(1, cand))


def predict_logits(logits: Float[Tensor, "batch n_class"], candidates: Candidates | None = None) -> Int[Tensor, " batch"]:
    """The predicted class of each image: the argmax of ``logits``, among its candidates if given.

    The package's one prediction rule (zero-shot, corrected, baselines and locate all use it).

    Args:
        logits: ``[batch, n_class]``.
        candidates: optional ``[batch, k]`` global class indices that compete for each image.

    Returns:
        ``[batch]`` global class indices (ties: the lowest index).

    Example::

        >>> predict_logits(torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, 3.0]]))
        tensor([0, 1])
        >>> predict_logits(torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, 3.0]]), candidates=[[1, 2], [0, 2]])
        tensor([2, 2])

    Raises:
        ValueError: see :func:`mask_candidates`.
    """
    return mask_candidates(logits, candidates).argmax(1)
