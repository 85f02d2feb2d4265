"""The logit lens over stored decompositions: every head read through the zero-shot classifier.

Because the decomposition is linear, one pass over a store gives everything the linear parts of
the method need: each head's direct logits ``[n, layer, head, n_class]``, the logits of the
non-head terms ``[n, n_class]`` and the summed embedding ``[n, d_embed]``. Mean ablation, random
head controls and TextSpan ablation are then arithmetic on these logits (exactly equal to
editing the terms and re-classifying, since ``(sum of terms) @ W == sum of (term @ W)``).

**Streaming.** The per-head logits are ``n * layer * head * n_class`` floats: 14 GiB for 7,000
CounterAnimal images through ViT-H's 32 x 16 heads and 1000 ImageNet classes. Nothing in the
method needs them all at once: a margin needs two classes per image, an ablation one head's
logits. A *streamed* lens (``head=None``, ``logit_lens(..., stream=True)``, or automatically above
``max_bytes``) keeps the terms instead and computes what is asked in chunks of ``chunk`` images:
:meth:`LogitLens.head_margins` (``[n, layer, head]``, never a class axis per head) and
:meth:`LogitLens.head_logits` (one head, ``[n, n_class]``). Peak memory is then ``chunk`` images'
terms plus ``[n, n_class]``, whatever the number of layers.

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

__all__ = ["LogitLens", "logit_lens", "predict_logits", "mask_candidates", "MAX_LENS_BYTES", "DEFAULT_CHUNK"]

#: above this size (float32 bytes) the per-head logits are not held in RAM: the lens streams them
MAX_LENS_BYTES = 4 * 1024**3
#: images per chunk when the lens reads terms
DEFAULT_CHUNK = 256


@dataclass
class LogitLens:
    """Direct logits of each term of a set of images.

    Attributes:
        head: ``[n, layer, head, n_class]`` each head's term @ classifier, or None for a
            *streamed* lens (computed on demand from ``terms``; see the module docstring).
        static: ``[n, n_class]`` the non-head terms (embedding, MLPs, rest) @ classifier.
        total: ``[n, d_embed]`` the summed embedding (unit norm when the terms are normalized).
        classifier: ``[d_embed, n_class]``.
        layers: the layer index of each ``head`` row.
        terms: the terms of the same images (required when ``head`` is None).
        head_sum: ``[n, n_class]`` the heads' summed logits (a streamed lens keeps these instead of ``head``).
        chunk: images per chunk for the streamed computations.
    """

    head: Float[Tensor, "batch layer head n_class"] | None
    static: Float[Tensor, "batch n_class"]
    total: Float[Tensor, "batch d_embed"]
    classifier: Float[Tensor, "d_embed n_class"]
    layers: tuple[int, ...]
    terms: Terms | None = None
    head_sum: Float[Tensor, "batch n_class"] | None = None
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.head is None and (self.terms is None or self.head_sum is None):
            raise ValueError("a streamed LogitLens (head=None) needs the terms and head_sum; build it with "
                             "logit_lens(terms, classifier, stream=True)")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1 image, got {self.chunk}")

    def __len__(self) -> int:
        return self.static.shape[0]

    @property
    def streamed(self) -> bool:
        """True when the per-head logits are computed on demand instead of held."""
        return self.head is None

    @property
    def n_heads(self) -> int:
        return self.head.shape[2] if self.head is not None else self.terms.n_heads

    @property
    def n_class(self) -> int:
        return self.classifier.shape[1]

    def logits(self) -> Float[Tensor, "batch n_class"]:
        """Zero-shot logits of the unedited embedding ``[n, n_class]``."""
        return self.static + (self.head.sum((1, 2)) if self.head is not None else self.head_sum)

    def head_logits(self, layer_pos: int, head: int) -> Float[Tensor, "batch n_class"]:
        """One head's direct logits ``[n, n_class]`` (``layer_pos``: its row, see :meth:`layer_pos`)."""
        if self.head is not None:
            return self.head[:, layer_pos, head]
        return self.terms.head_t(layer_pos, head) @ self.classifier

    def head_margins(self, a: Int[Tensor, " batch"], b: Int[Tensor, " batch"]) -> Float[Tensor, "batch layer head"]:
        """Every head's logit for class ``a[i]`` minus for class ``b[i]`` of each image, ``[n, layer, head]``.

        A streamed lens reads ``chunk`` images' terms at a time and projects them on the two
        classes' difference only, so no ``[.., n_class]`` array per head is ever formed.
        """
        a, b = torch.as_tensor(a, dtype=torch.long), torch.as_tensor(b, dtype=torch.long)
        if self.head is not None:
            L, H = self.head.shape[1:3]
            idx = lambda c: c[:, None, None, None].expand(-1, L, H, 1)  # noqa: E731
            return (self.head.gather(3, idx(a)) - self.head.gather(3, idx(b))).squeeze(3)
        out = torch.empty(len(self), len(self.layers), self.n_heads)
        for sl in self.terms.chunks(self.chunk):
            diff = (self.classifier[:, a[sl]] - self.classifier[:, b[sl]]).T  # [chunk, d_embed]
            out[sl] = torch.einsum("nlhd,nd->nlh", self.terms.heads_t(sl), diff)
        return out

    def layer_pos(self, layer: int) -> int:
        """Row of ``head`` that holds ``layer``."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise ValueError(f"layer {layer} was not captured per head; captured layers: {list(self.layers)}") from None

    def take(self, rows: np.ndarray | torch.Tensor | slice) -> "LogitLens":
        """The lens restricted to some images."""
        r = torch.as_tensor(rows) if not isinstance(rows, slice) else rows
        if self.head is not None:
            return LogitLens(self.head[r], self.static[r], self.total[r], self.classifier, self.layers,
                             chunk=self.chunk)
        idx = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return LogitLens(None, self.static[r], self.total[r], self.classifier, self.layers, self.terms.take(idx),
                         self.head_sum[r], self.chunk)


@torch.inference_mode()
def logit_lens(terms: Terms, classifier: Float[Tensor, "_ n_class"], chunk: int = DEFAULT_CHUNK,
               stream: bool | None = None, max_bytes: int = MAX_LENS_BYTES) -> LogitLens:
    """One streaming pass over ``terms`` computing per-head logits, static logits and totals.

    Args:
        terms: decomposition terms (e.g. ``store.terms``; memory-mapped arrays are read in chunks).
        classifier: ``[d_embed, n_class]`` zero-shot classifier (columns are class directions).
        chunk: images per chunk (here and in a streamed lens's later computations); peak memory
            of a streamed lens is about ``chunk * layer * head * d_embed`` floats plus ``[n, n_class]``.
        stream: True: never hold the per-head logits (a streamed lens, see the module docstring);
            False: always hold them; None (default): stream when they would exceed ``max_bytes``.
        max_bytes: the size (float32 bytes) above which ``stream=None`` streams.

    Raises:
        ValueError: the classifier's d_embed differs from the terms'; MemoryError: ``stream=False``
            and the head logits would exceed ``max_bytes`` (leave ``stream`` at None).
    """
    W = classifier.detach().float().cpu()
    n, L, H, D = terms.heads.shape
    if W.shape[0] != D:
        raise ValueError(f"classifier has d_embed={W.shape[0]} but the terms have d_embed={D}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 image, got {chunk}")
    need = n * L * H * W.shape[1] * 4
    if stream is None:
        stream = need > max_bytes
    elif not stream and need > max_bytes:
        raise MemoryError(f"per-head logits would take {need / 1024**3:.1f} GiB (max_bytes {max_bytes / 1024**3:.1f} "
                          "GiB); leave stream=None (or stream=True) to compute them in chunks instead")
    head = None if stream else torch.empty(n, L, H, W.shape[1])
    head_sum = torch.empty(n, W.shape[1]) if stream else None
    static = torch.empty(n, W.shape[1])
    total = torch.empty(n, D)
    for sl in terms.chunks(chunk):
        h = terms.heads_t(sl)
        s = terms.static_t(sl)
        if stream:
            head_sum[sl] = h.sum((1, 2)) @ W
        else:
            head[sl] = h @ W
        static[sl] = s @ W
        total[sl] = s + h.sum((1, 2))
    return LogitLens(head, static, total, W, tuple(terms.layers), terms if stream else None, head_sum, chunk)


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
