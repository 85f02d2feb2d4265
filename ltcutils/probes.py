"""Probes: small classifiers trained on the unit image embedding (ERM, JTT, JTT + LTC).

Unlike LTC, a probe uses class labels and training. The reference's probe notebook trains a
2-layer MLP on the unit-norm image embedding ``u`` (``d_embed``): ``Linear(d_embed -> hidden)``,
ReLU, ``Linear(hidden -> 1)`` with a logistic loss for two classes (``hidden -> n_class`` with
cross-entropy otherwise). AdamW (lr 1e-2, weight decay 1e-4 on the weight matrices only, none
on biases), batch 64, 100 epochs; the epoch kept is the one with the best *validation
worst-group accuracy*, measured with the true validation groups.

Rows of the probe table:

=====================  =========================================================================
ERM probe              trained on the train split as it is
JTT probe (reference)  what the reference calls "JTT": the train images whose *pseudo* group is
                       bias-conflicting (the spurious attribute predicted zero-shot with the
                       spurious prompts, :func:`ltcutils.locate.pseudo_groups`) appear
                       ``upweight`` (100) times per epoch. No first-stage model is involved.
JTT probe (two-stage)  JTT of Liu et al. 2021: an ERM probe trained for a few epochs (stage 1)
                       marks its *training errors*; stage 2 trains a fresh probe with each error
                       appearing ``lambda_up`` times per epoch.
JTT + LTC              the JTT (reference) probe, unchanged, applied to the LTC-edited test
                       embeddings (edited sum renormalised to unit length, the probe's input).
=====================  =========================================================================

"Upsampled ``k`` times" means the image appears ``k`` times in every epoch's shuffled index
list (the original once plus ``k - 1`` copies), so an epoch has ``n + (k - 1) * n_chosen`` rows.

Training is deterministic for a seed: the weights are initialised under ``torch.manual_seed``
(in a forked RNG, so the caller's global RNG is untouched), batches come from a seeded
``torch.Generator``, and torch runs on one thread on the CPU while training.

Embeddings come from stores (:func:`split_embeddings`): the unit embedding is the sum of a
store's terms (``lens.total``), the same path for train, validation and test and for the
LTC-edited test embeddings. A train split needs no per-head terms, so when no full store of it
exists it is captured with no per-head layers and summed MLPs (``layers=[]``, ``mlps="sum"``),
a few values per image instead of one vector per head.

Example::

    >>> fit = ltc.probes.train_probe(x, y, x_val, y_val, group_val, n_class=2)   # doctest: +SKIP
    >>> fit.probe.logits(x_test).argmax(1)                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import metrics
from .locate import conflicting_mask, pseudo_groups

__all__ = ["hidden_size", "ProbeMLP", "ProbeFit", "train_probe", "upsample_index", "pseudo_conflicting",
           "train_jtt_reference", "train_jtt_two_stage", "unit", "split_embeddings", "fingerprint",
           "plot_training", "HIDDEN_SMALL", "HIDDEN_LARGE"]

#: hidden width for ViT-B-16-sized and smaller embeddings (d_embed <= 512), and for L/H (> 512)
HIDDEN_SMALL, HIDDEN_LARGE = 128, 256


def hidden_size(d_embed: int) -> int:
    """The reference's hidden width for an embedding width: 128 up to 512 (B-16), 256 above (L-14, H-14)."""
    if d_embed < 1:
        raise ValueError(f"d_embed must be positive, got {d_embed}")
    return HIDDEN_SMALL if d_embed <= 512 else HIDDEN_LARGE


class ProbeMLP(torch.nn.Module):
    """``Linear(d_embed -> hidden)``, ReLU, ``Linear(hidden -> 1)`` (two classes) or ``-> n_class``.

    Args:
        d_embed: input width (the joint embedding's).
        n_class: number of classes (>= 2).
        hidden: hidden width (default :func:`hidden_size`).
    """

    def __init__(self, d_embed: int, n_class: int, hidden: int | None = None):
        super().__init__()
        if n_class < 2:
            raise ValueError(f"a probe needs at least two classes, got n_class={n_class}")
        self.n_class = int(n_class)
        self.hidden = int(hidden or hidden_size(d_embed))
        self.fc1 = torch.nn.Linear(d_embed, self.hidden)
        self.fc2 = torch.nn.Linear(self.hidden, 1 if n_class == 2 else n_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[n, 1]`` (two classes: the logit of class 1) or ``[n, n_class]``."""
        return self.fc2(F.relu(self.fc1(x)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean logistic loss (two classes) or cross-entropy of ``x [n, d_embed]`` against ``y [n]``."""
        out = self(x)
        if self.n_class == 2:
            return F.binary_cross_entropy_with_logits(out.squeeze(1), y.float())
        return F.cross_entropy(out, y)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``[n, n_class]`` (two classes: ``[0, z]``, so argmax is ``z > 0``)."""
        out = self(x.float())
        if self.n_class == 2:
            return torch.cat([torch.zeros_like(out), out], 1)
        return out


def fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes and bytes), for identity checks."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class ProbeFit:
    """A trained probe and how it was chosen.

    Attributes:
        probe: the probe at the selected epoch (eval mode).
        history: one row per epoch: ``epoch`` (1-based), ``loss`` (mean train loss), ``val_wg``,
            ``val_avg_group`` (percent, true validation groups).
        best_epoch: the epoch kept (the first with the highest ``val_wg``, or the last for
            ``select="last"``); best_val_wg: its validation worst-group accuracy.
        rows_per_epoch: training rows per epoch after upsampling; n_upsampled: images upsampled.
        fingerprint: :func:`fingerprint` of the kept probe.
        config: the training settings.
    """

    probe: ProbeMLP
    history: pd.DataFrame
    best_epoch: int
    best_val_wg: float
    rows_per_epoch: int
    n_upsampled: int = 0
    fingerprint: str = ""
    config: dict = field(default_factory=dict)


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def upsample_index(n: int, chosen: np.ndarray, factor: int) -> np.ndarray:
    """Row index of one epoch where the ``chosen`` rows appear ``factor`` times, the others once.

    Args:
        n: number of training rows.
        chosen: ``[n]`` bool, the rows to upsample.
        factor: how many times each chosen row appears (1: no upsampling).
    Returns:
        ``[n + (factor - 1) * chosen.sum()]`` int64 row indices (original order, then the copies).
    Raises:
        ValueError: ``factor < 1`` or ``chosen`` not ``[n]``.
    """
    chosen = np.asarray(chosen, dtype=bool)
    if chosen.shape != (n,):
        raise ValueError(f"chosen must be a bool mask [n={n}], got shape {chosen.shape}")
    if int(factor) != factor or factor < 1:
        raise ValueError(f"the upsampling factor must be an integer >= 1, got {factor}")
    extra = np.repeat(np.flatnonzero(chosen), int(factor) - 1)
    return np.concatenate([np.arange(n), extra]).astype(np.int64)


def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dtype).cpu()


def _val_scores(probe: ProbeMLP, x_val: torch.Tensor, y_val: np.ndarray, group_val: np.ndarray,
                n_groups: int | None) -> tuple[float, float]:
    pred = probe.logits(x_val).argmax(1).numpy()
    s = metrics.summary(pred, y_val, group_val, n_groups=n_groups)
    return s["wg"], s["avg_group"]


class _FlatAdamW:
    """Mini-batch training of a :class:`ProbeMLP` with hand-written gradients and AdamW.

    The four parameters live in one flat buffer (weights first), so a step is a few dozen tensor
    operations with no autograd graph and one AdamW update: about four times faster than
    ``loss.backward()`` plus ``torch.optim.AdamW`` at these sizes, where per-operation overhead
    dominates (the reference's JTT runs ~10^5 steps). The update is torch's AdamW (betas
    0.9/0.999, eps 1e-8, decoupled weight decay ``p <- p * (1 - lr * wd)`` before the Adam step),
    with the decay on the two weight matrices only; ``tests/test_probes.py`` checks both the
    gradients and the updates against autograd and ``torch.optim.AdamW``.
    """

    def __init__(self, probe: ProbeMLP, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.wd, self.b1, self.b2, self.eps, self.t = lr, weight_decay, betas[0], betas[1], eps, 0
        self.binary = probe.n_class == 2
        parts = [probe.fc1.weight, probe.fc2.weight, probe.fc1.bias, probe.fc2.bias]
        self.shapes = [p.shape for p in parts]
        self.theta = torch.cat([p.detach().reshape(-1) for p in parts]).float()
        self.grad = torch.zeros_like(self.theta)
        self.m, self.v = torch.zeros_like(self.theta), torch.zeros_like(self.theta)
        self.n_weights = parts[0].numel() + parts[1].numel()
        self.W1, self.W2, self.c1, self.c2 = self._views(self.theta)
        self.gW1, self.gW2, self.gc1, self.gc2 = self._views(self.grad)

    def _views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        out, o = [], 0
        for shape in self.shapes:
            k = int(np.prod(shape))
            out.append(buf[o : o + k].view(shape))
            o += k
        return out

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fill ``self.grad`` with the mean loss gradient on ``x [b, d], y [b]``; returns the summed loss."""
        pre = torch.addmm(self.c1, x, self.W1.T)
        hid = pre.clamp_min(0)
        z = torch.addmm(self.c2, hid, self.W2.T)
        if self.binary:
            yf = y.to(z.dtype)
            loss = F.binary_cross_entropy_with_logits(z.squeeze(1), yf, reduction="sum")
            dz = (torch.sigmoid(z).squeeze(1) - yf).unsqueeze(1) / len(x)
        else:
            loss = F.cross_entropy(z, y, reduction="sum")
            dz = torch.softmax(z, 1)
            dz[torch.arange(len(y)), y] -= 1.0
            dz /= len(x)
        torch.mm(dz.T, hid, out=self.gW2)
        torch.sum(dz, 0, out=self.gc2)
        dh = torch.mm(dz, self.W2) * (pre > 0)
        torch.mm(dh.T, x, out=self.gW1)
        torch.sum(dh, 0, out=self.gc1)
        return loss.detach()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One AdamW step on a mini-batch; returns the batch's summed loss (before the step)."""
        loss = self.gradients(x, y)
        self.t += 1
        self.theta[: self.n_weights].mul_(1.0 - self.lr * self.wd)
        self.m.lerp_(self.grad, 1.0 - self.b1)
        self.v.mul_(self.b2).addcmul_(self.grad, self.grad, value=1.0 - self.b2)
        denom = (self.v.sqrt() / math.sqrt(1.0 - self.b2**self.t)).add_(self.eps)
        self.theta.addcdiv_(self.m, denom, value=-self.lr / (1.0 - self.b1**self.t))
        return loss

    @torch.no_grad()
    def load_into(self, probe: ProbeMLP, theta: torch.Tensor | None = None) -> None:
        """Copy the flat parameters (default the current ones) into ``probe``."""
        W1, W2, c1, c2 = self._views(self.theta if theta is None else theta)
        probe.fc1.weight.copy_(W1)
        probe.fc2.weight.copy_(W2)
        probe.fc1.bias.copy_(c1)
        probe.fc2.bias.copy_(c2)


def train_probe(
    x: torch.Tensor | np.ndarray,
    y: np.ndarray,
    x_val: torch.Tensor | np.ndarray,
    y_val: np.ndarray,
    group_val: np.ndarray,
    *,
    n_class: int,
    index: np.ndarray | None = None,
    hidden: int | None = None,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    epochs: int = 100,
    seed: int = 0,
    select: str = "val_wg",
    n_groups: int | None = None,
    n_upsampled: int = 0,
) -> ProbeFit:
    """Train a :class:`ProbeMLP` on unit embeddings and keep the epoch with the best validation WG.

    Args:
        x: ``[n, d_embed]`` unit train embeddings; y: ``[n]`` their classes.
        x_val, y_val, group_val: ``[n_val, d_embed]``, ``[n_val]``, ``[n_val]`` validation
            embeddings, classes and *true* groups (model selection).
        n_class: number of classes.
        index: one epoch's row index into ``x`` (e.g. :func:`upsample_index`); default every row once.
            Each epoch visits it in a fresh seeded order.
        hidden: hidden width (default :func:`hidden_size` of ``d_embed``).
        lr, weight_decay, batch_size, epochs: AdamW settings; weight decay applies to the two
            weight matrices only.
        seed: seeds the initialisation and the shuffling.
        select: ``"val_wg"`` (keep the first epoch with the highest validation WG) or ``"last"``.
        n_groups: number of validation groups (default ``group_val.max() + 1``).
        n_upsampled: recorded in the result (how many images ``index`` upsamples).
    Returns:
        a :class:`ProbeFit`.
    Raises:
        ValueError: mismatched shapes, ``epochs < 1`` or an unknown ``select``.
    """
    if select not in ("val_wg", "last"):
        raise ValueError(f"select must be 'val_wg' or 'last', got {select!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    xt, xv = _as_tensor(x), _as_tensor(x_val)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if xt.dim() != 2 or len(xt) != len(yt) or xv.dim() != 2 or xv.shape[1] != xt.shape[1]:
        raise ValueError(f"x must be [n, d_embed] with y [n] and x_val [n_val, d_embed]; got {tuple(xt.shape)}, "
                         f"{tuple(yt.shape)}, {tuple(xv.shape)}")
    if len(xt) == 0:
        raise ValueError("cannot train a probe on zero images")
    y_val, group_val = np.asarray(y_val), np.asarray(group_val)
    idx = torch.as_tensor(np.arange(len(xt)) if index is None else np.asarray(index), dtype=torch.long)
    config = {"hidden": hidden or hidden_size(xt.shape[1]), "lr": lr, "weight_decay": weight_decay,
              "batch_size": batch_size, "epochs": epochs, "seed": seed, "select": select}
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = ProbeMLP(xt.shape[1], n_class, hidden)
        flat = _FlatAdamW(probe, lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        rows, best, best_theta, best_epoch = [], -np.inf, None, 0
        for epoch in range(1, epochs + 1):
            order = idx[torch.randperm(len(idx), generator=gen)]
            total = torch.zeros((), dtype=torch.float64)
            for b in range(0, len(order), batch_size):
                i = order[b : b + batch_size]
                total += flat.step(xt[i], yt[i])
            flat.load_into(probe)
            wg, avg = _val_scores(probe, xv, y_val, group_val, n_groups)
            rows.append({"epoch": epoch, "loss": float(total) / len(order), "val_wg": wg, "val_avg_group": avg})
            if select == "last" or wg > best:
                best, best_epoch = wg, epoch
                best_theta = flat.theta.clone()
        if best_theta is None:
            raise ValueError("the validation worst-group accuracy was undefined at every epoch: does the "
                             "validation split have any labelled groups?")
        flat.load_into(probe, best_theta)
    probe.eval()
    return ProbeFit(probe, pd.DataFrame(rows), best_epoch, float(best), len(idx), int(n_upsampled),
                    fingerprint(probe), config)


def pseudo_conflicting(group: np.ndarray, spurious: np.ndarray, spurious_logits: torch.Tensor,
                       conflicting: Sequence[int]) -> np.ndarray:
    """Images whose *pseudo* group is bias-conflicting: the spurious attribute predicted zero-shot.

    Args:
        group, spurious: ``[n]`` true groups and spurious labels (the spurious part of each group
            is replaced by the prediction, :func:`ltcutils.locate.pseudo_groups`).
        spurious_logits: ``[n, n_spurious]`` zero-shot logits of the spurious prompts.
        conflicting: the bias-conflicting group ids (e.g. ``[1, 2]`` for Waterbirds).
    Returns:
        ``[n]`` bool.
    """
    s_hat = torch.as_tensor(spurious_logits).argmax(1).cpu().numpy()
    return conflicting_mask(pseudo_groups(group, spurious, s_hat), conflicting)


def train_jtt_reference(x, y, chosen: np.ndarray, x_val, y_val, group_val, *, n_class: int, upweight: int = 100,
                        **kw) -> ProbeFit:
    """The reference's "JTT": upsample the ``chosen`` (pseudo bias-conflicting) train images ``upweight`` times.

    Args:
        x, y: ``[n, d_embed]`` unit train embeddings and ``[n]`` classes.
        chosen: ``[n]`` bool, usually :func:`pseudo_conflicting` of the train split.
        x_val, y_val, group_val: validation embeddings, classes and true groups (selection).
        upweight: times each chosen image appears per epoch (the reference: 100, 90 for H-14).
        **kw: passed to :func:`train_probe`.
    """
    chosen = np.asarray(chosen, dtype=bool)
    index = upsample_index(len(chosen), chosen, upweight)
    fit = train_probe(x, y, x_val, y_val, group_val, n_class=n_class, index=index,
                      n_upsampled=int(chosen.sum()), **kw)
    fit.config.update(method="jtt-reference", upweight=upweight)
    return fit


def train_jtt_two_stage(x, y, x_val, y_val, group_val, *, n_class: int, stage1_epochs: int = 1,
                        lambda_up: int = 100, **kw) -> tuple[ProbeFit, np.ndarray]:
    """JTT of Liu et al. 2021: stage 1 ERM for ``stage1_epochs``, upsample its train errors ``lambda_up`` times.

    Stage 1 keeps its last epoch (no model selection, as in the paper); stage 2 trains a fresh
    probe (same seed) on the upsampled index and selects by validation WG like every probe.

    Args:
        x, y: ``[n, d_embed]`` unit train embeddings and ``[n]`` classes.
        x_val, y_val, group_val: validation embeddings, classes and true groups.
        stage1_epochs: epochs of the identification model (the paper's T).
        lambda_up: times each error appears per epoch in stage 2 (the paper's lambda_up).
        **kw: passed to both :func:`train_probe` calls (``epochs`` only to stage 2).
    Returns:
        ``(stage-2 fit, errors [n] bool)``.
    """
    stage1_kw = {k: v for k, v in kw.items() if k != "epochs"}
    first = train_probe(x, y, x_val, y_val, group_val, n_class=n_class, epochs=stage1_epochs, select="last",
                        **stage1_kw)
    pred = first.probe.logits(_as_tensor(x)).argmax(1).numpy()
    errors = pred != np.asarray(y)
    index = upsample_index(len(errors), errors, lambda_up)
    fit = train_probe(x, y, x_val, y_val, group_val, n_class=n_class, index=index, n_upsampled=int(errors.sum()),
                      **kw)
    fit.config.update(method="jtt-two-stage", stage1_epochs=stage1_epochs, lambda_up=lambda_up,
                      stage1_fingerprint=first.fingerprint)
    return fit, errors


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [n, d_embed]`` scaled to unit length (float32): the probes' input."""
    return F.normalize(torch.as_tensor(x).float(), dim=-1)


def split_embeddings(ex, split: str, n: int | None = None, seed: int = 0, classifier: torch.Tensor | None = None,
                     progress: bool = True):
    """An :class:`~ltcutils.evaluate.EvalSplit` of a split, from a store; no per-head terms needed.

    With ``n`` the split is first cut to a seeded, group-stratified subset of about ``n`` images
    (:func:`ltcutils.experiment.stratified_subset`). A complete store of exactly these images
    in ``ex.cache_dir`` is reused (the run's own store of the split when ``n`` is None and one
    was captured, e.g. with ``locate_split="train"``); otherwise a store with no per-head
    layers and summed MLPs is captured next to it (``<store>-embedding``), which is all a probe
    needs and a fraction of the disk.

    Args:
        ex: an :class:`~ltcutils.experiment.Experiment`.
        split: split name ("train").
        n: images to keep (None: all).
        seed: seed of the subset.
        classifier: ``[d_embed, n_class]`` for the split's lens (default ``ex.classifier()``).
    Returns:
        the split (``.lens.total`` holds the summed embeddings, ``.y``, ``.group``, ``.spurious``).
    """
    from .capture import capture
    from .evaluate import EvalSplit
    from .experiment import stratified_subset
    from .store import ActivationStore, StoreError, store_dir

    ds = ex.split(split)
    if n is not None and len(ds) > n:
        ds = ds.subset(stratified_subset(ds.group, n, seed))
    full = store_dir(ex.cache_dir, ex.model, ds)
    small = full.with_name(full.name + "-embedding")
    store = None
    for path in (full, small):  # a complete store of these images, full or embedding-only
        try:
            store = ActivationStore(path)
            break
        except (StoreError, OSError):
            continue
    if store is None:
        store = capture(ex.model, ds, path=small, batch_size=ex.batch_size, layers=[], mlps="sum", progress=progress,
                        rebuild=getattr(ex, "rebuild", False))
    return EvalSplit.from_store(store, ex.classifier() if classifier is None else classifier)


def plot_training(fits: dict[str, ProbeFit], table: pd.DataFrame | None = None, save=None):
    """Validation WG per epoch for each probe (selected epoch marked) and, optionally, test WG bars.

    Args:
        fits: ``{row name: ProbeFit}``.
        table: test metrics indexed by row name with ``wg`` (and ``wg_ci_low``/``wg_ci_high``).
        save: a path for the PNG (or None).
    Returns:
        the figure.
    """
    import matplotlib.pyplot as plt

    from .plots import save_figure

    ncols = 2 if table is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False)
    ax = axes[0, 0]
    for name, fit in fits.items():
        line, = ax.plot(fit.history["epoch"], fit.history["val_wg"], label=name, lw=1.2)
        ax.plot([fit.best_epoch], [fit.best_val_wg], "o", color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation worst-group accuracy (%)")
    ax.set_title("Model selection: validation WG per epoch (dot: kept)")
    ax.legend(fontsize=8)
    if table is not None:
        ax = axes[0, 1]
        names = list(table.index)
        wg = table["wg"].to_numpy(dtype=float)
        err = None
        if {"wg_ci_low", "wg_ci_high"} <= set(table.columns):
            err = np.vstack([wg - table["wg_ci_low"].to_numpy(dtype=float), table["wg_ci_high"].to_numpy(dtype=float) - wg])
        ax.barh(names, wg, xerr=err, color="tab:blue", alpha=0.8, label="WG")
        if "avg_group" in table.columns:
            ax.plot(table["avg_group"].to_numpy(dtype=float), names, "k|", ms=14, label="avg (group)")
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy (%)")
        ax.set_title("Test worst-group accuracy (95% CI)")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, save)
    return fig
