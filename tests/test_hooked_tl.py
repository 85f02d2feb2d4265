"""The hooked ViT as a TransformerLens user meets it: nested hook contexts, backward hooks on the
lazily computed points, TL's config and weight vocabulary, MLP neurons, and the activation cache."""

import pytest
import torch

from ltcutils.hooked import HookedViT, HookNeverFiredError, ViTConfig


def _small(layer_scale: bool = True, dtype=torch.float64) -> HookedViT:
    """A 2-layer, 2-head ViT at seeded random weights (LayerScale made non-trivial)."""
    cfg = ViTConfig(image_size=32, patch_size=16, d_model=8, n_layers=2, n_heads=2, d_mlp=16, d_embed=4,
                    layer_scale=layer_scale)
    m = HookedViT(cfg).to(dtype).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in m.named_parameters():  # O(1) weights so that every path matters
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype) * (0.5 if p.dim() > 1 else 0.2))
            if name.endswith(("ls_1", "ls_2")):
                p.uniform_(0.5, 1.5, generator=g)
    return m


def _px(m: HookedViT, n: int = 2, seed: int = 0) -> torch.Tensor:
    s = m.cfg.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(
        m.proj.dtype)


def _keep(store, key):
    def hook(act, hook):
        store[key] = act.detach().clone()
    return hook


# ------------------------------------------------------------------ nested hook contexts


def test_nested_hook_contexts_both_fire_and_both_apply():
    m = _small()
    px = _px(m)
    seen: dict = {}

    def zero_head0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    with m.hooks(fwd_hooks=[("blocks.0.attn.hook_z", zero_head0)]):
        with m.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", _keep(seen, "resid"))]):
            patched = m(px)
        assert "resid" in seen
        # the inner context removed only its own hook: the outer edit is still applied
        assert torch.allclose(m(px), patched)
    assert not torch.allclose(m(px), patched)


def test_patch_then_cache_inside_hooks():
    """run_with_cache and run_with_hooks inside hooks(): the patched run is what gets cached."""
    m = _small()
    px = _px(m)

    def zero_z(z, hook):
        return torch.zeros_like(z)

    with m.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero_z)]):
        out, cache = m.run_with_cache(px)
        again = m.run_with_hooks(px, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: a)])
    assert torch.equal(cache["blocks.1.attn.hook_z"], torch.zeros_like(cache["blocks.1.attn.hook_z"]))
    assert torch.allclose(out, again)
    assert not torch.allclose(out, m(px))


def test_nested_contexts_still_report_a_hook_that_never_fired():
    m = _small()
    px = _px(m)
    ok = [("blocks.0.hook_resid_pre", lambda a, hook: a)]
    with pytest.raises(HookNeverFiredError, match="blocks.1.attn.hook_z"):
        with m.hooks(fwd_hooks=ok):
            m(px)
            with m.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda a, hook: a)]):
                pass  # the inner context ran no forward pass
    # a forward pass inside the inner context runs the outer context's hooks too: both count
    seen: dict = {}
    with m.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", _keep(seen, "outer"))]):
        with m.hooks(fwd_hooks=[("blocks.1.attn.hook_z", _keep(seen, "inner"))]):
            m(px)
    assert set(seen) == {"outer", "inner"}
    assert all(not hp.has_hooks() for hp in m.hook_dict.values())


# ------------------------------------------------------------------ backward hooks on lazy points


@pytest.mark.parametrize("name", ["blocks.0.attn.hook_result", "blocks.1.attn.hook_pattern",
                                  "blocks.1.attn.hook_attn_scores"])
def test_backward_hook_fires_on_lazily_computed_points(name):
    m = _small()
    grads: dict = {}

    def keep_grad(g, hook):
        grads[hook.name] = g.detach().clone()

    with m.hooks(bwd_hooks=[(name, keep_grad)]):
        m(_px(m)).sum().backward()
    assert name in grads, f"the backward hook on {name} never fired"


def test_gradient_at_head_results_matches_finite_differences():
    """Attribution patching on head results: the gradient a backward hook sees is the true one."""
    m = _small()
    px = _px(m)
    u = torch.randn(m.cfg.d_embed, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    name = "blocks.0.attn.hook_result"
    grads: dict = {}
    with m.hooks(bwd_hooks=[(name, lambda g, hook: grads.__setitem__("g", g.detach().clone()))]):
        (m(px) @ u).sum().backward()
    g = grads["g"]  # [batch, pos, head, d_model]
    assert g.shape == (2, m.cfg.n_pos, m.cfg.n_heads, m.cfg.d_model)

    v = torch.randn(g.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    eps = 1e-5

    def metric(delta: float) -> float:
        with torch.no_grad():
            out = m.run_with_hooks(px, fwd_hooks=[(name, lambda r, hook: r + delta * v)])
        return float((out @ u).sum())

    fd = (metric(eps) - metric(-eps)) / (2 * eps)
    analytic = float((g * v).sum())
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), (fd, analytic)
    # per head: attribution patching reads head h's share of a change as grad[h] . delta[h]
    for h in range(m.cfg.n_heads):
        vh = torch.zeros_like(v)
        vh[:, :, h] = v[:, :, h]
        with torch.no_grad():
            plus = m.run_with_hooks(px, fwd_hooks=[(name, lambda r, hook: r + eps * vh)])
            minus = m.run_with_hooks(px, fwd_hooks=[(name, lambda r, hook: r - eps * vh)])
        fd_h = float(((plus - minus) @ u).sum()) / (2 * eps)
        assert abs(fd_h - float((g * vh).sum())) <= 1e-6 * max(1.0, abs(fd_h))


# ------------------------------------------------------------------ TL vocabulary: config and weights


def test_config_speaks_transformer_lens():
    m = _small()
    cfg = m.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (2, 2, 8, 4, 16)
    assert not hasattr(cfg, "layers")  # a count is n_layers; "layers" means indices elsewhere
    with pytest.raises(AttributeError):
        cfg.n_layers = 3  # frozen
    assert "n_layers" in cfg.to_dict() and "layers" not in cfg.to_dict()
    with pytest.raises(ValueError, match="not divisible"):
        ViTConfig(image_size=32, patch_size=16, d_model=9, n_layers=1, n_heads=2, d_mlp=4, d_embed=4)


def test_open_clip_config_is_read_into_tl_names(tiny):
    v = tiny.clip.visual
    cfg = tiny.hooked.cfg
    assert cfg.n_layers == len(v.transformer.resblocks)
    assert cfg.n_heads == v.transformer.resblocks[0].attn.num_heads
    assert cfg.d_model == v.conv1.out_channels and cfg.d_mlp == v.transformer.resblocks[0].mlp.c_fc.out_features


def test_weight_views_share_open_clip_memory(tiny):
    hk, blk = tiny.hooked, tiny.clip.visual.transformer.resblocks[1]
    attn = hk.blocks[1].attn
    H, dh, W = hk.cfg.n_heads, hk.cfg.d_head, hk.cfg.d_model
    assert attn.W_Q.shape == (H, W, dh) and attn.W_O.shape == (H, dh, W) and attn.b_K.shape == (H, dh)
    assert attn.W_Q.data_ptr() == blk.attn.in_proj_weight.data_ptr()
    assert attn.W_O.data_ptr() == blk.attn.out_proj.weight.data_ptr()
    assert hk.blocks[1].mlp.W_in.data_ptr() == blk.mlp.c_fc.weight.data_ptr()
    assert hk.W_E.data_ptr() == tiny.clip.visual.conv1.weight.data_ptr()
    assert hk.W_pos.data_ptr() == tiny.clip.visual.positional_embedding.data_ptr()
    # head 1's query weights are rows dh..2dh of in_proj_weight, transposed
    assert torch.equal(attn.W_Q[1], blk.attn.in_proj_weight[dh : 2 * dh].T)
    assert torch.equal(attn.W_V[H - 1], blk.attn.in_proj_weight[3 * W - dh :].T)
    # a change to the open_clip weight is visible in the view (same memory) ...
    w = blk.attn.in_proj_weight
    old = float(w.detach()[W + 2, 5])
    with torch.no_grad():
        w[W + 2, 5] += 1.0
    try:
        assert float(attn.W_K.detach()[0, 5, 2]) == pytest.approx(old + 1.0)
    finally:
        with torch.no_grad():
            w[W + 2, 5] = old
    # ... and the views refuse assignment, and in-place writes while autograd records
    with pytest.raises(AttributeError):
        attn.W_Q = torch.zeros(H, W, dh)
    with pytest.raises(AttributeError):
        hk.W_E = hk.W_E
    before = attn.W_Q.detach().clone()
    with pytest.raises(RuntimeError, match="in-place"):
        attn.W_Q.mul_(2.0)
    assert torch.equal(attn.W_Q.detach(), before)


def test_weight_views_rebuild_the_activations():
    """q, k, v from ln1 output and W_Q/b_Q...; head results from z and W_O; patches from W_E."""
    m = _small()
    px = _px(m)
    _, cache = m.run_with_cache(px)
    l = 1
    attn, blk = m.blocks[l].attn, m.blocks[l]
    x = cache[f"blocks.{l}.ln1.hook_normalized"] * blk.ln1.weight + blk.ln1.bias
    for name, W, b in (("q", attn.W_Q, attn.b_Q), ("k", attn.W_K, attn.b_K), ("v", attn.W_V, attn.b_V)):
        assert torch.allclose(torch.einsum("bpm,hmd->bphd", x, W) + b, cache[f"blocks.{l}.attn.hook_{name}"])
    res = torch.einsum("bphd,hdm->bphm", cache[f"blocks.{l}.attn.hook_z"], attn.W_O) * blk.ls_1
    assert torch.allclose(res, cache[f"blocks.{l}.attn.hook_result"])
    assert torch.allclose(res.sum(2) + blk.ls_1 * attn.b_O, cache[f"blocks.{l}.hook_attn_out"])
    p = m.cfg.patch_size
    patch = px[:, :, :p, p : 2 * p].reshape(px.shape[0], -1) @ m.W_E  # patch (0, 1) = position 2
    emb = cache["hook_embed"]
    assert torch.allclose(patch + m.W_pos[2], emb[:, 2])
    assert torch.allclose(m.class_embedding + m.W_pos[0], emb[:, 0])


def test_stacked_weights_follow_tl_layout():
    m = _small()
    L, H, W, dh, dm = m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_model, m.cfg.d_head, m.cfg.d_mlp
    shapes = {"W_Q": (L, H, W, dh), "W_K": (L, H, W, dh), "W_V": (L, H, W, dh), "W_O": (L, H, dh, W),
              "b_Q": (L, H, dh), "b_K": (L, H, dh), "b_V": (L, H, dh), "b_O": (L, W),
              "W_in": (L, W, dm), "W_out": (L, dm, W), "b_in": (L, dm), "b_out": (L, W)}
    for name, shape in shapes.items():
        stacked = getattr(m, name)
        assert stacked.shape == shape, name
        part = "mlp" if name in ("W_in", "W_out", "b_in", "b_out") else "attn"
        assert torch.equal(stacked[1], getattr(getattr(m.blocks[1], part), name)), name


# ------------------------------------------------------------------ MLP neurons


def test_mlp_neuron_hooks_rebuild_mlp_out():
    m = _small()
    _, cache = m.run_with_cache(_px(m))
    for l, blk in enumerate(m.blocks):
        pre, post = cache[f"blocks.{l}.mlp.hook_pre"], cache["post", l]
        assert pre.shape == (2, m.cfg.n_pos, m.cfg.d_mlp)
        assert torch.allclose(post, torch.nn.functional.gelu(pre))
        x = cache[f"blocks.{l}.ln2.hook_normalized"] * blk.ln2.weight + blk.ln2.bias
        assert torch.allclose(pre, x @ blk.mlp.W_in + blk.mlp.b_in)
        rebuilt = (post @ blk.mlp.W_out + blk.mlp.b_out) * blk.ls_2
        assert torch.allclose(rebuilt, cache[f"blocks.{l}.hook_mlp_out"])
        # TL's per-neuron results sum (with the bias) to the MLP output, LayerScale included
        neurons = cache.get_neuron_results(l)
        assert torch.allclose(neurons.sum(-2) + blk.mlp.b_out * blk.ls_2, cache[f"blocks.{l}.hook_mlp_out"])


def test_ablating_a_neuron_changes_the_output():
    m = _small()
    px = _px(m)

    def kill(post, hook):
        post = post.clone()
        post[..., 3] = 0
        return post

    assert not torch.allclose(m.run_with_hooks(px, fwd_hooks=[("blocks.0.mlp.hook_post", kill)]), m(px))


# ------------------------------------------------------------------ the activation cache


def test_run_with_cache_is_a_tl_activation_cache_with_exact_terms():
    from transformer_lens import ActivationCache

    from ltcutils.decompose import decompose

    m = _small()
    px = _px(m, n=3)
    out, cache = m.run_with_cache(px)
    assert isinstance(cache, ActivationCache)
    assert torch.equal(cache["z", 1], cache["blocks.1.attn.hook_z"])
    assert torch.equal(cache["scale", 0, "ln1"], cache["blocks.0.ln1.hook_scale"])
    # TL's stack_head_results: residual space, parts + remainder == resid_post
    stack, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert stack.shape == (m.cfg.n_layers * m.cfg.n_heads + 1, 3, m.cfg.n_pos, m.cfg.d_model)
    assert labels[:3] == ["L0H0", "L0H1", "L1H0"] and labels[-1] == "remainder"
    assert torch.allclose(stack.sum(0), cache["resid_post", -1])
    parts, names = cache.decompose_resid(return_labels=True)
    assert names[0] == "embed" and torch.allclose(parts.sum(0), cache["resid_post", -1])
    parts = cache.decompose_resid(layer=1, mlp_input=True)
    assert torch.allclose(parts.sum(0), cache["resid_mid", 1])
    # the joint-space view is exactly decompose()
    ref = decompose(m, px)
    d = cache.decompose()
    for f in ("embed", "heads", "mlps", "rest", "norm"):
        assert torch.allclose(getattr(d, f), getattr(ref, f)), f
    terms, tl = cache.stack_head_terms(return_labels=True, incl_remainder=True, normalized=False)
    assert terms.shape == (m.cfg.n_layers * m.cfg.n_heads + 1, 3, m.cfg.d_embed) and tl[-1] == "remainder"
    assert torch.allclose(terms.sum(0), out)
    assert torch.allclose(terms[3], ref.heads[:, 1, 1] * ref.norm[:, None])  # L1H1, unnormalised
    with pytest.raises(NotImplementedError, match="ln_post"):
        cache.stack_head_results(apply_ln=True)
    _, partial = m.run_with_cache(px, names_filter=lambda n: n.endswith("hook_z"))
    with pytest.raises(KeyError, match="hook_resid_pre"):
        partial.decompose()
    # hook_result not cached: filled from hook_z with LayerScale, as the forward pass computes it
    _, noresult = m.run_with_cache(px, names_filter=lambda n: not n.endswith("hook_result"))
    assert torch.allclose(noresult.stack_head_results(), stack[:-1])


def test_run_with_cache_single_image_without_batch_dim():
    m = _small()
    px = _px(m, n=1)
    out, cache = m.run_with_cache(px, remove_batch_dim=True)
    assert cache["blocks.0.attn.hook_z"].shape == (m.cfg.n_pos, m.cfg.n_heads, m.cfg.d_head)
    assert torch.allclose(cache.decompose(normalized=False).total(), out)


# ------------------------------------------------------------------ construction without a random init


def test_from_state_dict_builds_on_meta_and_never_random_inits(tiny, monkeypatch):
    def refuse(self, seed=0):
        raise AssertionError("from_state_dict must not spend time on a random init")

    monkeypatch.setattr(HookedViT, "_init_random", refuse)
    rebuilt = HookedViT.from_open_clip(tiny.clip)
    assert not any(p.is_meta for p in rebuilt.parameters())
    assert rebuilt.blocks[0].mlp.c_fc_weight.data_ptr() == \
        tiny.clip.visual.transformer.resblocks[0].mlp.c_fc.weight.data_ptr()
    s = tiny.hooked.cfg.image_size
    px = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(rebuilt(px), tiny.clip.encode_image(px), atol=1e-5)
