"""Metrics: group accuracies, worst-group accuracy, averages, gaps, bootstrap CIs, gender bias.

**Unit.** Every accuracy, average, gap and confidence bound returned by this module is in
**percent (0-100)**. Skews (:func:`max_skew_at_k`, :func:`retrieval_skew`) are natural logs of
ratios and have no unit.

**Which average.** "Average accuracy" means different things in different papers, so every
function says which one it returns:

* ``avg_sample``: sample-weighted, i.e. plain accuracy over all items (LTC's ``main_bg.py``);
* ``avg_group``: group-balanced, the unweighted mean of the group accuracies (LTC's probe
  notebook);
* ``avg_train``: group accuracies weighted by given group proportions, usually those of the
  training split (the Waterbirds convention of Sagawa et al.).

The gap is always *that average minus the worst-group accuracy*: ``gap = avg_sample - wg``
(the number LTC reports), ``gap_group = avg_group - wg``, ``gap_train = avg_train - wg``.

Groups are integer ids ``0..n_groups-1`` (e.g. Waterbirds ``group = 2 * y + place``). A group
with no items has accuracy NaN and is left out of the worst group and of the averages.

Example::

    >>> import numpy as np
    >>> pred = np.array([0, 0, 1, 1, 1, 0])
    >>> y = np.array([0, 0, 1, 1, 0, 0])
    >>> group = np.array([0, 0, 0, 1, 1, 1])
    >>> s = summary(pred, y, group)
    >>> round(s["wg"], 2), round(s["avg_sample"], 2), round(s["avg_group"], 2), round(s["gap"], 2)
    (66.67, 83.33, 83.33, 16.67)
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "group_accuracy",
    "worst_group_accuracy",
    "average_accuracy",
    "summary",
    "bootstrap_ci",
    "BOOTSTRAP_STATS",
    "occupation_bias",
    "bias_summary",
    "max_skew_at_k",
    "retrieval_skew",
    "results_table",
    "METRIC_LABELS",
]

#: statistics :func:`bootstrap_ci` can resample (``*_train`` need ``train_proportions``)
BOOTSTRAP_STATS = ("wg", "avg_sample", "avg_group", "gap", "gap_group", "avg_train", "gap_train")

#: column titles used by :func:`results_table`, in table order
METRIC_LABELS = {
    "wg": "WG",
    "avg_sample": "Avg (sample)",
    "avg_group": "Avg (group)",
    "avg_train": "Avg (train-weighted)",
    "gap": "Gap",
    "gap_group": "Gap (group)",
    "gap_train": "Gap (train-weighted)",
}


# ----------------------------------------------------------------------------- group accuracies


def _check_inputs(pred, y, group, n_groups: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(correct [n] bool, group [n] int, n_groups)`` after validating shapes and group ids."""
    pred, y, group = (np.asarray(a) for a in (pred, y, group))
    if pred.ndim != 1 or y.ndim != 1 or group.ndim != 1:
        raise ValueError(
            f"pred, y and group must be 1-D [n] arrays, got shapes {pred.shape}, {y.shape}, {group.shape}; "
            "take the argmax of the logits first (baselines.predict)"
        )
    if not (len(pred) == len(y) == len(group)):
        raise ValueError(f"pred, y and group must have the same length, got {len(pred)}, {len(y)}, {len(group)}")
    if len(pred) == 0:
        raise ValueError("no items to score (pred is empty)")
    if not np.issubdtype(group.dtype, np.integer):
        if np.issubdtype(group.dtype, np.floating) and np.all(group == np.round(group)):
            group = group.astype(np.int64)
        else:
            raise ValueError(f"group must hold integer group ids 0..n_groups-1, got dtype {group.dtype}")
    if group.min() < 0:
        raise ValueError(f"group ids must be >= 0, got {group.min()}")
    seen = int(group.max()) + 1
    if n_groups is None:
        n_groups = seen
    elif seen > n_groups:
        raise ValueError(f"group id {seen - 1} found but n_groups={n_groups}; pass n_groups >= {seen}")
    return pred == y, group.astype(np.int64), int(n_groups)


def _group_counts(correct: np.ndarray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n [n_groups], correct [n_groups])`` item and correct counts per group."""
    n = np.bincount(group, minlength=n_groups)
    c = np.bincount(group, weights=correct.astype(np.float64), minlength=n_groups)
    return n, c


def _acc(n: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Accuracy in percent from item counts ``n`` and correct counts ``c`` (NaN where ``n == 0``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, 100.0 * c / np.maximum(n, 1), np.nan)


def _names(group_names: Sequence[str] | None, n_groups: int) -> list[str] | None:
    if group_names is None:
        return None
    names = [str(s) for s in group_names]
    if len(names) != n_groups:
        raise ValueError(f"got {len(names)} group names for {n_groups} groups; give one name per group id")
    return names


def group_accuracy(
    pred: Sequence[int] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    group: Sequence[int] | np.ndarray,
    n_groups: int | None = None,
    group_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Accuracy of each group, one row per group id.

    Args:
        pred: ``[n]`` predicted class (global class index).
        y: ``[n]`` true class.
        group: ``[n]`` group id in ``0..n_groups-1``.
        n_groups: number of groups (default ``group.max() + 1``); groups without items get a row
            with ``n = 0`` and accuracy NaN.
        group_names: optional ``[n_groups]`` names, added as a ``name`` column.

    Returns:
        DataFrame with columns ``group, [name], n, correct, accuracy`` (accuracy in percent).

    Raises:
        ValueError: on mismatched lengths, non-integer or negative group ids, or a wrong number
            of names.
    """
    correct, group, n_groups = _check_inputs(pred, y, group, n_groups)
    names = _names(group_names, n_groups)
    n, c = _group_counts(correct, group, n_groups)
    acc = _acc(n, c)
    df = pd.DataFrame({"group": np.arange(n_groups), "n": n.astype(np.int64), "correct": c.astype(np.int64),
                       "accuracy": acc})
    if names is not None:
        df.insert(1, "name", names)
    return df


def _weighted_average(acc: np.ndarray, weights: np.ndarray) -> float:
    ok = ~np.isnan(acc)
    w = weights[ok]
    if w.sum() <= 0:
        return float("nan")
    return float((acc[ok] * w).sum() / w.sum())


def _proportions(train_proportions: Sequence[float] | np.ndarray, n_groups: int) -> np.ndarray:
    p = np.asarray(train_proportions, dtype=np.float64).reshape(-1)
    if len(p) != n_groups:
        raise ValueError(f"train_proportions has {len(p)} entries for {n_groups} groups; give one per group id")
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError("train_proportions must be non-negative group weights (counts or fractions) "
                         "with a positive sum")
    return p / p.sum()


def worst_group_accuracy(pred, y, group, n_groups: int | None = None) -> float:
    """Worst-group accuracy (percent): the minimum accuracy over groups that have items.

    Args:
        pred, y, group: ``[n]`` predicted class, true class, group id.
        n_groups: number of groups (default ``group.max() + 1``).
    """
    acc = group_accuracy(pred, y, group, n_groups)["accuracy"].to_numpy()
    return float(np.nanmin(acc))


def average_accuracy(
    pred,
    y,
    group,
    weighting: str = "sample",
    n_groups: int | None = None,
    train_proportions: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Average accuracy (percent), weighted as asked.

    Args:
        pred, y, group: ``[n]`` predicted class, true class, group id.
        weighting: ``"sample"`` (plain accuracy over all items), ``"group"`` (unweighted mean of
            the group accuracies) or ``"train"`` (group accuracies weighted by
            ``train_proportions``, the Waterbirds convention).
        n_groups: number of groups (default ``group.max() + 1``).
        train_proportions: ``[n_groups]`` group weights (counts or fractions; normalised here),
            required for ``weighting="train"``.

    Raises:
        ValueError: for an unknown weighting or missing/ill-shaped proportions.
    """
    if weighting not in ("sample", "group", "train"):
        raise ValueError(f"weighting must be 'sample', 'group' or 'train', got {weighting!r}")
    correct, group, n_groups = _check_inputs(pred, y, group, n_groups)
    if weighting == "sample":
        return 100.0 * float(correct.mean())
    n, c = _group_counts(correct, group, n_groups)
    acc = _acc(n, c)
    if weighting == "group":
        return float(np.nanmean(acc))
    if train_proportions is None:
        raise ValueError("weighting='train' needs train_proportions=[n_groups] (e.g. the training group counts)")
    return _weighted_average(acc, _proportions(train_proportions, n_groups))


def summary(
    pred,
    y,
    group,
    group_names: Sequence[str] | None = None,
    train_proportions: Sequence[float] | np.ndarray | None = None,
    n_groups: int | None = None,
) -> dict[str, Any]:
    """All the accuracy metrics of one prediction, in percent.

    Args:
        pred, y, group: ``[n]`` predicted class, true class, group id.
        group_names: optional ``[n_groups]`` names (used in the per-group keys).
        train_proportions: optional ``[n_groups]`` group weights for the train-weighted average.
        n_groups: number of groups (default ``len(group_names)`` or ``group.max() + 1``).

    Returns:
        A flat dict:

        * ``wg``: worst-group accuracy; ``worst_group``: its name (or id);
        * ``avg_sample``: sample-weighted average (plain accuracy);
        * ``avg_group``: group-balanced average (mean of group accuracies);
        * ``gap = avg_sample - wg`` and ``gap_group = avg_group - wg``;
        * ``avg_train`` and ``gap_train = avg_train - wg`` when ``train_proportions`` is given;
        * ``n``: number of items; ``acc_<name>`` and ``n_<name>`` for every group
          (``<name>`` is the group name, or the id when no names are given);
        * ``empty_groups``: only when some group has no items: their names, comma-separated.
          WG and the group-balanced average are then taken over the other groups only (a
          warning says so too), so a WG from a split missing its worst group reads as such.
    """
    if n_groups is None and group_names is not None:
        n_groups = len(group_names)
    df = group_accuracy(pred, y, group, n_groups, group_names)
    n_groups = len(df)
    acc = df["accuracy"].to_numpy()
    labels = list(df["name"]) if "name" in df else [str(g) for g in df["group"]]
    n_items = int(df["n"].sum())
    out: dict[str, Any] = {
        "wg": float(np.nanmin(acc)),
        "avg_sample": 100.0 * float(df["correct"].sum()) / n_items,
        "avg_group": float(np.nanmean(acc)),
    }
    out["gap"] = out["avg_sample"] - out["wg"]
    out["gap_group"] = out["avg_group"] - out["wg"]
    if train_proportions is not None:
        out["avg_train"] = _weighted_average(acc, _proportions(train_proportions, n_groups))
        out["gap_train"] = out["avg_train"] - out["wg"]
    out["worst_group"] = labels[int(np.nanargmin(acc))]
    out["n"] = n_items
    empty = [name for name, k in zip(labels, df["n"]) if k == 0]
    if empty:
        out["empty_groups"] = ", ".join(empty)
        warnings.warn(f"group{'s' if len(empty) > 1 else ''} {', '.join(empty)} ha{'ve' if len(empty) > 1 else 's'} "
                      f"no items: WG and avg_group are over the other {n_groups - len(empty)} groups only "
                      "(metrics key empty_groups)", stacklevel=2)
    for name, a, k in zip(labels, acc, df["n"]):
        out[f"acc_{name}"] = float(a)
        out[f"n_{name}"] = int(k)
    return out


# ----------------------------------------------------------------------------- bootstrap


def _stats_from_counts(
    correct: np.ndarray, n: np.ndarray, stat: str, proportions: np.ndarray | None
) -> np.ndarray:
    """Statistic ``[n_boot]`` from resampled correct counts ``[n_boot, G]`` and sizes ``[n_boot, G]``."""
    acc = _acc(n, correct)
    wg = np.nanmin(acc, axis=1)
    if stat == "wg":
        return wg
    if stat in ("avg_sample", "gap"):
        avg = 100.0 * correct.sum(1) / n.sum(1)
    elif stat in ("avg_group", "gap_group"):
        avg = np.nanmean(acc, axis=1)
    else:  # train-weighted
        w = np.where(np.isnan(acc), 0.0, proportions[None, :])
        avg = np.nansum(acc * w, axis=1) / w.sum(1)
    return avg - wg if stat.startswith("gap") else avg


def bootstrap_ci(
    pred,
    y,
    group,
    stat: str = "wg",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
    n_groups: int | None = None,
    train_proportions: Sequence[float] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of an accuracy statistic (percent).

    Every statistic here depends on the items only through the number of correct items per
    group, so the resampling is done on those counts, exactly and vectorised:

    * ``stratified=True`` (default): each group is resampled with replacement *within itself*
      (group sizes stay fixed). The number of correct items among ``n_g`` draws from a group with
      ``c_g`` correct is ``Binomial(n_g, c_g / n_g)``.
    * ``stratified=False``: all ``n`` items are resampled together; the counts of the
      (group, correct) cells are ``Multinomial(n, cell shares)``. A group can then come out
      empty in a resample; it is left out of that resample's statistic.

    This has exactly the distribution of resampling item indices, at a cost independent of ``n``.

    Args:
        pred, y, group: ``[n]`` predicted class, true class, group id.
        stat: one of :data:`BOOTSTRAP_STATS` (``"wg"``, ``"avg_sample"``, ``"avg_group"``,
            ``"gap"``, ``"gap_group"``, ``"avg_train"``, ``"gap_train"``); see :func:`summary`.
        n_boot: number of bootstrap resamples.
        alpha: the interval covers ``1 - alpha`` (percentiles ``alpha/2`` and ``1 - alpha/2``).
        seed: seed of ``np.random.default_rng``; the same seed gives the same interval.
        stratified: resample within groups (default) or over all items.
        n_groups: number of groups (default ``group.max() + 1``).
        train_proportions: ``[n_groups]`` weights, needed for the ``*_train`` statistics.

    Returns:
        ``(low, high)`` in percent.

    Raises:
        ValueError: for an unknown statistic, ``n_boot < 1`` or ``alpha`` outside (0, 1).
    """
    if stat not in BOOTSTRAP_STATS:
        raise ValueError(f"stat must be one of {BOOTSTRAP_STATS}, got {stat!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    correct, group, n_groups = _check_inputs(pred, y, group, n_groups)
    props = None
    if stat.endswith("_train"):
        if train_proportions is None:
            raise ValueError(f"stat={stat!r} needs train_proportions=[n_groups]")
        props = _proportions(train_proportions, n_groups)
    n_g, c_g = _group_counts(correct, group, n_groups)
    rng = np.random.default_rng(seed)
    if stratified:
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(n_g > 0, c_g / np.maximum(n_g, 1), 0.0)
        c_b = rng.binomial(n_g[None, :], p[None, :], size=(n_boot, n_groups)).astype(np.float64)
        n_b = np.broadcast_to(n_g.astype(np.float64), (n_boot, n_groups))
    else:
        cells = np.concatenate([c_g, n_g - c_g]) / len(correct)  # [correct per group, wrong per group]
        draws = rng.multinomial(len(correct), cells, size=n_boot).astype(np.float64)
        c_b = draws[:, :n_groups]
        n_b = c_b + draws[:, n_groups:]
    values = _stats_from_counts(c_b, n_b, stat, props)
    low, high = np.nanpercentile(values, [100.0 * alpha / 2, 100.0 * (1 - alpha / 2)])
    return float(low), float(high)


# ----------------------------------------------------------------------------- gender benchmarks


def occupation_bias(
    pred_correct,
    occupation,
    gender,
    female: Any = 0,
    male: Any = 1,
) -> pd.DataFrame:
    """Per-occupation accuracy for female and male images and their absolute difference.

    Every gender dataset of the workbook (GenderBias-VL, FairFace) codes gender as 0 = female,
    1 = male, the defaults here; other codings can be passed as ``female=`` / ``male=``.

    Args:
        pred_correct: ``[n]`` bool, whether each image was classified correctly.
        occupation: ``[n]`` occupation of each image (names or ids).
        gender: ``[n]`` gender code of each image.
        female, male: the codes of ``gender``.

    Returns:
        DataFrame, one row per occupation (sorted), columns ``occupation, n_female, n_male,
        acc_female, acc_male, abs_diff`` (percent). An occupation missing one gender has NaN
        accuracy for it and NaN ``abs_diff``; :func:`bias_summary` leaves such rows out.

    Raises:
        ValueError: on mismatched lengths, or gender codes other than ``female``/``male``.
    """
    ok, occ, gen = (np.asarray(a).reshape(-1) for a in (pred_correct, occupation, gender))
    if not (len(ok) == len(occ) == len(gen)):
        raise ValueError("pred_correct, occupation and gender must have equal length, "
                         f"got {len(ok)}, {len(occ)}, {len(gen)}")
    other = ~((gen == female) | (gen == male))
    if other.any():
        bad = sorted(set(gen[other].tolist()))
        raise ValueError(f"gender holds codes other than female={female!r} / male={male!r}: {bad}")
    df = pd.DataFrame({"occupation": occ, "female": gen == female, "ok": ok.astype(np.float64)})
    rows = []
    for name, part in df.groupby("occupation", sort=True):
        f, m = part[part["female"]], part[~part["female"]]
        acc_f = 100.0 * f["ok"].mean() if len(f) else np.nan
        acc_m = 100.0 * m["ok"].mean() if len(m) else np.nan
        rows.append({"occupation": name, "n_female": len(f), "n_male": len(m), "acc_female": acc_f,
                     "acc_male": acc_m, "abs_diff": abs(acc_f - acc_m)})
    return pd.DataFrame(rows, columns=["occupation", "n_female", "n_male", "acc_female", "acc_male", "abs_diff"])


def bias_summary(df: pd.DataFrame, top_k: int = 10, baseline_df: pd.DataFrame | None = None) -> dict[str, Any]:
    """Overall and top-k gender bias from an :func:`occupation_bias` table (percent; lower is better).

    Args:
        df: the method's per-occupation table.
        top_k: size of the "Top-k Bias" subset.
        baseline_df: the baseline's (usually zero-shot) table. When given, the top-k occupations
            are those with the largest *baseline* gap, as in LTC's "Top-10 Bias", so every method
            is averaged over the same occupations. Otherwise they are this table's largest gaps.

    Returns:
        ``{"overall": mean abs_diff, "top_k": mean abs_diff over the top-k occupations,
        "top_occupations": [names], "n_occupations": rows used, "k": top_k}``. Rows whose
        ``abs_diff`` is NaN (one gender missing) are left out.

    Raises:
        ValueError: if a top-k occupation of the baseline is missing from ``df``.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    d = df.dropna(subset=["abs_diff"])
    ref = d if baseline_df is None else baseline_df.dropna(subset=["abs_diff"])
    # stable sort: ties keep the table order (occupations sorted by name)
    top = list(ref.sort_values("abs_diff", ascending=False, kind="mergesort")["occupation"].iloc[:top_k])
    by_occ = d.set_index("occupation")["abs_diff"]
    missing = [o for o in top if o not in by_occ.index]
    if missing:
        raise ValueError(f"top-{top_k} baseline occupations {missing} have no (two-gender) row in df; "
                         "score both methods on the same images")
    return {"overall": float(d["abs_diff"].mean()), "top_k": float(by_occ.loc[top].mean()),
            "top_occupations": top, "n_occupations": int(len(d)), "k": int(top_k)}


def max_skew_at_k(
    scores,
    attribute,
    k: int,
    prior: str | Mapping[Any, float] = "uniform",
    values: Sequence[Any] | None = None,
) -> tuple[float, dict[Any, float]]:
    """MaxSkew@k of a ranking: how over-represented the most favoured attribute value is in the top k.

    The items are ranked by ``scores`` (descending; ties broken by item order). For each value
    ``g`` of the attribute, ``skew_g = log(share_g / prior_g)`` where ``share_g`` is the fraction
    of the top ``k`` with value ``g``; a zero share is replaced by ``1/k`` (as in LTC's code) so
    the log stays finite. MaxSkew@k is the maximum over ``g``.

    Args:
        scores: ``[n]`` ranking scores (e.g. a concept's or the true occupation's logit).
        attribute: ``[n]`` attribute value of each item (e.g. gender).
        k: size of the top of the ranking (``1 <= k <= n``).
        prior: ``"uniform"`` (``1/len(values)``, FairFace), ``"empirical"`` (the value's share
            among all ``n`` items, GenderBias retrieval) or a mapping value -> prior.
        values: the attribute values to consider (default: those present in ``attribute``;
            with ``"empirical"`` only values present can be used).

    Returns:
        ``(max_skew, {value: skew})``.

    Raises:
        ValueError: on bad ``k``, mismatched lengths, an unknown prior or a zero prior.

    Example::

        >>> scores = np.array([5.0, 4.0, 3.0, 2.0])
        >>> gender = np.array([0, 0, 0, 1])
        >>> m, per = max_skew_at_k(scores, gender, k=2)     # top 2 are both value 0
        >>> round(m, 4), round(per[1], 4)                   # log(1/0.5), log((1/2)/0.5)
        (0.6931, 0.0)
    """
    s, a = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(attribute).reshape(-1)
    if len(s) != len(a):
        raise ValueError(f"scores and attribute must have equal length, got {len(s)} and {len(a)}")
    if not 1 <= k <= len(s):
        raise ValueError(f"k must be in 1..n={len(s)}, got {k}")
    vals = list(np.unique(a)) if values is None else list(values)
    if isinstance(prior, str):
        if prior == "uniform":
            pri = {g: 1.0 / len(vals) for g in vals}
        elif prior == "empirical":
            pri = {g: float(np.mean(a == g)) for g in vals}
        else:
            raise ValueError(f"prior must be 'uniform', 'empirical' or a mapping value -> prior, got {prior!r}")
    else:
        pri = {g: float(prior[g]) for g in vals}
    zero = [g for g in vals if pri[g] <= 0]
    if zero:
        raise ValueError(f"attribute values {zero} have prior 0 (absent from the items?); drop them from values")
    top = a[np.argsort(-s, kind="stable")[:k]]
    per = {}
    for g in vals:
        share = float(np.sum(top == g)) / k
        per[g.item() if hasattr(g, "item") else g] = float(np.log((share if share > 0 else 1.0 / k) / pri[g]))
    return max(per.values()), per


def retrieval_skew(
    scores,
    attribute,
    groups_of_items,
    k: int = 10,
    prior: str = "empirical",
) -> tuple[float, pd.DataFrame]:
    """Retrieval MaxSkew@k averaged over item groups (GenderBias "Retrieval Skew@10").

    For each item group (e.g. the images sharing one classifier pair / occupation) with at least
    ``k`` items: rank its items by ``scores``, compute :func:`max_skew_at_k` with the prior taken
    within the group (``"empirical"``, LTC's convention), and average over those groups.

    Args:
        scores: ``[n]`` ranking score (the true occupation's logit).
        attribute: ``[n]`` attribute value (gender).
        groups_of_items: ``[n]`` item-group key of each item.
        k: top size; groups with fewer than ``k`` items are skipped.
        prior: ``"empirical"`` (within each group) or ``"uniform"`` (over the values present in
            the whole ``attribute``).

    Returns:
        ``(mean max-skew, table)`` where the table has one row per item group used (columns
        ``group, n, max_skew``, sorted by group key).

    Raises:
        ValueError: if no group has ``k`` items.
    """
    s, a, g = (np.asarray(v).reshape(-1) for v in (scores, attribute, groups_of_items))
    if not (len(s) == len(a) == len(g)):
        raise ValueError("scores, attribute and groups_of_items must have equal length, "
                         f"got {len(s)}, {len(a)}, {len(g)}")
    all_vals = list(np.unique(a))
    rows = []
    for key in np.unique(g):
        m = g == key
        if m.sum() < k:
            continue
        vals = None if prior == "empirical" else all_vals
        mx, _ = max_skew_at_k(s[m], a[m], k, prior=prior, values=vals)
        rows.append({"group": key, "n": int(m.sum()), "max_skew": mx})
    if not rows:
        raise ValueError(f"no item group has at least k={k} items; lower k")
    table = pd.DataFrame(rows, columns=["group", "n", "max_skew"])
    return float(table["max_skew"].mean()), table


# ----------------------------------------------------------------------------- tables


def results_table(rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per method with the headline metrics first, in a fixed column order.

    Args:
        rows: ``{method: metrics dict}``, e.g. :func:`summary` outputs, optionally with
            ``<stat>_ci_low`` / ``<stat>_ci_high`` (from :func:`bootstrap_ci`) and ``<stat>_sd``
            entries (e.g. a random-head control).

    Returns:
        DataFrame indexed by ``method`` (in the given order). Columns: for each of
        :data:`METRIC_LABELS` present in any row, its title (e.g. ``"WG"``), then
        ``"<title> CI low"``, ``"<title> CI high"`` and ``"<title> sd"`` when present; then every
        other key in first-seen order under its own name. Missing values are NaN. All in percent.
    """
    if not rows:
        raise ValueError("rows is empty: give {method: metrics dict}")
    keys: list[str] = []
    for r in rows.values():
        keys += [k for k in r if k not in keys]
    order: list[str] = []
    rename: dict[str, str] = {}
    for stat, title in METRIC_LABELS.items():
        for suffix, label in (("", ""), ("_ci_low", " CI low"), ("_ci_high", " CI high"), ("_sd", " sd")):
            if stat + suffix in keys:
                order.append(stat + suffix)
                rename[stat + suffix] = title + label
    order += [k for k in keys if k not in order]
    table = pd.DataFrame([{k: r.get(k, np.nan) for k in order} for r in rows.values()],
                         index=pd.Index(list(rows), name="method"), columns=order)
    return table.rename(columns=rename)
