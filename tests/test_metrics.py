"""Metrics against hand computations (all accuracies in percent)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ltcutils import metrics as M  # noqa: E402

# group 0: 4 items, all correct (100%); group 1: 1 item, wrong (0%)
PRED = np.array([1, 0, 1, 0, 1])
Y = np.array([1, 0, 1, 0, 0])
GROUP = np.array([0, 0, 0, 0, 1])


def test_group_accuracy_by_hand():
    pred = np.array([0, 1, 1, 0, 1, 0, 1])
    y = np.array([0, 1, 0, 0, 0, 0, 1])
    group = np.array([0, 0, 0, 1, 1, 2, 2])
    df = M.group_accuracy(pred, y, group, n_groups=4, group_names=["a", "b", "c", "d"])
    assert list(df.columns) == ["group", "name", "n", "correct", "accuracy"]
    assert df["n"].tolist() == [3, 2, 2, 0]
    assert df["correct"].tolist() == [2, 1, 2, 0]
    np.testing.assert_allclose(df["accuracy"].to_numpy()[:3], [200 / 3, 50.0, 100.0])
    assert np.isnan(df["accuracy"].iloc[3])  # empty group
    # the empty group is ignored by the worst group and the averages
    assert M.worst_group_accuracy(pred, y, group, n_groups=4) == pytest.approx(50.0)
    assert M.average_accuracy(pred, y, group, "group", n_groups=4) == pytest.approx((200 / 3 + 50 + 100) / 3)


def test_averages_are_labelled_and_differ():
    assert M.average_accuracy(PRED, Y, GROUP, "sample") == pytest.approx(80.0)  # 4 of 5
    assert M.average_accuracy(PRED, Y, GROUP, "group") == pytest.approx(50.0)  # (100 + 0) / 2
    # train proportions 1:3 -> 0.25 * 100 + 0.75 * 0
    assert M.average_accuracy(PRED, Y, GROUP, "train", train_proportions=[10, 30]) == pytest.approx(25.0)
    assert M.worst_group_accuracy(PRED, Y, GROUP) == pytest.approx(0.0)


def test_summary_by_hand():
    s = M.summary(PRED, Y, GROUP, group_names=["big", "small"], train_proportions=[0.25, 0.75])
    assert s["wg"] == pytest.approx(0.0)
    assert s["avg_sample"] == pytest.approx(80.0)
    assert s["avg_group"] == pytest.approx(50.0)
    assert s["gap"] == pytest.approx(80.0)  # avg_sample - wg
    assert s["gap_group"] == pytest.approx(50.0)
    assert s["avg_train"] == pytest.approx(25.0) and s["gap_train"] == pytest.approx(25.0)
    assert s["worst_group"] == "small"
    assert s["acc_big"] == pytest.approx(100.0) and s["acc_small"] == pytest.approx(0.0)
    assert s["n_big"] == 4 and s["n_small"] == 1 and s["n"] == 5
    s2 = M.summary(PRED, Y, GROUP)  # no names: ids
    assert s2["acc_1"] == 0.0 and "avg_train" not in s2


def test_summary_second_case():
    # group 0: 1/2, group 1: 2/3, group 2: 3/3
    pred = np.array([0, 1, 1, 1, 0, 2, 2, 2])
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    g = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    s = M.summary(pred, y, g)
    assert s["wg"] == pytest.approx(50.0)
    assert s["avg_sample"] == pytest.approx(100 * 6 / 8)
    assert s["avg_group"] == pytest.approx((50 + 200 / 3 + 100) / 3)
    assert s["gap"] == pytest.approx(75.0 - 50.0)


def test_input_errors():
    with pytest.raises(ValueError, match="same length"):
        M.summary(PRED, Y[:-1], GROUP)
    with pytest.raises(ValueError, match="integer group ids"):
        M.summary(PRED, Y, GROUP + 0.5)
    with pytest.raises(ValueError, match="group names"):
        M.group_accuracy(PRED, Y, GROUP, group_names=["only one"])
    with pytest.raises(ValueError, match="n_groups"):
        M.group_accuracy(PRED, Y, GROUP, n_groups=1)
    with pytest.raises(ValueError, match="weighting"):
        M.average_accuracy(PRED, Y, GROUP, "balanced")
    with pytest.raises(ValueError, match="train_proportions"):
        M.average_accuracy(PRED, Y, GROUP, "train")
    with pytest.raises(ValueError, match="1-D"):
        M.summary(np.zeros((5, 2)), Y, GROUP)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_degenerate_cases_by_hand():
    # each group all-correct or all-wrong: stratified resamples cannot change anything
    assert M.bootstrap_ci(PRED, Y, GROUP, "avg_sample") == (80.0, 80.0)
    assert M.bootstrap_ci(PRED, Y, GROUP, "wg") == (0.0, 0.0)
    assert M.bootstrap_ci(PRED, Y, GROUP, "gap_group") == (50.0, 50.0)
    # unstratified: the group sizes vary, so the sample-weighted average varies
    lo, hi = M.bootstrap_ci(PRED, Y, GROUP, "avg_sample", stratified=False, n_boot=2000)
    assert lo < 80.0 < hi


def test_bootstrap_matches_normal_approximation():
    # one group, 300 of 400 correct: CI ~ 75 +- 1.96 * 100 * sqrt(.75 * .25 / 400) = 75 +- 4.24
    correct = np.r_[np.ones(300), np.zeros(100)].astype(int)
    lo, hi = M.bootstrap_ci(correct, np.ones(400, int), np.zeros(400, int), "avg_sample", n_boot=20000, seed=1)
    half = 1.96 * 100 * math.sqrt(0.75 * 0.25 / 400)
    assert lo == pytest.approx(75 - half, abs=0.6)
    assert hi == pytest.approx(75 + half, abs=0.6)


def _explicit_bootstrap_wg(correct, group, n_boot, rng):
    """Reference: resample item indices within each group, compute worst-group accuracy."""
    out = np.empty(n_boot)
    idx = [np.flatnonzero(group == g) for g in np.unique(group)]
    for b in range(n_boot):
        out[b] = min(100 * correct[rng.choice(ix, len(ix))].mean() for ix in idx)
    return np.percentile(out, [2.5, 97.5])


def test_bootstrap_equals_index_resampling_in_distribution():
    rng = np.random.default_rng(3)
    group = np.r_[np.zeros(60, int), np.ones(40, int)]
    correct = np.r_[rng.random(60) < 0.8, rng.random(40) < 0.7].astype(int)
    ref = _explicit_bootstrap_wg(correct, group, 3000, np.random.default_rng(4))
    lo, hi = M.bootstrap_ci(correct, np.ones(100, int), group, "wg", n_boot=3000, seed=5)
    assert lo == pytest.approx(ref[0], abs=2.5) and hi == pytest.approx(ref[1], abs=2.5)


def test_bootstrap_seeded_and_checked():
    rng = np.random.default_rng(0)
    pred, y, g = rng.integers(0, 2, 200), rng.integers(0, 2, 200), rng.integers(0, 4, 200)
    a = M.bootstrap_ci(pred, y, g, "gap", seed=7)
    assert a == M.bootstrap_ci(pred, y, g, "gap", seed=7)
    assert a != M.bootstrap_ci(pred, y, g, "gap", seed=8)
    wg = M.summary(pred, y, g)["wg"]
    lo, hi = M.bootstrap_ci(pred, y, g, "wg", seed=7)
    assert lo < hi and lo - 10 < wg < hi + 10
    lo_t, hi_t = M.bootstrap_ci(pred, y, g, "avg_train", train_proportions=[1, 1, 1, 1])
    assert (lo_t, hi_t) == M.bootstrap_ci(pred, y, g, "avg_group")  # equal weights == group-balanced
    with pytest.raises(ValueError, match="stat"):
        M.bootstrap_ci(pred, y, g, "median")
    with pytest.raises(ValueError, match="train_proportions"):
        M.bootstrap_ci(pred, y, g, "avg_train")
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci(pred, y, g, alpha=1.5)


# ----------------------------------------------------------------------------- gender


def _occ_data():
    # A: F 1/2 = 50, M 2/2 = 100 -> 50;  B: F 3/3, M 1/1 -> 0;  C: F 1/4 = 25, M 0/2 = 0 -> 25;  D: F only
    occ = ["A"] * 4 + ["B"] * 4 + ["C"] * 6 + ["D"] * 2
    gender = [0, 0, 1, 1] + [0, 0, 0, 1] + [0, 0, 0, 0, 1, 1] + [0, 0]
    ok = [1, 0, 1, 1] + [1, 1, 1, 1] + [1, 0, 0, 0, 0, 0] + [1, 1]
    return np.array(ok, bool), np.array(occ), np.array(gender)


def test_occupation_bias_by_hand():
    ok, occ, gender = _occ_data()
    df = M.occupation_bias(ok, occ, gender)
    assert df["occupation"].tolist() == ["A", "B", "C", "D"]
    np.testing.assert_allclose(df["acc_female"], [50, 100, 25, 100])
    np.testing.assert_allclose(df["acc_male"].to_numpy()[:3], [100, 100, 0])
    np.testing.assert_allclose(df["abs_diff"].to_numpy()[:3], [50, 0, 25])
    assert df["n_female"].tolist() == [2, 3, 4, 2] and df["n_male"].tolist() == [2, 1, 2, 0]
    assert np.isnan(df["abs_diff"].iloc[3])
    # FairFace codes (1 = female): the two columns swap
    ff = M.occupation_bias(ok, occ, 1 - gender, female=1, male=0)
    pd.testing.assert_frame_equal(ff, df)
    with pytest.raises(ValueError, match="codes"):
        M.occupation_bias(ok, occ, gender + 1)


def test_bias_summary_by_hand():
    ok, occ, gender = _occ_data()
    df = M.occupation_bias(ok, occ, gender)
    s = M.bias_summary(df, top_k=2)
    assert s["overall"] == pytest.approx(25.0)  # (50 + 0 + 25) / 3, D left out
    assert s["top_k"] == pytest.approx(37.5) and s["top_occupations"] == ["A", "C"]
    assert s["n_occupations"] == 3
    base = pd.DataFrame({"occupation": ["A", "B", "C"], "abs_diff": [0.0, 80.0, 10.0]})
    sb = M.bias_summary(df, top_k=2, baseline_df=base)  # top-2 by the baseline: B, C
    assert sb["top_occupations"] == ["B", "C"] and sb["top_k"] == pytest.approx(12.5)
    with pytest.raises(ValueError, match="baseline occupations"):
        M.bias_summary(df, top_k=1, baseline_df=pd.DataFrame({"occupation": ["Z"], "abs_diff": [1.0]}))


def test_max_skew_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    attr = np.array([0, 0, 1, 0, 0, 1])
    # top 3 = [0, 0, 1]: shares 2/3, 1/3
    m, per = M.max_skew_at_k(scores, attr, 3, prior="uniform")
    assert per[0] == pytest.approx(math.log((2 / 3) / 0.5)) and per[1] == pytest.approx(math.log((1 / 3) / 0.5))
    assert m == pytest.approx(math.log(4 / 3))
    m, per = M.max_skew_at_k(scores, attr, 3, prior="empirical")  # priors 4/6, 2/6 = the shares
    assert m == pytest.approx(0.0, abs=1e-12) and per[1] == pytest.approx(0.0, abs=1e-12)
    # top 2 = [0, 0]: value 1 has share 0, replaced by 1/k = 1/2
    m, per = M.max_skew_at_k(scores, attr, 2, prior="uniform")
    assert per[0] == pytest.approx(math.log(2.0)) and per[1] == pytest.approx(0.0)
    # a third possible value with a uniform prior of 1/3
    m, per = M.max_skew_at_k(scores, attr, 2, prior="uniform", values=[0, 1, 2])
    assert per[0] == pytest.approx(math.log(3.0)) and per[2] == pytest.approx(math.log(1.5))
    # ties are broken by item order
    m, per = M.max_skew_at_k(np.zeros(4), np.array([1, 0, 0, 0]), 1, prior="uniform")
    assert per[1] == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="k must be"):
        M.max_skew_at_k(scores, attr, 7)
    with pytest.raises(ValueError, match="prior 0"):
        M.max_skew_at_k(scores, attr, 2, prior="empirical", values=[0, 1, 2])


def test_retrieval_skew_by_hand():
    scores = np.array([3, 2, 1, 0, -1, -2, 1, 2, 3, 4, 9.0])
    attr = np.array([1, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1])
    grp = np.array(["A"] * 6 + ["B"] * 4 + ["C"])
    # A: top 2 = [1, 1], within-group priors 1: 2/6, 0: 4/6 -> skew_1 = log(1 / (1/3)) = log 3,
    #    skew_0 = log((1/2) / (4/6)) (zero share -> 1/k); max = log 3
    # B: top 2 = [0, 1], priors 1/2 -> 0;  C: fewer than k items, skipped
    mean, table = M.retrieval_skew(scores, attr, grp, k=2)
    assert table["group"].tolist() == ["A", "B"] and table["n"].tolist() == [6, 4]
    np.testing.assert_allclose(table["max_skew"], [math.log(3), 0.0], atol=1e-12)
    assert mean == pytest.approx(math.log(3) / 2)
    # uniform prior: A -> log(1 / 0.5) = log 2
    mean_u, _ = M.retrieval_skew(scores, attr, grp, k=2, prior="uniform")
    assert mean_u == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValueError, match="no item group"):
        M.retrieval_skew(scores, attr, grp, k=7)


def test_results_table_order_and_names():
    rows = {
        "zero-shot": {"gap": 30.0, "avg_sample": 80.0, "wg": 50.0, "note": "x", "wg_ci_low": 45.0, "wg_ci_high": 55.0},
        "LTC": {"wg": 70.0, "avg_sample": 82.0, "avg_group": 78.0, "gap": 12.0, "wg_sd": 1.5, "heads": "L3H1"},
    }
    t = M.results_table(rows)
    assert t.index.tolist() == ["zero-shot", "LTC"] and t.index.name == "method"
    assert list(t.columns) == ["WG", "WG CI low", "WG CI high", "WG sd", "Avg (sample)", "Avg (group)", "Gap",
                               "note", "heads"]
    assert t.loc["LTC", "WG"] == 70.0 and t.loc["zero-shot", "WG CI high"] == 55.0
    assert np.isnan(t.loc["zero-shot", "Avg (group)"]) and np.isnan(t.loc["LTC", "WG CI low"])
    with pytest.raises(ValueError):
        M.results_table({})
