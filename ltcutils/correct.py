"""Correct: mean-ablate spurious heads and inject class knowledge into salient heads.

A :class:`Correction` is a pure description of the edit; it can be applied

* to cached decompositions (:func:`corrected_logits`, :func:`corrected_embedding`), or
* live to new images through hooks on the hooked model (:class:`DebiasedEncoder`).

Both paths compute the same *direct-path* edit: ``ln_post``'s statistics and the embedding norm
come from the unedited forward pass and nothing propagates to later layers, so on the same
images the two agree to float precision.

**Mean ablation** replaces a head's term by its mean over a *reference split* (never the split
being evaluated unless you ask for it by passing that split as the reference).

**Knowledge injection** (RoboShot's "accept" step applied to one head): with an orthonormal
basis ``q_1..q_r`` of text differences ``e(a_j) - e(b_j)``, for each ``q``::

    x <- x + strength * cos(x, q) * q      then, in paper mode, x <- x / ||x||

This is one operation with RoboShot's (:func:`ltcutils.baselines.roboshot` calls
:func:`inject`: its accept step is ``strength=1``, its reject step ``strength=-1``, both on unit
embeddings).

In the paper-faithful mode (``renormalize=True``, ``strength=1``) every injected head ends as a
*unit* vector. The whole embedding is itself unit-norm and a single head is usually a small
part of it (a norm of 0.05-0.3), so this silently multiplies the head's weight by ``1/||x||``:
most of the effect of injection in the reference is this up-weighting. With
``renormalize=False`` the edit is ``x <- x + strength * (x . q) q`` for each ``q`` (the head's
component along the concept directions is scaled by ``1 + strength``) and its scale is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .decompose import _layer_list, _recorder, head_terms_from_z
from .heads import Head, check_heads, head_label, parse_heads
from .lens import LogitLens
from .store import Terms

__all__ = [
    "Correction",
    "head_means",
    "orthonormal_basis",
    "ConceptBases",
    "concept_bases",
    "inject",
    "corrected_logits",
    "corrected_embedding",
    "head_delta",
    "DebiasedEncoder",
]


@torch.inference_mode()
def head_means(terms: Terms, rows: np.ndarray | Sequence[int] | None = None,
               chunk: int = 1024) -> Float[Tensor, "layer head d_embed"]:
    """Mean of every head's term over images, ``[layer, head, d_embed]`` (float64 accumulation).

    Args:
        terms: the reference split's terms.
        rows: optional subset of images (e.g. ``store.valid``'s indices).
    """
    if rows is not None:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
    n = len(terms) if rows is None else len(rows)
    if n == 0:
        raise ValueError("cannot take a mean over zero images")
    acc = torch.zeros(terms.heads.shape[1:], dtype=torch.float64)
    for i in range(0, n, chunk):
        sl = slice(i, min(i + chunk, n)) if rows is None else rows[i : i + chunk]
        acc += terms.heads_t(sl).double().sum(0)
    return (acc / n).float()


def orthonormal_basis(directions: Float[Tensor, "m d_embed"], tol: float = 1e-6) -> Float[Tensor, "r d_embed"]:
    """Orthonormal basis ``[r, d_embed]`` of the span of ``directions [m, d_embed]`` (Gram-Schmidt, float64).

    The basis follows the order of the directions; a direction that is (numerically, relative
    to ``tol`` times the longest direction) in the span of the previous ones is dropped, and the
    directions after it are still used.

    Example::

        >>> orthonormal_basis(torch.tensor([[2.0, 0.0, 0.0], [4.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
        tensor([[1., 0., 0.],
                [0., 1., 0.]])

    Raises:
        ValueError: no directions, or all of them zero.
    """
    d = directions.detach().double()
    if d.dim() != 2 or d.shape[0] == 0:
        raise ValueError(f"directions must be [m, d_embed] with m >= 1, got {tuple(d.shape)}")
    cut = tol * float(d.norm(dim=1).max())
    basis: list[torch.Tensor] = []
    for v in d:  # Gram-Schmidt, twice per vector (stable in float64); a dependent vector is skipped
        w = v.clone()
        for _ in range(2):
            for q in basis:
                w = w - (w @ q) * q
        if float(w.norm()) > cut:
            basis.append(w / w.norm())
    if not basis:
        raise ValueError("all concept directions are zero: are the two texts of each pair identical?")
    return torch.stack(basis).float()


def inject(x: Float[Tensor, "batch d_embed"], basis: Float[Tensor, "r d_embed"], strength: float = 1.0,
           renormalize: bool = True) -> Float[Tensor, "batch d_embed"]:
    """Amplify ``x [n, d_embed]`` along orthonormal ``basis [r, d_embed]`` (or, ``strength < 0``, damp it).

    ``renormalize=True`` (paper, and RoboShot): ``x <- x + strength * cos(x, q) q``, then
    ``x <- x / ||x||``, for each ``q`` in order. ``renormalize=False``:
    ``x <- x + strength * (x . q) q`` for each ``q`` (order-free, scale kept). On a unit ``x``,
    ``strength=-1`` removes ``x``'s component along ``q`` (RoboShot's reject step).

    Args:
        x: ``[n, d_embed]`` vectors (float64 stays float64; other dtypes compute in float32).
        basis: ``[r, d_embed]`` orthonormal directions (:func:`orthonormal_basis`).

    Returns:
        ``[n, d_embed]`` in ``x``'s float precision.

    Example::

        >>> inject(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]]), renormalize=False)
        tensor([[6., 4.]])
    """
    x = x if x.dtype == torch.float64 else x.float()
    basis = basis.to(x)
    if renormalize:
        for q in basis:
            cos = (F.normalize(x, dim=-1) @ q)[:, None]
            x = F.normalize(x + strength * cos * q, dim=-1)
        return x
    return x + strength * (x @ basis.T) @ basis


@dataclass
class ConceptBases:
    """Per-image concept bases, for datasets whose concept pairs depend on the image's classes
    (GenderBias: each image is classified between its occupation and a paired one, and the
    concept pairs describe that pair).

    Attributes:
        bases: orthonormal bases, each ``[r_i, d_embed]``.
        index: ``[n]`` which basis each image uses (``-1``: no injection for that image).
        keys: a name per basis (e.g. ``"nurse|surgeon"``), for display.
        heads: per basis, the only heads it is injected into (per-class salient heads,
            :func:`ltcutils.classwise.class_concept_bases`); None: every injected head.
        info: free-form provenance (e.g. each image's pseudo-class).
    """

    bases: list[Float[Tensor, "_ d_embed"]]
    index: Int[np.ndarray, " batch"] | Sequence[int]
    keys: list[str] = field(default_factory=list)
    heads: list[list[Head]] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, dtype=np.int64)
        if self.index.ndim != 1 or (len(self.index) and self.index.max() >= len(self.bases)):
            raise ValueError(f"index must be [n] with values in -1..{len(self.bases) - 1}")
        if self.heads is not None:
            if len(self.heads) != len(self.bases):
                raise ValueError(f"heads must give one head list per basis ({len(self.bases)}), got {len(self.heads)}")
            self.heads = [parse_heads(hs) for hs in self.heads]

    def take(self, rows: np.ndarray | slice) -> "ConceptBases":
        """The same bases for a subset of the images."""
        return ConceptBases(self.bases, self.index[rows], self.keys, self.heads, self.info)

    def with_index(self, index: Int[np.ndarray, " batch"] | Sequence[int]) -> "ConceptBases":
        """The same bases (and heads) assigned to other images."""
        return ConceptBases(self.bases, index, self.keys, self.heads, self.info)

    def reassigned(self, heads: Sequence[Head]) -> "ConceptBases":
        """The same bases with each basis's head list replaced by as many of ``heads`` (in order):
        a random-head control keeps every image's number of injected heads."""
        if self.heads is None:
            return self
        heads = parse_heads(heads)
        return ConceptBases(self.bases, self.index, self.keys, [heads[:len(hs)] for hs in self.heads], self.info)


def concept_bases(keyed: dict[str, Float[Tensor, "_ d_embed"]], class_names: Sequence[str],
                  candidates: Int[np.ndarray, "batch k"] | None = None,
                  logits: Float[Tensor, "batch n_class"] | None = None) -> ConceptBases:
    """Per-image concept bases from bases keyed by class pair (``"a|b"``, either order).

    Each image uses the basis of its two candidate classes (``candidates [n, 2]``, e.g. the true
    and the paired occupation of GenderBias). Without candidates (CounterAnimal's 1000-way
    classification) the pair is the image's two highest classes under ``logits [n, n_class]``
    (the zero-shot logits: a label-free pseudo-pair, as in the reference). Images whose pair has
    no entry get no injection (index -1; a warning gives the count).

    Args:
        keyed: ``{"a|b": basis [r, d_embed]}`` (``text_directions(...)["injection_keyed"]``).
        class_names: ``[n_class]`` names, the global class order.
        candidates: ``[n, 2]`` global class indices per image, or None.
        logits: ``[n, n_class]`` used when ``candidates`` is None.

    Raises:
        ValueError: candidates that are not two per image, or neither candidates nor logits.
    """
    import warnings

    if candidates is not None:
        candidates = np.asarray(candidates)
        if candidates.ndim != 2 or candidates.shape[1] != 2:
            raise ValueError("per-image concept bases need two candidate classes per image (candidates [n, 2])")
        pairs = candidates
    elif logits is not None:
        pairs = logits.topk(2, dim=1).indices.cpu().numpy()
    else:
        raise ValueError("pass candidates [n, 2] or the zero-shot logits [n, n_class] to pick each image's class pair")
    keys = list(keyed)
    lookup = {}
    for i, key in enumerate(keys):
        a, _, b = key.partition("|")
        lookup[(a, b)] = lookup[(b, a)] = i
    index = np.array([lookup.get((class_names[a], class_names[b]), -1) for a, b in pairs], dtype=np.int64)
    missing = int((index < 0).sum())
    if missing:
        warnings.warn(f"{missing} of {len(index)} images have no concept pairs for their class pair; "
                      "they get no injection", stacklevel=2)
    return ConceptBases([keyed[k] for k in keys], index, keys)


def _inject_any(x: torch.Tensor, basis, strength: float, renormalize: bool, head: Head | None = None) -> torch.Tensor:
    """:func:`inject` with one shared basis, or per image with :class:`ConceptBases` (``head``: the head
    ``x`` belongs to, for bases restricted to some heads)."""
    if not isinstance(basis, ConceptBases):
        return inject(x, basis.to(x), strength, renormalize)
    if len(basis.index) != len(x):
        raise ValueError(f"ConceptBases index has {len(basis.index)} images but {len(x)} terms were given")
    out = x.float().clone()
    for b in np.unique(basis.index):
        if b < 0 or (basis.heads is not None and head not in basis.heads[b]):
            continue
        rows = torch.as_tensor(np.flatnonzero(basis.index == b), device=x.device)
        out[rows] = inject(x[rows], basis.bases[b].to(x), strength, renormalize)
    return out


@dataclass
class Correction:
    """An LTC edit: ablate some heads, inject knowledge into others.

    Attributes:
        ablate: heads whose term is replaced by ``ablate_values``.
        ablate_values: ``[len(ablate), d_embed]`` replacement terms (reference means); zeros for
            zero ablation.
        reference: where the replacement came from ("val", "train", "zero", ...).
        inject: heads that get knowledge injection.
        basis: ``[r, d_embed]`` orthonormal concept directions (see :func:`orthonormal_basis`),
            or :class:`ConceptBases` (one basis per image, aligned with the images edited).
        strength, renormalize: see :func:`inject`.
    """

    ablate: list[Head] = field(default_factory=list)
    ablate_values: Float[Tensor, "n_ablate d_embed"] | None = None
    reference: str = ""
    inject: list[Head] = field(default_factory=list)
    basis: Float[Tensor, "r d_embed"] | ConceptBases | None = None
    strength: float = 1.0
    renormalize: bool = True

    def __post_init__(self) -> None:
        self.ablate = parse_heads(self.ablate)
        self.inject = parse_heads(self.inject)
        both = set(self.ablate) & set(self.inject)
        if both:
            raise ValueError(f"heads {sorted(both)} are both ablated and injected; pick one edit per head")
        if self.ablate and (self.ablate_values is None or self.ablate_values.shape[0] != len(self.ablate)):
            raise ValueError("ablate_values must be [len(ablate), d_embed]; build it with Correction.mean_ablation")
        if self.inject and self.basis is None:
            raise ValueError("injection needs a basis of concept directions (orthonormal_basis(pair_directions(...)))")

    @classmethod
    def mean_ablation(cls, heads: Sequence[Head], means: Float[Tensor, "layer head d_embed"], layers: Sequence[int],
                      reference: str) -> "Correction":
        """Mean-ablate ``heads`` with ``means [layer, head, d_embed]`` from :func:`head_means`.

        ``reference`` names the split the means were taken on; it is recorded, and evaluating
        on that same split is then an explicit, visible choice.
        """
        if not reference:
            raise ValueError("name the reference split the means were computed on (reference='val')")
        layers = [int(l) for l in layers]
        if means.dim() != 3 or means.shape[0] != len(layers):
            raise ValueError(f"means must be [layer={len(layers)}, head, d_embed] (head_means of the same store), "
                             f"got shape {tuple(means.shape)}")
        heads = check_heads(heads, None, int(means.shape[1]), layers=layers, what="head to ablate")
        vals = torch.stack([means[layers.index(l), h] for l, h in heads]) if heads else None
        return cls(ablate=heads, ablate_values=vals, reference=reference)

    @classmethod
    def zero_ablation(cls, heads: Sequence[Head], d_embed: int) -> "Correction":
        """Zero-ablate ``heads`` (their term is removed)."""
        heads = parse_heads(heads)
        return cls(ablate=heads, ablate_values=torch.zeros(len(heads), d_embed) if heads else None, reference="zero")

    def with_injection(self, heads: Sequence[Head], basis: Float[Tensor, "r d_embed"] | ConceptBases,
                       strength: float = 1.0, renormalize: bool = True) -> "Correction":
        """A copy that also injects the concept ``basis`` into ``heads``."""
        return Correction(self.ablate, self.ablate_values, self.reference, parse_heads(heads), basis, strength,
                          renormalize)

    def describe(self) -> dict:
        return {"ablate": [head_label(*h) for h in self.ablate], "reference": self.reference,
                "inject": [head_label(*h) for h in self.inject], "strength": self.strength,
                "renormalize": self.renormalize,
                "n_directions": 0 if self.basis is None else (
                    len(self.basis.bases) if isinstance(self.basis, ConceptBases) else int(self.basis.shape[0]))}


def head_delta(heads: Float[Tensor, "batch layer head d_embed"] | Terms, layers: Sequence[int],
               correction: Correction) -> Float[Tensor, "batch d_embed"]:
    """Change of the summed embedding ``[n, d_embed]`` that ``correction`` makes.

    Args:
        heads: ``[n, layer, head, d_embed]`` normalized terms of (at least) the edited layers, or
            a :class:`~ltcutils.store.Terms` (then only the edited heads' bytes are read).
        layers: the layer index of each ``heads`` row.
    """
    layers = list(layers)
    if isinstance(heads, Terms):
        get = lambda li, h: heads.head_t(li, h)  # noqa: E731
        n, d = len(heads), heads.heads.shape[-1]
        device = torch.device("cpu")
    else:
        get = lambda li, h: heads[:, li, h].float()  # noqa: E731
        n, d, device = heads.shape[0], heads.shape[-1], heads.device
    delta = torch.zeros(n, d, dtype=torch.float32, device=device)
    for (l, h), v in zip(correction.ablate, correction.ablate_values if correction.ablate else []):
        delta += v.to(delta) - get(_pos(layers, l), h)
    for l, h in correction.inject:
        x = get(_pos(layers, l), h)
        delta += _inject_any(x, correction.basis, correction.strength, correction.renormalize, (l, h)) - x
    return delta


def _pos(layers: list[int], l: int) -> int:
    try:
        return layers.index(l)
    except ValueError:
        raise ValueError(f"head in layer {l} is not among the captured layers {layers}") from None


@torch.inference_mode()
def corrected_logits(lens: LogitLens, correction: Correction, terms: Terms | None = None,
                     classifier: Float[Tensor, "d_embed n_class"] | None = None) -> Float[Tensor, "batch n_class"]:
    """Logits ``[n, n_class]`` after the correction, computed on the logit lens.

    Ablation is pure arithmetic on the lens. Injection needs the injected heads' terms, read
    from ``terms`` (the same images as the lens, e.g. ``store.terms``).
    ``classifier`` replaces the lens's classifier (e.g. an Ortho-Cali one): then the full edited
    embedding is classified instead.
    """
    if classifier is not None:
        return corrected_embedding(lens, correction, terms) @ classifier.float()
    W = lens.classifier
    logits = lens.logits().clone()
    for (l, h), v in zip(correction.ablate, correction.ablate_values if correction.ablate else []):
        li = lens.layer_pos(l)
        logits += (v.float() @ W)[None] - lens.head_logits(li, h)
    if correction.inject:
        logits += _inject_delta(lens, correction, terms) @ W
    return logits


def _inject_delta(lens: LogitLens, correction: Correction, terms: Terms | None) -> torch.Tensor:
    if terms is None:
        raise ValueError("injection needs the terms of the injected heads: pass terms=store.terms")
    if len(terms) != len(lens):
        raise ValueError(f"terms ({len(terms)} images) and lens ({len(lens)}) do not describe the same images")
    only_inject = Correction(inject=correction.inject, basis=correction.basis, strength=correction.strength,
                             renormalize=correction.renormalize)
    return head_delta(terms, terms.layers, only_inject)


@torch.inference_mode()
def corrected_embedding(lens: LogitLens, correction: Correction,
                        terms: Terms | None = None) -> Float[Tensor, "batch d_embed"]:
    """The edited summed embedding ``[n, d_embed]`` (not renormalised)."""
    total = lens.total.clone()
    if correction.ablate:
        if terms is None:
            raise ValueError("pass terms=store.terms to rebuild edited embeddings")
        only_ablate = Correction(ablate=correction.ablate, ablate_values=correction.ablate_values,
                                 reference=correction.reference)
        total += head_delta(terms, terms.layers, only_ablate)
    if correction.inject:
        total += _inject_delta(lens, correction, terms)
    return total


class DebiasedEncoder:
    """A debiased image encoder for new images: the correction applied live through hooks.

    ``encoder(pixels) -> [batch, d_embed]`` runs the hooked model once; hooks read the edited
    layers' ``hook_z`` at the class token and the ``ln_post`` statistics, and a hook on
    ``hook_image_embed`` adds the direct-path change. The result equals the cached correction
    of the same images (terms normalized by the unedited norm) to float precision.

    Example::

        >>> enc = ltc.correct.DebiasedEncoder(model, correction)          # doctest: +SKIP
        >>> logits = enc(pixels) @ classifier                             # doctest: +SKIP
    """

    def __init__(self, model, correction: Correction, normalize: bool = True):
        self.model = model
        self.hooked = getattr(model, "hooked", model)
        self.correction = correction
        self.normalize = normalize
        cfg = self.hooked.cfg
        check_heads(correction.ablate + correction.inject, cfg.n_layers, cfg.n_heads, what="edited head")
        self.layers = sorted({l for l, _ in correction.ablate + correction.inject})
        _layer_list(self.hooked, self.layers)  # validates the layer indices

    @torch.inference_mode()
    def __call__(self, pixels: Float[Tensor, "batch 3 H W"],
                 basis_index: Int[np.ndarray, " batch"] | None = None) -> Float[Tensor, "batch d_embed"]:
        """Debiased embeddings ``[batch, d_embed]``.

        Args:
            pixels: ``[batch, 3, H, W]`` preprocessed images.
            basis_index: ``[batch]`` which of the correction's :class:`ConceptBases` each image
                uses (only for per-image concept bases).
        """
        correction = self.correction
        if isinstance(correction.basis, ConceptBases):
            if basis_index is None:
                raise ValueError("this correction has per-image concept bases: pass basis_index=[...] per image")
            correction = Correction(correction.ablate, correction.ablate_values, correction.reference,
                                    correction.inject, correction.basis.with_index(basis_index),
                                    correction.strength, correction.renormalize)
        store: dict[str, torch.Tensor] = {}
        grab = lambda key, cls_only: _recorder(store, key, cls_only)  # noqa: E731

        def edit(act, hook):
            norm = act.norm(dim=-1, keepdim=True)
            store["_norm"] = norm
            if self.layers:
                heads = torch.stack([head_terms_from_z(self.hooked, l, store[f"z{l}"], store["mu"], store["sigma"])
                                     for l in self.layers], 1) / norm[:, :, None, None]
                act = act + norm * head_delta(heads, self.layers, correction).to(act)
            return act

        hooks = [("ln_post.hook_mean", grab("mu", False)), ("ln_post.hook_scale", grab("sigma", False))]
        hooks += [(f"blocks.{l}.attn.hook_z", grab(f"z{l}", True)) for l in self.layers]
        hooks.append(("hook_image_embed", edit))
        dev = next(self.hooked.parameters()).device
        out = self.hooked.run_with_hooks(pixels.to(dev), fwd_hooks=hooks)
        # normalized: divide by the *unedited* norm, as the cached (normalized) terms are
        return out / store["_norm"] if self.normalize else out
