"""Locate: margins, top-head frequencies and the selection rules, checked by hand."""

import numpy as np
import pytest
import torch

from ltcutils.lens import LogitLens, predict_logits
from ltcutils.locate import (HeadSelection, LocateError, choose_k, conflicting_groups, locate, margins,
                             pseudo_groups, top_head_frequencies)


def _lens(head_logits, static=None):
    head = torch.tensor(head_logits, dtype=torch.float32)  # [n, L, H, C]
    n, L, H, C = head.shape
    static = torch.zeros(n, C) if static is None else torch.tensor(static, dtype=torch.float32)
    return LogitLens(head, static, torch.zeros(n, 4), torch.zeros(4, C), tuple(range(L)))


def _img(top, sign, L=2, H=2):
    """An image whose head `top` pushes class `sign` (0/1) hardest; others weaker."""
    x = np.zeros((L, H, 2))
    for l in range(L):
        for h in range(H):
            x[l, h, sign] = 0.1
    x[top[0], top[1], sign] = 1.0
    return x


def test_margins_use_runner_up_when_right_and_truth_when_wrong():
    lens = _lens([[[[3.0, 1.0, 0.0]]], [[[0.0, 2.0, 5.0]]]])  # 2 images, 1 head, 3 classes
    m, pred, comp = margins(lens, np.array([0, 1]))
    assert pred.tolist() == [0, 2] and comp.tolist() == [1, 1]
    assert m[:, 0, 0].tolist() == [2.0, 3.0]


def test_predict_with_candidates_returns_global_index():
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 1.0, 3.0]])
    assert predict_logits(logits, np.array([[1, 2], [0, 1]])).tolist() == [2, 1]


def test_frequencies_by_hand():
    m = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]], [[0.0, 3.0], [0.0, 0.0]]])
    F, count = top_head_frequencies(m, np.array([True, True, False]))
    assert count == 2 and F.tolist() == [[0.5, 0.0], [0.0, 0.5]]
    F0, c0 = top_head_frequencies(m, np.zeros(3, bool))
    assert c0 == 0 and F0.sum() == 0


def _benchmark():
    # group = 2y + s; conflicting groups 1, 2. Wrong images: top head L1H1 (3x), L0H0 (1x);
    # correct ones: top head L0H1 (3x), L0H0 (1x). Aligned images (groups 0, 3) must be ignored.
    imgs, y, g = [], [], []
    for top in [(1, 1), (1, 1), (1, 1), (0, 0)]:  # wrong: y=0 predicted 1
        imgs.append(_img(top, 1)); y.append(0); g.append(1)
    for top in [(0, 1), (0, 1), (0, 1), (0, 0)]:  # correct: y=1 predicted 1
        imgs.append(_img(top, 1)); y.append(1); g.append(2)
    for _ in range(5):  # aligned, all correct, would favour L1H0 if counted
        imgs.append(_img((1, 0), 0)); y.append(0); g.append(0)
    return _lens(np.stack(imgs)), np.array(y), np.array(g)


def test_threshold_rule_by_hand():
    lens, y, g = _benchmark()
    sel = locate(lens, y, g, groups="true", conflicting=[1, 2], split="val")
    # F_w: L1H1 .75, L0H0 .25; F_c: L0H1 .75, L0H0 .25. K = 3 heads ever on top, tau = 1/3.
    assert sel.threshold == pytest.approx(1 / 3)
    assert sel.spurious == [(1, 1)] and sel.salient == [(0, 1)]
    assert sel.counts == {"n_wrong": 4, "n_correct": 4, "n_conflicting": 8, "K": 3}
    row = sel.table.set_index("label").loc["L1H1"]
    assert row.f_wrong == 0.75 and row.f_correct == 0 and row.selected == "spurious"
    full = locate(lens, y, g, groups="full")
    assert full.counts["n_conflicting"] == 13


def test_topk_and_pseudo_groups_and_roundtrip(tmp_path):
    lens, y, g = _benchmark()
    sel = locate(lens, y, g, rule="topk", k=2, conflicting=[1, 2])
    assert sel.spurious == [(1, 1)]  # only heads with a positive difference
    s_logits = torch.zeros(len(y), 2)
    s_logits[np.arange(len(y)), g % 2] = 1  # a perfect spurious classifier gives the true groups
    pseudo = locate(lens, y, g, groups="pseudo", spurious_logits=s_logits, spurious=g % 2, conflicting=[1, 2])
    assert pseudo.spurious == [(1, 1)] and pseudo.groups == "pseudo"
    # a predictor that flips every spurious label turns conflicting into aligned images
    # (the 5 aligned images, all correctly classified, then form the set: nothing to contrast)
    with pytest.raises(LocateError, match="no wrong predictions on the 5 bias-conflicting"):
        locate(lens, y, g, groups="pseudo", spurious_logits=1 - s_logits, spurious=g % 2, conflicting=[1, 2])
    # groups of any layout group = base + spurious: swap in the predicted label
    assert pseudo_groups(np.array([10, 11, 3]), np.array([0, 1, 1]), np.array([1, 0, 1])).tolist() == [11, 10, 3]
    p = sel.save(tmp_path / "heads.json")
    back = HeadSelection.load(p)
    assert back.spurious == sel.spurious and back.rule == "topk" and back.k == 2
    assert back.table.equals(sel.table)


def test_clear_errors():
    lens, y, g = _benchmark()
    with pytest.raises(LocateError, match="no wrong predictions"):
        locate(lens.take(slice(4, 13)), y[4:], g[4:], conflicting=[1, 2])
    with pytest.raises(LocateError, match="no bias-conflicting images"):
        locate(lens.take(slice(8, 13)), y[8:], g[8:], conflicting=[1, 2])
    with pytest.raises(ValueError, match="needs k"):
        locate(lens, y, g, rule="topk", conflicting=[1, 2])
    # no silent [1, 2]: the dataset has to say which groups conflict
    with pytest.raises(ValueError, match="needs the bias-conflicting group ids"):
        locate(lens, y, g)


def test_choose_k_prefers_smallest_best():
    lens, y, g = _benchmark()
    pick = lambda k: locate(lens, y, g, rule="topk", k=k, conflicting=[1, 2])  # noqa: E731
    best, table = choose_k(pick, lambda s: -abs(s.k - 2), 4)
    assert best.k == 2 and best.k_cap == 4 and table.score.tolist() == [-1, 0, -1, -2]
    tie, _ = choose_k(pick, lambda s: 1.0, 3)
    assert tie.k == 1


# ----------------------------------------------------------------- bias-conflicting groups come from the dataset


def test_conflicting_groups_follow_celeba_attributes(tmp_path):
    """Before: a table said [0, 3] for any CelebA attributes. Now the loader computes them."""
    from fixtures_real import make_celeba
    from ltcutils.datasets.celeba import load_celeba

    root = make_celeba(tmp_path / "celeba")
    # fabricated rows, counted by hand (all 12): (Blond_Hair, Eyeglasses) n00=4 n01=2 n10=3 n11=3 -> 9 - 6 > 0
    assert load_celeba("test", root, target="Blond_Hair", spurious="Eyeglasses").conflicting_groups == [1, 2]
    # (Eyeglasses, Male) n00=3 n01=4 n10=3 n11=2 -> 6 - 12 < 0: no glasses/female and glasses/male conflict
    ds = load_celeba("val", root, target="Eyeglasses", spurious="Male")
    assert ds.conflicting_groups == [0, 3] and conflicting_groups(ds) == [0, 3]
    # (Blond_Hair, Male) here: 3 images in each group, no association, nothing conflicts
    flat = load_celeba("test", root)
    assert flat.conflicting_groups is None
    with pytest.raises(LocateError, match="celeba defines no bias-conflicting groups; pass conflicting"):
        conflicting_groups(flat)
    with pytest.warns(DeprecationWarning), pytest.raises(LocateError, match="depend on how it is loaded"):
        conflicting_groups("celeba")  # a name cannot say which attributes


def test_real_celeba_counts_give_the_known_groups():
    from ltcutils.datasets.celeba import EXPECTED_GROUP_SIZES
    from ltcutils.datasets.registry import conflicting_by_correlation

    n = np.sum([EXPECTED_GROUP_SIZES[s] for s in ("train", "val", "test")], axis=0)  # groups 0..3
    g = np.repeat(np.arange(4), n)
    # blond goes with female: 1749 * 89931 < 28234 * 82685, so non-blond women and blond men conflict
    assert conflicting_by_correlation(g // 2, g % 2) == [0, 3]


def test_each_loader_states_its_conflicting_groups(tmp_path):
    from fixtures_real import make_counteranimal, make_fairface, make_waterbirds
    from ltcutils.datasets.registry import load_dataset

    assert conflicting_groups(load_dataset("synthetic", "val", n_per_group=2)) == [1, 2]
    assert conflicting_groups(load_dataset("waterbirds", "test", make_waterbirds(tmp_path / "wb"))) == [1, 2]
    assert conflicting_groups(load_dataset("counteranimal", "counter", make_counteranimal(tmp_path / "ca"))) == [1]
    ff = load_dataset("fairface", "val", make_fairface(tmp_path / "ff"))
    # before: "no bias-conflicting groups are defined for 'fairface'" and nothing said what to do
    with pytest.raises(LocateError, match="no class label.*locate the heads on another dataset.*heads_from"):
        conflicting_groups(ff)


def test_store_meta_records_them_and_old_stores_recompute(tiny, tmp_path):
    import ltcutils as ltc
    from ltcutils.datasets.synthetic import make_split

    ds = make_split("val", n_per_group=2)
    store = ltc.store.capture(tiny, ds, tmp_path, progress=False)
    assert store.meta["conflicting_groups"] == [1, 2]
    split = ltc.evaluate.EvalSplit.from_store(store, torch.nn.functional.normalize(torch.randn(64, 2), dim=0))
    assert split.conflicting_groups() == [1, 2] and conflicting_groups(store) == [1, 2]
    old = {k: v for k, v in store.meta.items() if k != "conflicting_groups"}  # a store written before the key
    assert conflicting_groups(old) == [1, 2]  # recomputed from the synthetic definition, not defaulted
    lost = dict(old, dataset="fake")  # a dataset that cannot be loaded again: a clear error, no guess
    with pytest.raises(ValueError, match="written before stores recorded their bias-conflicting groups"):
        conflicting_groups(lost)
    hand = ltc.evaluate.EvalSplit(split.lens, split.terms, split.y, split.group, split.group_names)
    with pytest.raises(LocateError, match="not built from a store"):
        conflicting_groups(hand)


def test_deprecated_name_form_still_answers_where_options_do_not_matter():
    with pytest.warns(DeprecationWarning):
        assert conflicting_groups("waterbirds") == [1, 2]
    with pytest.warns(DeprecationWarning):
        assert conflicting_groups("synthetic") == [1, 2]
    with pytest.warns(DeprecationWarning), pytest.raises(LocateError, match="fairface defines no"):
        conflicting_groups("fairface")


def test_largest_gap_mask_by_hand():
    """Three occupations: gaps 50, 25 and 0 points; one occupation has women only (no gap, never kept)."""
    from ltcutils.locate import largest_gap_mask

    #              occ 0: F 2/2, M 1/2  | occ 1: F 3/4, M 2/4 | occ 2: F 1/1, M 1/1 | occ 3: F only
    correct = np.array([1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3])
    gender = np.array([0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0])
    mask, table = largest_gap_mask(correct, y, gender, n_classes=2)
    assert table["class"].tolist() == [0, 1, 2]  # occupation 3 has no gap
    assert table["gap"].tolist() == [50.0, 25.0, 0.0]
    assert table["worse"].tolist() == [1, 1, 0]  # on a tie the lower value is the worse one
    assert table["kept"].tolist() == [True, True, False]
    assert table.loc[1, "acc_0"] == 75.0 and table.loc[1, "acc_1"] == 50.0
    assert np.flatnonzero(mask).tolist() == [2, 3, 8, 9, 10, 11]  # the men of occupations 0 and 1
    one, _ = largest_gap_mask(correct, y, gender, n_classes=1)
    assert np.flatnonzero(one).tolist() == [2, 3]
    with pytest.raises(ValueError, match="n_classes"):
        largest_gap_mask(correct, y, gender, n_classes=0)


def _gap_benchmark():
    # class 0: women 2/2 right (top head L0H0), men 1/2 (right: L0H1, wrong: L1H1) -> gap 50, worse men
    # class 1: women and men all right (top head L1H0) -> gap 0. group = 2y + s.
    rows = [((0, 0), 0, 0, 0), ((0, 0), 0, 0, 0), ((0, 1), 0, 0, 1), ((1, 1), 1, 0, 1),
            ((1, 0), 1, 1, 0), ((1, 0), 1, 1, 0), ((1, 0), 1, 1, 1), ((1, 0), 1, 1, 1)]
    imgs = [_img(top, sign) for top, sign, _, _ in rows]
    y = np.array([r[2] for r in rows])
    s = np.array([r[3] for r in rows])
    return _lens(np.stack(imgs)), y, 2 * y + s, s


def test_locate_with_the_authors_groups_by_hand():
    """gap_classes=1 keeps the men of class 0: one wrong (top L1H1), one right (top L0H1); K = 2,
    so L1H1 (difference +1 > 1/2) is spurious and L0H1 (-1) salient."""
    lens, y, g, s = _gap_benchmark()
    sel = locate(lens, y, g, spurious=s, locate_groups="authors", gap_classes=1, split="val")
    assert sel.spurious == [(1, 1)] and sel.salient == [(0, 1)]
    assert sel.counts["n_conflicting"] == 2 and sel.counts["K"] == 2
    assert sel.counts["locate_groups"] == "authors" and sel.counts["gap_classes"] == 1
    # the bias-conflicting groups {1, 2} are another set: class 0 men and class 1 women (4 images)
    conf = locate(lens, y, g, conflicting=[1, 2])
    assert conf.counts["n_conflicting"] == 4 and "locate_groups" not in conf.counts
    # with both classes kept, class 1 (gap 0) adds its women (the lower value on a tie)
    both = locate(lens, y, g, spurious=s, locate_groups="authors", gap_classes=2)
    assert both.counts["n_conflicting"] == 4
    with pytest.raises(ValueError, match="needs the spurious labels"):
        locate(lens, y, g, locate_groups="authors")
    with pytest.raises(ValueError, match="locate_groups must be"):
        locate(lens, y, g, spurious=s, locate_groups="stereotype")


def test_locate_with_the_authors_groups_on_pseudo_labels():
    """groups='pseudo' with the authors' set reads the predicted spurious values: predicting every
    image as a woman leaves no class with two values, so nothing is left to locate on."""
    lens, y, g, s = _gap_benchmark()
    right = torch.nn.functional.one_hot(torch.as_tensor(s), 2).float()
    sel = locate(lens, y, g, groups="pseudo", spurious_logits=right, spurious=s, locate_groups="authors", gap_classes=1)
    assert sel.spurious == [(1, 1)]
    with pytest.raises(LocateError, match="largest-gap"):
        locate(lens, y, g, groups="pseudo", spurious_logits=torch.tensor([[1.0, 0.0]] * 8), spurious=s,
               locate_groups="authors")
