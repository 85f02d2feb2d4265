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


def _big_terms(n=40, L=3, H=4, d=5, seed=2):
    t = _terms(n, L, H, d, seed)
    t.embed = np.random.default_rng(seed + 1).standard_normal((n, d)).astype(np.float32)
    return t


def test_streamed_lens_gives_what_the_held_one_gives():
    """Margins, one head's logits, zero-shot logits, corrections and sub-lenses: streamed == held."""
    from ltcutils.correct import Correction, corrected_logits, head_means
    from ltcutils.locate import margins

    t = _big_terms()
    W = torch.nn.functional.normalize(torch.randn(5, 30, generator=torch.Generator().manual_seed(3)), dim=0)
    held, streamed = logit_lens(t, W, chunk=7, stream=False), logit_lens(t, W, chunk=7, stream=True)
    assert streamed.streamed and streamed.head is None and not held.streamed
    assert torch.allclose(streamed.logits(), held.logits(), atol=1e-5)
    assert torch.allclose(streamed.head_logits(2, 1), held.head[:, 2, 1], atol=1e-6)
    y = np.arange(40) % 30
    for got, want in zip(margins(streamed, y), margins(held, y)):
        assert torch.allclose(got.float(), want.float(), atol=1e-5)
    means = head_means(t)
    corr = Correction.mean_ablation([(2, 1), (0, 3)], means, t.layers, "ref")
    assert torch.allclose(corrected_logits(streamed, corr), corrected_logits(held, corr), atol=1e-5)
    rows = np.array([3, 9, 10, 31])
    assert torch.allclose(streamed.take(rows).head_logits(1, 2), held.take(rows).head[:, 1, 2], atol=1e-6)
    assert torch.allclose(streamed.take(slice(5, 9)).logits(), held.logits()[5:9], atol=1e-5)
    # automatic choice: above max_bytes the lens streams, below it holds
    assert logit_lens(t, W, max_bytes=10).streamed and not logit_lens(t, W).streamed
    with pytest.raises(MemoryError, match="leave stream=None"):
        logit_lens(t, W, stream=False, max_bytes=10)


def test_streamed_lens_never_allocates_the_per_head_class_axis():
    """Every tensor created while building a streamed lens, locating on it and ablating with it is
    at most max(n x n_class, n x layer x head, chunk x layer x head x d_embed) elements, far below
    the n x layer x head x n_class of the held per-head logits (recorded by a dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ltcutils.correct import Correction, corrected_logits, head_means
    from ltcutils.locate import locate

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    self.numel = max(self.numel, o.numel())
            return out

    n, L, H, d, C, chunk = 40, 3, 4, 5, 30, 4
    t = _big_terms(n, L, H, d)
    W = torch.nn.functional.normalize(torch.randn(d, C, generator=torch.Generator().manual_seed(3)), dim=0)
    y = np.arange(n) % C
    means = head_means(t)
    with Largest() as mode:
        lens = logit_lens(t, W, chunk=chunk, stream=True)
        sel = locate(lens, y, groups="full")
        corrected_logits(lens, Correction.mean_ablation([(1, 1)], means, t.layers, "ref"))
    bound = max(n * C, n * L * H, chunk * L * H * d)
    assert sel.counts["n_wrong"] + sel.counts["n_correct"] == n  # locate really ran on the streamed lens
    assert 0 < mode.numel <= bound < n * L * H * C
    with Largest() as held_mode:  # the instrument does see the held lens's [n, L, H, C] allocation
        logit_lens(t, W, chunk=chunk, stream=False)
    assert held_mode.numel == n * L * H * C
