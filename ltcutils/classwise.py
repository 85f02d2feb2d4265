"""Salient heads per class, and injection by the image's (pseudo-)class: the paper's CounterAnimal protocol.

CounterAnimal has 45 classes classified 1000-way, and what tells a goldfish from its look-alike
is not what tells a polar bear from a brown bear. The reference therefore

1. locates salient heads **per class** without contrast: for class ``c``, its correctly classified
   images of the locate (common) split, each one's top head (largest margin over the runner-up),
   the share ``F`` of each head, and the heads with ``F > 1/K`` (``K`` heads ever on top; the
   single-map rule, :func:`single_map_heads`). The spurious heads (reused from Waterbirds) are
   removed; a class left with none falls back to the reused file's salient heads;
2. at test time gives each image a **pseudo-class** from its zero-shot logits, no label used
   (:func:`pseudo_classes`), and injects that class's concept pairs into that class's heads
   (:func:`class_concept_bases`: a :class:`~ltcutils.correct.ConceptBases` whose basis ``b`` is
   injected only into ``heads[b]``).

:func:`ltcutils.locate.select_heads` applies step 1 when ``salient="per_class"`` (the default
for CounterAnimal, whose dataset info says ``salient_protocol: per_class``);
:func:`injection_basis` is the one call the notebooks make to get the basis for any selection.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .correct import ConceptBases, concept_bases, orthonormal_basis
from .heads import Head, HeadSelection, head_label, parse_heads
from .lens import Candidates, LogitLens

__all__ = ["SALIENT_PROTOCOLS", "salient_protocol", "single_map_heads", "locate_per_class", "with_per_class",
           "pseudo_classes", "class_concept_bases", "injection_basis"]

#: how salient heads are chosen: contrasted with the spurious ones on the bias-conflicting groups
#: (``"contrast"``), per class on its correctly classified images (``"per_class"``), or the
#: salient heads of a reused heads file (``"reused"``)
SALIENT_PROTOCOLS = ("contrast", "per_class", "reused")


def salient_protocol(salient: str, meta: dict | None, heads_from) -> str:
    """Resolve ``salient="auto"``: the dataset's own protocol (``meta["dataset_info"]["salient_protocol"]``;
    CounterAnimal: ``"per_class"``), else ``"reused"`` with a heads file and ``"contrast"`` without.

    Raises:
        ValueError: an unknown protocol, or ``"reused"`` without ``heads_from``.
    """
    meta = meta or {}
    if salient == "auto":
        own = (meta.get("dataset_info") or {}).get("salient_protocol")
        if own is None and meta.get("dataset") == "counteranimal":  # a store captured before the key existed
            own = "per_class"
        salient = own or ("reused" if heads_from else "contrast")
    if salient not in SALIENT_PROTOCOLS:
        raise ValueError(f"salient must be 'auto' or one of {SALIENT_PROTOCOLS}, got {salient!r}")
    if salient == "reused" and not heads_from:
        raise ValueError("salient='reused' takes the salient heads of a heads file: pass heads_from=...")
    return salient


def single_map_heads(F: Float[np.ndarray, "layer head"], layers: Sequence[int]) -> list[Head]:
    """The paper's single-map rule: heads whose top-head share exceeds ``1/K`` (``K`` = heads with share > 0).

    Sorted by share, largest first (ties: lower layer, then head); empty when no head is ever on
    top, or only one is (its share 1 does not exceed 1/1), as in the reference.

    Example::

        >>> single_map_heads(np.array([[0.5, 0.3], [0.2, 0.0]]), layers=[4, 5])   # K = 3, 1/K = 0.33
        [(4, 0)]
    """
    F = np.asarray(F, dtype=float)
    K = int((F > 0).sum())
    if K == 0:
        return []
    H = F.shape[1]
    order = np.argsort(-F, axis=None, kind="stable")
    return [(int(layers[i // H]), int(i % H)) for i in order if F.flat[i] > 1.0 / K]


def locate_per_class(
    lens: LogitLens,
    y: Int[np.ndarray, " batch"],
    *,
    exclude: Sequence[Head] = (),
    fallback: Sequence[Head] = (),
    candidates: Candidates | None = None,
    classes: Sequence[int] | None = None,
) -> tuple[dict[int, list[Head]], pd.DataFrame]:
    """Salient heads of each class on its correctly classified images (single-map rule, no groups).

    Args:
        lens: logit lens of the locate split (streamed or held).
        y: ``[n]`` true classes (global index).
        exclude: heads never selected (the spurious heads that will be ablated).
        fallback: the heads of a class with no correct image or with nothing left after ``exclude``.
        candidates: optional ``[n, k]`` per-image candidate classes.
        classes: the classes to locate for (default: every class in ``y``).

    Returns:
        ``({class: heads}, table)``, one table row per class: ``class``, ``n_correct``, ``K`` (heads
        ever on top), ``heads`` (labels), ``fallback`` (True when ``fallback`` was used).
    """
    from .locate import margins, top_head_frequencies

    y = np.asarray(y)
    m, pred, _ = margins(lens, y, candidates)
    correct = pred.numpy() == y
    skip = set(parse_heads(exclude))
    fallback = [h for h in parse_heads(fallback) if h not in skip]
    out: dict[int, list[Head]] = {}
    rows = []
    for c in (np.unique(y) if classes is None else classes):
        F, n_c = top_head_frequencies(m, (y == c) & correct)
        heads = [h for h in single_map_heads(F, lens.layers) if h not in skip]
        out[int(c)] = heads or list(fallback)
        rows.append({"class": int(c), "n_correct": n_c, "K": int((F > 0).sum()),
                     "heads": ",".join(head_label(*h) for h in out[int(c)]), "fallback": not heads})
    return out, pd.DataFrame(rows, columns=["class", "n_correct", "K", "heads", "fallback"])


def with_per_class(sel: HeadSelection, split, reference: str) -> HeadSelection:
    """A copy of ``sel`` whose salient heads are located per class on ``split`` (an EvalSplit).

    ``sel``'s spurious heads are kept and excluded, its salient heads are the fallback;
    ``salient`` becomes the union of the per-class lists, ``counts`` gains ``n_classes`` and
    ``per_class_fallback``, ``data["per_class"]`` the per-class table.
    """
    by_class, table = locate_per_class(split.lens, split.y, exclude=sel.spurious, fallback=sel.salient,
                                       candidates=split.candidates)
    out = copy.copy(sel)
    out.salient = list(dict.fromkeys(h for hs in by_class.values() for h in hs))
    out.salient_by_class = by_class
    out.counts = dict(sel.counts, n_classes=len(by_class), per_class_fallback=int(table["fallback"].sum()))
    out.data = dict(sel.data, per_class=table.to_dict(orient="records"), salient_located_on=reference)
    return out


def _partners(keys: Sequence[str], class_names: Sequence[str]) -> dict[int, set[int]]:
    """``{class: classes it shares a concept-pair key "a|b" with}`` (global indices)."""
    index = {n: i for i, n in enumerate(class_names)}
    out: dict[int, set[int]] = {}
    for key in keys:
        a, _, b = key.partition("|")
        if a in index and b in index:
            out.setdefault(index[a], set()).add(index[b])
            out.setdefault(index[b], set()).add(index[a])
    return out


def pseudo_classes(logits: Float[Tensor, "batch n_class"], classes: Sequence[int],
                   partners: dict[int, set[int]] | None = None) -> tuple[Int[np.ndarray, " batch"], np.ndarray]:
    """Each image's pseudo-class among ``classes`` from its zero-shot ``logits``, no label used.

    The reference's rule, made deterministic: the top class if it is one of ``classes``; else, if
    the top class is a known look-alike (a ``partners`` entry) of some of ``classes``, the one of
    those with the highest logit; else (the reference draws at random) the highest-logit class
    among ``classes``.

    Returns:
        ``(pseudo [n] global class indices, how [n])`` with ``how`` one of ``"top"``, ``"partner"``,
        ``"best of classes"``.

    Example::

        >>> z = torch.tensor([[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 1.0, 2.0], [0.0, 1.0, 9.0, 2.0]])
        >>> pseudo_classes(z, classes=[1, 3], partners={3: {2}, 2: {3}})[0]
        array([1, 3, 3])
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("pseudo_classes needs at least one class to choose among")
    partners = partners or {}
    z = logits.detach().float().cpu()
    top = z.argmax(1).numpy()
    best_of = np.asarray(classes)[z[:, classes].argmax(1).numpy()]
    pseudo, how = best_of.copy(), np.full(len(top), "best of classes", dtype=object)
    chosen = set(classes)
    for i, t in enumerate(top):
        if t in chosen:
            pseudo[i], how[i] = t, "top"
            continue
        near = [c for c in classes if t in partners.get(c, ())]
        if near:
            pseudo[i], how[i] = near[int(np.argmax(z[i, near].numpy()))], "partner"
    return pseudo, how


def class_concept_bases(heads_by_class: dict[int, Sequence[Head]], keyed: dict[str, Float[Tensor, "_ d_embed"]],
                        class_names: Sequence[str], logits: Float[Tensor, "batch n_class"]) -> ConceptBases:
    """Per-image bases for per-class injection: the pseudo-class's concept pairs into its salient heads.

    Each image's pseudo-class (:func:`pseudo_classes` among the classes of ``heads_by_class``)
    selects one basis: an orthonormal basis of every keyed concept pair that names the class
    (``"polar bear|brown bear"`` serves both bears), injected only into that class's heads.
    Images whose pseudo-class has no concept pair get no injection (index -1, with a warning).

    Args:
        heads_by_class: ``{class: salient heads}`` (``HeadSelection.salient_by_class``).
        keyed: ``{"a|b": basis [r, d_embed]}`` (``text_directions(...)["injection_keyed"]``).
        class_names: ``[n_class]`` names in the global class order.
        logits: ``[n, n_class]`` the zero-shot logits of the images to edit.

    Returns:
        a :class:`~ltcutils.correct.ConceptBases` with ``keys`` the class names, ``heads`` per
        basis, and ``pseudo`` / ``pseudo_how`` in its ``info``.
    """
    classes = sorted(int(c) for c in heads_by_class)
    pseudo, how = pseudo_classes(logits, classes, _partners(list(keyed), class_names))
    bases, heads, keys, slot = [], [], [], {}
    for c in classes:
        named = [b for k, b in keyed.items() if class_names[c] in k.split("|")]
        if named and heads_by_class[c]:
            slot[c] = len(bases)
            bases.append(orthonormal_basis(torch.cat([b.float() for b in named])))
            heads.append(parse_heads(heads_by_class[c]))
            keys.append(class_names[c])
    index = np.array([slot.get(int(c), -1) for c in pseudo], dtype=np.int64)
    missing = int((index < 0).sum())
    if missing:
        warnings.warn(f"{missing} of {len(index)} images have a pseudo-class without concept pairs (or without salient "
                      "heads); they get no injection. Add pairs for those classes to the prompt bank's injection.",
                      stacklevel=2)
    out = ConceptBases(bases, index, keys, heads=heads)
    out.info = {"pseudo": pseudo, "pseudo_how": how}
    return out


def injection_basis(text: dict, class_names: Sequence[str], lens: LogitLens, candidates=None,
                    selection: HeadSelection | None = None):
    """The injection basis every notebook uses: per class, per class pair, or one for all images.

    * ``selection.salient_by_class`` set: :func:`class_concept_bases` (CounterAnimal's protocol);
    * else the bank's single basis (``text["injection_basis"]``) when it has one;
    * else keyed pairs: :func:`ltcutils.correct.concept_bases` (each image's two candidates, or its two
      highest zero-shot classes);
    * else None (no injection).

    Args:
        text: :func:`ltcutils.text.text_directions` of the bank.
        class_names: the bank's class names.
        lens: the logit lens of the images to edit (its zero-shot logits pick pseudo-classes).
        candidates: ``[n, k]`` per-image candidates, or None.
        selection: the heads to be corrected.
    """
    keyed = text.get("injection_keyed")
    if selection is not None and selection.salient_by_class:
        if not keyed:
            raise ValueError("per-class salient heads need concept pairs keyed by class pair ('a|b') in the prompt "
                             "bank's injection section; this bank has one list for every image (use salient='reused')")
        return class_concept_bases(selection.salient_by_class, keyed, class_names, lens.logits())
    if text.get("injection_basis") is not None:
        return text["injection_basis"]
    if keyed:
        return concept_bases(keyed, class_names, candidates=candidates,
                             logits=None if candidates is not None else lens.logits())
    return None
