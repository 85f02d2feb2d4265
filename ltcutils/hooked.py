"""The open_clip vision tower re-expressed as a TransformerLens ``HookedRootModule``.

Weights are taken by their open_clip state-dict keys (``conv1.weight``,
``transformer.resblocks.{l}.attn.in_proj_weight``, ...), which are stable across open_clip
versions, so nothing here depends on open_clip's module internals.

Hook names (a TransformerLens user will recognise them)::

    hook_embed                       [batch, pos, d_model]   patch + class + position embeddings
    ln_pre.hook_scale                [batch, pos, 1]         std used by ln_pre
    blocks.{l}.hook_resid_pre        [batch, pos, d_model]   (l = 0: the embeddings after ln_pre)
    blocks.{l}.ln1.hook_normalized   [batch, pos, d_model]   (also hook_mean, hook_scale; ln2 alike)
    blocks.{l}.attn.hook_q/k/v       [batch, pos, head, d_head]
    blocks.{l}.attn.hook_attn_scores [batch, head, pos_q, pos_k]   (computed only when hooked)
    blocks.{l}.attn.hook_pattern     [batch, head, pos_q, pos_k]   (computed only when hooked)
    blocks.{l}.attn.hook_z           [batch, pos, head, d_head]
    blocks.{l}.attn.hook_result      [batch, pos, head, d_model]   (computed only when hooked)
    blocks.{l}.hook_attn_out         [batch, pos, d_model]
    blocks.{l}.hook_resid_mid        [batch, pos, d_model]
    blocks.{l}.mlp.hook_pre          [batch, pos, d_mlp]     neuron pre-activations
    blocks.{l}.mlp.hook_post         [batch, pos, d_mlp]     neuron activations (after GELU)
    blocks.{l}.hook_mlp_out          [batch, pos, d_model]
    blocks.{l}.hook_resid_post       [batch, pos, d_model]
    ln_post.hook_mean / hook_scale   [batch, 1]              ln_post statistics of the class token
    hook_image_embed                 [batch, d_embed]        ln_post(class token) @ proj, before L2 norm

"Computed only when hooked" means: when a forward *or* backward hook is registered on the
point (``HookPoint.has_hooks``), the unfused path runs and the point fires; otherwise the fused
kernel runs. Each LayerNorm likewise computes its statistics by hand only when one of its three
points is hooked, and runs ``F.layer_norm`` otherwise. ``hook_result`` is each head's output *including* LayerScale and *excluding* the
out_proj bias, so ``hook_attn_out == hook_result.sum(head) + ls_1 * b_O``; likewise
``hook_mlp_out == (hook_post @ W_out + b_out) * ls_2`` (``ls`` = 1 without LayerScale).

Weights in TransformerLens's layout (read-only properties; per block they are *views* of the
open_clip parameters, sharing memory; on the model they are stacked over layers, as copies)::

    blocks[l].attn.W_Q / W_K / W_V   [head, d_model, d_head]    model.W_Q  [layer, head, d_model, d_head]
    blocks[l].attn.W_O               [head, d_head, d_model]    model.W_O  [layer, head, d_head, d_model]
    blocks[l].attn.b_Q / b_K / b_V   [head, d_head]             model.b_Q  [layer, head, d_head]
    blocks[l].attn.b_O               [d_model]                  model.b_O  [layer, d_model]
    blocks[l].mlp.W_in / W_out       [d_model, d_mlp] / [d_mlp, d_model]
    blocks[l].mlp.b_in / b_out       [d_mlp] / [d_model]
    model.W_E                        [d_patch, d_model]  patch embedding; rows = (channel, row, col)
    model.W_pos                      [pos, d_model]      position embeddings (row 0: class token)

Assigning to a view raises ``AttributeError``; an in-place write into one raises while autograd
records (a view of a parameter that requires grad), but under ``torch.no_grad()`` it goes
through and edits the open_clip model too (the same memory). Edit weights on a copy.

Example (random weights)::

    >>> import torch
    >>> from ltcutils.hooked import HookedViT, ViTConfig
    >>> cfg = ViTConfig(image_size=32, patch_size=16, d_model=8, n_layers=1, n_heads=2, d_mlp=16, d_embed=4)
    >>> m = HookedViT(cfg)
    >>> out, cache = m.run_with_cache(torch.zeros(1, 3, 32, 32))
    >>> tuple(cache["blocks.0.attn.hook_z"].shape), tuple(cache["post", 0].shape)
    ((1, 5, 2, 4), (1, 5, 16))
    >>> tuple(m.blocks[0].attn.W_Q.shape), tuple(m.W_O.shape)
    ((2, 8, 4), (1, 2, 4, 8))
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

__all__ = ["ViTConfig", "HookedViT", "HookNeverFiredError"]


class HookNeverFiredError(RuntimeError):
    """A hook was registered for a forward pass but its hook point never ran."""


@dataclass(frozen=True)
class ViTConfig:
    """Shape of an open_clip ``VisionTransformer`` (class-token pooling, pre-LN blocks).

    Field names follow TransformerLens: ``n_layers``, ``n_heads``, ``d_model``, ``d_head``
    (derived), ``d_mlp``; ``d_embed`` is the joint image-text dimension. A count of layers is
    always ``n_layers``; ``layers`` elsewhere in the package is a tuple of layer *indices*.
    """

    image_size: int
    patch_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    d_embed: int
    act: str = "gelu"  # "gelu" or "quick_gelu"
    layer_scale: bool = False
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.act not in ("gelu", "quick_gelu"):
            raise ValueError(f"act must be 'gelu' or 'quick_gelu', got {self.act!r}")

    d_head = property(lambda self: self.d_model // self.n_heads, doc="Width of one head.")
    grid = property(lambda self: self.image_size // self.patch_size, doc="Patches per side.")
    n_pos = property(lambda self: self.grid**2 + 1, doc="Positions: the class token, then the patches.")
    d_patch = property(lambda self: 3 * self.patch_size**2, doc="Pixels in one patch (the rows of ``W_E``).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, Tensor], n_heads: int, act: str = "gelu", ln_eps: float = 1e-5
    ) -> "ViTConfig":
        """Infer every size but the head count from an open_clip ``visual`` state dict.

        Raises:
            KeyError: a key every open_clip ViT has is missing.
            ValueError: the position table is not 1 + a square, or d_model % n_heads != 0.
        """
        _require_keys(sd, ["conv1.weight", "positional_embedding", "proj", "ln_post.weight"])
        d_model, _, patch, _ = sd["conv1.weight"].shape
        n_pos = sd["positional_embedding"].shape[0]
        grid = math.isqrt(n_pos - 1)
        if grid * grid != n_pos - 1:
            raise ValueError(f"positional_embedding has {n_pos} rows; expected 1 + a square number of patches")
        n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
        return cls(
            image_size=grid * patch,
            patch_size=patch,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            d_mlp=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            d_embed=sd["proj"].shape[1],
            act=act,
            layer_scale="transformer.resblocks.0.ls_1.gamma" in sd,
            ln_eps=ln_eps,
        )


def _require_keys(sd: Mapping[str, Any], keys: Iterable[str]) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise KeyError(
            f"state dict lacks {missing}; expected an open_clip VisionTransformer state dict "
            "(keys like 'conv1.weight', 'transformer.resblocks.0.attn.in_proj_weight')"
        )


class HookedLayerNorm(nn.Module):
    """LayerNorm with hooks on its statistics: ``hook_mean``, ``hook_scale``, ``hook_normalized``."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.hook_mean = HookPoint()
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if not (self.hook_mean.has_hooks() or self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)  # nothing looks: fused
        mean = self.hook_mean(x.mean(-1, keepdim=True))
        centred = x - mean
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(centred / scale) * self.weight + self.bias


class Attention(nn.Module):
    """Multi-head self-attention with per-head hooks; the fused path is used when nothing looks.

    Parameters keep open_clip's layout (``in_proj_weight [3 * d_model, d_model]``, ...);
    ``W_Q``... are TransformerLens-layout views of them.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.d_model
        self.in_proj_weight = nn.Parameter(torch.empty(3 * W, W))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * W))
        self.out_proj_weight = nn.Parameter(torch.empty(W, W))
        self.out_proj_bias = nn.Parameter(torch.zeros(W))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    def _in_view(self, part: int) -> Float[Tensor, "head d_model d_head"]:
        W, H, dh = self.cfg.d_model, self.cfg.n_heads, self.cfg.d_head
        return self.in_proj_weight[part * W : (part + 1) * W].view(H, dh, W).transpose(1, 2)

    def _bias_view(self, part: int) -> Float[Tensor, "head d_head"]:
        W = self.cfg.d_model
        return self.in_proj_bias[part * W : (part + 1) * W].view(self.cfg.n_heads, self.cfg.d_head)

    W_Q = property(lambda self: self._in_view(0), doc="Query weights ``[head, d_model, d_head]`` (a view).")
    W_K = property(lambda self: self._in_view(1), doc="Key weights ``[head, d_model, d_head]`` (a view).")
    W_V = property(lambda self: self._in_view(2), doc="Value weights ``[head, d_model, d_head]`` (a view).")
    b_Q = property(lambda self: self._bias_view(0), doc="Query bias ``[head, d_head]`` (a view).")
    b_K = property(lambda self: self._bias_view(1), doc="Key bias ``[head, d_head]`` (a view).")
    b_V = property(lambda self: self._bias_view(2), doc="Value bias ``[head, d_head]`` (a view).")
    b_O = property(lambda self: self.out_proj_bias, doc="out_proj bias ``[d_model]`` (the parameter).")

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        """Per-head blocks of out_proj, ``[head, d_head, d_model]`` (a view; no LayerScale)."""
        H, dh = self.cfg.n_heads, self.cfg.d_head
        return self.out_proj_weight.view(self.cfg.d_model, H, dh).permute(1, 2, 0)

    def head_results(
        self, z: Float[Tensor, "batch pos head d_head"], ls: Float[Tensor, " d_model"] | None
    ) -> Float[Tensor, "batch pos head d_model"]:
        """Each head's write into the residual stream (LayerScale included, out_proj bias not)."""
        result = torch.einsum("bqhd,hdm->bqhm", z, self.W_O)
        return result if ls is None else result * ls

    def forward(self, x: Tensor, ls: Tensor | None) -> Tensor:
        B, N, W = x.shape
        H, dh = self.cfg.n_heads, self.cfg.d_head
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, N, 3, H, dh)
        q = self.hook_q(qkv[:, :, 0])
        k = self.hook_k(qkv[:, :, 1])
        v = self.hook_v(qkv[:, :, 2])
        if self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks():
            scores = self.hook_attn_scores(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh))
            pattern = self.hook_pattern(scores.softmax(-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            z = z.transpose(1, 2)
        z = self.hook_z(z)
        if self.hook_result.has_hooks():
            result = self.hook_result(self.head_results(z, ls))
            bias = self.out_proj_bias if ls is None else ls * self.out_proj_bias
            return result.sum(2) + bias
        out = F.linear(z.reshape(B, N, W), self.out_proj_weight, self.out_proj_bias)
        return out if ls is None else out * ls


class MLP(nn.Module):
    """The block's MLP with neuron hooks ``hook_pre`` / ``hook_post`` ``[batch, pos, d_mlp]``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.c_fc_weight = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.c_fc_bias = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.c_proj_weight = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.c_proj_bias = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    W_in = property(lambda self: self.c_fc_weight.T, doc="``[d_model, d_mlp]`` (a view of c_fc.weight).")
    b_in = property(lambda self: self.c_fc_bias, doc="``[d_mlp]`` (the parameter).")
    W_out = property(lambda self: self.c_proj_weight.T, doc="``[d_mlp, d_model]`` (a view of c_proj.weight).")
    b_out = property(lambda self: self.c_proj_bias, doc="``[d_model]`` (the parameter; no LayerScale).")

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(F.linear(x, self.c_fc_weight, self.c_fc_bias))
        post = pre * torch.sigmoid(1.702 * pre) if self.cfg.act == "quick_gelu" else F.gelu(pre)
        return F.linear(self.hook_post(post), self.c_proj_weight, self.c_proj_bias)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = HookedLayerNorm(cfg.d_model, cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = HookedLayerNorm(cfg.d_model, cfg.ln_eps)
        self.mlp = MLP(cfg)
        if cfg.layer_scale:
            self.ls_1 = nn.Parameter(torch.ones(cfg.d_model))
            self.ls_2 = nn.Parameter(torch.ones(cfg.d_model))
        else:
            self.ls_1 = self.ls_2 = None
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.ln1(x), self.ls_1))
        x = self.hook_resid_mid(x + attn_out)
        mlp_out = self.mlp(self.ln2(x))
        if self.ls_2 is not None:
            mlp_out = mlp_out * self.ls_2
        return self.hook_resid_post(x + self.hook_mlp_out(mlp_out))


# open_clip key (relative to a resblock) -> our parameter name (relative to a Block)
_BLOCK_KEYS = {
    "ln_1.weight": "ln1.weight",
    "ln_1.bias": "ln1.bias",
    "attn.in_proj_weight": "attn.in_proj_weight",
    "attn.in_proj_bias": "attn.in_proj_bias",
    "attn.out_proj.weight": "attn.out_proj_weight",
    "attn.out_proj.bias": "attn.out_proj_bias",
    "ln_2.weight": "ln2.weight",
    "ln_2.bias": "ln2.bias",
    "mlp.c_fc.weight": "mlp.c_fc_weight",
    "mlp.c_fc.bias": "mlp.c_fc_bias",
    "mlp.c_proj.weight": "mlp.c_proj_weight",
    "mlp.c_proj.bias": "mlp.c_proj_bias",
    "ls_1.gamma": "ls_1",
    "ls_2.gamma": "ls_2",
}
_TOP_KEYS = {
    "conv1.weight": "patch_weight",
    "class_embedding": "class_embedding",
    "positional_embedding": "positional_embedding",
    "ln_pre.weight": "ln_pre.weight",
    "ln_pre.bias": "ln_pre.bias",
    "ln_post.weight": "ln_post.weight",
    "ln_post.bias": "ln_post.bias",
    "proj": "proj",
}


def _stacked(path: str, shape: str) -> property:
    get = operator.attrgetter(path)
    return property(lambda self: torch.stack([get(b) for b in self.blocks]),
                    doc=f"``blocks[l].{path}`` stacked over layers, ``{shape}`` (a copy).")


class HookedViT(HookedRootModule):
    """An open_clip ViT image tower with TransformerLens hook points.

    ``forward(pixels [batch, 3, H, W]) -> [batch, d_embed]`` equals open_clip's
    ``encode_image(pixels, normalize=False)``; pass ``normalize=True`` for the L2-normalised
    embedding. Build it with :meth:`from_open_clip` or :meth:`from_state_dict` (which share the
    given tensors); ``HookedViT(cfg)`` alone has seeded random weights.

    Hooks added with ``run_with_hooks`` or the ``hooks()`` context manager must fire: a forward
    hook whose point never ran inside its context raises :class:`HookNeverFiredError` when that
    context exits. Each context checks its own hooks, so contexts nest ("patch, then cache":
    ``with m.hooks(patch): m.run_with_cache(px)``). Backward hooks are not checked (they fire
    only once ``backward()`` runs). :meth:`run_with_cache` returns a
    :class:`~ltcutils.activations.ViTActivationCache`.
    """

    W_Q = _stacked("attn.W_Q", "[layer, head, d_model, d_head]")
    W_K = _stacked("attn.W_K", "[layer, head, d_model, d_head]")
    W_V = _stacked("attn.W_V", "[layer, head, d_model, d_head]")
    W_O = _stacked("attn.W_O", "[layer, head, d_head, d_model]")
    b_Q = _stacked("attn.b_Q", "[layer, head, d_head]")
    b_K = _stacked("attn.b_K", "[layer, head, d_head]")
    b_V = _stacked("attn.b_V", "[layer, head, d_head]")
    b_O = _stacked("attn.b_O", "[layer, d_model]")
    W_in = _stacked("mlp.W_in", "[layer, d_model, d_mlp]")
    W_out = _stacked("mlp.W_out", "[layer, d_mlp, d_model]")
    b_in = _stacked("mlp.b_in", "[layer, d_mlp]")
    b_out = _stacked("mlp.b_out", "[layer, d_model]")

    def __init__(self, cfg: ViTConfig, init: bool = True):
        """Build the module; ``init=False`` leaves the weights unset (used on the meta device)."""
        super().__init__()
        self.cfg = cfg
        W = cfg.d_model
        self.patch_weight = nn.Parameter(torch.empty(W, 3, cfg.patch_size, cfg.patch_size))
        self.class_embedding = nn.Parameter(torch.zeros(W))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.n_pos, W))
        self.hook_embed = HookPoint()
        self.ln_pre = HookedLayerNorm(W, cfg.ln_eps)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_post = HookedLayerNorm(W, cfg.ln_eps)
        self.proj = nn.Parameter(torch.empty(W, cfg.d_embed))
        self.hook_image_embed = HookPoint()
        if init:
            self._init_random()
        self.setup()

    @property
    def W_E(self) -> Float[Tensor, "d_patch d_model"]:
        """Patch embedding as a matrix ``[d_patch, d_model]`` (a view of conv1.weight).

        ``pixels[b, :, i*p:(i+1)*p, j*p:(j+1)*p].flatten() @ W_E`` is patch ``(i, j)``'s embedding.
        """
        return self.patch_weight.view(self.cfg.d_model, -1).T

    W_pos = property(lambda self: self.positional_embedding,
                     doc="Position embeddings ``[pos, d_model]`` (the parameter; row 0: the class token).")

    # ----------------------------------------------------------------- construction
    def _init_random(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)  # weights N(0, 0.02); LayerNorms and biases as built
        for p in self.parameters():
            if p.dim() > 1:
                p.data.normal_(0.0, 0.02, generator=g)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], cfg: ViTConfig) -> "HookedViT":
        """Build from an open_clip ``visual`` state dict (keys may carry a ``visual.`` prefix).

        The module is built on the ``meta`` device (no memory, no random init) and the given
        tensors are assigned as its parameters: they are shared, not copied.

        Raises:
            KeyError: a key the config needs is missing.
            ValueError: an attention-pooled tower.
        """
        if any(k.startswith("visual.") for k in sd):  # a whole CLIP state dict: keep the image tower
            sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
        if any(k.startswith("attn_pool") for k in sd):
            raise ValueError("attention-pooled vision towers are not supported: LTC reads the class token")
        ours: dict[str, Tensor] = {}
        needed = list(_TOP_KEYS)
        for k in _TOP_KEYS:
            if k in sd:
                ours[_TOP_KEYS[k]] = sd[k]
        for l in range(cfg.n_layers):
            for ok, mk in _BLOCK_KEYS.items():
                key = f"transformer.resblocks.{l}.{ok}"
                if ok.startswith("ls_") and not cfg.layer_scale:
                    continue
                needed.append(key)
                if key in sd:
                    ours[f"blocks.{l}.{mk}"] = sd[key]
        _require_keys(sd, needed)
        with torch.device("meta"):
            model = cls(cfg, init=False)
        # assign=True: the hooked model's parameters *are* the given tensors (no second copy)
        model.load_state_dict(ours, strict=True, assign=True)
        return model

    @classmethod
    def from_open_clip(cls, clip_model: nn.Module, n_heads: int | None = None, act: str | None = None) -> "HookedViT":
        """Build from an open_clip ``CLIP`` model (or its ``.visual``), sharing its weights.

        Args:
            n_heads: number of attention heads; read from the tower when not given.
            act: "gelu" or "quick_gelu"; read from the tower when not given.

        Raises:
            TypeError, ValueError: a tower whose forward is not re-expressed exactly here.
        """
        visual = getattr(clip_model, "visual", clip_model)
        _check_supported(visual)
        blk = visual.transformer.resblocks[0]
        if n_heads is None:
            n_heads = int(getattr(blk.attn, "num_heads", 0)) or int(getattr(blk.attn, "n_head", 0))
        if act is None:
            act = "quick_gelu" if type(blk.mlp.gelu).__name__ == "QuickGELU" else "gelu"
        eps = float(getattr(visual.ln_post, "eps", 1e-5))
        sd = {k: v.detach() for k, v in visual.state_dict().items()}
        cfg = ViTConfig.from_state_dict(sd, n_heads=n_heads, act=act, ln_eps=eps)
        model = cls.from_state_dict(sd, cfg)
        p = next(visual.parameters())
        return model.to(device=p.device, dtype=p.dtype).eval()

    # ----------------------------------------------------------------- forward
    def embed(self, pixels: Float[Tensor, "batch 3 H W"]) -> Float[Tensor, "batch pos d_model"]:
        """Patch + class + position embeddings ``[batch, pos, d_model]`` (before ln_pre).

        Raises:
            ValueError: not ``[batch, 3, image_size, image_size]``.
        """
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [batch, 3, H, W], got {tuple(pixels.shape)}")
        if pixels.shape[-1] != self.cfg.image_size or pixels.shape[-2] != self.cfg.image_size:
            raise ValueError(
                f"expected {self.cfg.image_size}x{self.cfg.image_size} images, got "
                f"{pixels.shape[-2]}x{pixels.shape[-1]}; use the model's preprocess transform"
            )
        x = F.conv2d(pixels.to(self.patch_weight.dtype), self.patch_weight, stride=self.cfg.patch_size)
        x = x.flatten(2).transpose(1, 2)
        cls_tok = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls_tok, x], dim=1) + self.positional_embedding

    def forward(self, pixels: Float[Tensor, "batch 3 H W"], normalize: bool = False) -> Float[Tensor, "batch d_embed"]:
        """The image embedding ``[batch, d_embed]`` (L2-normalised when ``normalize``)."""
        x = self.ln_pre(self.hook_embed(self.embed(pixels)))
        for block in self.blocks:
            x = block(x)
        out = self.hook_image_embed(self.ln_post(x[:, 0]) @ self.proj)
        return F.normalize(out, dim=-1) if normalize else out

    # ----------------------------------------------------------------- hooks that must fire
    def _hook_names(self, hooks: list[tuple[Any, Callable]]) -> set[str]:
        """The hook-point names a list of ``(name or filter, fn)`` pairs reaches."""
        names: set[str] = set()
        for name, _ in hooks:
            if isinstance(name, str):
                if name not in self.hook_dict:
                    raise KeyError(
                        f"no hook point named {name!r}; valid names look like "
                        "'blocks.0.attn.hook_z' (see HookedViT.hook_dict)"
                    )
                names.add(name)
            else:
                names |= {n for n in self.hook_dict if name(n)}
        return names

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True, clear_contexts=False):
        """TransformerLens ``hooks()``; additionally every forward hook must fire inside it.

        Raises:
            KeyError: a hook name that is not a hook point.
            HookNeverFiredError: on exit, a forward hook of *this* context never ran.
        """
        fwd, bwd = list(fwd_hooks), list(bwd_hooks)
        expected = self._hook_names(fwd)
        self._hook_names(bwd)  # validates the names
        fired: set[str] = set()  # this context's own record, so that contexts nest
        with super().hooks(_recording(fwd, fired), bwd, reset_hooks_end, clear_contexts) as m:
            yield m
        missing = sorted(expected - fired)
        if missing:
            raise HookNeverFiredError(
                f"hooks registered on {missing} never fired during the forward pass; "
                "check the hook names and that a forward pass ran inside the hooks() context"
            )

    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True,
                       clear_contexts=False, **model_kwargs):
        """TransformerLens ``run_with_hooks``; raises if a forward hook never fired."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    def run_with_cache(self, *model_args, return_cache_object: bool = True, **kwargs) -> tuple[Tensor, Any]:
        """TransformerLens ``run_with_cache``: ``(output, cache)``.

        ``cache`` is a :class:`~ltcutils.activations.ViTActivationCache` (TL's
        ``ActivationCache`` with this model's exact joint-space decomposition), or the plain
        dict with ``return_cache_object=False``. Other keywords as in TL (``names_filter``,
        ``device``, ``remove_batch_dim``, ...). ``incl_bwd=True`` needs a scalar output, which
        this model does not return: register ``bwd_hooks`` in :meth:`hooks` and call
        ``backward()`` on your own metric instead.
        """
        out, cache = super().run_with_cache(*model_args, **kwargs)
        if not return_cache_object:
            return out, cache
        from .activations import ViTActivationCache

        return out, ViTActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))


def _recording(hooks: list[tuple[Any, Callable]], fired: set[str]) -> list[tuple[Any, Callable]]:
    """Wrap each hook function so that it adds its hook point's name to ``fired`` when it runs."""
    wrapped = []
    for name, fn in hooks:
        def recorder(act, hook, _fn=fn):
            fired.add(hook.name)
            return _fn(act, hook=hook)

        wrapped.append((name, recorder))
    return wrapped


def _check_supported(visual: nn.Module) -> None:
    """Refuse vision towers whose forward we do not re-express exactly."""
    kind = type(visual).__name__
    if kind != "VisionTransformer":
        raise TypeError(
            f"the image tower is a {kind}, not a ViT: LTC needs attention heads "
            "(use a ViT model such as ViT-B-16, ViT-L-14 or ViT-H-14)"
        )
    problems = []
    if getattr(visual, "attn_pool", None) is not None:
        problems.append("attention pooling")
    if getattr(visual, "pool_type", "tok") != "tok":
        problems.append(f"pool_type={visual.pool_type!r}")
    if getattr(visual, "final_ln_after_pool", False):
        problems.append("final_ln_after_pool")
    blk = visual.transformer.resblocks[0]
    if not isinstance(blk.attn, nn.MultiheadAttention):
        problems.append(f"custom attention {type(blk.attn).__name__} (qk-norm / scaled cosine)")
    if getattr(visual, "proj", None) is None:
        problems.append("no output projection")
    if problems:
        raise ValueError(
            "this open_clip vision tower uses " + ", ".join(problems) + ", which the exact per-head "
            "decomposition does not support; use a standard class-token ViT (e.g. ViT-B-16)"
        )
