"""The logit lens and the package's one prediction rule."""

import numpy as np
import pytest
import torch

import ltcutils as ltc
from ltcutils.lens import logit_lens, predict_logits
from ltcutils.store import Terms


def _terms(n=6, L=2, H=3, d=4, seed=0):
    g = np.random.default_rng(seed)
    heads = g.standard_normal((n, L, H, d)).astype(np.float32)
    mlps = g.standard_normal((n, L + 1, d)).astype(np.float32)
    return Terms(heads, mlps, None, np.ones(n, np.float32), tuple(range(L)), True)


def test_lens_is_the_terms_through_the_classifier():
    t = _terms()
    W = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), dim=0)
    lens = logit_lens(t, W, chunk=4)  # two chunks
    heads = torch.from_numpy(t.heads)
    assert torch.allclose(lens.head, heads @ W, atol=1e-6)
    total = heads.sum((1, 2)) + torch.from_numpy(t.mlps).sum(1)
    assert torch.allclose(lens.total, total, atol=1e-5)
    assert torch.allclose(lens.logits(), total @ W, atol=1e-5)
    with pytest.raises(ValueError, match="d_embed=5 but the terms have d_embed=4"):
        logit_lens(t, torch.zeros(5, 3))


def test_every_prediction_path_is_the_same_rule():
    """baselines.predict, EvalSplit.predict and locate's predictions all go through lens.predict_logits."""
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    W = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # image 2 ties classes 0 and 2, image 3 ties all
    cand = np.array([[1, 2], [0, 2], [2, 0]])
    for c in (None, cand):
        expected = predict_logits(emb @ W, c)
        assert torch.equal(ltc.baselines.predict(emb, W, c), expected)
        split = ltc.evaluate.EvalSplit(None, None, np.zeros(3, int), np.zeros(3, int), ["g"], candidates=c)
        assert np.array_equal(split.predict(emb @ W), expected.numpy())
    # by hand: ties go to the lowest global index among the competing classes
    assert predict_logits(emb @ W).tolist() == [0, 1, 0]
    assert predict_logits(emb @ W, cand).tolist() == [2, 0, 0]
