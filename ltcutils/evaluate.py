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
LTC (threshold)  LTC with the heads of the paper's 1/K selection rule (the workbook's injection)
LTC (paper rec.) exactly the reference: 1/K heads, unit-norm injection, means from the locate split
random           ablate / inject as many random heads as LTC (the last 4 layers, located heads
                 excluded), mean +- sd, with how many distinct sets were possible
random (paper)   the same control for the paper recipe
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
from .lens import LogitLens, mask_candidates, predict_logits
from .locate import HeadSelection
from .store import ActivationStore, Terms

__all__ = ["EvalSplit", "methods_table", "random_control", "score", "text_directions", "concept_bases",
           "table_metrics", "edited_embedding", "image_batch", "model_logits"]


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

    @property
    def has_class_label(self) -> bool:
        """False for a dataset with no class to predict (FairFace: ``y`` are placeholders; its
        faces are ranked by concept prompts, :mod:`ltcutils.fairness`)."""
        return (self.meta.get("dataset_info") or {}).get("has_class_label") is not False

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

    def logits(self, correction: Correction | None = None) -> torch.Tensor:
        """Logits ``[n, n_class]`` after ``correction`` (None: zero-shot), a direct-path edit of the cache."""
        return self.lens.logits() if correction is None else corrected_logits(self.lens, correction, self.terms)

    def score(self, correction: Correction | None = None, ci: bool = False, n_boot: int = 1000, seed: int = 0) -> dict:
        """Metrics (percent) of the split after ``correction`` (None: zero-shot); see :func:`score`."""
        return score(self, self.logits(correction), ci=ci, n_boot=n_boot, seed=seed)

    def ablation_score(self, heads: Sequence[tuple[int, int]], means: torch.Tensor, reference: str) -> dict:
        """``{"wg", "avg"}`` after mean-ablating ``heads`` with ``means`` of split ``reference``."""
        s = self.score(Correction.mean_ablation(heads, means, self.terms.layers, reference))
        return {"wg": s["wg"], "avg": s["avg_sample"]}

    def rival(self, logits: torch.Tensor | None = None) -> np.ndarray:
        """Per image, the best-scoring candidate class other than the true one ``[n]`` (zero-shot by default)."""
        y = torch.as_tensor(self.y)
        masked = mask_candidates((self.lens.logits() if logits is None else logits).float(), self.candidates)
        return masked.scatter(1, y[:, None], -torch.inf).argmax(1).numpy()

    def signal_check(self, margin_points: float = 10.0) -> dict:
        """Does the model do the task at all? Prints a loud banner when it does not.

        A biased model may be near chance *on average* over balanced groups (right on the aligned
        groups, wrong on the conflicting ones), so the check reads the group-balanced accuracy
        of the **bias-aligned** groups (all groups when the dataset defines no conflicting ones).
        Chance is ``1 / (classes each image competes among)``; "no signal" means that accuracy
        is below chance + max(``margin_points``, 3 binomial standard errors): random weights, a
        wrong checkpoint or prompt bank, on which every later number is noise.

        Returns:
            ``{"aligned_acc", "zero_shot_acc", "chance", "no_signal", "message"}`` (percent).
        """
        from .locate import LocateError, conflicting_groups

        if not self.has_class_label:
            msg = (f"{self.name} has no class label, so there is no accuracy to check against chance; its concept "
                   "rankings are read by MaxSkew@k (notebooks 00 and 05)")
            print(msg)
            return {"aligned_acc": float("nan"), "zero_shot_acc": float("nan"), "chance": float("nan"),
                    "no_signal": False, "message": msg}
        k = self.lens.n_class if self.candidates is None else np.asarray(self.candidates).shape[1]
        chance = 100.0 / k
        right = self.predict(self.lens.logits()) == self.y
        try:
            conflicting = conflicting_groups(self) if self.meta else []
        except LocateError:
            conflicting = []
        aligned = [g for g in np.unique(self.group) if g not in set(conflicting)] or list(np.unique(self.group))
        acc = 100.0 * float(np.mean([right[self.group == g].mean() for g in aligned]))
        n = int(np.isin(self.group, aligned).sum())
        se = 100.0 * np.sqrt(chance / 100 * (1 - chance / 100) / max(n, 1))
        no_signal = acc < chance + max(margin_points, 3 * se)
        what = "bias-aligned groups" if conflicting else "groups"
        if no_signal:
            msg = (f"NO SIGNAL: zero-shot accuracy on the {what} of {self.name} is {acc:.1f}%, chance is {chance:.1f}%. "
                   "The model does not do the task (random weights? a wrong checkpoint or prompt bank?), so every "
                   "number below is noise: fix the model before reading them.")
            print("!" * 100 + "\n" + msg + "\n" + "!" * 100)
        else:
            msg = (f"signal: zero-shot accuracy on the {what} of {self.name} is {acc:.1f}% (chance {chance:.1f}%); "
                   f"{100.0 * float(right.mean()):.1f}% over all images")
            print(msg)
        return {"aligned_acc": acc, "zero_shot_acc": 100.0 * float(right.mean()), "chance": chance,
                "no_signal": bool(no_signal), "message": msg}

    def true_margin(self, logits: torch.Tensor) -> np.ndarray:
        """Per image, the logit of the true class minus the best other candidate class ``[n]``."""
        y = torch.as_tensor(self.y)
        masked = mask_candidates(logits.float(), self.candidates)
        true = masked.gather(1, y[:, None]).squeeze(1)
        return (true - masked.scatter(1, y[:, None], -torch.inf).max(1).values).numpy()


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
    pool_layers: int | None = baselines.RANDOM_POOL_LAYERS,
) -> pd.DataFrame:
    """Ablate ``n_ablate`` (and inject ``n_inject``) random heads, ``n_draws`` times.

    Heads are drawn uniformly from the paper's pool: the last ``pool_layers`` (default 4) of
    ``layers`` (default: the captured layers), excluding the ``exclude`` heads (pass the
    located ones). When that leaves too few heads, the documented fallback of
    :func:`ltcutils.baselines.random_head_pool` applies (wider pool, then located heads let
    back in) with a warning, never an error.

    Returns:
        one row of metrics per draw; ``frame.attrs["pool"]`` describes the pool (``n_possible``
        distinct ablate/inject assignments, ``pool_layers``, ``pool_size``, ``fallback``,
        ``message``).
    """
    layers = list(split.terms.layers if layers is None else layers)
    k = n_ablate + n_inject
    if k == 0:
        raise ValueError("a random control needs at least one head (n_ablate + n_inject >= 1)")
    info: dict = {}
    draws = baselines.random_head_sets(n_draws, k, layers, split.terms.n_heads, exclude=exclude, seed=seed,
                                       pool_layers=pool_layers, n_ablate=n_ablate, info=info)
    rows = []
    for heads in draws:
        corr = Correction.mean_ablation(heads[:n_ablate], means, split.terms.layers, reference or "reference")
        if n_inject:  # per-class bases: each image keeps its class's number of injected heads
            b = basis.reassigned(heads[n_ablate:]) if hasattr(basis, "reassigned") else basis
            corr = corr.with_injection(heads[n_ablate:], b, strength, renormalize)
        r = score(split, corrected_logits(split.lens, corr, split.terms))
        r["heads"] = ",".join(head_label(l, h) for l, h in heads)
        rows.append(r)
    frame = pd.DataFrame(rows)
    frame.attrs["pool"] = info
    return frame


def _summarise_random(rnd: pd.DataFrame, n_draws: int) -> dict:
    r: dict = {}
    for key in ("wg", "avg_sample", "avg_group", "gap"):
        mean, sd = baselines.mean_and_sd(rnd[key].to_numpy())
        r[key], r[f"{key}_sd"] = mean, sd
    pool = rnd.attrs.get("pool", {})
    r["draws"] = n_draws
    r["n_possible_sets"] = float(pool.get("n_possible", float("nan")))
    r["distinct_draws"] = int(rnd["heads"].map(lambda h: frozenset(h.split(","))).nunique())
    return r


def _selection_words(sel: HeadSelection) -> str:
    if sel.rule == "threshold":
        return "1/K heads"
    return f"top-{sel.k} heads by {sel.score}" + (f" (k <= {sel.k_cap} chosen on the locate split)"
                                                 if getattr(sel, "k_cap", None) else "")


def _injection_words(strength: float, renormalize: bool) -> str:
    if renormalize:
        return "unit-norm injection" + ("" if strength == 1.0 else f" (strength {strength:g})")
    return f"injection with scale kept (strength {strength:g})"


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
    roboshot_reject=None,
    roboshot_accept=None,
    textspan_heads: Sequence[tuple[int, int]] | None = None,
    random_layers: Sequence[int] | None = None,
    n_random: int = 50,
    ci: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    pool_layers: int | None = baselines.RANDOM_POOL_LAYERS,
) -> tuple[pd.DataFrame, dict]:
    """Score every method on ``split``.

    Args:
        split: the evaluation split.
        selection: located heads (Z_SY, Z_Y) from the reference split (the workbook's variant).
        means: ``[layer, head, d_embed]`` head means over the reference split ``reference``.
        basis: orthonormal concept directions for injection, or per-image
            :class:`~ltcutils.correct.ConceptBases` (None: no injection rows).
        strength, renormalize: the workbook's injection for the LTC rows.
        selection_full: heads located without groups (the LTC-full row).
        selection_threshold: heads selected by the paper's 1/K rule: the "LTC (threshold
            rule)" row (the workbook's injection) and the "LTC (paper recipe)" row (exactly the
            reference: 1/K heads, unit-norm injection, means from ``reference``) with its own
            random control, "random (paper recipe)".
        ortho_classifier: Ortho-Cali's debiased classifier ``[d_embed, n_class]``.
        roboshot_reject, roboshot_accept: RoboShot's direction sets ``[k, d_embed]``, or per image
            (:func:`ltcutils.baselines.roboshot_directions`: GenderBias's occupation-pair directions).
        textspan_heads: heads for the TextSpan row.
        random_layers: layers random heads may come from (default: every captured layer);
            pool_layers: of those, the last ``pool_layers`` form the pool (default 4, the
            paper's; None = all). Located heads are excluded (see :func:`random_control`).

    Returns:
        ``(table, details)``: one row per method (metrics in percent, CIs when ``ci``, a
        ``what`` column saying what the row does or changes, ``heads``), and a dict with the
        per-draw random controls (``"random"``, ``"random_paper"``; their pools in
        ``frame.attrs["pool"]``), the LTC correction (``"ltc"``), the paper recipe's
        (``"ltc_paper"``) and every method's predictions and true-class logits (``"pred"``,
        ``"true_logit"``: name -> ``[n]``).
    """
    rows: dict[str, dict] = {}
    details: dict = {"pred": {}, "true_logit": {}}

    def add(name: str, logits: torch.Tensor, what: str, **extra) -> None:
        rows[name] = dict(score(split, logits, ci=ci, n_boot=n_boot, seed=seed), what=what, **extra)
        details["pred"][name] = split.predict(logits)
        details["true_logit"][name] = logits.gather(1, torch.as_tensor(split.y)[:, None]).squeeze(1).numpy()

    def heads_of(sel: HeadSelection, inject: bool) -> str:
        return ",".join(sel.labels("spurious") + ([f"+{h}" for h in sel.labels("salient")] if inject else []))

    def correction(sel: HeadSelection, inj_strength: float, renorm: bool) -> Correction:
        corr = Correction.mean_ablation(sel.spurious, means, split.terms.layers, reference)
        if basis is not None and sel.salient:
            corr = corr.with_injection(sel.salient, basis, inj_strength, renorm)
        return corr

    def control(key: str, row: str, sel: HeadSelection, inj_strength: float, renorm: bool, what: str) -> None:
        n_inj = len(sel.salient) if basis is not None else 0
        if not n_random or not (sel.spurious or n_inj):
            return
        rnd = random_control(split, means, len(sel.spurious), n_inj, basis, random_layers,
                             exclude=sel.spurious + sel.salient, n_draws=n_random, seed=seed, reference=reference,
                             strength=inj_strength, renormalize=renorm, pool_layers=pool_layers)
        details[key] = rnd
        pool = rnd.attrs["pool"]
        rows[row] = dict(_summarise_random(rnd, n_random), what=f"{what}; pool layers {pool['pool_layers']}"
                         + (f" ({pool['fallback']}: {pool['message']})" if pool["fallback"] else ""))

    inj = _injection_words(strength, renormalize)
    sel_words = _selection_words(selection)
    add("zero-shot", split.lens.logits(), "unedited embedding, prompt-bank classifier")
    if ortho_classifier is not None:
        add("Ortho-Cali", split.lens.total @ ortho_classifier.float(), "debiased text classifier (Chuang et al. 2023)")
    if roboshot_reject is not None or roboshot_accept is not None:
        emb = baselines.roboshot(split.lens.total, roboshot_reject, roboshot_accept)
        per_pair = any(not torch.is_tensor(d) and d is not None for d in (roboshot_reject, roboshot_accept))
        add("RoboShot", emb @ split.lens.classifier, "reject / accept text directions on the whole embedding"
            + (" (each image's class-pair directions)" if per_pair else ""))
    if textspan_heads:
        ts = Correction.mean_ablation(textspan_heads, means, split.terms.layers, reference)
        add("TextSpan", corrected_logits(split.lens, ts, split.terms), "mean-ablate the heads TextSpan names",
            heads=",".join(head_label(l, h) for l, h in ts.ablate))
    ablate = Correction.mean_ablation(selection.spurious, means, split.terms.layers, reference)
    add("ablate", corrected_logits(split.lens, ablate, split.terms),
        f"{sel_words}: mean-ablate the spurious heads only (means: {reference})",
        heads=",".join(selection.labels("spurious")))
    ltc = ablate
    if basis is not None and selection.salient:
        only = Correction().with_injection(selection.salient, basis, strength, renormalize)
        add("inject", corrected_logits(split.lens, only, split.terms), f"{sel_words}: {inj} into the salient heads only",
            heads=",".join(selection.labels("salient")))
        ltc = correction(selection, strength, renormalize)
    add("LTC", corrected_logits(split.lens, ltc, split.terms),
        f"workbook: {sel_words}, {inj if ltc.inject else 'no injection'}, means: {reference}",
        heads=heads_of(selection, bool(ltc.inject)))
    details["ltc"] = ltc
    if ltc.inject and not (renormalize and strength == 1.0):  # the reference's injection on the same heads
        unit = correction(selection, 1.0, True)
        add("LTC (unit-norm injection)", corrected_logits(split.lens, unit, split.terms),
            "as LTC but the reference's unit-norm injection", heads=heads_of(selection, True))
    if selection_full is not None:
        add("LTC-full", corrected_logits(split.lens, correction(selection_full, strength, renormalize), split.terms),
            f"as LTC, heads located on all images (no groups): {_selection_words(selection_full)}",
            heads=heads_of(selection_full, basis is not None))
    if selection_threshold is not None:
        add("LTC (threshold rule)",
            corrected_logits(split.lens, correction(selection_threshold, strength, renormalize), split.terms),
            f"as LTC but the paper's 1/K heads ({inj})", heads=heads_of(selection_threshold, basis is not None))
        paper = correction(selection_threshold, 1.0, True)
        details["ltc_paper"] = paper
        add("LTC (paper recipe)", corrected_logits(split.lens, paper, split.terms),
            f"the reference: 1/K heads, unit-norm injection, means: {reference}",
            heads=heads_of(selection_threshold, basis is not None))
    control("random", "random", selection, strength, renormalize,
            "as LTC with as many random heads, drawn outside the located ones")
    if selection_threshold is not None:
        control("random_paper", "random (paper recipe)", selection_threshold, 1.0, True,
                "as the paper recipe with as many random heads, drawn outside the located ones")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    lead = [c for c in ("wg", "avg_sample", "avg_group", "gap") if c in table.columns]
    table = table[lead + [c for c in table.columns if c not in lead]]
    return table, details


def image_batch(model, dataset, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Preprocessed images ``[len(rows), 3, H, W]`` of ``dataset`` items ``rows``, on the model's device.

    Args:
        model: a :class:`~ltcutils.models.LoadedModel` (its ``preprocess`` and ``hooked`` tower).
        dataset: a :class:`~ltcutils.datasets.base.GroupDataset` (e.g. ``ex.split("test")``).
        rows: item indices (an :class:`EvalSplit`'s ``rows`` are such indices).
    """
    dev = next(model.hooked.parameters()).device
    return torch.stack([model.preprocess(dataset.image(int(i))) for i in rows]).to(dev)


@torch.inference_mode()
def model_logits(model, dataset, rows: Sequence[int] | np.ndarray, classifier: torch.Tensor) -> torch.Tensor:
    """Zero-shot logits ``[len(rows), n_class]`` computed by the model itself (``encode_image``, no cache)."""
    emb = model.clip.encode_image(image_batch(model, dataset, rows)).float()
    return torch.nn.functional.normalize(emb, dim=-1).cpu() @ classifier.float().cpu()


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
