"""Gender-bias reports of the gender benchmarks, built on :mod:`ltcutils.metrics`.

* **GenderBias** (:func:`gender_bias_table`): per method, the per-occupation accuracy gap
  between women and men averaged over every occupation and over the ``top_k`` occupations with
  the largest *zero-shot* gap ("Overall" / "Top-10 Bias"), and the retrieval MaxSkew@k averaged
  the same two ways (:func:`retrieval_skew_summary`): within each occupation's images (one
  classifier pair each), rank by the true occupation's logit and ask how far the top ``k``
  depart from that occupation's own gender mix.
* **FairFace** (:func:`concept_max_skew`, :func:`skew_methods_table`): FairFace has no class;
  each concept prompt ("a photo of a criminal person", ...) ranks every face, and MaxSkew@k
  with a *uniform* gender prior (``k = 1000``, or the split size when smaller) says how far the
  top ``k`` depart from parity; the report is the mean over the concepts. The paper's FairFace
  correction is ablation only: heads located on GenderBias, mean-ablated here.

Skews are natural logs of ratios (no unit); accuracy gaps are percentage points.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import baselines, metrics

__all__ = ["retrieval_skew_summary", "gender_bias_table", "concept_max_skew", "concept_skew_frame",
           "skew_methods_table", "FAIRFACE_K"]

#: the reference's FairFace top size (capped at the split size)
FAIRFACE_K = 1000


def retrieval_skew_summary(true_logit, gender, occupation, top_occupations: Sequence = (), k: int = 10) -> dict:
    """Retrieval MaxSkew@k averaged over every occupation and over the given top occupations.

    Args:
        true_logit: ``[n]`` each image's logit for its true occupation (the ranking score).
        gender: ``[n]`` gender codes.
        occupation: ``[n]`` occupation of each image (its classifier pair: one partner each).
        top_occupations: the occupations of the "top" subset (usually the ``top_k`` largest
            zero-shot accuracy gaps, :func:`ltcutils.metrics.bias_summary`'s ``top_occupations``).
        k: top size; occupations with fewer than ``k`` images are left out of both means.

    Returns:
        ``{"max_skew": mean over occupations, "top_max_skew": mean over the top occupations that
        have ``k`` images (NaN when none), "n_occupations", "n_top"}``.

    Raises:
        ValueError: no occupation has ``k`` images (:func:`ltcutils.metrics.retrieval_skew`).
    """
    mean, table = metrics.retrieval_skew(true_logit, gender, occupation, k=k)
    top = table[table["group"].isin(list(top_occupations))]
    return {"max_skew": mean, "top_max_skew": float(top["max_skew"].mean()) if len(top) else float("nan"),
            "n_occupations": int(len(table)), "n_top": int(len(top))}


def gender_bias_table(pred: Mapping[str, np.ndarray], true_logit: Mapping[str, np.ndarray], y, gender, *,
                      top_k: int = 10, k: int = 10, baseline: str = "zero-shot") -> pd.DataFrame:
    """GenderBias's bias columns for every method of a results table.

    Args:
        pred: ``{method: [n] predicted class}`` (``methods_table``'s ``details["pred"]``).
        true_logit: ``{method: [n] true-class logit}`` (``details["true_logit"]``).
        y: ``[n]`` true occupation; gender: ``[n]`` 0 female, 1 male.
        top_k: size of the top subset: the occupations with the largest gap under ``baseline``.
        k: retrieval top size.
        baseline: the method whose gaps choose the top subset (the same occupations for every row).

    Returns:
        one row per method with ``overall_bias``, ``top{top_k}_bias`` (percentage points; lower
        is better), ``max_skew_at_{k}``, ``top{top_k}_max_skew_at_{k}`` (retrieval skew over
        all / the top occupations; lower is better). NaN skews where no occupation has ``k``
        images.

    Raises:
        KeyError: ``baseline`` is not among the methods.
    """
    y, gender = np.asarray(y), np.asarray(gender)
    if baseline not in pred:
        raise KeyError(f"the baseline method {baseline!r} is not among {list(pred)}")
    base = metrics.occupation_bias(pred[baseline] == y, y, gender)
    enough = bool((np.unique(y, return_counts=True)[1] >= k).any())  # the retrieval skew needs k images somewhere
    rows = {}
    for name, p in pred.items():
        b = metrics.bias_summary(metrics.occupation_bias(p == y, y, gender), top_k=top_k, baseline_df=base)
        skew = (retrieval_skew_summary(true_logit[name], gender, y, b["top_occupations"], k=k) if enough
                else {"max_skew": float("nan"), "top_max_skew": float("nan")})  # no occupation has k images
        rows[name] = {"overall_bias": b["overall"], f"top{top_k}_bias": b["top_k"],
                      f"max_skew_at_{k}": skew["max_skew"], f"top{top_k}_max_skew_at_{k}": skew["top_max_skew"]}
    return pd.DataFrame.from_dict(rows, orient="index")


def concept_max_skew(logits, gender, k: int = FAIRFACE_K, concept_names: Sequence[str] | None = None,
                     values: Sequence | None = None) -> tuple[float, dict[str, float]]:
    """FairFace MaxSkew@k: each concept's ranking of all images against a uniform gender prior.

    Args:
        logits: ``[n, n_concept]`` each image's score for each concept prompt.
        gender: ``[n]`` gender codes.
        k: top size, capped at ``n`` (the reference: 1000, or the split size when smaller).
        concept_names: a name per column (default ``"0"``, ``"1"``, ...).
        values: the gender values of the uniform prior (default: those present).

    Returns:
        ``(mean over concepts, {concept: MaxSkew@k})``.

    Example::

        >>> logits = np.array([[4.0, 0.0], [3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
        >>> mean, per = concept_max_skew(logits, np.array([0, 0, 1, 1]), k=2, concept_names=["good", "evil"])
        >>> round(per["good"], 4), round(per["evil"], 4), round(mean, 4)    # both top-2 one-sided: log(1 / 0.5)
        (0.6931, 0.6931, 0.6931)
    """
    s = torch.as_tensor(logits).detach().float().cpu().numpy() if torch.is_tensor(logits) else np.asarray(logits)
    if s.ndim != 2:
        raise ValueError(f"logits must be [n, n_concept], got shape {s.shape}")
    names = [str(i) for i in range(s.shape[1])] if concept_names is None else [str(c) for c in concept_names]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} concept names for {s.shape[1]} logit columns")
    kk = min(int(k), s.shape[0])
    per = {c: metrics.max_skew_at_k(s[:, j], gender, kk, prior="uniform", values=values)[0]
           for j, c in enumerate(names)}
    return float(np.mean(list(per.values()))), per


def concept_skew_frame(logits, gender, concept_names: Sequence[str], gender_names: Sequence[str] = ("female", "male"),
                       k: int = FAIRFACE_K) -> pd.DataFrame:
    """Per concept: who is in the top ``k`` of its ranking, and the MaxSkew@k (uniform prior) that makes.

    Args:
        logits: ``[n, n_concept]`` concept scores; gender: ``[n]`` codes ``0..len(gender_names)-1``.
        concept_names: a name per column; gender_names: a name per gender code.
        k: top size, capped at ``n``.

    Returns:
        one row per concept: ``share_<gender>`` (percent of the top ``k``), ``max_skew``, ``k``;
        ``max_skew`` is :func:`concept_max_skew`'s per-concept value.
    """
    s = torch.as_tensor(logits).detach().float().cpu().numpy() if torch.is_tensor(logits) else np.asarray(logits)
    g = np.asarray(gender)
    kk = min(int(k), len(g))
    _, per = concept_max_skew(s, g, kk, concept_names, values=list(range(len(gender_names))))
    rows = {}
    for j, c in enumerate(concept_names):
        top = g[np.argsort(-s[:, j], kind="stable")[:kk]]
        rows[str(c)] = {**{f"share_{name}": 100.0 * float(np.mean(top == v)) for v, name in enumerate(gender_names)},
                        "max_skew": per[str(c)], "k": kk}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "concept"
    return frame


def skew_methods_table(split, selection, means: torch.Tensor, reference: str, *, concept_names: Sequence[str],
                       k: int = FAIRFACE_K, ortho_classifier: torch.Tensor | None = None,
                       roboshot_reject: torch.Tensor | None = None, roboshot_accept: torch.Tensor | None = None,
                       n_random: int = 50, seed: int = 0,
                       pool_layers: int | None = baselines.RANDOM_POOL_LAYERS) -> tuple[pd.DataFrame, dict]:
    """FairFace's results table: MaxSkew@k of the concept rankings after every method.

    Rows: zero-shot; Ortho-Cali (the debiased concept classifier); RoboShot (reject / accept
    text directions on the whole embedding); ``ablate``, the paper's FairFace row (LTC there is
    ablation only: the ``selection``'s spurious heads, located on another dataset, mean-ablated
    with ``means`` of ``reference``); ``random``, as many random heads from the paper's pool
    (the last 4 layers, the located heads excluded), mean and sd over ``n_random`` draws.

    Args:
        split: the evaluation split (:class:`~ltcutils.evaluate.EvalSplit`) with ``spurious`` = gender.
        selection: the reused :class:`~ltcutils.heads.HeadSelection`.
        means: ``[layer, head, d_embed]`` head means over ``reference``.
        concept_names: ``[n_concept]`` the classifier's columns.
        k: MaxSkew's top size (capped at the split size).
        ortho_classifier, roboshot_reject, roboshot_accept: as for
            :func:`ltcutils.evaluate.methods_table` (None: row left out).

    Returns:
        ``(table, details)``: one row per method with ``max_skew`` (mean over concepts; lower
        is better), ``max_skew_<concept>``, ``k``, ``what``, ``heads`` (and ``max_skew_sd``,
        ``draws`` for ``random``); details hold ``"ltc"`` (the ablation) and ``"logits"``
        (method -> ``[n, n_concept]``).

    Raises:
        ValueError: the selection has no spurious head (there is nothing to ablate).
    """
    from .correct import Correction, corrected_logits
    from .heads import head_label

    if not selection.spurious:
        raise ValueError("the head selection has no spurious head to ablate; reuse a heads file located on a "
                         "gender benchmark (heads_from=<genderbias run>/heads.json)")
    gender = np.asarray(split.spurious)
    kk = min(int(k), len(gender))
    rows: dict[str, dict] = {}
    details: dict = {"logits": {}}

    def add(name: str, logits: torch.Tensor, what: str, **extra) -> None:
        mean, per = concept_max_skew(logits, gender, kk, concept_names)
        rows[name] = {"max_skew": mean, **{f"max_skew_{c}": v for c, v in per.items()}, "k": kk, "what": what, **extra}
        details["logits"][name] = logits

    add("zero-shot", split.lens.logits(), "unedited embedding, concept prompts")
    if ortho_classifier is not None:
        add("Ortho-Cali", split.lens.total @ ortho_classifier.float(), "debiased concept classifier (Chuang et al. 2023)")
    if roboshot_reject is not None or roboshot_accept is not None:
        emb = baselines.roboshot(split.lens.total, roboshot_reject, roboshot_accept)
        add("RoboShot", emb @ split.lens.classifier, "reject / accept text directions on the whole embedding")
    ablate = Correction.mean_ablation(selection.spurious, means, split.terms.layers, reference)
    details["ltc"] = ablate
    add("ablate", corrected_logits(split.lens, ablate, split.terms),
        f"the paper's FairFace row: mean-ablate the reused spurious heads (means: {reference})",
        heads=",".join(selection.labels("spurious")))
    if n_random:
        info: dict = {}
        draws = baselines.random_head_sets(n_random, len(selection.spurious), list(split.terms.layers),
                                           split.terms.n_heads, exclude=selection.spurious + selection.salient,
                                           seed=seed, pool_layers=pool_layers, info=info)
        skews = [concept_max_skew(corrected_logits(split.lens, Correction.mean_ablation(
            heads, means, split.terms.layers, reference), split.terms), gender, kk, concept_names)[0] for heads in draws]
        mean, sd = baselines.mean_and_sd(skews)
        rows["random"] = {"max_skew": mean, "max_skew_sd": sd, "draws": n_random, "k": kk,
                          "what": f"as ablate with as many random heads, pool layers {info['pool_layers']}",
                          "heads": ";".join(",".join(head_label(l, h) for l, h in d) for d in draws[:3]) + ";..."}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table, details
