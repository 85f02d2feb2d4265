"""Corrections do what their algebra says, on cached terms and live."""

import numpy as np
import pytest
import torch

import ltcutils as ltc
from conftest import make_fake_dataset
from ltcutils.correct import Correction, DebiasedEncoder, corrected_embedding, corrected_logits, head_means, inject, orthonormal_basis


def test_orthonormal_basis_drops_dependent_directions():
    d = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    q = orthonormal_basis(d)
    assert q.shape == (2, 3)
    assert torch.allclose(q @ q.T, torch.eye(2), atol=1e-6)
    assert torch.allclose(q[0], torch.tensor([1.0, 1.0, 0.0]) / 2**0.5)
    with pytest.raises(ValueError, match="identical"):
        orthonormal_basis(torch.zeros(2, 3))


def test_orthonormal_basis_keeps_directions_after_a_dependent_one():
    # before (reduced QR): the dependent second row made QR pick an arbitrary second axis, and the
    # independent third row [1, 1, 0] was dropped, leaving a basis of rank 1
    q = orthonormal_basis(torch.tensor([[2.0, 0.0, 0.0], [4.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert torch.allclose(q, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    g = torch.Generator().manual_seed(0)
    d = torch.randn(5, 8, generator=g)
    d = torch.cat([d[:2], d[:1] * 3 - d[1:2], d[2:]])  # row 2 depends on rows 0, 1
    q = orthonormal_basis(d)
    assert q.shape == (5, 8) and torch.allclose(q @ q.T, torch.eye(5), atol=1e-6)
    # the same span: every direction is its own projection onto the basis
    assert torch.allclose(d @ q.T @ q, d, atol=1e-5)


def test_inject_paper_mode_by_hand():
    x = torch.tensor([[3.0, 4.0]])  # cos with e1 = 0.6
    q = torch.tensor([[1.0, 0.0]])
    out = inject(x, q)  # (3 + 0.6, 4) normalised
    expected = torch.tensor([[3.6, 4.0]]) / (3.6**2 + 16) ** 0.5
    assert torch.allclose(out, expected) and torch.allclose(out.norm(), torch.tensor(1.0))
    # without renormalisation: the component along q is scaled by (1 + strength)
    assert torch.allclose(inject(x, q, strength=0.5, renormalize=False), torch.tensor([[4.5, 4.0]]))


@pytest.fixture(scope="module")
def cached(tiny, tmp_path_factory):
    torch.manual_seed(0)
    ds = make_fake_dataset(32)
    st = ltc.store.capture(tiny, ds, tmp_path_factory.mktemp("s"), dtype="float32", progress=False)
    W = torch.nn.functional.normalize(torch.randn(64, 3), dim=0)
    return ds, st, W, ltc.lens.logit_lens(st.terms, W)


def test_mean_ablation_replaces_the_term(cached):
    ds, st, W, lens = cached
    means = head_means(st.terms)
    assert torch.allclose(means, torch.from_numpy(np.array(st.heads)).float().mean(0), atol=1e-6)
    corr = Correction.mean_ablation([(3, 1), (0, 2)], means, st.terms.layers, reference="ref")
    heads = torch.from_numpy(np.array(st.heads))
    edited = heads.clone()
    edited[:, 3, 1] = means[3, 1]
    edited[:, 0, 2] = means[0, 2]
    expected = edited.sum((1, 2)) + st.terms.static_t(slice(None))
    assert torch.allclose(corrected_embedding(lens, corr, st.terms), expected, atol=1e-5)
    assert torch.allclose(corrected_logits(lens, corr, st.terms), expected @ W, atol=1e-5)
    # the mean over the edited split is unchanged by mean ablation
    assert torch.allclose(corrected_embedding(lens, corr, st.terms).mean(0), lens.total.mean(0), atol=1e-5)


def test_zero_ablation_and_injection(cached):
    ds, st, W, lens = cached
    heads = torch.from_numpy(np.array(st.heads))
    corr = Correction.zero_ablation([(1, 1)], 64)
    assert torch.allclose(corrected_embedding(lens, corr, st.terms), lens.total - heads[:, 1, 1], atol=1e-5)
    q = orthonormal_basis(torch.randn(2, 64, generator=torch.Generator().manual_seed(3)))
    corr = corr.with_injection([(2, 0)], q)
    x = heads[:, 2, 0]
    expected = lens.total - heads[:, 1, 1] - x + inject(x, q)
    assert torch.allclose(corrected_embedding(lens, corr, st.terms), expected, atol=1e-5)
    assert torch.allclose(corrected_logits(lens, corr, st.terms), expected @ W, atol=1e-5)
    with pytest.raises(ValueError, match="both ablated and injected"):
        Correction.zero_ablation([(2, 0)], 64).with_injection([(2, 0)], q)
    with pytest.raises(ValueError, match="pass terms"):
        corrected_logits(lens, corr)


def test_live_encoder_equals_cached_edit(tiny, cached):
    ds, st, W, lens = cached
    means = head_means(st.terms)
    q = orthonormal_basis(torch.randn(3, 64, generator=torch.Generator().manual_seed(1)))
    corr = Correction.mean_ablation([(1, 2), (3, 3)], means, st.terms.layers, "ref").with_injection([(2, 1)], q, 0.7)
    px = torch.stack([tiny.preprocess(ds.image(i)) for i in range(8)])
    live = DebiasedEncoder(tiny, corr)(px)
    assert torch.allclose(live, corrected_embedding(lens, corr, st.terms)[:8], atol=1e-5)
    # no edit: the live encoder is the plain normalised encoder
    plain = DebiasedEncoder(tiny, Correction())(px)
    assert torch.allclose(plain, tiny.encode_image(px), atol=1e-6)


def test_layer_positions_vs_layer_numbers(tiny, tmp_path):
    """With only layers 1 and 3 captured, layer numbers and array positions differ."""
    ds = make_fake_dataset(12)
    st = ltc.store.capture(tiny, ds, tmp_path, layers=[1, 3], dtype="float32", progress=False)
    W = torch.nn.functional.normalize(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), dim=0)
    lens = ltc.lens.logit_lens(st.terms, W)
    means = head_means(st.terms)
    q = orthonormal_basis(torch.randn(2, 64, generator=torch.Generator().manual_seed(2)))
    corr = Correction.mean_ablation([(3, 0)], means, st.terms.layers, "ref").with_injection([(1, 2)], q, 0.5, False)
    heads = torch.from_numpy(np.array(st.heads))  # [n, 2, H, D]: position 0 is layer 1, position 1 is layer 3
    x = heads[:, 0, 2]
    expected = lens.total - heads[:, 1, 0] + means[1, 0] - x + inject(x, q, 0.5, False)
    assert torch.allclose(corrected_embedding(lens, corr, st.terms), expected, atol=1e-5)
    px = torch.stack([tiny.preprocess(ds.image(i)) for i in range(12)])
    assert torch.allclose(DebiasedEncoder(tiny, corr)(px), expected, atol=1e-5)
    with pytest.raises(ValueError, match="not among the captured layers"):
        corrected_embedding(lens, Correction.zero_ablation([(0, 1)], 64), st.terms)


def test_per_image_concept_bases(tiny, cached):
    from ltcutils.correct import ConceptBases

    ds, st, W, lens = cached
    g = torch.Generator().manual_seed(5)
    b0, b1 = orthonormal_basis(torch.randn(2, 64, generator=g)), orthonormal_basis(torch.randn(3, 64, generator=g))
    index = np.array([0, 1, -1] * 10 + [1, 0])
    corr = Correction().with_injection([(2, 3)], ConceptBases([b0, b1], index, ["a|b", "c|d"]), 0.5, False)
    heads = torch.from_numpy(np.array(st.heads))
    x = heads[:, 2, 3]
    edited = x.clone()
    for i, b in enumerate(index):
        if b >= 0:
            edited[i] = inject(x[i : i + 1], [b0, b1][b], 0.5, False)[0]
    expected = lens.total - x + edited
    assert torch.allclose(corrected_embedding(lens, corr, st.terms), expected, atol=1e-5)
    px = torch.stack([tiny.preprocess(ds.image(i)) for i in range(6)])
    live = DebiasedEncoder(tiny, corr)(px, basis_index=index[:6])
    assert torch.allclose(live, expected[:6], atol=1e-5)
    with pytest.raises(ValueError, match="basis_index"):
        DebiasedEncoder(tiny, corr)(px)


def test_concept_bases_from_candidates_or_logits():
    from ltcutils.correct import concept_bases

    keyed = {"nurse|surgeon": torch.eye(2, 4), "pilot|nurse": torch.eye(1, 4)}
    names = ["nurse", "surgeon", "chef"]
    with pytest.warns(UserWarning, match="2 of 4 images have no concept pairs"):
        cb = concept_bases(keyed, names, candidates=np.array([[0, 1], [1, 0], [2, 0], [0, 2]]))
    assert cb.index.tolist() == [0, 0, -1, -1] and cb.keys == ["nurse|surgeon", "pilot|nurse"]
    # without candidates: each image's two highest classes (CounterAnimal's label-free pairs)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    with pytest.warns(UserWarning, match="1 of 2 images"):
        assert concept_bases(keyed, names, logits=logits).index.tolist() == [0, -1]
    with pytest.raises(ValueError, match="two candidate classes"):
        concept_bases(keyed, names, candidates=np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="pass candidates"):
        concept_bases(keyed, names)


def test_evaluate_concept_bases_is_a_deprecated_alias():
    from ltcutils.evaluate import EvalSplit, concept_bases

    split = EvalSplit(lens=None, terms=None, y=np.array([0, 1]), group=np.zeros(2, int), group_names=["g"],
                      candidates=np.array([[0, 1], [1, 0]]))
    with pytest.warns(DeprecationWarning, match="moved to ltc.correct.concept_bases"):
        cb = concept_bases(split, ["nurse", "surgeon"], {"nurse|surgeon": torch.eye(2, 4)})
    assert cb.index.tolist() == [0, 0]


def test_roboshot_accept_and_reject_are_paper_injection():
    """One operation: RoboShot's steps are inject(renormalize=True) with strength +1 / -1 on unit vectors."""
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(5, 6, generator=g, dtype=torch.float64)
    rej = orthonormal_basis(torch.randn(2, 6, generator=g)).double()
    acc = orthonormal_basis(torch.randn(1, 6, generator=g)).double()
    x = torch.nn.functional.normalize(emb, dim=1)
    # by hand, one step: x <- normalise(x + s cos(x, q) q)
    manual = x.clone()
    for s, Q in ((-1.0, rej), (1.0, acc)):
        for q in Q:
            manual = torch.nn.functional.normalize(manual + s * (manual @ q)[:, None] * q, dim=1)
    via_inject = inject(inject(x, rej, strength=-1.0), acc, strength=1.0)
    assert via_inject.dtype == torch.float64  # float64 in, float64 out (RoboShot's precision)
    assert torch.allclose(via_inject, manual, atol=1e-12)
    assert torch.allclose(ltc.baselines.roboshot(emb, rej, acc).double(), manual, atol=1e-6)
    # after the reject step nothing is left along the rejected span
    assert (inject(x, rej, strength=-1.0) @ rej.T).abs().max() < 1e-6  # the basis is float32-orthonormal
