"""Evaluate corrections and baselines on one split: the results table of the workbook.

An :class:`EvalSplit` bundles what every method is scored on: the split's logit lens, its
terms (memory-mapped), labels and groups. Each method yields logits ``[n, n_class]``; the
metrics (worst-group accuracy, sample-weighted and group-balanced average, gap, bootstrap
confidence intervals) come from :mod:`ltcutils.metrics`.

Methods (rows of :func:`methods_table`):

===============  ==============================================================================
zero-shot        the unedited embedding, the prompt-bank classifier
Ortho-Cali       the unedited embedding, the debiased classifier of Chuang et al. 2023
RoboShot         reject spurious / accept class text directions on the whole embedding
TextSpan         mean-ablate heads named by their TextSpan descriptions (given)
ablate           mean-ablate the located spurious heads (Z_SY) only
inject           knowledge injection into the located salient heads (Z_Y) only
LTC              ablate + inject
LTC (unit-norm)  ablate + the reference's injection (each head renormalised to unit length),
                 shown when ``renormalize=False`` is the main setting
LTC-full         LTC with heads located from all correct vs wrong images (no groups)
LTC (threshold)  LTC with the heads of the paper's 1/K selection rule
random           ablate / inject as many random heads (from the same layers), mean +- sd
===============  ==============================================================================
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from . import baselines, metrics
from .correct import Correction, corrected_embedding, corrected_logits
from .heads import head_label
from .lens import LogitLens, predict_logits
from .locate import HeadSelection
from .store import ActivationStore, Terms

__all__ = ["EvalSplit", "methods_table", "random_control", "score", "text_directions", "concept_bases",
           "table_metrics", "edited_embedding"]


@dataclass
class EvalSplit:
    """One evaluation split: logit lens, terms and labels of the same images."""

    lens: LogitLens
    terms: Terms
    y: np.ndarray
    group: np.ndarray
    group_names: list[str]
    candidates: np.ndarray | None = None
    name: str = ""
    spurious: np.ndarray | None = None
    rows: np.ndarray | None = None  # index of each image in its store (skipped images are left out)
    meta: dict = field(default_factory=dict, repr=False)  # the store's meta: what the dataset says of itself

    def conflicting_groups(self) -> list[int]:
        """The dataset's bias-conflicting group ids (:func:`ltcutils.locate.conflicting_groups`)."""
        from .locate import conflicting_groups

        return conflicting_groups(self)

    @classmethod
    def from_store(cls, store: ActivationStore, classifier: torch.Tensor) -> "EvalSplit":
        """Build from a store (invalid/unreadable images are dropped)."""
        from .lens import logit_lens

        terms = store.terms
        keep = np.flatnonzero(store.valid)
        labels = store.labels
        if len(keep) < len(store):
            terms = terms.take(keep)
        cand = labels.get("candidates")
        return cls(logit_lens(terms, classifier.cpu()), terms, labels["y"][keep], labels["group"][keep],
                   list(store.meta["group_names"]), None if cand is None else cand[keep],
                   f"{store.meta['dataset']}/{store.meta['split']}", labels["spurious"][keep], keep, store.meta)

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        """Predicted classes ``[n]`` of ``logits [n, n_class]`` among each image's candidates
        (:func:`ltcutils.lens.predict_logits`, the package's one prediction rule)."""
        return predict_logits(logits, self.candidates).numpy()


def score(split: EvalSplit, logits: torch.Tensor, ci: bool = False, n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of ``logits [n, n_class]`` on ``split`` (percent); optional bootstrap CIs."""
    pred = split.predict(logits)
    out = metrics.summary(pred, split.y, split.group, group_names=split.group_names)
    if ci:
        for stat in ("wg", "avg_sample", "avg_group"):
            lo, hi = metrics.bootstrap_ci(pred, split.y, split.group, stat=stat, n_boot=n_boot, seed=seed)
            out[f"{stat}_ci_low"], out[f"{stat}_ci_high"] = lo, hi
    return out


def random_control(
    split: EvalSplit,
    means: torch.Tensor,
    n_ablate: int,
    n_inject: int = 0,
    basis: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    exclude: Sequence[tuple[int, int]] = (),
    n_draws: int = 50,
    seed: int = 0,
    reference: str = "",
    strength: float = 1.0,
    renormalize: bool = True,
) -> pd.DataFrame:
    """Ablate ``n_ablate`` (and inject ``n_inject``) random heads, ``n_draws`` times.

    Heads are drawn uniformly from ``layers`` (default: the captured layers), excluding the
    ``exclude`` heads. Returns one row of metrics per draw.
    """
    layers = list(split.terms.layers if layers is None else layers)
    k = n_ablate + n_inject
    if k == 0:
        raise ValueError("a random control needs at least one head (n_ablate + n_inject >= 1)")
    draws = baselines.random_head_sets(n_draws, k, layers, split.terms.n_heads, exclude=exclude, seed=seed)
    rows = []
    for heads in draws:
        corr = Correction.mean_ablation(heads[:n_ablate], means, split.terms.layers, reference or "reference")
        if n_inject:
            corr = corr.with_injection(heads[n_ablate:], basis, strength, renormalize)
        r = score(split, corrected_logits(split.lens, corr, split.terms))
        r["heads"] = ",".join(head_label(l, h) for l, h in heads)
        rows.append(r)
    return pd.DataFrame(rows)


def methods_table(
    split: EvalSplit,
    selection: HeadSelection,
    means: torch.Tensor,
    reference: str,
    *,
    basis: torch.Tensor | None = None,
    strength: float = 1.0,
    renormalize: bool = True,
    selection_full: HeadSelection | None = None,
    selection_threshold: HeadSelection | None = None,
    ortho_classifier: torch.Tensor | None = None,
    roboshot_reject: torch.Tensor | None = None,
    roboshot_accept: torch.Tensor | None = None,
    textspan_heads: Sequence[tuple[int, int]] | None = None,
    random_layers: Sequence[int] | None = None,
    n_random: int = 50,
    ci: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Score every method on ``split``.

    Args:
        split: the evaluation split.
        selection: located heads (Z_SY, Z_Y) from the reference split.
        means: ``[layer, head, d_embed]`` head means over the reference split ``reference``.
        basis: orthonormal concept directions for injection, or per-image
            :class:`~ltcutils.correct.ConceptBases` (None: no injection rows).
        selection_full: heads located without groups (the LTC-full row).
        selection_threshold: heads selected by the paper's 1/K rule (the "LTC (threshold rule)" row).
        ortho_classifier: Ortho-Cali's debiased classifier ``[d_embed, n_class]``.
        roboshot_reject, roboshot_accept: RoboShot's direction sets ``[k, d_embed]``.
        textspan_heads: heads for the TextSpan row.
        random_layers: layers random heads are drawn from (default: every captured layer).

    Returns:
        ``(table, details)``: one row per method (metrics in percent, CIs when ``ci``), and a
        dict with the per-draw random control (``"random"``), the LTC correction (``"ltc"``) and
        every method's predictions and true-class logits (``"pred"``, ``"true_logit"``: name -> ``[n]``).
    """
    rows: dict[str, dict] = {}
    details: dict = {}

    details["pred"], details["true_logit"] = {}, {}

    def add(name: str, logits: torch.Tensor, **extra) -> None:
        rows[name] = dict(score(split, logits, ci=ci, n_boot=n_boot, seed=seed), **extra)
        details["pred"][name] = split.predict(logits)
        details["true_logit"][name] = logits.gather(1, torch.as_tensor(split.y)[:, None]).squeeze(1).numpy()

    add("zero-shot", split.lens.logits())
    if ortho_classifier is not None:
        add("Ortho-Cali", split.lens.total @ ortho_classifier.float())
    if roboshot_reject is not None or roboshot_accept is not None:
        emb = baselines.roboshot(split.lens.total, roboshot_reject, roboshot_accept)
        add("RoboShot", emb @ split.lens.classifier)
    if textspan_heads:
        ts = Correction.mean_ablation(textspan_heads, means, split.terms.layers, reference)
        add("TextSpan", corrected_logits(split.lens, ts, split.terms), heads=",".join(head_label(l, h) for l, h in ts.ablate))
    ablate = Correction.mean_ablation(selection.spurious, means, split.terms.layers, reference)
    add("ablate", corrected_logits(split.lens, ablate, split.terms), heads=",".join(selection.labels("spurious")))
    ltc = ablate
    if basis is not None and selection.salient:
        inj = Correction().with_injection(selection.salient, basis, strength, renormalize)
        add("inject", corrected_logits(split.lens, inj, split.terms), heads=",".join(selection.labels("salient")))
        ltc = ablate.with_injection(selection.salient, basis, strength, renormalize)
    add("LTC", corrected_logits(split.lens, ltc, split.terms),
        heads=",".join(selection.labels("spurious") + [f"+{h}" for h in selection.labels("salient")]))
    details["ltc"] = ltc
    if ltc.inject and not renormalize:  # the reference's injection, for comparison
        paper = ablate.with_injection(selection.salient, basis, 1.0, renormalize=True)
        add("LTC (unit-norm injection)", corrected_logits(split.lens, paper, split.terms))
    for name, other in (("LTC-full", selection_full), ("LTC (threshold rule)", selection_threshold)):
        if other is None:
            continue
        corr = Correction.mean_ablation(other.spurious, means, split.terms.layers, reference)
        if basis is not None and other.salient:
            corr = corr.with_injection(other.salient, basis, strength, renormalize)
        add(name, corrected_logits(split.lens, corr, split.terms),
            heads=",".join(other.labels("spurious") + [f"+{h}" for h in other.labels("salient")]))
    n_inj = len(selection.salient) if (basis is not None) else 0
    if n_random and (selection.spurious or n_inj):
        rnd = random_control(split, means, len(selection.spurious), n_inj, basis, random_layers,
                             exclude=selection.spurious + selection.salient, n_draws=n_random, seed=seed,
                             reference=reference, strength=strength, renormalize=renormalize)
        details["random"] = rnd
        r = {}
        for key in ("wg", "avg_sample", "avg_group", "gap"):
            mean, sd = baselines.mean_and_sd(rnd[key].to_numpy())
            r[key], r[f"{key}_sd"] = mean, sd
        r["draws"] = n_random
        rows["random"] = r
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    lead = [c for c in ("wg", "avg_sample", "avg_group", "gap") if c in table.columns]
    table = table[lead + [c for c in table.columns if c not in lead]]
    return table, details


def edited_embedding(split: EvalSplit, correction: Correction) -> torch.Tensor:
    """The corrected summed embedding of every image (for margin plots, RoboShot on top, ...)."""
    return corrected_embedding(split.lens, correction, split.terms)


def text_directions(model, bank, classifier: torch.Tensor, lam: float = 1000.0) -> dict:
    """Deprecated alias of :func:`ltcutils.text.text_directions` (text preparation lives in ``text``)."""
    from .text import text_directions as _text_directions

    warnings.warn("ltc.evaluate.text_directions moved to ltc.text.text_directions", DeprecationWarning, stacklevel=2)
    return _text_directions(model, bank, classifier, lam=lam)


def table_metrics(table: pd.DataFrame) -> dict:
    """The numeric cells of a methods table as ``{method_key: {metric: value}}`` for a metrics file.

    Method names become keys such as ``zero_shot``, ``ltc_full``, ``ltc_unit_norm_injection``.
    """
    import re

    out = {}
    for name, row in table.to_dict(orient="index").items():
        key = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
        out[key] = {k: v for k, v in row.items() if not isinstance(v, str)}
    return out


def concept_bases(split: EvalSplit, class_names: Sequence[str], keyed: dict[str, torch.Tensor]):
    """Deprecated alias of :func:`ltcutils.correct.concept_bases` for an evaluation split.

    The image's class pair is its two candidates (``split.candidates``) or, without candidates,
    its two highest zero-shot classes.
    """
    from .correct import concept_bases as _concept_bases

    warnings.warn("ltc.evaluate.concept_bases moved to ltc.correct.concept_bases(keyed, class_names, candidates=..., "
                  "logits=...)", DeprecationWarning, stacklevel=2)
    logits = split.lens.logits() if split.candidates is None else None
    return _concept_bases(keyed, class_names, candidates=split.candidates, logits=logits)
