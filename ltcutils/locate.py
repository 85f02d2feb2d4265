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
    "locate",
    "choose_k",
    "parse_head",
    "parse_heads",
    "LocatedHeads",
    "select_heads",
]


class LocateError(ValueError):
    """Locating heads is impossible with the given samples (say, no wrong predictions)."""


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
    idx_p = pred[:, None, None, None].expand(-1, lens.head.shape[1], lens.head.shape[2], 1)
    idx_c = comp[:, None, None, None].expand_as(idx_p)
    m = (lens.head.gather(3, idx_p) - lens.head.gather(3, idx_c)).squeeze(3)
    return m, pred, comp


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
        hint = ("it has no class label, so no image can conflict with one: locate the heads on another dataset "
                "(e.g. genderbias) and reuse its heads file (heads_from=...)" if info.get("has_class_label") is False
                else "pass conflicting=[...] explicitly, or use groups='full'")
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
) -> HeadSelection:
    """Locate spurious and salient heads from top-head frequencies.

    Args:
        lens: logit lens of the reference (locate) split.
        y: ``[n]`` true classes.
        group: ``[n]`` groups (``2 * y + spurious``) for ``groups="true"``.
        groups: ``"true"`` (spurious labels), ``"pseudo"`` (spurious attribute predicted
            zero-shot from ``spurious_logits [n, n_spurious]``; each group's spurious part is
            replaced by the prediction, see :func:`pseudo_groups`) or ``"full"`` (all images).
        spurious: ``[n]`` true spurious labels (needed by ``"pseudo"`` to rebuild the groups).
        conflicting: the bias-conflicting group ids, required by ``"true"`` and ``"pseudo"``;
            the dataset states them: ``conflicting_groups(store)`` (:func:`conflicting_groups`).
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
    if groups in ("true", "pseudo") and conflicting is None:
        raise ValueError(f"groups={groups!r} needs the bias-conflicting group ids: pass "
                         "conflicting=ltc.locate.conflicting_groups(store) (the dataset states them), or use groups='full'")
    if hasattr(model, "describe"):
        model = model.describe()
    m, pred, _ = margins(lens, y, candidates)
    correct = (pred.numpy() == y)
    if groups == "true":
        if group is None:
            raise ValueError("groups='true' needs the group labels (group=...)")
        use = conflicting_mask(group, conflicting)
    elif groups == "pseudo":
        if spurious_logits is None:
            raise ValueError("groups='pseudo' needs spurious_logits [n, n_spurious] from spurious prompts")
        if group is None or spurious is None:
            raise ValueError("groups='pseudo' needs group and spurious (the true ones are replaced by predictions)")
        s_hat = spurious_logits.detach().cpu().argmax(1).numpy()
        use = conflicting_mask(pseudo_groups(group, spurious, s_hat), conflicting)
    elif groups == "full":
        use = np.ones(len(y), dtype=bool)
    else:
        raise ValueError(f"groups must be 'true', 'pseudo' or 'full', got {groups!r}")
    if not use.any():
        raise LocateError(f"no bias-conflicting images in the locate split (groups={groups!r}, conflicting={conflicting})")
    f_w, n_w = top_head_frequencies(m, use & ~correct)
    f_c, n_c = top_head_frequencies(m, use & correct)
    if n_w == 0:
        raise LocateError(
            f"the model makes no wrong predictions on the {int(use.sum())} bias-conflicting images, so there "
            "is no shortcut to locate here; use a larger or harder locate split, or groups='full'"
        )
    if n_c == 0:
        raise LocateError(
            f"the model gets all {int(use.sum())} bias-conflicting images wrong, so salient heads cannot be "
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
        counts={"n_wrong": n_w, "n_correct": n_c, "n_conflicting": int(use.sum()), "K": K},
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
                 model: dict | None = None, data: dict | None = None, loaded_model=None) -> LocatedHeads:
    """The workbook's selection recipe on the locate split: the paper's rule, ``topk`` with ``k`` chosen there, LTC-full.

    With ``rule="topk"`` every ``k`` in ``1..k_cap`` is tried by mean-ablating its spurious heads
    (``means`` from ``reference``) and scoring worst-group accuracy *on this split*; the best
    ``k`` (ties: the smaller) is kept. The test split is never looked at.

    Args:
        split: the locate split (:class:`~ltcutils.evaluate.EvalSplit`).
        means: ``[layer, head, d_embed]`` head means over ``split`` (:func:`ltcutils.correct.head_means`).
        reference: the split's name (recorded in the selections).
        rule, score, groups, conflicting, spurious_logits: see :func:`locate`.
        k_cap: the largest ``k`` tried by ``topk``.
        heads_from: a heads file to reuse instead (all three selections are then that file's).
        model, data: provenance recorded in the selections.
        loaded_model: the model the reused heads will edit (checked by :meth:`HeadSelection.load`).

    Raises:
        ValueError: an unknown ``rule``; LocateError: see :func:`locate`.
    """
    from .correct import Correction
    from .evaluate import score as score_logits

    if heads_from:
        sel = HeadSelection.load(heads_from, model=loaded_model, layers=split.terms.layers)
        return LocatedHeads(sel, sel, sel, None, str(heads_from))
    if rule not in ("topk", "threshold"):
        raise ValueError(f"rule must be 'topk' or 'threshold', got {rule!r}")
    common = dict(groups=groups, conflicting=conflicting, spurious_logits=spurious_logits, spurious=split.spurious,
                  candidates=split.candidates, split=reference, model=model, data=data)

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
    return LocatedHeads(selection, paper, full, k_table)
