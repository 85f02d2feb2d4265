"""The open_clip vision tower re-expressed as a TransformerLens ``HookedRootModule``.

Weights are taken by their open_clip state-dict keys (``conv1.weight``,
``transformer.resblocks.{l}.attn.in_proj_weight``, ...), which are stable across open_clip
versions, so nothing here depends on open_clip's module internals.

Hook names (a TransformerLens user will recognise them)::

    hook_embed                       [batch, pos, d_model]   patch + class + position embeddings
    ln_pre.hook_scale                [batch, pos, 1]         std used by ln_pre
    blocks.{l}.hook_resid_pre        [batch, pos, d_model]   (l = 0: the embeddings after ln_pre)
    blocks.{l}.ln1.hook_normalized   [batch, pos, d_model]
    blocks.{l}.attn.hook_q/k/v       [batch, pos, head, d_head]
    blocks.{l}.attn.hook_attn_scores [batch, head, pos_q, pos_k]   (computed only when hooked)
    blocks.{l}.attn.hook_pattern     [batch, head, pos_q, pos_k]   (computed only when hooked)
    blocks.{l}.attn.hook_z           [batch, pos, head, d_head]
    blocks.{l}.attn.hook_result      [batch, pos, head, d_model]   (computed only when hooked)
    blocks.{l}.hook_attn_out         [batch, pos, d_model]
    blocks.{l}.hook_resid_mid        [batch, pos, d_model]
    blocks.{l}.hook_mlp_out          [batch, pos, d_model]
    blocks.{l}.hook_resid_post       [batch, pos, d_model]
    ln_post.hook_mean / hook_scale   [batch, 1]              ln_post statistics of the class token
    hook_image_embed                 [batch, d_embed]        ln_post(class token) @ proj, before L2 norm

``hook_result`` is each head's output *including* LayerScale and *excluding* the out_proj
bias, so ``hook_attn_out == hook_result.sum(head) + ls_1 * b_O``.

Example (random weights)::

    >>> import torch
    >>> from ltcutils.hooked import HookedViT, ViTConfig
    >>> cfg = ViTConfig(image_size=32, patch_size=16, width=8, layers=1, heads=2, d_mlp=16, d_embed=4)
    >>> m = HookedViT(cfg)
    >>> out, cache = m.run_with_cache(torch.zeros(1, 3, 32, 32))
    >>> tuple(cache["blocks.0.attn.hook_z"].shape)
    (1, 5, 2, 4)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

__all__ = ["ViTConfig", "HookedViT", "HookNeverFiredError"]


class HookNeverFiredError(RuntimeError):
    """A hook was registered for a forward pass but its hook point never ran."""


@dataclass(frozen=True)
class ViTConfig:
    """Shape of an open_clip ``VisionTransformer`` (class-token pooling, pre-LN blocks)."""

    image_size: int
    patch_size: int
    width: int  # d_model
    layers: int
    heads: int
    d_mlp: int
    d_embed: int  # output (joint image-text) dimension
    act: str = "gelu"  # "gelu" or "quick_gelu"
    layer_scale: bool = False
    ln_eps: float = 1e-5

    @property
    def d_head(self) -> int:
        return self.width // self.heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_pos(self) -> int:
        return self.grid**2 + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, torch.Tensor], heads: int, act: str = "gelu", ln_eps: float = 1e-5
    ) -> "ViTConfig":
        """Infer every size but the head count from an open_clip ``visual`` state dict.

        The number of heads is not recoverable from weights and must be given.
        """
        _require_keys(sd, ["conv1.weight", "positional_embedding", "proj", "ln_post.weight"])
        width, _, patch, _ = sd["conv1.weight"].shape
        n_pos = sd["positional_embedding"].shape[0]
        grid = math.isqrt(n_pos - 1)
        if grid * grid != n_pos - 1:
            raise ValueError(f"positional_embedding has {n_pos} rows; expected 1 + a square number of patches")
        layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads={heads}")
        return cls(
            image_size=grid * patch,
            patch_size=patch,
            width=width,
            layers=layers,
            heads=heads,
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.hook_mean(x.mean(-1, keepdim=True))
        centred = x - mean
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(centred / scale) * self.weight + self.bias


class Attention(nn.Module):
    """Multi-head self-attention with per-head hooks; the fused path is used when nothing looks."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.in_proj_weight = nn.Parameter(torch.empty(3 * W, W))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * W))
        self.out_proj_weight = nn.Parameter(torch.empty(W, W))
        self.out_proj_bias = nn.Parameter(torch.zeros(W))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    @property
    def W_O(self) -> torch.Tensor:
        """Per-head blocks of out_proj, ``[head, d_head, d_model]``."""
        H, dh = self.cfg.heads, self.cfg.d_head
        return self.out_proj_weight.view(self.cfg.width, H, dh).permute(1, 2, 0)

    def forward(self, x: torch.Tensor, ls: torch.Tensor | None) -> torch.Tensor:
        B, N, W = x.shape
        H, dh = self.cfg.heads, self.cfg.d_head
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, N, 3, H, dh)
        q = self.hook_q(qkv[:, :, 0])
        k = self.hook_k(qkv[:, :, 1])
        v = self.hook_v(qkv[:, :, 2])
        if _is_hooked(self.hook_attn_scores) or _is_hooked(self.hook_pattern):
            scores = self.hook_attn_scores(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh))
            pattern = self.hook_pattern(scores.softmax(-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            z = z.transpose(1, 2)
        z = self.hook_z(z)
        if _is_hooked(self.hook_result):
            result = torch.einsum("bqhd,hdm->bqhm", z, self.W_O)
            if ls is not None:
                result = result * ls
            result = self.hook_result(result)
            bias = self.out_proj_bias if ls is None else ls * self.out_proj_bias
            return result.sum(2) + bias
        out = F.linear(z.reshape(B, N, W), self.out_proj_weight, self.out_proj_bias)
        return out if ls is None else out * ls


def _is_hooked(hp: HookPoint) -> bool:
    return bool(hp._forward_hooks)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = HookedLayerNorm(cfg.width, cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = HookedLayerNorm(cfg.width, cfg.ln_eps)
        self.mlp_in_weight = nn.Parameter(torch.empty(cfg.d_mlp, cfg.width))
        self.mlp_in_bias = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.mlp_out_weight = nn.Parameter(torch.empty(cfg.width, cfg.d_mlp))
        self.mlp_out_bias = nn.Parameter(torch.zeros(cfg.width))
        if cfg.layer_scale:
            self.ls_1 = nn.Parameter(torch.ones(cfg.width))
            self.ls_2 = nn.Parameter(torch.ones(cfg.width))
        else:
            self.ls_1 = self.ls_2 = None
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.act == "quick_gelu":
            return x * torch.sigmoid(1.702 * x)
        return F.gelu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.ln1(x), self.ls_1))
        x = self.hook_resid_mid(x + attn_out)
        h = self.act(F.linear(self.ln2(x), self.mlp_in_weight, self.mlp_in_bias))
        mlp_out = F.linear(h, self.mlp_out_weight, self.mlp_out_bias)
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
    "mlp.c_fc.weight": "mlp_in_weight",
    "mlp.c_fc.bias": "mlp_in_bias",
    "mlp.c_proj.weight": "mlp_out_weight",
    "mlp.c_proj.bias": "mlp_out_bias",
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


class HookedViT(HookedRootModule):
    """An open_clip ViT image tower with TransformerLens hook points.

    ``forward(pixels [batch, 3, H, W]) -> [batch, d_embed]`` equals open_clip's
    ``encode_image(pixels, normalize=False)``; pass ``normalize=True`` for the L2-normalised
    embedding. Build it with :meth:`from_open_clip` or :meth:`from_state_dict`.

    Hooks added with ``run_with_hooks`` or the ``hooks()`` context manager must fire: a hook
    whose point never ran during the forward pass raises :class:`HookNeverFiredError`.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.patch_weight = nn.Parameter(torch.empty(W, 3, cfg.patch_size, cfg.patch_size))
        self.class_embedding = nn.Parameter(torch.zeros(W))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.n_pos, W))
        self.hook_embed = HookPoint()
        self.ln_pre = HookedLayerNorm(W, cfg.ln_eps)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_post = HookedLayerNorm(W, cfg.ln_eps)
        self.proj = nn.Parameter(torch.empty(W, cfg.d_embed))
        self.hook_image_embed = HookPoint()
        self._init_random()
        self.setup()
        self._fired: set[str] | None = None

    # ----------------------------------------------------------------- construction
    def _init_random(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            if p.dim() > 1:
                p.data.normal_(0.0, 0.02, generator=g)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], cfg: ViTConfig) -> "HookedViT":
        """Build from an open_clip ``visual`` state dict (keys may carry a ``visual.`` prefix)."""
        if any(k.startswith("visual.") for k in sd):  # a whole CLIP state dict: keep the image tower
            sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
        if any(k.startswith("attn_pool") for k in sd):
            raise ValueError("attention-pooled vision towers are not supported: LTC reads the class token")
        model = cls(cfg)
        ours: dict[str, torch.Tensor] = {}
        needed = list(_TOP_KEYS)
        for k in _TOP_KEYS:
            if k in sd:
                ours[_TOP_KEYS[k]] = sd[k]
        for l in range(cfg.layers):
            for ok, mk in _BLOCK_KEYS.items():
                key = f"transformer.resblocks.{l}.{ok}"
                if ok.startswith("ls_") and not cfg.layer_scale:
                    continue
                needed.append(key)
                if key in sd:
                    ours[f"blocks.{l}.{mk}"] = sd[key]
        _require_keys(sd, needed)
        # assign=True: the hooked model's parameters *are* the given tensors (no second copy)
        model.load_state_dict(ours, strict=True, assign=True)
        return model

    @classmethod
    def from_open_clip(cls, clip_model: nn.Module, heads: int | None = None, act: str | None = None) -> "HookedViT":
        """Build from an open_clip ``CLIP`` model (or its ``.visual``), copying weights by key.

        Args:
            heads: number of attention heads; read from the tower when not given.
            act: "gelu" or "quick_gelu"; read from the tower when not given.
        """
        visual = getattr(clip_model, "visual", clip_model)
        _check_supported(visual)
        blk = visual.transformer.resblocks[0]
        if heads is None:
            heads = int(getattr(blk.attn, "num_heads", 0)) or int(getattr(blk.attn, "n_head", 0))
        if act is None:
            act = "quick_gelu" if type(blk.mlp.gelu).__name__ == "QuickGELU" else "gelu"
        eps = float(getattr(visual.ln_post, "eps", 1e-5))
        sd = {k: v.detach() for k, v in visual.state_dict().items()}
        cfg = ViTConfig.from_state_dict(sd, heads=heads, act=act, ln_eps=eps)
        model = cls.from_state_dict(sd, cfg)
        p = next(visual.parameters())
        return model.to(device=p.device, dtype=p.dtype).eval()

    # ----------------------------------------------------------------- forward
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch + class + position embeddings ``[batch, pos, d_model]`` (before ln_pre)."""
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

    def forward(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.ln_pre(self.hook_embed(self.embed(pixels)))
        for block in self.blocks:
            x = block(x)
        out = self.hook_image_embed(self.ln_post(x[:, 0]) @ self.proj)
        return F.normalize(out, dim=-1) if normalize else out

    # ----------------------------------------------------------------- hooks that must fire
    def _wrap(self, hooks: list[tuple[Any, Callable]]) -> list[tuple[Any, Callable]]:
        """Wrap each hook function so that firing is recorded under its hook-point name."""
        wrapped = []
        for name, fn in hooks:
            def recorder(act, hook, _fn=fn):
                if self._fired is not None:
                    self._fired.add(hook.name)
                return _fn(act, hook=hook)

            wrapped.append((name, recorder))
        return wrapped

    def _expected(self, hooks: list[tuple[Any, Callable]]) -> set[str]:
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

    def _check_fired(self, expected: set[str]) -> None:
        fired = self._fired or set()
        missing = sorted(expected - fired)
        if missing:
            raise HookNeverFiredError(
                f"hooks registered on {missing} never fired during the forward pass; "
                "check the hook names and that the forward pass reaches them"
            )

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True, clear_contexts=False):
        """TransformerLens ``hooks()``; additionally every forward hook must have fired on exit."""
        fwd = list(fwd_hooks)
        expected = self._expected(fwd)
        self._fired = set()
        try:
            with super().hooks(self._wrap(fwd), list(bwd_hooks), reset_hooks_end, clear_contexts) as m:
                yield m
            self._check_fired(expected)
        finally:
            self._fired = None

    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True,
                       clear_contexts=False, **model_kwargs):
        """TransformerLens ``run_with_hooks``; raises if a forward hook never fired."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)


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
