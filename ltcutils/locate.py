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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .decompose import head_label
from .lens import LogitLens, mask_candidates

__all__ = [
    "HeadSelection",
    "LocateError",
    "CONFLICTING_GROUPS",
    "margins",
    "top_head_frequencies",
    "conflicting_mask",
    "conflicting_groups",
    "pseudo_groups",
    "locate",
    "choose_k",
    "parse_head",
]

Head = tuple[int, int]

#: bias-conflicting groups per dataset (group = 2 * y + spurious): the minority groups
CONFLICTING_GROUPS: dict[str, list[int]] = {
    "synthetic": [1, 2],  # landbird on water, waterbird on land
    "waterbirds": [1, 2],
    "celeba": [0, 3],  # non-blond female, blond male (blond hair correlates with female)
    "genderbias": [1, 2],  # group = 2 * male_dominated + gender: women in male-dominated jobs and vice versa
    "counteranimal": [1],  # group = background: 0 common, 1 counter (the bias-conflicting backgrounds)
}


class LocateError(ValueError):
    """Locating heads is impossible with the given samples (say, no wrong predictions)."""


def parse_head(h: str | Sequence[int]) -> Head:
    """``"L10H3"`` or ``(10, 3)`` -> ``(10, 3)``."""
    if isinstance(h, str):
        s = h.upper()
        if not (s.startswith("L") and "H" in s):
            raise ValueError(f"head labels look like 'L10H3', got {h!r}")
        l, hh = s[1:].split("H")
        return int(l), int(hh)
    l, hh = h
    return int(l), int(hh)


def margins(lens: LogitLens, y: np.ndarray, candidates: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head direct margin of the predicted class over its competitor.

    Args:
        lens: the logit lens of the images.
        y: ``[n]`` true classes (global index).
        candidates: optional ``[n, k]`` classes each image is classified among.

    Returns:
        ``(margin [n, layer, head], pred [n], competitor [n])``; the competitor is the true class
        for a wrong prediction and the runner-up for a correct one.
    """
    masked = mask_candidates(lens.logits(), candidates)
    pred = masked.argmax(1)
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


def top_head_frequencies(margin: torch.Tensor, mask: np.ndarray | torch.Tensor) -> tuple[np.ndarray, int]:
    """Share of images in ``mask`` whose largest-margin head is each head.

    Returns:
        ``(F [layer, head] summing to 1 (or all zeros for an empty set), count)``.
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


def pseudo_groups(group: np.ndarray, spurious: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Groups with the spurious label replaced by a prediction.

    Every dataset here encodes ``group = base(y) + spurious`` (Waterbirds: ``2 * y + s``;
    GenderBias: ``2 * male_dominated + gender``), so ``group - spurious + predicted`` swaps
    the true spurious label for the predicted one without knowing the layout.
    """
    return np.asarray(group) - np.asarray(spurious) + np.asarray(predicted)


def conflicting_groups(dataset: str) -> list[int]:
    """The bias-conflicting groups of a dataset, or a clear error if it has none defined."""
    try:
        return list(CONFLICTING_GROUPS[dataset])
    except KeyError:
        raise LocateError(
            f"no bias-conflicting groups are defined for {dataset!r} (known: {sorted(CONFLICTING_GROUPS)}); "
            "pass conflicting=[...] explicitly or use groups='full'"
        ) from None


def conflicting_mask(group: np.ndarray, conflicting: Sequence[int]) -> np.ndarray:
    """Boolean ``[n]``: the image's group is one of the bias-conflicting groups."""
    return np.isin(np.asarray(group), np.asarray(list(conflicting)))


@dataclass
class HeadSelection:
    """A located head selection, reusable across notebooks and datasets (saved as JSON).

    ``table`` holds one row per head: layer, head, label, f_wrong, f_correct, diff, selected.
    """

    spurious: list[Head]
    salient: list[Head]
    rule: str
    groups: str
    score: str = "count"
    threshold: float | None = None
    k: int | None = None
    k_cap: int | None = None
    split: str = ""
    counts: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None

    def labels(self, which: str = "spurious") -> list[str]:
        return [head_label(l, h) for l, h in getattr(self, which)]

    def to_dict(self) -> dict:
        d = asdict(self) if self.table is None else {k: v for k, v in self.__dict__.items() if k != "table"}
        d = dict(d)
        d.pop("table", None)
        d["spurious"] = [list(h) for h in self.spurious]
        d["salient"] = [list(h) for h in self.salient]
        d["spurious_labels"] = self.labels("spurious")
        d["salient_labels"] = self.labels("salient")
        if self.table is not None:
            d["table"] = self.table.to_dict(orient="records")
        return d

    def save(self, path: str | Path) -> Path:
        """Write the selection to a JSON file (atomically)."""
        from .store import atomic_write

        path = Path(path)
        atomic_write(path, json.dumps(self.to_dict(), indent=1, default=_json_default))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HeadSelection":
        """Read a selection written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no heads file at {path}; it is written by the locate step (notebook 02)")
        d = json.loads(path.read_text())
        table = pd.DataFrame(d.pop("table")) if "table" in d else None
        d.pop("spurious_labels", None)
        d.pop("salient_labels", None)
        d["spurious"] = [parse_head(h) for h in d["spurious"]]
        d["salient"] = [parse_head(h) for h in d["salient"]]
        return cls(**d, table=table)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def locate(
    lens: LogitLens,
    y: np.ndarray,
    group: np.ndarray | None = None,
    *,
    groups: str = "true",
    conflicting: Sequence[int] | None = None,
    spurious_logits: torch.Tensor | None = None,
    spurious: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    rule: str = "threshold",
    k: int | None = None,
    score: str = "count",
    split: str = "",
    model: dict | None = None,
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
        conflicting: the bias-conflicting group ids (default ``[1, 2]``, the Waterbirds layout
            ``group = 2 * y + spurious``; see :data:`CONFLICTING_GROUPS` for other datasets).
        candidates: optional ``[n, k]`` per-image candidate classes.
        rule: ``"threshold"`` (difference > 1/K) or ``"topk"`` (``k`` largest differences).
        score: what ``"topk"`` ranks: ``"count"`` (``F_wrong - F_correct``, the paper's statistic)
            or ``"margin"`` (mean margin on wrong minus mean margin on correct images, a
            continuous variant that uses every image, not only its top head).
        split, model, data: recorded in the selection for provenance.

    Raises:
        LocateError: no bias-conflicting images, or no wrong (or no correct) predictions among them.
    """
    y = np.asarray(y)
    m, pred, _ = margins(lens, y, candidates)
    correct = (pred.numpy() == y)
    if groups == "true":
        if group is None:
            raise ValueError("groups='true' needs the group labels (group=...)")
        use = conflicting_mask(group, [1, 2] if conflicting is None else conflicting)
    elif groups == "pseudo":
        if spurious_logits is None:
            raise ValueError("groups='pseudo' needs spurious_logits [n, n_spurious] from spurious prompts")
        if group is None or spurious is None:
            raise ValueError("groups='pseudo' needs group and spurious (the true ones are replaced by predictions)")
        s_hat = spurious_logits.detach().cpu().argmax(1).numpy()
        use = conflicting_mask(pseudo_groups(group, spurious, s_hat), [1, 2] if conflicting is None else conflicting)
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
