"""The hooked ViT reproduces open_clip exactly, and its hooks behave like TransformerLens hooks."""

import pytest
import torch

import ltcutils as ltc
from ltcutils.decompose import check_decomposition
from ltcutils.hooked import HookedViT, HookNeverFiredError, ViTConfig


def _rel(a, b):
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max().detach())


# ViT-B-32 stays in the fast tier as the real-architecture smoke test; the 224 px towers at 16 px
# patches (ViT-B-16, 197 tokens; ViT-L-14, 257 tokens and 24 layers) take 6-27 s each on one
# thread, so they run in `make test` (marker `realsize`) and not in `make test-fast`.
@pytest.fixture(scope="module", params=["ViT-B-32", pytest.param("ViT-B-16", marks=pytest.mark.realsize),
                                        pytest.param("ViT-L-14", marks=pytest.mark.realsize)])
def real_arch(request):
    torch.manual_seed(0)
    return ltc.models.load_model(request.param, pretrained=None)


def test_real_architectures_match_open_clip_and_decompose_exactly(real_arch):
    size = real_arch.hooked.cfg.image_size
    px = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    errs = check_decomposition(real_arch.clip, real_arch.hooked, px, rtol=1e-5)
    assert errs["hooked_rel_err"] < 1e-5
    assert errs["rel_err_raw"] < 1e-5 and errs["rel_err_normalized"] < 1e-5


def _tiny_px(tiny, n):
    s = tiny.hooked.cfg.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(n))


def test_tiny_matches_open_clip(tiny):
    px = _tiny_px(tiny, 4)
    ref = tiny.clip.encode_image(px)
    assert _rel(tiny.hooked(px), ref) < 1e-5
    assert torch.allclose(tiny.hooked(px, normalize=True).norm(dim=-1), torch.ones(4))


def test_layerscale_and_quickgelu_are_handled():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    clip = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(image_size=32, patch_size=8, width=32, layers=2,
                                                       head_width=8, ls_init_value=0.5),
                text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=16, heads=2, layers=1),
                quick_gelu=True).eval()
    for blk in clip.visual.transformer.resblocks:  # make LayerScale non-trivial
        blk.ls_1.gamma.data.uniform_(0.2, 2.0)
        blk.ls_2.gamma.data.uniform_(0.2, 2.0)
    hooked = HookedViT.from_open_clip(clip)
    assert hooked.cfg.layer_scale and hooked.cfg.act == "quick_gelu" and hooked.cfg.n_heads == 4
    px = torch.randn(3, 3, 32, 32)
    errs = check_decomposition(clip, hooked, px)
    assert max(errs.values()) < 1e-5
    # dropping LayerScale or using GELU would break the identity: the check can fail
    wrong = HookedViT.from_open_clip(clip, act="gelu")
    with pytest.raises(AssertionError):
        check_decomposition(clip, wrong, px)


def test_run_with_cache_names_and_shapes(tiny):
    px = _tiny_px(tiny, 2)
    out, cache = tiny.hooked.run_with_cache(px)
    cfg = tiny.hooked.cfg
    assert cache["blocks.0.attn.hook_z"].shape == (2, cfg.n_pos, cfg.n_heads, cfg.d_head)
    assert cache["blocks.3.hook_mlp_out"].shape == (2, cfg.n_pos, cfg.d_model)
    assert cache["ln_post.hook_scale"].shape == (2, 1)
    # pattern and per-head results are computed when hooked, and agree with the fused path
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, cfg.n_heads, cfg.n_pos, cfg.n_pos)
    res = cache["blocks.1.attn.hook_result"]
    attn_out = cache["blocks.1.hook_attn_out"]
    bias = tiny.hooked.blocks[1].attn.b_O
    assert torch.allclose(res.sum(2) + bias, attn_out, atol=1e-5)
    assert torch.allclose(out, tiny.hooked(px), atol=1e-5)


def test_layer_norm_is_fused_unless_one_of_its_points_is_hooked(tiny):
    px = _tiny_px(tiny, 2)
    base = tiny.hooked(px)
    seen = []

    def double_scale(scale, hook):
        seen.append(hook.name)
        return scale * 2

    edited = tiny.hooked.run_with_hooks(px, fwd_hooks=[("blocks.0.ln1.hook_scale", double_scale)])
    assert seen == ["blocks.0.ln1.hook_scale"] and not torch.allclose(edited, base, atol=1e-4)
    # a hook that only looks (returns nothing) runs the hand-written statistics: same output as fused
    looked = tiny.hooked.run_with_hooks(px, fwd_hooks=[(f"blocks.{l}.ln{i}.hook_normalized", lambda x, hook: None)
                                                       for l in range(tiny.hooked.cfg.n_layers) for i in (1, 2)])
    assert torch.allclose(looked, base, atol=1e-6)


def test_run_with_hooks_edits_and_cleans_up(tiny):
    px = _tiny_px(tiny, 2)
    base = tiny.hooked(px)

    def zero_head(z, hook):
        z[:, :, 1] = 0
        return z

    edited = tiny.hooked.run_with_hooks(px, fwd_hooks=[("blocks.2.attn.hook_z", zero_head)])
    assert not torch.allclose(edited, base)
    assert torch.allclose(tiny.hooked(px), base)  # hooks were removed
    with tiny.hooked.hooks(fwd_hooks=[("blocks.2.attn.hook_z", zero_head)]):
        assert torch.allclose(tiny.hooked(px), edited)
    assert torch.allclose(tiny.hooked(px), base)


def test_hook_that_never_fires_is_an_error(tiny):
    px = _tiny_px(tiny, 1)
    with pytest.raises(HookNeverFiredError, match="never fired"):
        with tiny.hooked.hooks(fwd_hooks=[("blocks.0.attn.hook_z", lambda a, hook: a)]):
            pass  # no forward pass
    with pytest.raises(KeyError, match="no hook point named"):
        tiny.hooked.run_with_hooks(px, fwd_hooks=[("blocks.99.attn.hook_z", lambda a, hook: a)])


def test_state_dict_keys_and_bad_inputs():
    cfg = ViTConfig(image_size=32, patch_size=16, d_model=8, n_layers=1, n_heads=2, d_mlp=16, d_embed=4)
    with pytest.raises(KeyError, match="state dict lacks"):
        HookedViT.from_state_dict({"conv1.weight": torch.zeros(8, 3, 16, 16)}, cfg)
    m = HookedViT(cfg)
    with pytest.raises(ValueError, match="expected 32x32"):
        m(torch.zeros(1, 3, 64, 64))


def test_hooked_tower_shares_the_open_clip_weights(tiny):
    assert tiny.hooked.blocks[0].attn.in_proj_weight.data_ptr() == \
        tiny.clip.visual.transformer.resblocks[0].attn.in_proj_weight.data_ptr()
    assert tiny.hooked.proj.data_ptr() == tiny.clip.visual.proj.data_ptr()
