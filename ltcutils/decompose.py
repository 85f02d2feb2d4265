"""Exact decomposition of a CLIP ViT image embedding into embedding, per-head and per-MLP terms.

The final class-token residual is a sum: ``r = z0 + sum_l attn_l + sum_l mlp_l``, and each
attention output is a sum over heads, ``attn_l = sum_h (z_lh @ W_O[h]) * ls_1 + ls_1 * b_O``.
Treating the per-image mean ``mu`` and std ``sigma`` of ``ln_post`` as constants makes
``ln_post`` affine, so every term ``c`` with share ``s`` of the mean and the bias maps to the
joint space as::

    T(c; s) = (gamma * (c - s * mu) / sigma + s * beta) @ proj   [/ ||e||  when normalized]

With ``K = 2L + 1`` intermediates (L attention layers, L MLPs and the embedding term), the
embedding and each MLP get ``s = 1/K`` and each head ``s = 1/(K*H)`` (the out_proj bias is
shared out evenly over heads, ``b_O / H``). The shares sum to one, so the terms sum *exactly* to
``encode_image`` (or to the L2-normalised embedding when ``normalized=True``, where every term
is divided by the same unedited norm ``||e||``).

Because ``mu``, ``sigma`` and ``||e||`` come from the unedited forward pass, any later edit of a
term is a *direct-effect* edit: nothing propagates to later layers and ln_post is not recomputed.

Shapes: ``embed [batch, d_embed]`` (the class token after ln_pre), ``heads [batch, layer, head,
d_embed]``, ``mlps [batch, n_layers, d_embed]`` (index ``l`` = the MLP of layer ``l``),
``rest [batch, d_embed]``; ``total() == embed + heads.sum((1, 2)) + mlps.sum(1) + rest``.

Example (random weights)::

    >>> import torch
    >>> from ltcutils.hooked import HookedViT, ViTConfig
    >>> m = HookedViT(ViTConfig(image_size=32, patch_size=16, d_model=8, n_layers=2, n_heads=2, d_mlp=16, d_embed=4))
    >>> px = torch.randn(3, 3, 32, 32)
    >>> d = decompose(m, px)
    >>> tuple(d.embed.shape), tuple(d.heads.shape), tuple(d.mlps.shape), d.labels()[:3]
    ((3, 4), (3, 2, 2, 4), (3, 2, 4), ['L0H0', 'L0H1', 'L1H0'])
    >>> bool(torch.allclose(d.total(), m(px, normalize=True), atol=1e-6))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping
from typing import SupportsIndex

import torch
from jaxtyping import Float
from torch import Tensor

from .hooked import HookedViT

__all__ = [
    "Decomposition",
    "decompose",
    "terms_from_activations",
    "spatial_terms",
    "check_decomposition",
    "head_label",
    "head_terms_from_z",
    "DecompositionError",
]


class DecompositionError(AssertionError):
    """The decomposition terms do not sum to the model's own embedding."""


from .heads import head_label  # noqa: E402  (the one head-label codec lives in ltcutils.heads)


@dataclass(kw_only=True)
class Decomposition:
    """Direct contributions of one batch of images in the joint image-text space.

    Attributes:
        embed: ``[batch, d_embed]`` the embedding term (class token after ln_pre).
        heads: ``[batch, layer, head, d_embed]`` terms of the captured layers (``layers``).
        mlps: ``[batch, n_layers, d_embed]``; index ``l`` = the MLP of layer ``l``.
        rest: ``[batch, d_embed]`` the attention layers not captured (zeros when all are).
        norm: ``[batch]`` norm of the unedited embedding ``||e||`` (before L2 normalisation).
        layers: indices of the captured layers, in order.
        normalized: whether every term was divided by ``norm`` (terms then sum to a unit vector).
    """

    embed: Float[Tensor, "batch d_embed"]
    heads: Float[Tensor, "batch layer head d_embed"]
    mlps: Float[Tensor, "batch n_layers d_embed"]
    rest: Float[Tensor, "batch d_embed"]
    norm: Float[Tensor, " batch"]
    layers: tuple[int, ...]
    normalized: bool
    n_heads: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_heads = self.heads.shape[2]
        if len(self.layers) != self.heads.shape[1]:
            raise ValueError(f"heads holds {self.heads.shape[1]} layers but layers={self.layers}")

    def total(self) -> Float[Tensor, "batch d_embed"]:
        """Sum of all terms ``[batch, d_embed]`` (the embedding, up to float rounding)."""
        return self.embed + self.heads.sum((1, 2)) + self.mlps.sum(1) + self.rest

    def labels(self) -> list[str]:
        """``L{l}H{h}`` labels in the order of ``heads.flatten(1, 2)``."""
        return [head_label(l, h) for l in self.layers for h in range(self.n_heads)]

    def to(self, *args, **kwargs) -> "Decomposition":
        """The same terms moved/cast like ``Tensor.to``."""
        t = {k: getattr(self, k).to(*args, **kwargs) for k in ("embed", "heads", "mlps", "rest", "norm")}
        return Decomposition(**t, layers=self.layers, normalized=self.normalized)


def _shares(model: HookedViT) -> tuple[float, float]:
    """(share of each MLP-like term, share of each head)."""
    K = 2 * model.cfg.n_layers + 1
    return 1.0 / K, 1.0 / (K * model.cfg.n_heads)


def _to_joint(model: HookedViT, c: Tensor, share: float, mu: Tensor, sigma: Tensor) -> Tensor:
    """Map residual-space terms ``[batch, ..., d_model]`` through linearised ln_post and proj."""
    extra = c.dim() - 2
    view = (-1,) + (1,) * (extra + 1)
    mu, sigma = mu.reshape(view), sigma.reshape(view)
    ln = model.ln_post
    x = ln.weight * (c - share * mu) / sigma + share * ln.bias
    return x @ model.proj


def head_terms_from_z(
    model: HookedViT,
    layer: int,
    z_cls: Float[Tensor, "batch head d_head"],
    mu: Float[Tensor, "batch 1"],
    sigma: Float[Tensor, "batch 1"],
) -> Float[Tensor, "batch head d_embed"]:
    """Joint-space terms ``[batch, head, d_embed]`` of one layer's heads (not divided by the norm).

    Args:
        z_cls: ``[batch, head, d_head]`` the layer's ``hook_z`` at the class token.
        mu, sigma: ``[batch, 1]`` ln_post mean and scale of the class token.
    """
    attn = model.blocks[layer].attn
    r = torch.einsum("bhd,hdm->bhm", z_cls, attn.W_O) + attn.b_O / model.cfg.n_heads
    ls = model.blocks[layer].ls_1
    if ls is not None:
        r = r * ls
    return _to_joint(model, r, _shares(model)[1], mu, sigma)


def _recorder(store: dict, key: str, cls_only: bool):
    """A forward hook that keeps its activation in ``store[key]`` (only the class-token row if asked)."""
    def hook(act, hook):
        store[key] = act[:, 0] if cls_only else act
    return hook


def _layer_list(model: HookedViT, layers: Iterable[SupportsIndex] | None) -> tuple[int, ...]:
    """Validated, sorted layer indices (negative ones counted from the end); all when None."""
    L = model.cfg.n_layers
    if layers is None:
        return tuple(range(L))
    layers = [int(l) for l in layers]
    out = tuple(l if l >= 0 else L + l for l in layers)
    bad = [l for l in out if not 0 <= l < L]
    if bad or len(set(out)) != len(out):
        raise ValueError(f"layers must be distinct indices in [-{L}, {L}), got {layers}")
    return tuple(sorted(out))


def _needed_hooks(model: HookedViT, keep: tuple[int, ...]) -> list[str]:
    """Hook points whose class-token rows :func:`terms_from_activations` reads."""
    names = ["blocks.0.hook_resid_pre", "ln_post.hook_mean", "ln_post.hook_scale", "hook_image_embed"]
    for l in range(model.cfg.n_layers):
        names.append(f"blocks.{l}.hook_mlp_out")
        names.append(f"blocks.{l}.attn.hook_z" if l in keep else f"blocks.{l}.hook_attn_out")
    return names


def terms_from_activations(
    model: HookedViT,
    acts: Mapping[str, Tensor],
    layers: Iterable[SupportsIndex] | None = None,
    normalized: bool = True,
) -> Decomposition:
    """The decomposition from class-token activations keyed by hook name.

    Args:
        acts: the class-token rows (position 0) of ``blocks.0.hook_resid_pre``, every
            ``blocks.{l}.hook_mlp_out`` ``[batch, d_model]``, ``blocks.{l}.attn.hook_z``
            ``[batch, head, d_head]`` of the kept layers and ``blocks.{l}.hook_attn_out`` of
            the others, plus ``ln_post.hook_mean`` / ``hook_scale`` ``[batch, 1]`` and
            ``hook_image_embed`` ``[batch, d_embed]``.
        layers, normalized: as in :func:`decompose`.

    Raises:
        KeyError: an activation the decomposition needs is missing (the message lists them).
    """
    keep = _layer_list(model, layers)
    missing = [n for n in _needed_hooks(model, keep) if n not in acts]
    if missing:
        raise KeyError(f"the decomposition needs the activations {missing}; capture them (class-token rows)")
    mu, sigma, e = acts["ln_post.hook_mean"], acts["ln_post.hook_scale"], acts["hook_image_embed"]
    s_mlp, _ = _shares(model)
    L, B = model.cfg.n_layers, e.shape[0]
    embed = _to_joint(model, acts["blocks.0.hook_resid_pre"], s_mlp, mu, sigma)
    mlps = _to_joint(model, torch.stack([acts[f"blocks.{l}.hook_mlp_out"] for l in range(L)], 1), s_mlp, mu, sigma)
    if keep:
        heads = torch.stack([head_terms_from_z(model, l, acts[f"blocks.{l}.attn.hook_z"], mu, sigma) for l in keep], 1)
    else:
        heads = e.new_zeros(B, 0, model.cfg.n_heads, model.cfg.d_embed)
    rest = e.new_zeros(B, model.cfg.d_embed)
    for l in range(L):
        if l not in keep:
            rest = rest + _to_joint(model, acts[f"blocks.{l}.hook_attn_out"], s_mlp, mu, sigma)
    norm = e.norm(dim=-1)
    if normalized:
        embed, rest = embed / norm[:, None], rest / norm[:, None]
        heads, mlps = heads / norm[:, None, None, None], mlps / norm[:, None, None]
    return Decomposition(embed=embed, heads=heads, mlps=mlps, rest=rest, norm=norm, layers=keep,
                         normalized=normalized)


@torch.inference_mode()
def decompose(
    model: HookedViT,
    pixels: Float[Tensor, "batch 3 H W"],
    layers: Iterable[SupportsIndex] | None = None,
    normalized: bool = True,
) -> Decomposition:
    """Decompose a batch of images into direct terms in the joint space.

    Only the class-token rows of the activations are kept (memory ``O(batch * layer * d_model)``).

    Args:
        model: the hooked image tower.
        pixels: ``[batch, 3, H, W]`` preprocessed images (on the model's device).
        layers: attention layers whose heads are kept separately (default: all). The other
            layers are summed into ``rest``, so the identity still holds.
        normalized: divide every term by the unedited embedding norm, so the terms sum to the
            L2-normalised image embedding.

    Returns:
        a :class:`Decomposition` on the model's device.

    Raises:
        ValueError: bad layer indices or image size.
    """
    keep = _layer_list(model, layers)
    acts: dict[str, Tensor] = {}
    hooks = [(n, _recorder(acts, n, cls_only=n.startswith("blocks."))) for n in _needed_hooks(model, keep)]
    model.run_with_hooks(pixels, fwd_hooks=hooks)
    return terms_from_activations(model, acts, keep, normalized)


@torch.inference_mode()
def spatial_terms(
    model: HookedViT,
    pixels: Float[Tensor, "batch 3 H W"],
    heads: Iterable[tuple[int, int]],
    normalized: bool = True,
) -> Float[Tensor, "batch n_sel pos d_embed"]:
    """Per-source-token terms of chosen heads, ``[batch, n_sel, pos, d_embed]``.

    Token ``m`` of head ``(l, h)`` contributes ``alpha[0, m] * v_m @ W_O[h]`` plus its share
    ``b_O / (pos * H)`` of the out_proj bias (times LayerScale), mapped through the linearised
    ln_post with share ``1 / (K * pos * H)``. Summing over ``pos`` gives the head's term in
    :func:`decompose` exactly. Position 0 is the class token; 1.. are patches in row-major order.
    Only the class-token row of each attention pattern is formed: memory is
    ``O(batch * n_sel * pos * d_model)``, never ``[batch, pos, pos, head, width]``.

    Raises:
        ValueError: a head outside the model.
    """
    heads = [(int(l), int(h)) for l, h in heads]
    for l, h in heads:
        if not (0 <= l < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"head L{l}H{h} does not exist in a {model.cfg.n_layers}x{model.cfg.n_heads} model")
    need = sorted({l for l, _ in heads})
    store: dict[str, Tensor] = {}
    grab = lambda key, cls_only: _recorder(store, key, cls_only)  # noqa: E731

    hooks = [("ln_post.hook_mean", grab("mu", False)), ("ln_post.hook_scale", grab("sigma", False))]
    for l in need:
        hooks += [(f"blocks.{l}.attn.hook_q", grab(f"q{l}", True)),
                  (f"blocks.{l}.attn.hook_k", grab(f"k{l}", False)),
                  (f"blocks.{l}.attn.hook_v", grab(f"v{l}", False))]
    e = model.run_with_hooks(pixels, fwd_hooks=hooks)
    N, H, dh = model.cfg.n_pos, model.cfg.n_heads, model.cfg.d_head
    K = 2 * model.cfg.n_layers + 1
    share = 1.0 / (K * N * H)
    out = []
    for l, h in heads:
        attn = model.blocks[l].attn
        q0 = store[f"q{l}"][:, h]  # [batch, d_head] (class-token query)
        k = store[f"k{l}"][:, :, h]  # [batch, pos, d_head]
        v = store[f"v{l}"][:, :, h]
        alpha = (torch.einsum("bd,bnd->bn", q0, k) / dh**0.5).softmax(-1)
        r = alpha[..., None] * (v @ attn.W_O[h]) + attn.b_O / (N * H)
        ls = model.blocks[l].ls_1
        if ls is not None:
            r = r * ls
        out.append(_to_joint(model, r, share, store["mu"], store["sigma"]))
    terms = torch.stack(out, 1) if out else e.new_zeros(e.shape[0], 0, N, model.cfg.d_embed)
    if normalized:
        terms = terms / e.norm(dim=-1)[:, None, None, None]
    return terms


@torch.inference_mode()
def check_decomposition(
    clip_model: torch.nn.Module,
    hooked: HookedViT,
    pixels: Float[Tensor, "batch 3 H W"],
    rtol: float = 1e-5,
) -> dict[str, float]:
    """Check that the terms sum to open_clip's own ``encode_image``.

    Compares both the raw embedding (terms not normalised) and the L2-normalised one.

    Returns:
        ``{"rel_err_raw": ..., "rel_err_normalized": ..., "hooked_rel_err": ...}`` (max over batch).

    Raises:
        DecompositionError: if any relative error exceeds ``rtol``.
    """
    ref = clip_model.encode_image(pixels).float()
    raw = decompose(hooked, pixels, normalized=False).total().float()
    unit = decompose(hooked, pixels, normalized=True).total().float()
    hooked_out = hooked(pixels).float()

    def rel(a: Tensor, b: Tensor) -> float:
        return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max())

    errs = {
        "rel_err_raw": rel(raw, ref),
        "rel_err_normalized": rel(unit, torch.nn.functional.normalize(ref, dim=-1)),
        "hooked_rel_err": rel(hooked_out, ref),
    }
    worst = max(errs.values())
    if not worst <= rtol:
        raise DecompositionError(
            f"decomposition is not exact: {errs} exceeds rtol={rtol}. The hooked model or the "
            "linearised ln_post disagrees with open_clip; is the tower a supported class-token ViT "
            "and are both models in eval mode and the same dtype?"
        )
    return errs
