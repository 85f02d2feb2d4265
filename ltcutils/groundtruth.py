"""Ground truth for the synthetic benchmark: how much each head *really* carries the background.

Because the synthetic images are rendered from item seeds, every item can be drawn again with
only one factor changed (:func:`ltcutils.datasets.synthetic.render` with ``background=0/1``).
The oracle decomposes these counterfactual renders (:func:`ltcutils.decompose.decompose`,
normalised terms) and reads every term through the zero-shot class margin
``m(term) = <term, t_waterbird - t_landbird>`` (the classifier's column 1 minus column 0):

* ``background_effect[layer, head]``: mean over items of ``m(term | water) - m(term | land)``,
  the *same* bird (same pixels) on its two backgrounds. Positive = the head pushes towards
  "waterbird" when the background is water, i.e. it carries the spurious shortcut.
* ``object_effect[layer, head]``: mean ``m`` over waterbird items minus mean ``m`` over landbird
  items, each item counted once on land and once on water (averaged), so both classes are seen
  on exactly the same mix of backgrounds. This is a background-matched difference in means, not
  a paired swap of objects: two different birds never share one image. Positive = the head
  carries the class.

The same numbers are computed for the embedding term and each MLP (``mlp_*_effect``, index 0 =
embedding term, ``l + 1`` = MLP of layer ``l``). Effects are in logit-margin units of the
normalised embedding (cosine units), comparable to the logit lens.

Example::

    >>> oracle = oracle_table(model, val_seeds, classifier)          # doctest: +SKIP
    >>> oracle.top_heads(4)            # the 4 strongest background heads     # doctest: +SKIP
    >>> oracle.frame()                 # one row per term, a DataFrame        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .datasets import synthetic as syn
from .decompose import decompose
from .heads import Head, head_label

__all__ = ["OracleTable", "oracle_table", "effects_from_terms", "oracle_ablation"]


@dataclass
class OracleTable:
    """Counterfactual effects of every term on the class margin (see the module docstring).

    Attributes:
        background_effect, object_effect: ``[layer, head]`` mean effects.
        background_se, object_se: ``[layer, head]`` their standard errors.
        mlp_background_effect, mlp_object_effect: ``[layer + 1]`` (0 = embedding term);
            mlp_background_se, mlp_object_se: their standard errors.
        total_background_effect, total_object_effect: effects on the whole margin.
        n_items: items used (each rendered on land and on water); n_per_class: ``[2]``.
        layers: layer index of each row.
    """

    background_effect: np.ndarray
    object_effect: np.ndarray
    background_se: np.ndarray
    object_se: np.ndarray
    mlp_background_effect: np.ndarray
    mlp_object_effect: np.ndarray
    mlp_background_se: np.ndarray
    mlp_object_se: np.ndarray
    total_background_effect: float
    total_object_effect: float
    n_items: int
    n_per_class: list[int]
    layers: tuple[int, ...]
    details: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def top_heads(self, k: int, by: str = "background_effect") -> list[Head]:
        """The ``k`` heads with the largest (signed) ``by`` effect, strongest first."""
        arr = getattr(self, by, None)
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise ValueError(f"by must be 'background_effect' or 'object_effect', got {by!r}")
        if not 0 <= k <= arr.size:
            raise ValueError(f"k must be in [0, {arr.size}], got {k}")
        order = np.argsort(-arr.reshape(-1), kind="stable")[:k]
        H = arr.shape[1]
        return [(self.layers[int(i) // H], int(i) % H) for i in order]

    def frame(self):
        """A pandas DataFrame with one row per term (heads, then embedding and MLPs)."""
        import pandas as pd

        rows = []
        L, H = self.background_effect.shape
        for li, l in enumerate(self.layers):
            for h in range(H):
                rows.append({"term": head_label(l, h), "kind": "head", "layer": l, "head": h,
                             "background_effect": float(self.background_effect[li, h]),
                             "object_effect": float(self.object_effect[li, h]),
                             "background_se": float(self.background_se[li, h]),
                             "object_se": float(self.object_se[li, h])})
        for i, (bg, ob, bse, ose) in enumerate(zip(self.mlp_background_effect, self.mlp_object_effect,
                                                   self.mlp_background_se, self.mlp_object_se)):
            rows.append({"term": "embed" if i == 0 else f"MLP{i - 1}", "kind": "embed" if i == 0 else "mlp",
                         "layer": i - 1, "head": -1, "background_effect": float(bg), "object_effect": float(ob),
                         "background_se": float(bse), "object_se": float(ose)})
        df = pd.DataFrame(rows)
        df["background_rank"] = df["background_effect"].where(df["kind"] == "head").rank(ascending=False)
        return df

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no per-item details)."""
        return {
            "background_effect": np.round(self.background_effect, 6).tolist(),
            "object_effect": np.round(self.object_effect, 6).tolist(),
            "mlp_background_effect": np.round(self.mlp_background_effect, 6).tolist(),
            "mlp_object_effect": np.round(self.mlp_object_effect, 6).tolist(),
            "total_background_effect": self.total_background_effect,
            "total_object_effect": self.total_object_effect,
            "n_items": self.n_items, "n_per_class": self.n_per_class, "layers": list(self.layers),
        }


def _margin_direction(classifier: torch.Tensor, d_embed: int) -> torch.Tensor:
    W = torch.as_tensor(classifier).detach().float().cpu()
    if W.ndim != 2 or W.shape != (d_embed, 2):
        raise ValueError(
            f"classifier must be [d_embed={d_embed}, 2] (columns landbird, waterbird), got {tuple(W.shape)}; "
            "build it with ltcutils.text.zero_shot_classifier(model, bank)"
        )
    return W[:, 1] - W[:, 0]


def effects_from_terms(
    terms_land: torch.Tensor, terms_water: torch.Tensor, y: np.ndarray | torch.Tensor, direction: torch.Tensor
) -> dict[str, np.ndarray]:
    """Background and object effects of terms from paired counterfactual renders.

    Args:
        terms_land, terms_water: ``[batch, *term_shape, d_embed]`` the same items rendered on land
            and on water (e.g. heads ``[batch, layer, head, d_embed]``).
        y: ``[batch]`` class of each item (0 landbird, 1 waterbird); both classes must occur.
        direction: ``[d_embed]`` the margin direction ``t_waterbird - t_landbird``.

    Returns:
        ``{"background_effect", "background_se", "object_effect", "object_se"}``, each
        ``[*term_shape]`` float64 (see the module docstring for the definitions).
    """
    if terms_land.shape != terms_water.shape:
        raise ValueError(f"land and water terms differ in shape: {tuple(terms_land.shape)} vs "
                         f"{tuple(terms_water.shape)}; render the same items on both backgrounds")
    y = np.asarray(y).reshape(-1)
    if len(y) != terms_land.shape[0]:
        raise ValueError(f"y has {len(y)} items but the terms have {terms_land.shape[0]}")
    if not ((y == 0).any() and (y == 1).any()):
        raise ValueError("the object effect needs items of both classes (landbird and waterbird)")
    d = direction.double()
    m_land = (terms_land.double() @ d).numpy()
    m_water = (terms_water.double() @ d).numpy()
    diff = m_water - m_land
    n = len(y)
    mean_bg = m_land * 0.5 + m_water * 0.5
    a, b = mean_bg[y == 1], mean_bg[y == 0]
    return {
        "background_effect": diff.mean(0),
        "background_se": diff.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(diff.shape[1:], np.nan),
        "object_effect": a.mean(0) - b.mean(0),
        "object_se": np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
        if len(a) > 1 and len(b) > 1 else np.full(diff.shape[1:], np.nan),
        "margin_land": m_land, "margin_water": m_water,
    }


def _hooked(model):
    return getattr(model, "hooked", model)


@torch.inference_mode()
def oracle_table(
    model,
    seeds: Sequence[int],
    classifier: torch.Tensor,
    batch_size: int = 250,
    progress: bool = False,
) -> OracleTable:
    """Counterfactual ground truth for every head, MLP and the embedding term.

    Args:
        model: a :class:`~ltcutils.models.LoadedModel` (or a bare
            :class:`~ltcutils.hooked.HookedViT`) with a 64 px image tower.
        seeds: item seeds (e.g. ``[int(s) for s in make_split("val").ids]``); each is rendered
            with its bird on land and on water.
        classifier: ``[d_embed, 2]`` zero-shot classifier (columns landbird, waterbird).
        batch_size: items per forward pass (each pass decomposes 2 x batch_size images). The
            images are rendered on the CPU and sent to the model's device.
        progress: show a tqdm bar.

    Returns:
        an :class:`OracleTable`.

    Raises:
        ValueError: a wrong classifier shape, no seeds, or only one class among the items.
    """
    hooked = _hooked(model)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("oracle_table needs at least one item seed")
    dev = next(hooked.parameters()).device
    direction = _margin_direction(classifier, hooked.cfg.d_embed)
    y = syn.labels_for_seeds(seeds)["y"]
    heads_l, heads_w, mlps_l, mlps_w, rest_l, rest_w = [], [], [], [], [], []
    it = range(0, len(seeds), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="oracle", unit="batch")
    layers: tuple[int, ...] = ()
    for i in it:
        chunk = seeds[i : i + batch_size]
        for b, (hs, ms, rs) in ((0, (heads_l, mlps_l, rest_l)), (1, (heads_w, mlps_w, rest_w))):
            px = syn.to_pixels(syn.render_batch(chunk, background=b)).to(dev)
            dec = decompose(hooked, px, normalized=True)
            layers = dec.layers
            hs.append(dec.heads.float().cpu())
            ms.append(dec.mlps.float().cpu())
            rs.append(dec.rest.float().cpu())
    heads = effects_from_terms(torch.cat(heads_l), torch.cat(heads_w), y, direction)
    mlps = effects_from_terms(torch.cat(mlps_l), torch.cat(mlps_w), y, direction)
    total_l = torch.cat(heads_l).sum((1, 2)) + torch.cat(mlps_l).sum(1) + torch.cat(rest_l)
    total_w = torch.cat(heads_w).sum((1, 2)) + torch.cat(mlps_w).sum(1) + torch.cat(rest_w)
    total = effects_from_terms(total_l, total_w, y, direction)
    return OracleTable(
        background_effect=heads["background_effect"], object_effect=heads["object_effect"],
        background_se=heads["background_se"], object_se=heads["object_se"],
        mlp_background_effect=mlps["background_effect"], mlp_object_effect=mlps["object_effect"],
        mlp_background_se=mlps["background_se"], mlp_object_se=mlps["object_se"],
        total_background_effect=float(total["background_effect"]), total_object_effect=float(total["object_effect"]),
        n_items=len(seeds), n_per_class=[int((y == 0).sum()), int((y == 1).sum())], layers=tuple(layers),
        details={"head_margin_land": heads["margin_land"], "head_margin_water": heads["margin_water"], "y": y},
    )


# ----------------------------------------------------------------------------- ablation check
def _mean_ablate(heads: torch.Tensor, mean: torch.Tensor, sel) -> torch.Tensor:
    """Replace the selected heads' terms by their reference mean.

    Args:
        heads: ``[batch, layer, head, d_embed]`` head terms.
        mean: ``[layer, head, d_embed]`` mean terms over a reference split.
        sel: ``[layer, head]`` bool mask, or a list of ``(layer_row, head)`` pairs.

    Returns:
        a new ``[batch, layer, head, d_embed]`` tensor (the input is not modified).
    """
    if heads.ndim != 4 or mean.shape != heads.shape[1:]:
        raise ValueError(f"heads must be [batch, layer, head, d_embed] and mean [layer, head, d_embed]; got "
                         f"{tuple(heads.shape)} and {tuple(mean.shape)}")
    mask = torch.zeros(heads.shape[1:3], dtype=torch.bool)
    if isinstance(sel, (torch.Tensor, np.ndarray)) and np.asarray(sel).dtype == bool:
        m = torch.as_tensor(np.asarray(sel))
        if m.shape != mask.shape:
            raise ValueError(f"mask must be [layer, head] = {tuple(mask.shape)}, got {tuple(m.shape)}")
        mask = m.clone()
    else:
        for l, h in sel:
            mask[int(l), int(h)] = True
    out = heads.clone()
    out[:, mask] = mean.to(heads.dtype)[mask]
    return out


@torch.inference_mode()
def _decompose_items(hooked, seeds: Sequence[int], batch_size: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    heads, static = [], []
    for i in range(0, len(seeds), batch_size):
        px = syn.to_pixels(syn.render_batch(seeds[i : i + batch_size])).to(dev)
        d = decompose(hooked, px, normalized=True)
        heads.append(d.heads.float().cpu())
        static.append((d.mlps.sum(1) + d.rest).float().cpu())
    return torch.cat(heads), torch.cat(static)


def oracle_ablation(
    model,
    ks: Sequence[int] = (4, 8),
    val=None,
    test=None,
    bank: str = "synthetic",
    oracle_items: int | None = None,
    n_random: int = 20,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Zero-shot test metrics before and after mean-ablating the oracle's top background heads.

    The oracle and the head means both come from the val split (never from test). A random
    control ablates ``k`` uniformly random heads (``n_random`` seeded draws).

    Args:
        model: a :class:`~ltcutils.models.LoadedModel` trained on the synthetic benchmark.
        ks: numbers of heads to ablate.
        val, test: synthetic GroupDatasets (default: the balanced splits, 500 per group).
        bank: prompt bank name or path for the zero-shot classifier.
        oracle_items: use only the first ``oracle_items`` val items for the oracle (None = all).

    Returns:
        ``{"zero_shot": metrics, "oracle": OracleTable.to_dict(), "ablation": {k: {"heads",
        "metrics", "random_worst_group_mean", "random_worst_group_std"}}}``.
    """
    from .text import load_prompt_bank, zero_shot_classifier
    from .train import group_metrics

    val = val if val is not None else syn.make_split("val")
    test = test if test is not None else syn.make_split("test")
    hooked = _hooked(model)
    dev = next(hooked.parameters()).device
    W = zero_shot_classifier(model, load_prompt_bank(bank)).float().cpu()
    val_seeds = [int(s) for s in val.ids]
    oracle = oracle_table(model, val_seeds[:oracle_items] if oracle_items else val_seeds, W, batch_size)
    vh, _ = _decompose_items(hooked, val_seeds, batch_size, dev)
    mean = vh.double().mean(0).float()
    th, ts = _decompose_items(hooked, [int(s) for s in test.ids], batch_size, dev)

    def metrics(heads: torch.Tensor) -> dict[str, Any]:
        pred = ((ts + heads.sum((1, 2))) @ W).argmax(1).numpy()
        return group_metrics(pred, test.y, test.group, 4)

    out: dict[str, Any] = {"zero_shot": metrics(th), "oracle": oracle.to_dict(), "ablation": {}}
    rng = np.random.default_rng(seed)
    L, H = th.shape[1:3]
    for k in ks:
        sel = oracle.top_heads(int(k))
        rows = [(oracle.layers.index(l), h) for l, h in sel]
        rand = []
        for _ in range(n_random):
            pick = rng.choice(L * H, size=int(k), replace=False)
            rand.append(metrics(_mean_ablate(th, mean, [(int(p) // H, int(p) % H) for p in pick]))["worst_group"])
        out["ablation"][int(k)] = {
            "heads": [head_label(l, h) for l, h in sel],
            "metrics": metrics(_mean_ablate(th, mean, rows)),
            "random_worst_group_mean": float(np.mean(rand)) if rand else float("nan"),
            "random_worst_group_std": float(np.std(rand)) if rand else float("nan"),
        }
    return out
