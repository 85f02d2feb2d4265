"""The decomposition is an identity; spatial terms sum to head terms."""

import pytest
import torch

from ltcutils.decompose import decompose, spatial_terms


@pytest.fixture
def px():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_terms_sum_to_embedding(tiny, px):
    ref = tiny.clip.encode_image(px)
    raw = decompose(tiny.hooked, px, normalized=False)
    assert raw.heads.shape == (3, 4, 4, 64) and raw.mlps.shape == (3, 5, 64)
    assert torch.allclose(raw.total(), ref, rtol=1e-5, atol=1e-6)
    unit = decompose(tiny.hooked, px, normalized=True)
    assert torch.allclose(unit.total(), torch.nn.functional.normalize(ref, dim=-1), atol=1e-6)
    assert torch.allclose(unit.norm, ref.norm(dim=-1))
    assert unit.labels()[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]


def test_layer_range_lumps_the_rest(tiny, px):
    full = decompose(tiny.hooked, px)
    part = decompose(tiny.hooked, px, layers=[-1, 2])
    assert part.layers == (2, 3)
    assert torch.allclose(part.heads, full.heads[:, 2:], atol=1e-7)
    assert torch.allclose(part.rest, full.heads[:, :2].sum((1, 2)), atol=1e-6)
    assert torch.allclose(part.total(), full.total(), atol=1e-6)
    with pytest.raises(ValueError, match="distinct indices"):
        decompose(tiny.hooked, px, layers=[7])


def test_head_term_is_hook_result_through_linearised_ln_post(tiny, px):
    """A head's term is its class-token hook_result (+ bias share) through the linearised ln_post."""
    d = decompose(tiny.hooked, px, normalized=False)
    _, cache = tiny.hooked.run_with_cache(px)
    l, h = 2, 3
    m = tiny.hooked
    K, H = 2 * m.cfg.layers + 1, m.cfg.heads
    r = cache[f"blocks.{l}.attn.hook_result"][:, 0, h] + m.blocks[l].attn.out_proj_bias / H
    mu, sigma = cache["ln_post.hook_mean"], cache["ln_post.hook_scale"]
    expected = (m.ln_post.weight * (r - mu / (K * H)) / sigma + m.ln_post.bias / (K * H)) @ m.proj
    assert torch.allclose(d.heads[:, l, h], expected, atol=1e-5)


def test_spatial_terms_sum_to_head_terms(tiny, px):
    heads = [(3, 1), (0, 2), (3, 1)]
    sp = spatial_terms(tiny.hooked, px, heads)
    assert sp.shape == (3, 3, 17, 64)
    d = decompose(tiny.hooked, px)
    for i, (l, h) in enumerate(heads):
        assert torch.allclose(sp[:, i].sum(1), d.heads[:, l, h], atol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        spatial_terms(tiny.hooked, px, [(4, 0)])
