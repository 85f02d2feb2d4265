"""Interpretation tools: TextSpan, text pools, patch maps, Shapley values, grading, importance."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ltcutils import interpret as it  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model():
    import ltcutils as ltc

    torch.manual_seed(0)
    return ltc.models.load_model("ltc-tiny", None)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------ TextSpan


def _planted(seed=0, n=400, d=32, n_distract=50, noise=0.01):
    """Head terms = random mixes of 3 known text directions + small noise; 50 random distractors."""
    g = torch.Generator().manual_seed(seed)
    known = F.normalize(torch.randn(3, d, generator=g), dim=1)
    distract = F.normalize(torch.randn(n_distract, d, generator=g), dim=1)
    coef = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 2.0, 1.5])
    terms = coef @ known + 5.0 + noise * torch.randn(n, d, generator=g)  # offset: centring matters
    texts = [f"distractor {i}" for i in range(n_distract)] + ["known a", "known b", "known c"]
    emb = torch.cat([distract, known])
    perm = torch.randperm(len(texts), generator=g)
    return terms, emb[perm], [texts[i] for i in perm]


def test_textspan_finds_the_planted_texts_first():
    terms, emb, texts = _planted()
    df = it.textspan(terms, emb, texts, n_texts=6)
    assert list(df.columns[:4]) == ["rank", "text", "explained_variance", "cumulative"]
    assert set(df.text[:3]) == {"known a", "known b", "known c"}
    assert df.cumulative[2] > 0.999  # three directions explain all but the noise
    assert df.cumulative.iloc[-1] <= 1 + 1e-9
    assert np.allclose(df.cumulative, np.cumsum(df.explained_variance))
    assert (df.explained_variance.iloc[3:] < 1e-3).all()
    assert df["rank"].tolist() == list(range(1, 7))
    assert [texts[i] for i in df.text_index] == df.text.tolist()


def test_textspan_with_rank_projection_and_duplicates():
    terms, emb, texts = _planted(seed=1)
    j = texts.index("known a")
    emb2 = torch.cat([emb, emb[j : j + 1] * 2.0])  # same direction, longer
    df = it.textspan(terms, emb2, texts + ["known a again"], n_texts=4, rank=3)
    assert set(df.text[:3]) <= {"known a", "known b", "known c", "known a again"}
    assert not {"known a", "known a again"} <= set(df.text)  # a duplicate is never picked twice
    assert len(set(df.text[:3]) & {"known b", "known c"}) == 2


def test_textspan_explained_variance_by_hand():
    # terms along two orthogonal axes with variances 4 and 1: the texts on those axes explain 0.8 and 0.2
    a = torch.tensor([2.0, -2.0, 2.0, -2.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0])
    terms = torch.stack([a, b, torch.zeros(4)], 1) + torch.tensor([7.0, 0.0, 3.0])
    emb = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    df = it.textspan(terms, emb, ["y axis", "x axis", "diagonal"], n_texts=3)
    assert df.text.tolist()[:2] == ["x axis", "y axis"]
    assert df.explained_variance.tolist()[:2] == pytest.approx([0.8, 0.2])
    assert len(df) == 2  # the diagonal is spanned by the first two: no candidate left


def _naive_textspan(X, T, n_texts, renormalize):
    """Straight re-statement in data space (no covariance trick), for comparison."""
    X = X.double() - X.double().mean(0)
    T = F.normalize(T.double(), dim=1)
    total = (X**2).sum(1).mean()
    picks, shares, used = [], [], set()
    for _ in range(n_texts):
        D = F.normalize(T, dim=1)
        var_unit = ((X @ D.T) ** 2).mean(0)
        score = var_unit if renormalize else ((X @ T.T) ** 2).mean(0)
        for u in used:
            score[u] = -math.inf
        j = int(score.argmax())
        picks.append(j)
        shares.append(float(var_unit[j] / total))
        used.add(j)
        d = D[j]
        X = X - (X @ d)[:, None] * d
        T = T - (T @ d)[:, None] * d
    return picks, shares


@pytest.mark.parametrize("renormalize", [True, False])
def test_textspan_matches_a_naive_implementation(renormalize):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(200, 16, generator=g) @ torch.randn(16, 16, generator=g)
    T = torch.randn(40, 16, generator=g) * torch.rand(40, 1, generator=g)
    texts = [str(i) for i in range(40)]
    df = it.textspan(X, T, texts, n_texts=8, renormalize=renormalize)
    picks, shares = _naive_textspan(X, T, 8, renormalize)
    assert df.text_index.tolist() == picks
    assert df.explained_variance.tolist() == pytest.approx(shares, rel=1e-6)


def test_textspan_rejects_bad_input():
    terms, emb, texts = _planted()
    with pytest.raises(ValueError, match="d_embed"):
        it.textspan(terms, emb[:, :10], texts)
    with pytest.raises(ValueError, match="texts"):
        it.textspan(terms, emb, texts[:-1])
    with pytest.raises(ValueError, match="rank"):
        it.textspan(terms, emb, texts, rank=0)
    with pytest.raises(ValueError, match="no variance"):
        it.textspan(torch.ones(5, 32), emb, texts)


def test_textspan_heads_uses_layer_indices():
    terms, emb, texts = _planted()
    heads = torch.randn(terms.shape[0], 2, 3, terms.shape[1])
    heads[:, 1, 2] = terms
    out = it.textspan_heads(heads, [10, 11], emb, texts, heads_to_describe=[(11, 2), (10, 0)], n_texts=3)
    assert list(out) == ["L11H2", "L10H0"]
    assert set(out["L11H2"].text) == {"known a", "known b", "known c"}
    with pytest.raises(ValueError, match="L9H0"):
        it.textspan_heads(heads, [10, 11], emb, texts, heads_to_describe=[(9, 0)])


# ------------------------------------------------------------------ text pools


def test_shipped_pools():
    assert {"general", "synthetic"} <= set(it.list_text_pools())
    general = it.load_text_pool("general")
    assert len(general) >= 300 and len(set(general)) == len(general)
    assert all(t and not t.startswith("#") for t in general)
    synth = it.load_text_pool("synthetic")
    assert 50 <= len(synth) <= 80
    joined = " ".join(synth)
    for word in ["landbird", "waterbird", "sparrow", "swan", "webbed feet", "long neck", "pointed wings", "ocean", "bamboo"]:
        assert word in joined, word


def test_pool_from_file_and_errors(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_text("# header\n a lake \n\nforest # trailing comment\na lake\n")
    assert it.load_text_pool(p) == ["a lake", "forest"]
    with pytest.raises(FileNotFoundError, match="general"):
        it.load_text_pool("no-such-pool")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no descriptions"):
        it.load_text_pool(empty)


# ------------------------------------------------------------------ patch maps


def test_patch_map_sums_to_the_head_set_margin(tiny_model):
    from ltcutils.decompose import decompose, spatial_terms

    hooked = tiny_model.hooked
    size = hooked.cfg.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    heads = [(2, 1), (3, 0), (3, 3)]
    spatial = spatial_terms(hooked, pixels, heads).sum(1)  # [batch, pos, d_embed]
    dec = decompose(hooked, pixels)
    set_term = sum(dec.heads[:, l, h] for l, h in heads)  # [batch, d_embed]
    g = torch.Generator().manual_seed(1)
    for dirs in (torch.randn(64, generator=g), torch.randn(2, 64, generator=g)):
        grid = hooked.cfg.image_size // hooked.cfg.patch_size
        pmap, cls = it.patch_margin_map(spatial, dirs, grid=grid)
        assert pmap.shape == (2, grid, grid) and cls.shape == (2,)
        margin = (set_term * dirs).sum(-1)
        assert torch.allclose(pmap.sum((1, 2)) + cls, margin, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        it.patch_margin_map(spatial, dirs, grid=grid - 1)
    with pytest.raises(ValueError, match="class_dirs"):
        it.patch_margin_map(spatial, torch.randn(3, 64))


def test_patch_map_row_major_order():
    spatial = torch.zeros(1, 5, 2)
    spatial[0, 2, 0] = 1.0  # patch 1 = row 0, column 1
    pmap, cls = it.patch_margin_map(spatial, torch.tensor([1.0, 0.0]))
    assert pmap[0].tolist() == [[0.0, 1.0], [0.0, 0.0]] and cls.tolist() == [0.0]


def test_plot_patch_map_overlay_keeps_sign_and_units():
    """A signed map stays signed: colours centred on zero, values not min-max normalised (issue 14)."""
    img = np.zeros((32, 48, 3), dtype=np.uint8)
    pmap = np.array([[-2.0, 0.0], [0.0, 5.0]])
    ax = it.plot_patch_map(img, pmap, title="t")
    ims = ax.get_images()
    assert len(ims) == 2 and ax.get_title() == "t"
    heat = np.asarray(ims[1].get_array())
    assert heat.shape == (32, 48)
    assert heat[-1, -1] == pytest.approx(5.0, rel=0.2) and heat[0, 0] == pytest.approx(-2.0, rel=0.2)
    assert ims[1].get_clim() == pytest.approx((-5.0, 5.0))  # symmetric: zero is the middle colour
    ax2 = it.plot_patch_map(img, np.zeros((2, 2)))  # an all-zero map: no division by zero
    assert np.asarray(ax2.get_images()[1].get_array()).max() == 0
    ax3 = it.plot_patch_map(img, pmap, vmax=10.0)  # a shared scale for several images
    assert ax3.get_images()[1].get_clim() == pytest.approx((-10.0, 10.0))


def test_model_view_is_a_centre_crop():
    from PIL import Image

    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 30:50] = 255  # a bright band in the middle
    out = it.model_view(Image.fromarray(arr), 20)
    assert out.size == (20, 20)
    a = np.asarray(out)
    assert a[:, 10].mean() > 200 and a[:, 0].mean() < 50


# ------------------------------------------------------------------ Shapley values


def test_shapley_additive_is_exact():
    words = ["a", "duck", "on", "the", "lake"]
    w = dict(zip(words, [0.1, 2.0, -0.3, 0.0, 1.5]))
    df = it.word_shapley(words, lambda kept: 7.0 + sum(w[x] for x in kept))
    assert df.word.tolist() == words
    assert df.shapley.tolist() == pytest.approx([w[x] for x in words], abs=1e-12)
    assert df.share.sum() == pytest.approx(1.0)


def test_shapley_by_hand_and_efficiency():
    # v = 1 only when both "x" and "y" are kept: they split it, "z" gets nothing
    df = it.word_shapley(["x", "y", "z"], lambda kept: float("x" in kept and "y" in kept))
    assert df.shapley.tolist() == pytest.approx([0.5, 0.5, 0.0])
    # a non-additive function: efficiency holds
    def v(kept):
        return len(kept) ** 2 + 3.0 * ("b" in kept and "d" not in kept) - len("".join(kept)) ** 0.5
    words = ["a", "b", "cc", "d", "eee", "f"]
    df = it.word_shapley(words, v)
    assert df.shapley.sum() == pytest.approx(v(words) - v([]), abs=1e-12)
    assert df.attrs["value_all"] == pytest.approx(v(words)) and df.attrs["value_empty"] == v([])


def _pairwise(n=12, seed=0, triple=0.0):
    """Additive + pairwise terms (analytic Shapley values), plus an optional 3-way term."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = np.triu(rng.normal(size=(n, n)), 1)
    words = [f"w{i}" for i in range(n)]
    index = {w: i for i, w in enumerate(words)}

    def v(kept):
        m = np.zeros(n)
        m[[index[x] for x in kept]] = 1
        return float(a @ m + m @ b @ m + triple * m[0] * m[1] * m[2])

    return words, v, a + (b + b.T).sum(1) / 2 + triple / 3 * (np.arange(n) < 3)


def test_shapley_sampling_on_twelve_words():
    words, v, exact = _pairwise(triple=3.0)
    w = dict(zip(words, np.arange(12) / 3.0))
    additive = it.word_shapley(words, lambda kept: sum(w[x] for x in kept), n_samples=20)
    assert additive.shapley.to_numpy() == pytest.approx(np.arange(12) / 3.0)
    enumerated = it.word_shapley(words, v, max_exact=12)
    assert enumerated.shapley.to_numpy() == pytest.approx(exact, abs=1e-9)
    # antithetic pairs (a permutation and its reverse) make pairwise terms exact; the 3-way one is sampled
    few = it.word_shapley(words, v, n_samples=20, seed=0)
    many = it.word_shapley(words, v, n_samples=2000, seed=0)
    again = it.word_shapley(words, v, n_samples=2000, seed=0)
    assert many.shapley.tolist() == again.shapley.tolist()  # deterministic for a seed
    err_few = np.abs(few.shapley.to_numpy() - exact).max()
    err_many = np.abs(many.shapley.to_numpy() - exact).max()
    assert err_many < 0.1 and err_many < err_few
    assert many.shapley.sum() == pytest.approx(v(words) - v([]), abs=1e-9)  # efficiency, sampled too


def test_head_text_value_scores_and_caches(tiny_model):
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(64, generator=g)
    value = it.head_text_value(tiny_model, direction)
    calls = []
    orig = tiny_model.encode_text

    class Counting:
        def encode_text(self, texts, normalize=True, batch_size=256):
            calls.append(list(texts))
            return orig(texts, normalize=normalize, batch_size=batch_size)

    value.model = Counting()
    ref = float(tiny_model.encode_text(["a duck on water"])[0] @ direction)
    assert value(["a", "duck", "on", "water"]) == pytest.approx(ref, rel=1e-5)
    words = ["a", "duck", "on", "water"]
    df = it.word_shapley(words, value)
    assert df.shapley.sum() == pytest.approx(value(words) - value([]), abs=1e-6)
    assert len(calls) == 2 and len(calls[1]) == 15  # one batch: 16 subsets minus the cached full caption
    value(["duck"])
    assert len(calls) == 2  # cached
    cos = it.head_text_value(tiny_model, direction, normalize_direction=True)
    assert cos(words) == pytest.approx(ref / float(direction.norm()), rel=1e-5)


# ------------------------------------------------------------------ grading


def test_rank_statistics_by_hand():
    x, y = [1, 2, 2, 3], [1, 3, 2, 4]
    assert it.average_ranks(x).tolist() == [1, 2.5, 2.5, 4]
    assert it.spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert it.kendall_tau(x, y) == pytest.approx(5 / math.sqrt(5 * 6))
    assert it.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1)
    assert math.isnan(it.spearman([1, 1, 1], [1, 2, 3]))


def test_grade_heads_by_hand():
    scores = np.array([[0.5, 0.1, 0.0], [0.4, 0.3, 0.2]])
    oracle = np.array([[0.9, 0.0, 0.1], [0.2, 0.8, 0.3]])
    g = it.grade_heads(scores, oracle, [(0, 0), (1, 0)])
    assert g["k"] == 2 and g["oracle_top"] == ["L0H0", "L1H1"] and g["hits"] == ["L0H0"]
    assert g["precision_at_k"] == 0.5 and g["topk_overlap"] == 0.5
    # ranks: scores 6,2,1,5,4,3 ; oracle 6,1,2,3,5,4 -> d^2 = 0,1,1,4,1,1 = 8 -> rho = 1 - 6*8/(6*35)
    assert g["spearman"] == pytest.approx(1 - 48 / 210)
    assert g["kendall"] == pytest.approx(it.kendall_tau(scores, oracle))
    g3 = it.grade_heads(scores, oracle, [], k=3)  # nothing selected: top-3 by score
    assert g3["score_top"] == ["L0H0", "L1H0", "L1H1"] and g3["precision_at_k"] == pytest.approx(2 / 3)
    g_off = it.grade_heads(scores, oracle, [(10, 0), (11, 0)], layers=[10, 11])
    assert g_off["precision_at_k"] == 0.5 and g_off["oracle_top"] == ["L10H0", "L11H1"]
    with pytest.raises(ValueError, match="pass k"):
        it.grade_heads(scores, oracle, [])
    with pytest.raises(ValueError, match="L5H0"):
        it.grade_heads(scores, oracle, [(5, 0)])


def test_plot_scores_vs_oracle():
    scores = np.array([[0.5, 0.1, 0.0], [0.4, 0.3, 0.2]])
    ax = it.plot_scores_vs_oracle(scores, scores * 2, [(1, 0)])
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted(f"L{l}H{h}" for l in range(2) for h in range(3))
    assert len(ax.collections) == 2  # others, selected


# ------------------------------------------------------------------ importance


def _fake_evaluate(ablated):
    effect = {(0, 1): 0.2, (1, 0): -0.1}
    wg = 0.3 + sum(effect.get(h, 0.0) for h in ablated)
    return {"wg": wg, "avg": 0.8 - 0.01 * len(ablated), "gap": 0.8 - wg, "note": "text is dropped"}


def test_ablation_importance_table():
    df = it.ablation_importance(_fake_evaluate, [(0, 0), (0, 1), "L1H0"], sets={"both": [(0, 1), (1, 0)]})
    assert df.name.tolist() == ["none", "L0H0", "L0H1", "L1H0", "both"]
    assert df.kind.tolist() == ["none", "head", "head", "head", "set"]
    assert df.delta_wg.tolist() == pytest.approx([0, 0, 0.2, -0.1, 0.1])
    assert df.delta_avg.tolist() == pytest.approx([0, -0.01, -0.01, -0.01, -0.02])
    assert df.n_ablated.tolist() == [0, 1, 1, 1, 2] and "gap" in df and "note" not in df
    with pytest.raises(KeyError, match="wg"):
        it.ablation_importance(lambda h: {"avg": 1.0}, [(0, 0)])


def test_importance_heatmap_places_values():
    df = it.ablation_importance(_fake_evaluate, [(0, 1), (1, 0)])
    ax = it.plot_importance_heatmap(df, n_layers=2, n_heads=2)
    mat = np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(2, 2)
    assert mat[0, 1] == pytest.approx(0.2) and mat[1, 0] == pytest.approx(-0.1)
    assert np.isnan(mat[0, 0]) and np.isnan(mat[1, 1])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["H0", "H1"]


def test_shapley_heads():
    effect = {(0, 1): 0.2, (1, 0): -0.1, (1, 1): 0.05}

    def value(coalition):
        bonus = 0.1 if {(0, 1), (1, 1)} <= coalition else 0.0  # an interaction, split evenly
        return 0.3 + sum(effect[h] for h in coalition) + bonus

    df = it.shapley_heads(value, [(0, 1), "L1H0", (1, 1)])
    assert df.name.tolist() == ["L0H1", "L1H0", "L1H1"]
    assert df.shapley.tolist() == pytest.approx([0.25, -0.1, 0.1])
    assert df.shapley.sum() == pytest.approx(df.attrs["value_all"] - df.attrs["value_empty"])


def test_margin_spread_by_hand():
    # 4 images, 1 layer (model layer 5), 3 heads; the mask keeps images 0, 1, 3
    m = np.array([[[1.0, 2.0, 0.0]],
                  [[1.0, -1.0, 3.0]],
                  [[9.0, 9.0, 9.0]],
                  [[1.0, 5.0, 0.0]]])
    t = it.margin_spread(m, np.array([True, True, False, True]), [(5, 0), (5, 1), (5, 2)], layers=[5],
                         oracle=np.array([[0.3, 0.0, -0.1]]))
    assert list(t["head"]) == ["L5H0", "L5H1", "L5H2"]
    # H0: always 1 (steady, never on top); H1: 2, -1, 5 (mean 2, population sd sqrt(6)); H2: 0, 3, 0
    assert np.allclose(t["mean"], [1.0, 2.0, 1.0]) and np.allclose(t["sd"], [0.0, math.sqrt(6.0), math.sqrt(2.0)])
    assert np.allclose(t["top_share"], [0.0, 2 / 3, 1 / 3]) and np.allclose(t["oracle"], [0.3, 0.0, -0.1])
    with pytest.raises(ValueError, match="selects no image"):
        it.margin_spread(m, np.zeros(4, bool), [(5, 0)], layers=[5])
    with pytest.raises(ValueError, match="L4H0 is not in the table"):
        it.margin_spread(m, np.ones(4, bool), [(4, 0)], layers=[5])
