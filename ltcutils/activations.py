"""TransformerLens's ``ActivationCache`` over a :class:`~ltcutils.hooked.HookedViT` run.

:meth:`HookedViT.run_with_cache <ltcutils.hooked.HookedViT.run_with_cache>` returns a
:class:`ViTActivationCache`; everything a TL user indexes works as in TL, and the exact
joint-space decomposition of :mod:`ltcutils.decompose` is one call away.

Example (random weights)::

    >>> import torch
    >>> from ltcutils.hooked import HookedViT, ViTConfig
    >>> m = HookedViT(ViTConfig(image_size=32, patch_size=16, d_model=8, n_layers=2, n_heads=2, d_mlp=16, d_embed=4))
    >>> out, cache = m.run_with_cache(torch.randn(3, 3, 32, 32))
    >>> tuple(cache["z", 0].shape), tuple(cache["pattern", 1].shape), tuple(cache["post", 1].shape)
    ((3, 5, 2, 4), (3, 2, 5, 5), (3, 5, 16))
    >>> terms, labels = cache.stack_head_terms(return_labels=True, incl_remainder=True)
    >>> tuple(terms.shape), labels
    ((5, 3, 4), ['L0H0', 'L0H1', 'L1H0', 'L1H1', 'remainder'])
    >>> bool(torch.allclose(terms.sum(0), torch.nn.functional.normalize(out, dim=-1), atol=1e-6))
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import SupportsIndex

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice

from .decompose import Decomposition, _needed_hooks, _layer_list, terms_from_activations
from .hooked import HookedViT

__all__ = ["ViTActivationCache"]

_NO_LN = (
    "{what} applies a language model's final norm; this ViT's ln_post reads only the class "
    "token and feeds proj, not an unembedding. Use cache.decompose() or cache.stack_head_terms(), "
    "which linearise ln_post exactly (ltcutils.decompose), or apply_ln=False for residual-space stacks."
)


class ViTActivationCache(ActivationCache):
    """Activations of one :class:`~ltcutils.hooked.HookedViT` forward pass, keyed by hook name.

    As in TransformerLens: ``cache[name]``, the shorthand ``cache["z", l]`` /
    ``cache["pattern", l]`` / ``cache["post", l]`` / ``cache["scale", l, "ln1"]``, ``keys()``,
    ``items()``, ``to()``, ``remove_batch_dim()``, ``accumulated_resid()`` and
    ``stack_activation()``. Shapes are those of the hook table in :mod:`ltcutils.hooked`.

    What differs from TL:

    * ``hook_embed`` is patch + class + position embedding *before* ``ln_pre`` (there is no
      ``hook_pos_embed``); the residual stream starts at ``blocks.0.hook_resid_pre``, which is
      the ``"embed"`` component of :meth:`decompose_resid`.
    * ``hook_result`` and :meth:`get_neuron_results` include LayerScale where the model has it.
    * The final norm is ``ln_post`` on the class token only (``ln_post.hook_scale [batch, 1]``);
      TL's ``apply_ln=True`` paths, ``logit_attrs`` and ``get_full_resid_decomposition`` raise
      ``NotImplementedError``. The joint-space view is :meth:`decompose` (a
      :class:`~ltcutils.decompose.Decomposition`, identical to ``decompose(model, pixels)``) and
      :meth:`stack_head_terms` ``[layer * head, batch, d_embed]`` with ``L{l}H{h}`` labels.
    * :meth:`stack_head_results` keeps TL's meaning: residual-space head outputs
      ``[layer * head, batch, pos, d_model]`` (no out_proj bias); with ``incl_remainder`` the
      parts sum to ``resid_post`` of the last included layer.
    """

    model: HookedViT

    def __init__(self, cache_dict: dict[str, Tensor], model: HookedViT, has_batch_dim: bool = True):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)

    # ----------------------------------------------------------------- joint space (exact)
    def _class_token(self, name: str) -> Tensor:
        if name not in self.cache_dict:
            raise KeyError(f"the cache lacks {name!r}; run run_with_cache without a names_filter that drops it")
        t = self.cache_dict[name] if self.has_batch_dim else self.cache_dict[name][None]
        if not name.startswith("blocks."):
            return t
        if t.shape[1] != self.model.cfg.n_pos:
            raise ValueError(f"{name} has {t.shape[1]} positions, not {self.model.cfg.n_pos}: "
                             "decompose needs a cache taken without pos_slice (it reads the class token)")
        return t[:, 0]

    def decompose(self, layers: Iterable[SupportsIndex] | None = None, normalized: bool = True) -> Decomposition:
        """The exact joint-space decomposition of this run (see :func:`ltcutils.decompose.decompose`).

        Raises:
            KeyError: the cache lacks a needed activation; ValueError: it was position-sliced.
        """
        keep = _layer_list(self.model, layers)
        acts = {n: self._class_token(n) for n in _needed_hooks(self.model, keep)}
        return terms_from_activations(self.model, acts, keep, normalized)

    def stack_head_terms(
        self, normalized: bool = True, return_labels: bool = False, incl_remainder: bool = False
    ) -> Float[Tensor, "component batch d_embed"] | tuple[Float[Tensor, "component batch d_embed"], list[str]]:
        """Every head's direct term in the joint space, ``[layer * head (+1), batch, d_embed]``.

        Args:
            normalized: divide by the embedding norm (the parts then sum to the unit embedding).
            return_labels: also return ``["L0H0", "L0H1", ...]`` (and ``"remainder"``).
            incl_remainder: append embedding + MLP terms, so the stack sums to the embedding.
        """
        d = self.decompose(normalized=normalized)
        stack = d.heads.flatten(1, 2).transpose(0, 1)
        labels = d.labels()
        if incl_remainder:
            stack = torch.cat([stack, (d.embed + d.mlps.sum(1) + d.rest)[None]])
            labels.append("remainder")
        return (stack, labels) if return_labels else stack

    # ----------------------------------------------------------------- TL helpers, made exact here
    def _ensure_head_results(self) -> bool:
        """Fill missing ``hook_result`` entries from ``hook_z`` (LayerScale included)."""
        all_cached = True
        for l, block in enumerate(self.model.blocks):
            key = f"blocks.{l}.attn.hook_result"
            if key in self.cache_dict:
                continue
            all_cached = False
            with torch.no_grad():
                self.cache_dict[key] = block.attn.head_results(self[f"blocks.{l}.attn.hook_z"], block.ls_1)
        return all_cached

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False):
        """TL's ``stack_head_results`` (residual space, ``[layer * head, batch, pos, d_model]``).

        Raises:
            NotImplementedError: ``apply_ln=True`` (use :meth:`stack_head_terms`).
        """
        if apply_ln:
            raise NotImplementedError(_NO_LN.format(what="stack_head_results(apply_ln=True)"))
        return super().stack_head_results(layer, return_labels, incl_remainder, pos_slice, apply_ln=False)

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice=None, incl_embeds: bool = True,
                        return_labels: bool = False):
        """TL's ``decompose_resid``: the residual stream into layer ``layer`` as a stack of parts.

        The parts sum to ``blocks.{layer}.hook_resid_pre`` (``resid_post`` of the last layer
        when ``layer`` is ``None``/-1/``n_layers``; ``resid_mid`` with ``mlp_input``).
        """
        if apply_ln:
            raise NotImplementedError(_NO_LN.format(what="decompose_resid(apply_ln=True)"))
        L = self.model.cfg.n_layers
        layer = L if layer is None or layer == -1 else layer
        comps, labels = [], []
        if incl_embeds:
            comps.append(self["blocks.0.hook_resid_pre"])
            labels.append("embed")
        for l in range(layer):
            for kind in ("attn_out", "mlp_out"):
                if mode in ("all", kind[:-4]):
                    comps.append(self[f"blocks.{l}.hook_{kind}"])
                    labels.append(f"{l}_{kind}")
        if mlp_input and mode != "mlp":
            comps.append(self[f"blocks.{layer}.hook_attn_out"])
            labels.append(f"{layer}_attn_out")
        sl = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        stack = torch.stack([sl.apply(c, dim=-2) for c in comps])
        return (stack, labels) if return_labels else stack

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None, project_output_onto=None) -> Tensor:
        """TL's ``get_neuron_results`` ``[batch, pos, d_mlp, d_model]``, with LayerScale applied."""
        ls = self.model.blocks[layer].ls_2
        if ls is None:
            return super().get_neuron_results(layer, neuron_slice, pos_slice, project_output_onto)
        out = super().get_neuron_results(layer, neuron_slice, pos_slice) * ls
        if project_output_onto is None:
            return out
        proj = out @ project_output_onto
        return proj

    def apply_ln_to_stack(self, *args, **kwargs):
        raise NotImplementedError(_NO_LN.format(what="apply_ln_to_stack"))

    def logit_attrs(self, *args, **kwargs):
        raise NotImplementedError("logit_attrs needs token unembeddings; read heads through the zero-shot "
                                  "classifier instead (ltcutils.lens, on cache.stack_head_terms())")

    def get_full_resid_decomposition(self, *args, **kwargs):
        raise NotImplementedError(_NO_LN.format(what="get_full_resid_decomposition"))
