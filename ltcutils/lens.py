"""The logit lens over stored decompositions: every head read through the zero-shot classifier.

Because the decomposition is linear, one pass over a store gives everything the linear parts of
the method need: each head's direct logits ``[n, layer, head, n_class]``, the logits of the
non-head terms ``[n, n_class]`` and the summed embedding ``[n, d_embed]``. Mean ablation, random
head controls and TextSpan ablation are then arithmetic on these logits (exactly equal to
editing the terms and re-classifying, since ``(sum of terms) @ W == sum of (term @ W)``).

Example::

    >>> lens = ltc.lens.logit_lens(store.terms, classifier)          # doctest: +SKIP
    >>> lens.logits().argmax(1)                                       # zero-shot predictions
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .store import Terms

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

    head: torch.Tensor
    static: torch.Tensor
    total: torch.Tensor
    classifier: torch.Tensor
    layers: tuple[int, ...]

    def __len__(self) -> int:
        return self.head.shape[0]

    @property
    def n_heads(self) -> int:
        return self.head.shape[2]

    def logits(self) -> torch.Tensor:
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
def logit_lens(terms: Terms, classifier: torch.Tensor, chunk: int = 256) -> LogitLens:
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


def mask_candidates(logits: torch.Tensor, candidates: np.ndarray | torch.Tensor | None) -> torch.Tensor:
    """``logits [n, n_class]`` with every class outside each row's ``candidates [n, k]`` set to -inf.

    Global class indexing is kept. ``candidates=None`` returns ``logits`` unchanged.

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


def predict_logits(logits: torch.Tensor, candidates: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Argmax class ``[n]`` (global index); with ``candidates [n, k]`` only those classes compete."""
    return mask_candidates(logits, candidates).argmax(1)
