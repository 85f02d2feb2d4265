"""Locate: score heads contrastively and select spurious (Z_SY) and salient (Z_Y) heads.

For each image, every head's direct *margin* is its logit for the predicted class minus its
logit for a competitor (the true class when the prediction is wrong, the runner-up when it is
right). The head with the largest margin is the image's *top head*. Over the bias-conflicting
groups (e.g. waterbird on land), ``F_wrong[l, h]`` is the share of wrongly classified images
whose top head is ``(l, h)``, ``F_correct`` likewise for correct ones. Heads much more often on
top among wrong predictions carry the shortcut (spurious, Z_SY); heads much more often on top
among correct ones carry the class (salient, Z_Y).

Selection rules:

* ``"threshold"`` (the paper's): with ``K`` the number of heads that are ever on top, select
  heads whose frequency difference exceeds ``1/K`` (a uniform share).
* ``"topk"``: the ``k`` heads with the largest difference; :func:`choose_k` picks ``k`` on a
  validation split (capped; the cap is recorded).

Sample sets (``groups=``): ``"true"`` uses the spurious labels, ``"pseudo"`` predicts the
spurious attribute zero-shot with spurious prompts, ``"full"`` uses all images (no groups).
Which images of those labels form the set (``locate_groups=``): ``"conflicting"`` (the
bias-conflicting groups, the default) or ``"authors"`` (the reference's GenderBias protocol:
the ``gap_classes`` classes with the largest zero-shot accuracy gap between spurious values,
and of each only the images of its worse-performing value; :func:`largest_gap_mask`).

Which groups are bias-conflicting is the dataset's own knowledge
(:attr:`~ltcutils.datasets.base.GroupDataset.conflicting_groups`, recorded in each store's
meta); :func:`conflicting_groups` reads it from a dataset, a store or an evaluation split.

A :class:`HeadSelection` records the model it was located on; :meth:`HeadSelection.load` with
``model=`` checks every head against the model it is about to edit and warns when the file
comes from other weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .heads import HeadSelection, head_label, parse_head, parse_heads  # noqa: F401  (re-exported for notebooks)
from .lens import Candidates, LogitLens, mask_candidates, predict_logits

#: per-image integer labels ``[batch]`` (numpy, torch or a list)
Labels = Int[np.ndarray, " batch"] | Int[Tensor, " batch"] | Sequence[int]

__all__ = [
    "HeadSelection",
    "LocateError",
    "margins",
    "top_head_frequencies",
    "conflicting_mask",
    "conflicting_groups",
    "pseudo_groups",
    "largest_gap_mask",
    "locate_mask",
    "LOCATE_GROUPS",
    "locate",
    "choose_k",
    "parse_head",
    "parse_heads",
    "LocatedHeads",
    "select_heads",
]


class LocateError(ValueError):
    """Locating heads is impossible with the given samples (say, no wrong predictions)."""


#: which images of the locate split form the sample set (see the module docstring)
LOCATE_GROUPS = ("conflicting", "authors")


def margins(lens: LogitLens, y: Labels, candidates: Candidates | None = None
            ) -> tuple[Float[Tensor, "batch layer head"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """Per-head direct margin of the predicted class over its competitor.

    Args:
        lens: the logit lens of the images.
        y: ``[batch]`` true classes (global index).
        candidates: optional ``[batch, k]`` classes each image is classified among.

    Returns:
        ``(margin [batch, layer, head], pred [batch], competitor [batch])``; the competitor is the
        true class for a wrong prediction and the runner-up for a correct one.

    Raises:
        LocateError: fewer than two competing classes per image.
    """
    masked = mask_candidates(lens.logits(), candidates)
    pred = predict_logits(masked)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n_comp = masked.shape[1] if candidates is None else np.asarray(candidates).shape[1]
    if n_comp < 2:
        raise LocateError("need at least two competing classes per image to form a margin")
    masked.scatter_(1, pred[:, None], -torch.inf)
    runner_up = masked.argmax(1)
    comp = torch.where(pred == yt, runner_up, yt)
    return lens.head_margins(pred, comp), pred, comp  # streamed lenses: chunked, no per-head class axis


def top_head_frequencies(margin: Float[Tensor, "batch layer head"],
                         mask: Bool[np.ndarray, " batch"] | Bool[Tensor, " batch"]
                         ) -> tuple[Float[np.ndarray, "layer head"], int]:
    """Share of images in ``mask`` whose largest-margin head is each head.

    Args:
        margin: ``[batch, layer, head]`` from :func:`margins`.
        mask: ``[batch]`` the images counted.

    Returns:
        ``(F [layer, head] summing to 1 (or all zeros for an empty set), count)``.

    Example::

        >>> m = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[0.0, 3.0]]])   # 3 images, 1 layer, 2 heads
        >>> top_head_frequencies(m, np.array([True, True, False]))
        (array([[0.5, 0.5]]), 2)
    """
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    n, L, H = margin.shape
    sel = margin[mask].reshape(-1, L * H)
    count = sel.shape[0]
    if count == 0:
        return np.zeros((L, H)), 0
    top = sel.argmax(1)
    F = torch.bincount(top, minlength=L * H).double() / count
    return F.reshape(L, H).numpy(), count


def pseudo_groups(group: Labels, spurious: Labels, predicted: Labels) -> Int[np.ndarray, " batch"]:
    """Groups with the spurious label replaced by a prediction.

    Every dataset here encodes ``group = base(y) + spurious`` (Waterbirds: ``2 * y + s``;
    GenderBias: ``2 * male_dominated + gender``), so ``group - spurious + predicted`` swaps
    the true spurious label for the predicted one without knowing the layout.
    """
    return np.asarray(group) - np.asarray(spurious) + np.asarray(predicted)


def conflicting_groups(source) -> list[int]:
    """The bias-conflicting group ids of a dataset, read from where the dataset states them.

    Args:
        source: a :class:`~ltcutils.datasets.base.GroupDataset` (its ``conflicting_groups``), an
            :class:`~ltcutils.store.ActivationStore` or its ``meta`` dict (the ``conflicting_groups``
            recorded at capture; a store written before that key existed has them recomputed
            from its dataset's loader), or an :class:`~ltcutils.evaluate.EvalSplit` made from a store.
            A dataset name (a string) is deprecated: it is only accepted for datasets whose
            conflicting groups do not depend on loader options, by loading its definition.

    Raises:
        LocateError: the dataset defines no bias-conflicting groups (FairFace: no class label;
            CelebA attributes with no association), with what to do instead.
    """
    from .datasets.base import GroupDataset
    from .datasets.registry import conflicting_groups_from_meta

    if isinstance(source, str):
        return _conflicting_by_name(source)
    if isinstance(source, GroupDataset):
        name, got, info = source.name, source.conflicting_groups, source.info
    else:
        meta = source.meta if hasattr(source, "meta") else source  # a store, an EvalSplit, or a meta dict
        if hasattr(source, "lens") and not meta:
            raise LocateError(f"the EvalSplit {source.name!r} was not built from a store (EvalSplit.from_store), so it "
                              "does not know its dataset's conflicting groups; pass conflicting=[...]")
        if not isinstance(meta, dict) or "dataset" not in meta:
            raise TypeError(f"conflicting_groups needs a GroupDataset, an ActivationStore (or its meta) or an "
                            f"EvalSplit, got {type(source).__name__}")
        # a store written before meta recorded them: recompute from the dataset's definition (no default)
        got = meta["conflicting_groups"] if "conflicting_groups" in meta else conflicting_groups_from_meta(meta)
        name, info = meta["dataset"], meta.get("dataset_info") or {}
    if got is None:
        hint = ("it has no class label, so no image can conflict with one and nothing is classified: locate the "
                "heads on another dataset (e.g. genderbias) and reuse its heads file (heads_from=...); on it, the "
                "workbook runs notebooks 00, 01 and 05 (MaxSkew@k of its concept rankings)"
                if info.get("has_class_label") is False else "pass conflicting=[...] explicitly, or use groups='full'")
        raise LocateError(f"{name} defines no bias-conflicting groups; {hint}")
    return [int(g) for g in got]


def _conflicting_by_name(dataset: str) -> list[int]:
    """Deprecated ``conflicting_groups("waterbirds")``: the loader module's ``CONFLICTING_GROUPS``."""
    import importlib

    from .datasets.registry import DATASETS

    warnings.warn("conflicting_groups(<dataset name>) is deprecated: pass the store, the EvalSplit or the dataset "
                  "(the groups can depend on loader options, e.g. CelebA's attributes)", DeprecationWarning,
                  stacklevel=3)
    if dataset == "synthetic":
        from .datasets.synthetic import make_split

        return conflicting_groups(make_split("val", n_per_group=1))
    missing = object()
    got = missing
    if dataset in DATASETS:
        got = getattr(importlib.import_module(f".datasets.{dataset}", __package__), "CONFLICTING_GROUPS", missing)
    if got is missing:
        raise LocateError(f"the bias-conflicting groups of {dataset!r} depend on how it is loaded (e.g. CelebA's "
                          "target and spurious attributes) or are not defined; pass the store or the dataset: "
                          "conflicting_groups(ex.store(split)), or conflicting=[...]")
    if got is None:
        raise LocateError(f"{dataset} defines no bias-conflicting groups (the docstring of "
                          f"ltcutils.datasets.{dataset} says why and what to do instead)")
    return list(got)


def conflicting_mask(group: Labels, conflicting: Sequence[int]) -> Bool[np.ndarray, " batch"]:
    """Boolean ``[batch]``: the image's group is one of the bias-conflicting groups.

    Example::

        >>> conflicting_mask(np.array([0, 1, 2, 3]), [1, 2])
        array([False,  True,  True, False])
    """
    return np.isin(np.asarray(group), np.asarray(list(conflicting)))


def largest_gap_mask(correct: Bool[np.ndarray, " batch"] | Sequence[bool], y: Labels, spurious: Labels,
                     n_classes: int = 10) -> tuple[Bool[np.ndarray, " batch"], pd.DataFrame]:
    """The reference's GenderBias locate set: the worse spurious value of the classes with the largest gap.

    For every class, the zero-shot accuracy of its images with each spurious value (GenderBias:
    each occupation's female and male accuracy). The ``n_classes`` classes with the largest gap
    ``max - min`` over the values (for two values ``|acc_female - acc_male|``) are kept, and of
    each only the images of the value with the lower accuracy. Classes whose images have a
    single spurious value have no gap and are never kept. Ties: larger gap first, then lower
    class index; the worse value is the lower one on equal accuracies.

    Args:
        correct: ``[n]`` whether each image is classified correctly zero-shot.
        y: ``[n]`` true classes.
        spurious: ``[n]`` spurious values (true labels, or zero-shot predictions for ``"pseudo"``).
        n_classes: how many classes to keep (the reference: 10).

    Returns:
        ``(mask [n], table)``: the images kept, and one row per class with a gap (columns
        ``class, gap, worse, kept`` and ``acc_<value>`` in percent), sorted by gap.

    Raises:
        ValueError: mismatched lengths or ``n_classes < 1``.

    Example::

        >>> correct = np.array([1, 1, 0, 1, 1, 1, 1, 0], dtype=bool)
        >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> gender = np.array([0, 0, 1, 1, 0, 0, 1, 1])      # class 0: 100 vs 50, class 1: 100 vs 50
        >>> mask, table = largest_gap_mask(correct, y, gender, n_classes=1)
        >>> mask.nonzero()[0].tolist(), table["gap"].tolist()
        ([2, 3], [50.0, 50.0])
    """
    ok, yy, ss = (np.asarray(a).reshape(-1) for a in (correct, y, spurious))
    if not (len(ok) == len(yy) == len(ss)):
        raise ValueError(f"correct, y and spurious must have equal length, got {len(ok)}, {len(yy)}, {len(ss)}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    ok = ok.astype(bool)
    values = np.unique(ss)
    rows = []
    for c in np.unique(yy):
        acc = {int(v): 100.0 * float(ok[(yy == c) & (ss == v)].mean()) for v in values if ((yy == c) & (ss == v)).any()}
        if len(acc) < 2:
            continue
        worse = min(acc, key=lambda v: (acc[v], v))
        rows.append({"class": int(c), "gap": max(acc.values()) - min(acc.values()), "worse": worse,
                     **{f"acc_{v}": acc.get(int(v), np.nan) for v in values}})
    table = pd.DataFrame(rows, columns=["class", "gap", "worse"] + [f"acc_{int(v)}" for v in values])
    table = table.sort_values(["gap", "class"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table["kept"] = np.arange(len(table)) < n_classes
    mask = np.zeros(len(yy), dtype=bool)
    for c, v in table.loc[table["kept"], ["class", "worse"]].itertuples(index=False):
        mask |= (yy == c) & (ss == v)
    return mask, table


def locate_mask(
    y: Labels,
    correct: Bool[np.ndarray, " batch"],
    group: Labels | None = None,
    *,
    groups: str = "true",
    locate_groups: str = "conflicting",
    conflicting: Sequence[int] | None = None,
    spurious: Labels | None = None,
    spurious_logits: Float[Tensor, "batch n_spurious"] | None = None,
    gap_classes: int = 10,
) -> Bool[np.ndarray, " batch"]:
    """Boolean ``[n]``: the images whose top heads :func:`locate` counts (its arguments, same names).

    ``groups`` says which spurious labels are used (``"true"``, ``"pseudo"`` = zero-shot
    predictions from ``spurious_logits``, ``"full"`` = none: every image), ``locate_groups``
    which images of them: ``"conflicting"`` (the groups ``conflicting``) or ``"authors"``
    (:func:`largest_gap_mask` with ``gap_classes``, on the zero-shot ``correct`` flags).

    Raises:
        ValueError: an unknown mode, or a label the mode needs is missing.
    """
    if groups not in ("true", "pseudo", "full"):
        raise ValueError(f"groups must be 'true', 'pseudo' or 'full', got {groups!r}")
    if locate_groups not in LOCATE_GROUPS:
        raise ValueError(f"locate_groups must be one of {LOCATE_GROUPS}, got {locate_groups!r}")
    y = np.asarray(y)
    if groups == "full":
        return np.ones(len(y), dtype=bool)
    if groups == "pseudo":
        if spurious_logits is None:
            raise ValueError("groups='pseudo' needs spurious_logits [n, n_spurious] from spurious prompts")
        s_used = spurious_logits.detach().cpu().argmax(1).numpy()
    else:
        s_used = None if spurious is None else np.asarray(spurious)
    if locate_groups == "authors":
        if s_used is None:
            raise ValueError("locate_groups='authors' needs the spurious labels (spurious=...) to find each class's "
                             "worse-performing value")
        return largest_gap_mask(correct, y, s_used, gap_classes)[0]
    if conflicting is None:
        raise ValueError(f"groups={groups!r} needs the bias-conflicting group ids: pass "
                         "conflicting=ltc.locate.conflicting_groups(store) (the dataset states them), or use groups='full'")
    if group is None:
        raise ValueError(f"groups={groups!r} needs the group labels (group=...)")
    if groups == "pseudo":
        if spurious is None:
            raise ValueError("groups='pseudo' needs group and spurious (the true ones are replaced by predictions)")
        return conflicting_mask(pseudo_groups(group, spurious, s_used), conflicting)
    return conflicting_mask(group, conflicting)


def locate(
    lens: LogitLens,
    y: Labels,
    group: Labels | None = None,
    *,
    groups: str = "true",
    conflicting: Sequence[int] | None = None,
    spurious_logits: Float[Tensor, "batch n_spurious"] | None = None,
    spurious: Labels | None = None,
    candidates: Candidates | None = None,
    rule: str = "threshold",
    k: int | None = None,
    score: str = "count",
    split: str = "",
    model: Any = None,
    data: dict | None = None,
    locate_groups: str = "conflicting",
    gap_classes: int = 10,
) -> HeadSelection:
    """Locate spurious and salient heads from top-head frequencies.

    Args:
        lens: logit lens of the reference (locate) split.
        y: ``[n]`` true classes.
        group: ``[n]`` groups (``2 * y + spurious``) for ``groups="true"``.
        groups: ``"true"`` (spurious labels), ``"pseudo"`` (spurious attribute predicted
            zero-shot from ``spurious_logits [n, n_spurious]``; each group's spurious part is
            replaced by the prediction, see :func:`pseudo_groups`) or ``"full"`` (all images).
        spurious: ``[n]`` true spurious labels (needed by ``"pseudo"`` to rebuild the groups, and
            by ``locate_groups="authors"`` with ``groups="true"``).
        conflicting: the bias-conflicting group ids, required by ``"true"`` and ``"pseudo"`` with
            ``locate_groups="conflicting"``; the dataset states them: ``conflicting_groups(store)``
            (:func:`conflicting_groups`).
        locate_groups: which images of the labelled split are counted: ``"conflicting"`` (the
            bias-conflicting groups) or ``"authors"`` (the reference's GenderBias set: the
            ``gap_classes`` classes with the largest zero-shot gap between spurious values, their
            worse value; :func:`largest_gap_mask`). Ignored by ``groups="full"``.
        gap_classes: how many classes ``"authors"`` keeps (the reference: 10).
        candidates: optional ``[n, k]`` per-image candidate classes.
        rule: ``"threshold"`` (difference > 1/K) or ``"topk"`` (``k`` largest differences).
        score: what ``"topk"`` ranks: ``"count"`` (``F_wrong - F_correct``, the paper's statistic)
            or ``"margin"`` (mean margin on wrong minus mean margin on correct images, a
            continuous variant that uses every image, not only its top head).
        split, model, data: recorded in the selection for provenance; ``model`` is a
            ``LoadedModel`` or its ``describe()`` (name, weights fingerprint, shape), so that
            :meth:`HeadSelection.load` can tell when the heads are applied to another model.

    Raises:
        LocateError: no bias-conflicting images, or no wrong (or no correct) predictions among them.
    """
    y = np.asarray(y)
    if hasattr(model, "describe"):
        model = model.describe()
    m, pred, _ = margins(lens, y, candidates)
    correct = (pred.numpy() == y)
    use = locate_mask(y, correct, group, groups=groups, locate_groups=locate_groups, conflicting=conflicting,
                      spurious=spurious, spurious_logits=spurious_logits, gap_classes=gap_classes)
    what = "bias-conflicting" if locate_groups == "conflicting" or groups == "full" else "largest-gap"
    if not use.any():
        raise LocateError(f"no {what} images in the locate split (groups={groups!r}, locate_groups={locate_groups!r}, "
                          f"conflicting={conflicting})")
    f_w, n_w = top_head_frequencies(m, use & ~correct)
    f_c, n_c = top_head_frequencies(m, use & correct)
    if n_w == 0:
        raise LocateError(
            f"the model makes no wrong predictions on the {int(use.sum())} {what} images, so there "
            "is no shortcut to locate here; use a larger or harder locate split, or groups='full'"
        )
    if n_c == 0:
        raise LocateError(
            f"the model gets all {int(use.sum())} {what} images wrong, so salient heads cannot be "
            "contrasted; use groups='full' or a larger locate split"
        )
    diff = f_w - f_c
    if score == "margin":
        if rule == "threshold":
            raise ValueError("the 1/K threshold applies to frequencies: use score='count' with rule='threshold'")
        diff = (m[torch.as_tensor(use & ~correct)].mean(0) - m[torch.as_tensor(use & correct)].mean(0)).double().numpy()
    elif score != "count":
        raise ValueError(f"score must be 'count' or 'margin', got {score!r}")
    L, H = diff.shape
    ever = (f_w > 0) | (f_c > 0)
    K = int(ever.sum())
    order = np.argsort(-diff, axis=None, kind="stable")
    flat = [(int(i // H), int(i % H)) for i in order]
    if rule == "threshold":
        tau = 1.0 / K
        spur = [(li, h) for li, h in flat if diff[li, h] > tau]
        sal = [(li, h) for li, h in reversed(flat) if -diff[li, h] > tau]
        kk = None
    elif rule == "topk":
        if k is None or k < 1:
            raise ValueError("rule='topk' needs k >= 1 (or use choose_k to pick it on a validation split)")
        tau = None
        spur = [h for h in flat[:k] if diff[h] > 0]
        sal = [h for h in reversed(flat) if diff[h] < 0][:k]
        kk = k
    else:
        raise ValueError(f"rule must be 'threshold' or 'topk', got {rule!r}")
    layer_ids = [lens.layers[li] for li in range(L)]
    spur_g = [(layer_ids[li], h) for li, h in spur]
    sal_g = [(layer_ids[li], h) for li, h in sal]
    rows = []
    for li in range(L):
        for h in range(H):
            g = (layer_ids[li], h)
            rows.append({"layer": g[0], "head": h, "label": head_label(*g), "f_wrong": f_w[li, h],
                         "f_correct": f_c[li, h], "diff": f_w[li, h] - f_c[li, h], "score": diff[li, h],
                         "selected": "spurious" if g in spur_g else ("salient" if g in sal_g else "")})
    table = pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    return HeadSelection(
        spurious=spur_g, salient=sal_g, rule=rule, groups=groups, score=score, threshold=tau, k=kk, split=split,
        counts={"n_wrong": n_w, "n_correct": n_c, "n_conflicting": int(use.sum()), "K": K,
                **({"locate_groups": locate_groups, "gap_classes": gap_classes}
                   if locate_groups != "conflicting" and groups != "full" else {})},
        model=model or {}, data=data or {}, table=table,
    )


def choose_k(
    selection_for_k: Callable[[int], HeadSelection],
    score_on_val: Callable[[HeadSelection], float],
    k_cap: int,
) -> tuple[HeadSelection, pd.DataFrame]:
    """Pick ``k`` in ``1..k_cap`` maximising a validation score (e.g. worst-group accuracy).

    Args:
        selection_for_k: ``k -> HeadSelection`` (e.g. ``lambda k: locate(..., rule="topk", k=k)``).
        score_on_val: selection -> score on the validation split (higher is better; ties go to
            the smaller ``k``).
        k_cap: the largest ``k`` tried (recorded in the selection as ``k_cap``).

    Returns:
        ``(best selection, table of k vs score)``.
    """
    if k_cap < 1:
        raise ValueError("k_cap must be >= 1")
    rows, best, best_score = [], None, -np.inf
    for k in range(1, k_cap + 1):
        sel = selection_for_k(k)
        s = float(score_on_val(sel))
        rows.append({"k": k, "score": s, "spurious": ",".join(sel.labels("spurious"))})
        if s > best_score + 1e-12:
            best, best_score = sel, s
    assert best is not None
    best.k_cap = k_cap
    return best, pd.DataFrame(rows)


@dataclass
class LocatedHeads:
    """The locate step's selections: the one used downstream, the paper's 1/K rule, the group-free one.

    Attributes:
        selection: the heads the later notebooks correct (``rule`` of :func:`select_heads`).
        paper: the paper's rule (frequency difference > 1/K), for the "threshold rule" rows.
        full: located on all images without groups (the LTC-full row).
        k_table: for ``rule="topk"``, the locate-split worst-group accuracy of each ``k`` tried.
        reused_from: the heads file reused instead of locating (``heads_from``), or None.
    """

    selection: HeadSelection
    paper: HeadSelection
    full: HeadSelection
    k_table: pd.DataFrame | None = None
    reused_from: str | None = None

    def save(self, heads_file: str | Path) -> list[Path]:
        """Write ``heads_file`` (the selection; refused when it has no spurious head) and
        ``heads_paper.json`` / ``heads_full.json`` beside it (these may be empty)."""
        heads_file = Path(heads_file)
        return [self.selection.save(heads_file),
                self.paper.save(heads_file.with_name("heads_paper.json"), allow_empty=True),
                self.full.save(heads_file.with_name("heads_full.json"), allow_empty=True)]

    def score_map(self) -> np.ndarray:
        """``[layer, head]`` the statistic that ranked the heads (the selection table's ``score``)."""
        t = self.selection.table
        if t is None:
            raise ValueError("the selection has no per-head table (it was reused from a heads file)")
        return t.pivot(index="layer", columns="head", values="score").sort_index().to_numpy()


def select_heads(split, means: torch.Tensor, reference: str, *, rule: str = "topk", score: str = "margin",
                 k_cap: int = 4, groups: str = "true", conflicting: Sequence[int] | None = None,
                 spurious_logits: torch.Tensor | None = None, heads_from: str | Path | None = None,
                 model: dict | None = None, data: dict | None = None, loaded_model=None,
                 locate_groups: str = "conflicting", gap_classes: int = 10, salient: str = "auto") -> LocatedHeads:
    """The workbook's selection recipe on the locate split: the paper's rule, ``topk`` with ``k`` chosen there, LTC-full.

    With ``rule="topk"`` every ``k`` in ``1..k_cap`` is tried by mean-ablating its spurious heads
    (``means`` from ``reference``) and scoring worst-group accuracy *on this split*; the best
    ``k`` (ties: the smaller) is kept. The test split is never looked at.

    Args:
        split: the locate split (:class:`~ltcutils.evaluate.EvalSplit`).
        means: ``[layer, head, d_embed]`` head means over ``split`` (:func:`ltcutils.correct.head_means`).
        reference: the split's name (recorded in the selections).
        rule, score, groups, conflicting, spurious_logits, locate_groups, gap_classes: see :func:`locate`
            (LTC-full ignores ``locate_groups``: it counts every image).
        k_cap: the largest ``k`` tried by ``topk``.
        heads_from: a heads file to reuse instead (all three selections are then that file's).
        model, data: provenance recorded in the selections.
        loaded_model: the model the reused heads will edit (checked by :meth:`HeadSelection.load`).
        salient: ``"contrast"``, ``"per_class"``, ``"reused"`` or ``"auto"`` (the dataset's protocol:
            CounterAnimal per class); see :mod:`ltcutils.classwise`.

    Raises:
        ValueError: an unknown ``rule`` or ``salient``; LocateError: see :func:`locate`, or no
            bias-conflicting image in the split (CounterAnimal's common split) and no ``heads_from``.
    """
    from .classwise import salient_protocol, with_per_class
    from .correct import Correction
    from .evaluate import score as score_logits

    salient = salient_protocol(salient, split.meta, heads_from)
    if heads_from:
        sel = HeadSelection.load(heads_from, model=loaded_model, layers=split.terms.layers)
        if salient == "per_class":
            sel = with_per_class(sel, split, reference)
        return LocatedHeads(sel, sel, sel, None, str(heads_from))
    if groups == "true" and conflicting is not None and not conflicting_mask(split.group, conflicting).any():
        raise LocateError(f"the locate split {reference!r} has no bias-conflicting image (CounterAnimal's common split, "
                          "by design): pass heads_from=<heads.json of the same model on Waterbirds>, as the paper does")
    if rule not in ("topk", "threshold"):
        raise ValueError(f"rule must be 'topk' or 'threshold', got {rule!r}")
    common = dict(groups=groups, conflicting=conflicting, spurious_logits=spurious_logits, spurious=split.spurious,
                  candidates=split.candidates, split=reference, model=model, data=data, locate_groups=locate_groups,
                  gap_classes=gap_classes)

    def wg_after_ablation(sel: HeadSelection) -> float:
        corr = Correction.mean_ablation(sel.spurious, means, split.terms.layers, reference)
        return score_logits(split, split.logits(corr))["wg"]

    paper = locate(split.lens, split.y, split.group, rule="threshold", **common)
    k_table = None
    if rule == "topk":
        selection, k_table = choose_k(
            lambda k: locate(split.lens, split.y, split.group, rule="topk", k=k, score=score, **common),
            wg_after_ablation, k_cap=k_cap)
    else:
        selection = paper
    full = locate(split.lens, split.y, split.group, **dict(common, groups="full"), rule=rule, k=selection.k,
                  score=score if rule == "topk" else "count")
    if salient == "per_class":
        selection, paper, full = (with_per_class(s, split, reference) for s in (selection, paper, full))
    return LocatedHeads(selection, paper, full, k_table)
