"""The library calls the teaching notebooks make instead of cell logic: the no-signal guard, the
selection recipe, head sets, split scores and margins, and the figure conventions (signed maps)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import ltcutils as ltc  # noqa: E402
from ltcutils.evaluate import EvalSplit  # noqa: E402
from ltcutils.lens import logit_lens  # noqa: E402
from ltcutils.store import Terms  # noqa: E402


def _split(signal: bool, n_per_group: int = 50, seed: int = 0) -> EvalSplit:
    """A 2-class split whose terms are random; with ``signal`` one head carries the class, another the background."""
    rng = np.random.default_rng(seed)
    L, H, D = 2, 3, 6
    y = np.repeat([0, 0, 1, 1], n_per_group)
    s = np.repeat([0, 1, 0, 1], n_per_group)
    heads = rng.normal(0, 0.05, (len(y), L, H, D)).astype(np.float32)
    if signal:
        heads[:, 1, 0, 0] += np.where(y == 1, 0.4, -0.4)  # L1H0 reads the class
        heads[:, 1, 2, 0] += np.where(s == 1, 0.5, -0.5)  # L1H2 reads the background (the shortcut)
    terms = Terms(heads, np.zeros((len(y), 1, D), np.float32), None, np.ones(len(y)), (0, 1), True,
                  np.zeros((len(y), D), np.float32))
    classifier = torch.zeros(D, 2)
    classifier[0, 0], classifier[0, 1] = -1.0, 1.0
    return EvalSplit(logit_lens(terms, classifier), terms, y, 2 * y + s, ["a/u", "a/v", "b/u", "b/v"],
                     name="toy/val", spurious=s, rows=np.arange(len(y)),
                     meta={"dataset": "toy", "conflicting_groups": [1, 2]})


def test_signal_check_is_loud_at_chance_and_quiet_for_a_biased_model(capsys):
    noise = _split(signal=False).signal_check()
    assert noise["no_signal"] and "NO SIGNAL" in capsys.readouterr().out
    biased = _split(signal=True)
    out = biased.signal_check()
    assert not out["no_signal"] and out["aligned_acc"] > 90
    assert out["zero_shot_acc"] < out["aligned_acc"]  # wrong on the conflicting groups: the average hides the signal


def test_split_score_true_margin_and_rival_match_hand_computation():
    split = _split(signal=True)
    logits = split.logits()
    assert split.score()["wg"] == pytest.approx(ltc.evaluate.score(split, logits)["wg"])
    margin = split.true_margin(logits)
    y = torch.as_tensor(split.y)
    hand = (logits.gather(1, y[:, None])[:, 0] - logits.gather(1, (1 - y)[:, None])[:, 0]).numpy()
    np.testing.assert_allclose(margin, hand, atol=1e-6)
    assert (split.rival() == 1 - split.y).all()  # two classes: the rival is the other one
    means = ltc.correct.head_means(split.terms)
    corr = ltc.correct.Correction.mean_ablation([(1, 2)], means, split.terms.layers, "val")
    assert split.score(corr)["wg"] > split.score()["wg"]  # ablating the background head helps the worst group
    assert split.ablation_score([(1, 2)], means, "val")["wg"] == pytest.approx(split.score(corr)["wg"])


def test_head_set_sums_the_named_heads_by_layer_index():
    split = _split(signal=True)
    t = split.terms
    got = t.head_set([(1, 0), (0, 2)], rows=np.array([3, 5]))
    want = torch.from_numpy(t.heads[[3, 5]][:, 1, 0] + t.heads[[3, 5]][:, 0, 2])
    torch.testing.assert_close(got, want)
    assert t.head_set([]).shape == (len(t), 6)
    with pytest.raises(ValueError, match="layer 7 was not captured"):
        t.head_set([(7, 0)])
    norms = t.mean_norms()
    assert norms["heads"].shape == (2, 3) and norms["attention"].shape == (2,)
    assert norms["heads"][1, 2] > 0.4  # the background head writes the most


def test_select_heads_finds_the_shortcut_and_chooses_k_on_the_locate_split(tmp_path):
    split = _split(signal=True)
    means = ltc.correct.head_means(split.terms)
    located = ltc.locate.select_heads(split, means, "val", rule="topk", score="margin", k_cap=2, conflicting=[1, 2])
    assert located.selection.spurious[0] == (1, 2)
    assert list(located.k_table.k) == [1, 2] and located.selection.k in (1, 2)
    assert located.score_map().shape == (2, 3) and located.score_map()[1, 2] == located.score_map().max()
    paths = located.save(tmp_path / "heads.json")
    assert [p.name for p in paths] == ["heads.json", "heads_paper.json", "heads_full.json"]
    again = ltc.locate.select_heads(split, means, "val", heads_from=paths[0])
    assert again.reused_from and again.selection.spurious == located.selection.spurious
    with pytest.raises(ValueError, match="rule must be"):
        ltc.locate.select_heads(split, means, "val", rule="best", conflicting=[1, 2])


def test_head_heatmaps_are_signed_and_legible_at_32_heads():
    m = np.linspace(-1, 2, 4 * 32).reshape(4, 32)
    fig = ltc.plots.head_heatmaps({"diff": m, "share": np.abs(m)}, layers=[3, 1, 2, 0])
    diff_ax, share_ax = fig.axes[0], fig.axes[2]  # each map is followed by its colour bar
    clim = diff_ax.collections[0].get_clim()
    assert clim == pytest.approx((-2.0, 2.0))  # centred on zero
    assert share_ax.collections[0].get_cmap().name == "viridis"  # a share is not diverging
    assert [t.get_text() for t in diff_ax.get_yticklabels()] == ["L0", "L1", "L2", "L3"]  # numeric layer order
    assert len(diff_ax.get_xticklabels()) <= 16 and diff_ax.get_xlabel() == "head" and diff_ax.get_title() == "diff"


def test_patch_maps_share_one_signed_scale_with_a_colour_bar(tmp_path):
    imgs = [np.zeros((16, 16, 3), np.uint8)] * 2
    maps = np.array([[[1.0, -3.0], [0.0, 0.0]], [[0.5, 0.0], [0.0, 2.0]]])
    fig = ltc.plots.patch_maps(imgs, maps, ["a", "b"], save=tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()
    overlays = [ax.get_images()[1] for ax in fig.axes[:2]]
    assert all(o.get_clim() == pytest.approx((-3.0, 3.0)) for o in overlays)
    assert fig.axes[-1].get_ylabel() == "contribution to the margin"  # the colour bar


def test_pick_examples_shows_both_kinds_when_both_exist():
    mask = np.array([1, 1, 1, 1, 1, 0, 1], bool)
    wrong = np.array([1, 0, 1, 1, 0, 1, 0], bool)
    assert ltc.interpret.pick_examples(mask, wrong, 4).tolist() == [0, 2, 1, 4]
    assert ltc.interpret.pick_examples(mask, np.zeros(7, bool), 3).tolist() == [0, 1, 2]  # none wrong: all correct
    assert ltc.interpret.pick_examples(mask, mask, 2).tolist() == [0, 1]  # none correct: all wrong
    assert ltc.interpret.pick_examples(np.zeros(7, bool), wrong, 2).tolist() == []
