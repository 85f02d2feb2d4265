"""The decomposition is an identity; spatial terms sum to head terms; the embedding term is its own field."""

import pytest
import torch

from ltcutils.decompose import Decomposition, decompose, spatial_terms


@pytest.fixture
def px(tiny):
    s = tiny.hooked.cfg.image_size
    return torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(0))


def test_terms_sum_to_embedding(tiny, px):
    cfg = tiny.hooked.cfg
    ref = tiny.clip.encode_image(px)
    raw = decompose(tiny.hooked, px, normalized=False)
    assert raw.heads.shape == (3, cfg.n_layers, cfg.n_heads, cfg.d_embed)
    assert raw.mlps.shape == (3, cfg.n_layers, cfg.d_embed) and raw.embed.shape == (3, cfg.d_embed)
    assert torch.allclose(raw.total(), ref, rtol=1e-5, atol=1e-6)
    unit = decompose(tiny.hooked, px, normalized=True)
    assert torch.allclose(unit.total(), torch.nn.functional.normalize(ref, dim=-1), atol=1e-6)
    assert torch.allclose(unit.norm, ref.norm(dim=-1))
    assert unit.labels()[: cfg.n_heads + 1] == [f"L0H{h}" for h in range(cfg.n_heads)] + ["L1H0"]
    # every part matters: dropping the embedding term or one MLP breaks the identity
    assert not torch.allclose(unit.total() - unit.embed, unit.total(), atol=1e-3)
    assert not torch.allclose(unit.total() - unit.mlps[:, -1], unit.total(), atol=1e-3)


def test_embed_and_mlp_terms_by_hand(tiny, px):
    """embed is the class token after ln_pre, mlps[:, l] is MLP l, both through linearised ln_post."""
    m = tiny.hooked
    d = decompose(m, px, normalized=False)
    _, cache = m.run_with_cache(px)
    K = 2 * m.cfg.n_layers + 1
    mu, sigma = cache["ln_post.hook_mean"], cache["ln_post.hook_scale"]

    def joint(c):
        return (m.ln_post.weight * (c - mu / K) / sigma + m.ln_post.bias / K) @ m.proj

    assert torch.allclose(d.embed, joint(cache["blocks.0.hook_resid_pre"][:, 0]), atol=1e-5)
    for l in (0, m.cfg.n_layers - 1):
        assert torch.allclose(d.mlps[:, l], joint(cache[f"blocks.{l}.hook_mlp_out"][:, 0]), atol=1e-5)


def test_layer_range_lumps_the_rest(tiny, px):
    L = tiny.hooked.cfg.n_layers
    full = decompose(tiny.hooked, px)
    part = decompose(tiny.hooked, px, layers=[-1, L - 2])
    assert part.layers == (L - 2, L - 1)
    assert torch.allclose(part.heads, full.heads[:, L - 2:], atol=1e-7)
    assert torch.allclose(part.rest, full.heads[:, : L - 2].sum((1, 2)), atol=1e-6)
    assert torch.allclose(part.embed, full.embed) and torch.allclose(part.mlps, full.mlps)
    assert torch.allclose(part.total(), full.total(), atol=1e-6)
    with pytest.raises(ValueError, match="distinct indices"):
        decompose(tiny.hooked, px, layers=[L + 1])


def test_head_term_is_hook_result_through_linearised_ln_post(tiny, px):
    """A head's term is its class-token hook_result (+ bias share) through the linearised ln_post."""
    d = decompose(tiny.hooked, px, normalized=False)
    _, cache = tiny.hooked.run_with_cache(px)
    m = tiny.hooked
    l, h = m.cfg.n_layers - 2, m.cfg.n_heads - 1
    K, H = 2 * m.cfg.n_layers + 1, m.cfg.n_heads
    r = cache[f"blocks.{l}.attn.hook_result"][:, 0, h] + m.blocks[l].attn.b_O / H
    mu, sigma = cache["ln_post.hook_mean"], cache["ln_post.hook_scale"]
    expected = (m.ln_post.weight * (r - mu / (K * H)) / sigma + m.ln_post.bias / (K * H)) @ m.proj
    assert torch.allclose(d.heads[:, l, h], expected, atol=1e-5)


def test_spatial_terms_sum_to_head_terms(tiny, px):
    cfg = tiny.hooked.cfg
    heads = [(cfg.n_layers - 1, 1), (0, 2), (cfg.n_layers - 1, 1)]
    sp = spatial_terms(tiny.hooked, px, heads)
    assert sp.shape == (3, 3, cfg.n_pos, cfg.d_embed)
    d = decompose(tiny.hooked, px)
    for i, (l, h) in enumerate(heads):
        assert torch.allclose(sp[:, i].sum(1), d.heads[:, l, h], atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        spatial_terms(tiny.hooked, px, [(cfg.n_layers, 0)])


def test_decomposition_fields_are_keyword_only_and_consistent(tiny, px):
    d = decompose(tiny.hooked, px, layers=[0])
    moved = d.to(torch.float64)
    assert moved.embed.dtype == torch.float64 and moved.layers == (0,) and torch.allclose(moved.total().float(), d.total())
    with pytest.raises(TypeError):
        Decomposition(d.embed, d.heads, d.mlps, d.rest, d.norm, d.layers, True)  # positional: refused
    with pytest.raises(ValueError, match="layers"):
        Decomposition(embed=d.embed, heads=d.heads, mlps=d.mlps, rest=d.rest, norm=d.norm, layers=(0, 1),
                      normalized=True)


def test_shape_annotations_are_enforced_under_pytest(tiny, px):
    """tests/conftest.py installs jaxtyping + beartype for this module: a wrong shape is refused."""
    from jaxtyping import TypeCheckError

    from ltcutils.decompose import head_terms_from_z

    d = decompose(tiny.hooked, px)
    with pytest.raises(TypeCheckError):  # embed for 2 images, the other terms for 3
        Decomposition(embed=d.embed[:2], heads=d.heads, mlps=d.mlps, rest=d.rest, norm=d.norm,
                      layers=d.layers, normalized=True)
    cfg = tiny.hooked.cfg
    z = torch.zeros(3, cfg.n_heads, cfg.d_head)
    with pytest.raises(TypeCheckError):  # mu must be [batch, 1]
        head_terms_from_z(tiny.hooked, 0, z, torch.zeros(3), torch.ones(3, 1))
