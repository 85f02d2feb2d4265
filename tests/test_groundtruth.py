"""The counterfactual oracle: hand-computed arithmetic, and a planted background head."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import ltcutils as ltc  # noqa: E402
from ltcutils.datasets import synthetic as syn  # noqa: E402
from ltcutils.groundtruth import background_effects, object_effects, oracle_table  # noqa: E402

torch.set_num_threads(1)


def test_background_and_object_effects_by_hand():
    # 4 items, 2 layers x 2 heads, d_embed 3; direction e0 - e1 (margin = x0 - x1)
    y = np.array([0, 0, 1, 1])
    d = torch.tensor([1.0, -1.0, 0.0])
    land = torch.zeros(4, 2, 2, 3)
    water = torch.zeros(4, 2, 2, 3)
    # L0H1 reads the background: +2 along e0 on water, 0 on land, whatever the class
    water[:, 0, 1, 0] = 2.0
    # L1H1 is orthogonal to the direction (e2) and must score 0
    water[:, 1, 1, 2] = 5.0
    land[:, 1, 1, 2] = -3.0
    # L0H0: background effect that differs by item: (1, 3, 0, 0) along -e1 (= +margin)
    water[:, 0, 0, 1] = -torch.tensor([1.0, 3.0, 0.0, 0.0])
    eff = background_effects(land, water, d)
    assert eff["effect"].shape == (2, 2)
    np.testing.assert_allclose(eff["effect"], [[1.0, 2.0], [0.0, 0.0]])
    # standard error of L0H0's background effect: std(1, 3, 0, 0, ddof=1) / 2
    np.testing.assert_allclose(eff["se"][0, 0], np.std([1, 3, 0, 0], ddof=1) / 2)
    assert eff["se"][0, 1] == 0.0 and eff["margin_water"].shape == (4, 2, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        background_effects(land, water[:3], d)

    # object swap: own render vs a bird of the other class on the same background
    own = torch.zeros(4, 2, 2, 3)
    swap = torch.zeros(4, 2, 2, 3)
    # L1H0 reads the class: +1 along e0 for a waterbird, -1 for a landbird
    own[:, 1, 0, 0] = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    swap[:, 1, 0, 0] = -own[:, 1, 0, 0]
    # L0H0 reads the class only for items 0 and 2: margins own (-3, 0, 1, 0), swap (1, 0, -3, 0)
    own[:, 0, 0, 0] = torch.tensor([-3.0, 0.0, 1.0, 0.0])
    swap[:, 0, 0, 0] = torch.tensor([1.0, 0.0, -3.0, 0.0])
    # L0H1 is the same in both renders (a background head): no object effect
    own[:, 0, 1, 0] = swap[:, 0, 1, 0] = 7.0
    ob = object_effects(own, swap, y, d)
    # per pair: (2y - 1) * (own - swap): L0H0 -> (4, 0, 4, 0), mean 2; L1H0 -> 2 for every pair
    np.testing.assert_allclose(ob["effect"], [[2.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(ob["se"][0, 0], np.std([4, 0, 4, 0], ddof=1) / 2)
    with pytest.raises(ValueError, match="differ in shape"):
        object_effects(own, swap[:3], y, d)
    with pytest.raises(ValueError, match="items"):
        object_effects(own, swap, y[:3], d)


def _shape(cfg) -> tuple[int, int, int]:
    """(layers, heads, width) of a ViTConfig (TransformerLens names, or the older ones)."""
    get = lambda new, old: getattr(cfg, new, None) or getattr(cfg, old)  # noqa: E731
    return get("n_layers", "layers"), get("n_heads", "heads"), get("d_model", "width")


def _planted(layer: int, head: int, channel: int = 5, gain: float = 3.0):
    """A random tiny image tower with one head that reads the background colour.

    Channel ``channel`` of every patch embedding is the patch's mean blue-minus-red; the planted
    head attends uniformly (zero queries and keys), its value reads that channel, and it writes
    along a residual vector whose joint-space image is the margin direction.
    """
    torch.manual_seed(0)
    m = ltc.models.load_model("ltc-tiny", pretrained=None).hooked
    cfg = m.cfg
    W, dh, p = _shape(cfg)[2], cfg.d_head, cfg.patch_size
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(cfg.d_embed, generator=g)
    direction = direction / direction.norm()
    with torch.no_grad():
        m.patch_weight[channel] = 0
        m.patch_weight[channel, 2] = 4.0 / p**2
        m.patch_weight[channel, 0] = -4.0 / p**2
        attn = m.blocks[layer].attn
        rows = slice(head * dh, (head + 1) * dh)
        for part in (0, 1):  # queries and keys of the head: zero -> uniform attention
            attn.in_proj_weight[part * W : (part + 1) * W][rows] = 0
            attn.in_proj_bias[part * W : (part + 1) * W][rows] = 0
        v = attn.in_proj_weight[2 * W :][rows]
        v.zero_()
        v[0, channel] = 1.0
        attn.in_proj_bias[2 * W :][rows] = 0
        A = (m.ln_post.weight[:, None] * m.proj).T  # [d_embed, d_model]
        u = torch.linalg.lstsq(A, direction[:, None]).solution[:, 0]
        u = u - u.mean()
        attn.out_proj_weight[:, rows] = 0
        attn.out_proj_weight[:, head * dh] = gain * u / u.norm()
    classifier = torch.stack([-direction, direction], 1) / 2  # margin direction = `direction`
    return m, classifier


@pytest.mark.parametrize("layer,head", [(1, 2), (3, 0)])
def test_oracle_ranks_a_planted_background_head_first(layer, head):
    model, classifier = _planted(layer, head)
    seeds = list(range(24))
    o = oracle_table(model, seeds, classifier, batch_size=12)
    L, H, _ = _shape(model.cfg)
    assert o.background_effect.shape == (L, H) == o.object_effect.shape and o.mlp_background_effect.shape == (L + 1,)
    assert o.top_heads(1) == [(layer, head)]
    others = np.delete(o.background_effect.reshape(-1), layer * H + head)
    assert o.background_effect[layer, head] > 0.3 > 5 * np.abs(others).max()
    # the background head barely separates the classes (the object swap keeps the background)
    assert abs(o.object_effect[layer, head]) < 0.5 * o.background_effect[layer, head]
    # flipping the classifier's columns flips every effect
    o2 = oracle_table(model, seeds, classifier.flip(1), batch_size=12)
    np.testing.assert_allclose(o2.background_effect, -o.background_effect, atol=1e-6)
    assert o2.top_heads(1) != [(layer, head)]
    # the terms sum to the embedding, so the parts of the effect add up to the total effect
    parts = o.background_effect.sum() + o.mlp_background_effect.sum()
    assert parts == pytest.approx(o.total_background_effect, abs=1e-5)
    parts = o.object_effect.sum() + o.mlp_object_effect.sum()
    assert parts == pytest.approx(o.total_object_effect, abs=1e-5)
    df = o.frame()
    assert len(df) == L * H + L + 1
    assert df.loc[df["background_rank"] == 1, "term"].item() == f"L{layer}H{head}"


def test_oracle_without_plant_does_not_single_out_the_head():
    torch.manual_seed(0)
    model = ltc.models.load_model("ltc-tiny", pretrained=None).hooked
    _, classifier = _planted(1, 2)
    o = oracle_table(model, list(range(24)), classifier, batch_size=12)
    assert np.abs(o.background_effect).max() < 0.2


def test_oracle_input_errors(tiny):
    with pytest.raises(ValueError, match="classifier must be"):
        oracle_table(tiny, [0, 1], torch.zeros(64, 3))
    with pytest.raises(ValueError, match="at least one"):
        oracle_table(tiny, [], torch.zeros(64, 2))
    landbirds = [s for s in range(40) if syn.item_labels(s)[0] == 0][:3]
    with pytest.raises(ValueError, match="both classes"):
        oracle_table(tiny, landbirds, torch.zeros(64, 2))


def test_oracle_on_shipped_model_finds_background_heads():
    """Integration: on the trained checkpoint the oracle's background heads explain the bias."""
    from ltcutils.models import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"shipped checkpoint {DEFAULT_CHECKPOINT} is missing")
    from ltcutils.text import load_prompt_bank, zero_shot_classifier

    model = ltc.models.load_default()
    W = zero_shot_classifier(model, load_prompt_bank("synthetic"))
    val = syn.make_split("val", n_per_group=25)
    o = oracle_table(model, [int(s) for s in val.ids], W, batch_size=100)
    # the model is biased: water pushes towards waterbird, and heads carry most of it
    assert o.total_background_effect > 0
    assert o.background_effect.max() > 0
    assert o.background_effect.sum() > 0.5 * o.total_background_effect
    # and it learned the birds: the class moves the margin the right way
    assert o.total_object_effect > 0


@pytest.mark.realsize  # ViT-B-16 at 224 px: make test, not make test-fast
def test_oracle_resizes_renders_for_a_real_size_vit():
    """A 224 px ViT-B-16 (random weights) is graded on the 48 px synthetic renders without error."""
    torch.manual_seed(0)
    big = ltc.models.load_model("ViT-B-16", pretrained=None)
    d = big.hooked.cfg.d_embed
    classifier = torch.nn.functional.normalize(torch.randn(d, 2), dim=0)
    seeds = [s for s in range(40) if syn.item_labels(s)[0] == 0][:2] + [s for s in range(40) if syn.item_labels(s)[0] == 1][:2]
    o = oracle_table(big, seeds, classifier, batch_size=4)
    assert o.background_effect.shape == (12, 12) and np.isfinite(o.object_effect).all()


def test_oracle_heads_debias_the_shipped_model(tmp_path):
    """Mean-ablating the oracle's top background heads (means over val) raises test WG, through
    the library's own store / correct / evaluate path; the object oracle sees the class."""
    from ltcutils.models import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"shipped checkpoint {DEFAULT_CHECKPOINT} is missing")
    ex = ltc.experiment.setup(output_dir=tmp_path / "outputs", n_per_group=100, seed=0)
    W = ex.classifier()
    ref, test = ex.store("val", progress=False), ex.store("test", progress=False)
    split = ltc.evaluate.EvalSplit.from_store(test, W)
    means = ltc.correct.head_means(ref.terms)
    o = oracle_table(ex.model, [int(s) for s in ex.split("val").ids[::2]], W)
    assert o.total_background_effect > 0 and o.total_object_effect > 0
    assert o.object_effect.max() > 0
    zs = ltc.evaluate.score(split, split.lens.logits())["wg"]
    corr = ltc.correct.Correction.mean_ablation(o.top_heads(4), means, ref.terms.layers, "val")
    ab = ltc.evaluate.score(split, ltc.correct.corrected_logits(split.lens, corr, split.terms))["wg"]
    rnd = ltc.evaluate.random_control(split, means, 4, exclude=o.top_heads(4), n_draws=10, seed=0)
    assert ab >= zs + 15
    assert ab > rnd.wg.mean() + 2 * rnd.wg.std()
