"""Exact decomposition of a CLIP ViT image embedding into per-head, per-MLP and embedding terms.

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

Shapes: ``heads [batch, layer, head, d_embed]``, ``mlps [batch, layer + 1, d_embed]`` (index 0
is the embedding term, index ``l + 1`` the MLP of layer ``l``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .hooked import HookedViT

__all__ = [
    "Decomposition",
    "decompose",
    "spatial_terms",
    "check_decomposition",
    "head_label",
    "head_terms_from_z",
    "DecompositionError",
]


class DecompositionError(AssertionError):
    """The decomposition terms do not sum to the model's own embedding."""


from .heads import head_label  # noqa: E402  (the one head-label codec lives in ltcutils.heads)


@dataclass
class Decomposition:
    """Direct contributions of one batch of images in the joint image-text space.

    Attributes:
        heads: ``[batch, layer, head, d_embed]`` terms of the captured layers (``layers``).
        mlps: ``[batch, n_layers + 1, d_embed]``; index 0 = embedding term, ``l + 1`` = MLP ``l``.
        rest: ``[batch, d_embed]`` the attention layers not captured (zeros when all are).
        norm: ``[batch]`` norm of the unedited embedding ``||e||`` (before L2 normalisation).
        layers: indices of the captured layers, in order.
        normalized: whether every term was divided by ``norm`` (terms then sum to a unit vector).
    """

    heads: torch.Tensor
    mlps: torch.Tensor
    rest: torch.Tensor
    norm: torch.Tensor
    layers: tuple[int, ...]
    normalized: bool
    n_heads: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_heads = self.heads.shape[2]

    def total(self) -> torch.Tensor:
        """Sum of all terms ``[batch, d_embed]`` (the embedding, up to float rounding)."""
        return self.heads.sum((1, 2)) + self.mlps.sum(1) + self.rest

    def labels(self) -> list[str]:
        """``L{l}H{h}`` labels in the order of ``heads.flatten(1, 2)``."""
        return [head_label(l, h) for l in self.layers for h in range(self.n_heads)]

    def to(self, *args, **kwargs) -> "Decomposition":
        return Decomposition(
            self.heads.to(*args, **kwargs), self.mlps.to(*args, **kwargs), self.rest.to(*args, **kwargs),
            self.norm.to(*args, **kwargs), self.layers, self.normalized,
        )


def _shares(model: HookedViT) -> tuple[float, float]:
    """(share of each MLP-like term, share of each head)."""
    K = 2 * model.cfg.layers + 1
    return 1.0 / K, 1.0 / (K * model.cfg.heads)


def _to_joint(model: HookedViT, c: torch.Tensor, share: float, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Map residual-space terms ``[batch, ..., d_model]`` through linearised ln_post and proj."""
    extra = c.dim() - 2
    view = (-1,) + (1,) * (extra + 1)
    mu, sigma = mu.reshape(view), sigma.reshape(view)
    ln = model.ln_post
    x = ln.weight * (c - share * mu) / sigma + share * ln.bias
    return x @ model.proj


def head_terms_from_z(
    model: HookedViT, layer: int, z_cls: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Joint-space terms ``[batch, head, d_embed]`` of one layer's heads (not divided by the norm).

    Args:
        z_cls: ``[batch, head, d_head]`` the layer's ``hook_z`` at the class token.
        mu, sigma: ``[batch, 1]`` ln_post mean and scale of the class token.
    """
    attn = model.blocks[layer].attn
    r = torch.einsum("bhd,hdm->bhm", z_cls, attn.W_O) + attn.out_proj_bias / model.cfg.heads
    ls = model.blocks[layer].ls_1
    if ls is not None:
        r = r * ls
    return _to_joint(model, r, _shares(model)[1], mu, sigma)


def _recorder(store: dict, key: str, cls_only: bool):
    """A forward hook that keeps its activation in ``store[key]`` (only the class-token row if asked)."""
    def hook(act, hook):
        store[key] = act[:, 0] if cls_only else act
    return hook


def _layer_list(model: HookedViT, layers: Sequence[int] | None) -> tuple[int, ...]:
    L = model.cfg.layers
    if layers is None:
        return tuple(range(L))
    out = tuple(int(l) if l >= 0 else L + int(l) for l in layers)
    bad = [l for l in out if not 0 <= l < L]
    if bad or len(set(out)) != len(out):
        raise ValueError(f"layers must be distinct indices in [-{L}, {L}), got {list(layers)}")
    return tuple(sorted(out))


@torch.inference_mode()
def decompose(
    model: HookedViT,
    pixels: torch.Tensor,
    layers: Sequence[int] | None = None,
    normalized: bool = True,
) -> Decomposition:
    """Decompose a batch of images into direct terms in the joint space.

    Args:
        model: the hooked image tower.
        pixels: ``[batch, 3, H, W]`` preprocessed images (on the model's device).
        layers: attention layers whose heads are kept separately (default: all). The other
            layers are summed into ``rest``, so the identity still holds.
        normalized: divide every term by the unedited embedding norm, so the terms sum to the
            L2-normalised image embedding.

    Returns:
        a :class:`Decomposition` on the model's device.
    """
    keep = _layer_list(model, layers)
    store: dict[str, torch.Tensor] = {}
    grab = lambda key, cls_only=True: _recorder(store, key, cls_only)  # noqa: E731

    hooks = [("blocks.0.hook_resid_pre", grab("embed")), ("ln_post.hook_mean", grab("mu", False)),
             ("ln_post.hook_scale", grab("sigma", False))]
    for l in range(model.cfg.layers):
        hooks.append((f"blocks.{l}.hook_mlp_out", grab(f"mlp{l}")))
        if l in keep:
            hooks.append((f"blocks.{l}.attn.hook_z", grab(f"z{l}")))
        else:
            hooks.append((f"blocks.{l}.hook_attn_out", grab(f"attn{l}")))
    e = model.run_with_hooks(pixels, fwd_hooks=hooks)

    mu, sigma = store["mu"], store["sigma"]
    s_mlp, s_head = _shares(model)
    H = model.cfg.heads
    B = pixels.shape[0]

    mlp_like = torch.stack([store["embed"]] + [store[f"mlp{l}"] for l in range(model.cfg.layers)], 1)
    mlps = _to_joint(model, mlp_like, s_mlp, mu, sigma)

    d_embed = model.cfg.d_embed
    if keep:
        heads = torch.stack([head_terms_from_z(model, l, store[f"z{l}"], mu, sigma) for l in keep], 1)
    else:
        heads = e.new_zeros(B, 0, H, d_embed)

    rest = e.new_zeros(B, d_embed)
    for l in range(model.cfg.layers):
        if l not in keep:
            rest = rest + _to_joint(model, store[f"attn{l}"], s_mlp, mu, sigma)

    norm = e.norm(dim=-1)
    if normalized:
        heads = heads / norm[:, None, None, None]
        mlps = mlps / norm[:, None, None]
        rest = rest / norm[:, None]
    return Decomposition(heads, mlps, rest, norm, keep, normalized)


@torch.inference_mode()
def spatial_terms(
    model: HookedViT,
    pixels: torch.Tensor,
    heads: Sequence[tuple[int, int]],
    normalized: bool = True,
) -> torch.Tensor:
    """Per-source-token terms of chosen heads, ``[batch, n_sel, pos, d_embed]``.

    Token ``m`` of head ``(l, h)`` contributes ``alpha[0, m] * v_m @ W_O[h]`` plus its share
    ``b_O / (pos * H)`` of the out_proj bias (times LayerScale), mapped through the linearised
    ln_post with share ``1 / (K * pos * H)``. Summing over ``pos`` gives the head's term in
    :func:`decompose` exactly. Position 0 is the class token; 1.. are patches in row-major order.
    Only the class-token row of each attention pattern is formed: memory is
    ``O(batch * n_sel * pos * d_model)``, never ``[batch, pos, pos, head, width]``.
    """
    heads = [(int(l), int(h)) for l, h in heads]
    for l, h in heads:
        if not (0 <= l < model.cfg.layers and 0 <= h < model.cfg.heads):
            raise ValueError(f"head L{l}H{h} does not exist in a {model.cfg.layers}x{model.cfg.heads} model")
    need = sorted({l for l, _ in heads})
    store: dict[str, torch.Tensor] = {}
    grab = lambda key, cls_only: _recorder(store, key, cls_only)  # noqa: E731

    hooks = [("ln_post.hook_mean", grab("mu", False)), ("ln_post.hook_scale", grab("sigma", False))]
    for l in need:
        hooks += [(f"blocks.{l}.attn.hook_q", grab(f"q{l}", True)),
                  (f"blocks.{l}.attn.hook_k", grab(f"k{l}", False)),
                  (f"blocks.{l}.attn.hook_v", grab(f"v{l}", False))]
    e = model.run_with_hooks(pixels, fwd_hooks=hooks)
    N, H, dh = model.cfg.n_pos, model.cfg.heads, model.cfg.d_head
    K = 2 * model.cfg.layers + 1
    share = 1.0 / (K * N * H)
    out = []
    for l, h in heads:
        attn = model.blocks[l].attn
        q0 = store[f"q{l}"][:, h]  # [batch, d_head] (class-token query)
        k = store[f"k{l}"][:, :, h]  # [batch, pos, d_head]
        v = store[f"v{l}"][:, :, h]
        alpha = (torch.einsum("bd,bnd->bn", q0, k) / dh**0.5).softmax(-1)
        r = alpha[..., None] * (v @ attn.W_O[h]) + attn.out_proj_bias / (N * H)
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
    pixels: torch.Tensor,
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

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
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
