"""Ground truth for the synthetic benchmark: what each head *really* carries, from counterfactuals.

Because the synthetic images are rendered from item seeds, every item can be drawn again with
only one factor changed (:func:`ltcutils.datasets.synthetic.render`). The oracle decomposes
these counterfactual renders (:func:`ltcutils.decompose.decompose`, normalised terms) and reads
every term through the zero-shot class margin ``m(term) = <term, t_waterbird - t_landbird>``
(the classifier's column 1 minus column 0). Two oracles, each a paired difference:

* ``background_effect[layer, head]`` (background swapped, object kept): mean over items of
  ``m(term | water) - m(term | land)``, the *same* bird (same pixels) on the same kind of scene
  of each background. Positive = the head pushes towards "waterbird" when the background is
  water, i.e. it carries the spurious shortcut. Notebook 02 grades spurious heads with it.
* ``object_effect[layer, head]`` (object swapped, background kept): mean over items of
  ``m(waterbird's term) - m(landbird's term)`` where one of the two is the item's own render and
  the other has a bird of the other class (:func:`~ltcutils.datasets.synthetic.swap_partners`)
  drawn on exactly the item's background. Positive = the head carries the class. Notebook 02
  grades salient heads with it.

The same numbers are computed for the embedding term and each MLP (``mlp_*_effect``, index 0 =
embedding term, ``l + 1`` = MLP of layer ``l``). Effects are in logit-margin units of the
normalised embedding (cosine units), comparable to the logit lens. Renders are resized to the
model's input size, so any ViT (e.g. ViT-B-16 at 224 px) can be graded on the synthetic world.

Example::

    >>> oracle = oracle_table(model, val_seeds, classifier)          # doctest: +SKIP
    >>> oracle.top_heads(4)            # the 4 strongest background heads     # doctest: +SKIP
    >>> oracle.top_heads(4, by="object_effect")   # the 4 strongest class heads  # doctest: +SKIP
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

__all__ = ["OracleTable", "oracle_table", "background_effects", "object_effects"]


@dataclass
class OracleTable:
    """Counterfactual effects of every term on the class margin (see the module docstring).

    Attributes:
        background_effect, object_effect: ``[layer, head]`` mean paired effects.
        background_se, object_se: ``[layer, head]`` their standard errors.
        mlp_background_effect, mlp_object_effect: ``[layer + 1]`` (0 = embedding term);
            mlp_background_se, mlp_object_se: their standard errors.
        total_background_effect, total_object_effect: effects on the whole margin.
        n_items: items used (each rendered on land, on water and with its bird swapped);
        n_per_class: ``[2]``; layers: layer index of each row.
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


def _se(diff: np.ndarray) -> np.ndarray:
    n = diff.shape[0]
    return diff.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(diff.shape[1:], np.nan)


def background_effects(terms_land: torch.Tensor, terms_water: torch.Tensor, direction: torch.Tensor
                       ) -> dict[str, np.ndarray]:
    """Background effect of terms from paired renders (same bird on land and on water).

    Args:
        terms_land, terms_water: ``[batch, *term_shape, d_embed]`` the same items rendered on
            land and on water (e.g. heads ``[batch, layer, head, d_embed]``).
        direction: ``[d_embed]`` the margin direction ``t_waterbird - t_landbird``.

    Returns:
        ``{"effect", "se"}`` each ``[*term_shape]`` float64 (mean and standard error of
        ``m(water) - m(land)``), and the margins ``"margin_land"``, ``"margin_water"``
        ``[batch, *term_shape]``.

    Raises:
        ValueError: the two term tensors differ in shape.
    """
    if terms_land.shape != terms_water.shape:
        raise ValueError(f"land and water terms differ in shape: {tuple(terms_land.shape)} vs "
                         f"{tuple(terms_water.shape)}; render the same items on both backgrounds")
    d = direction.double()
    m_land = (terms_land.double() @ d).numpy()
    m_water = (terms_water.double() @ d).numpy()
    diff = m_water - m_land
    return {"effect": diff.mean(0), "se": _se(diff), "margin_land": m_land, "margin_water": m_water}


def object_effects(terms_own: torch.Tensor, terms_swap: torch.Tensor, y: np.ndarray | torch.Tensor,
                   direction: torch.Tensor) -> dict[str, np.ndarray]:
    """Object effect of terms from paired renders (own bird vs a bird of the other class, same background).

    Args:
        terms_own: ``[batch, *term_shape, d_embed]`` each item's own render.
        terms_swap: the same shape: the item's background with a bird of the other class.
        y: ``[batch]`` class of each item's own bird (0 landbird, 1 waterbird).
        direction: ``[d_embed]`` the margin direction ``t_waterbird - t_landbird``.

    Returns:
        ``{"effect", "se"}`` each ``[*term_shape]`` float64: mean and standard error of
        ``m(waterbird render) - m(landbird render)`` over the pairs.

    Raises:
        ValueError: mismatched shapes or lengths.
    """
    if terms_own.shape != terms_swap.shape:
        raise ValueError(f"own and swapped terms differ in shape: {tuple(terms_own.shape)} vs {tuple(terms_swap.shape)}")
    y = np.asarray(y).reshape(-1)
    if len(y) != terms_own.shape[0]:
        raise ValueError(f"y has {len(y)} items but the terms have {terms_own.shape[0]}")
    d = direction.double()
    sign = (2.0 * y - 1.0).reshape((-1,) + (1,) * (terms_own.dim() - 2))
    diff = sign * ((terms_own.double() @ d).numpy() - (terms_swap.double() @ d).numpy())
    return {"effect": diff.mean(0), "se": _se(diff)}


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
    """Counterfactual ground truth (background swap and object swap) for every head, MLP and the embedding.

    Args:
        model: a :class:`~ltcutils.models.LoadedModel` (or a bare
            :class:`~ltcutils.hooked.HookedViT`) of any input size: renders are resized to it.
        seeds: item seeds (e.g. ``[int(s) for s in make_split("val").ids]``); both classes must
            occur. Each item is rendered on land, on water, and on its own background with the
            bird of its swap partner (:func:`~ltcutils.datasets.synthetic.swap_partners`).
        classifier: ``[d_embed, 2]`` zero-shot classifier (columns landbird, waterbird).
        batch_size: items per forward pass (each pass decomposes 3 x batch_size images). The
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
    size = syn.model_image_size(hooked)
    lab = syn.labels_for_seeds(seeds)
    y, own_b = lab["y"], lab["spurious"]
    if not ((y == 0).any() and (y == 1).any()):
        raise ValueError("the object effect needs items of both classes (landbird and waterbird)")
    partners = syn.swap_partners(seeds)
    acc: dict[str, list] = {k: [] for k in ("land", "water", "swap")}
    it = range(0, len(seeds), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="oracle", unit="batch")
    layers: tuple[int, ...] = ()
    for i in it:
        chunk = seeds[i : i + batch_size]
        renders = {"land": syn.render_batch(chunk, background=0), "water": syn.render_batch(chunk, background=1),
                   "swap": syn.render_batch(chunk, object_seeds=partners[i : i + batch_size])}
        for key, imgs in renders.items():
            dec = decompose(hooked, syn.to_pixels(imgs, size=size).to(dev), normalized=True)
            layers = dec.layers
            acc[key].append((dec.heads.float().cpu(), torch.cat([dec.embed[:, None], dec.mlps], 1).float().cpu(),
                             dec.rest.float().cpu()))  # index 0 = embedding term, l + 1 = MLP l
    cat = {k: [torch.cat([a[j] for a in v]) for j in range(3)] for k, v in acc.items()}
    own_sel = torch.as_tensor(own_b == 1)

    def own(j: int) -> torch.Tensor:  # each item's own render is its land or water render
        m = own_sel.view((-1,) + (1,) * (cat["land"][j].dim() - 1))
        return torch.where(m, cat["water"][j], cat["land"][j])

    def total(k_or_own) -> torch.Tensor:
        h, m, r = cat[k_or_own] if isinstance(k_or_own, str) else k_or_own
        return h.sum((1, 2)) + m.sum(1) + r

    hb = background_effects(cat["land"][0], cat["water"][0], direction)
    mb = background_effects(cat["land"][1], cat["water"][1], direction)
    ho = object_effects(own(0), cat["swap"][0], y, direction)
    mo = object_effects(own(1), cat["swap"][1], y, direction)
    tb = background_effects(total("land"), total("water"), direction)
    to = object_effects(total([own(0), own(1), own(2)]), total("swap"), y, direction)
    return OracleTable(
        background_effect=hb["effect"], object_effect=ho["effect"], background_se=hb["se"], object_se=ho["se"],
        mlp_background_effect=mb["effect"], mlp_object_effect=mo["effect"], mlp_background_se=mb["se"],
        mlp_object_se=mo["se"], total_background_effect=float(tb["effect"]), total_object_effect=float(to["effect"]),
        n_items=len(seeds), n_per_class=[int((y == 0).sum()), int((y == 1).sum())], layers=tuple(layers),
        details={"head_margin_land": hb["margin_land"], "head_margin_water": hb["margin_water"], "y": y,
                 "partners": partners},
    )
