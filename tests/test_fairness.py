"""Gender-bias reports (ltcutils.fairness), checked against hand computations."""

import math

import numpy as np
import pytest
import torch

from ltcutils.correct import head_means
from ltcutils.evaluate import EvalSplit
from ltcutils.fairness import (concept_max_skew, concept_skew_frame, gender_bias_table, retrieval_skew_summary,
                               skew_methods_table)
from ltcutils.lens import logit_lens
from ltcutils.locate import HeadSelection
from ltcutils.store import Terms


def test_retrieval_skew_over_all_and_over_the_top_occupations():
    scores = np.array([3, 2, 1, 0, -1, -2, 1, 2, 3, 4, 9.0])
    gender = np.array([1, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1])
    occ = np.array(["A"] * 6 + ["B"] * 4 + ["C"])
    # k = 2. A: top 2 both men, men are 2/6 of A -> log 3; B: one of each, B is half and half -> 0;
    # C has fewer than k images and counts nowhere
    s = retrieval_skew_summary(scores, gender, occ, top_occupations=["A"], k=2)
    assert s["max_skew"] == pytest.approx(math.log(3) / 2) and s["top_max_skew"] == pytest.approx(math.log(3))
    assert (s["n_occupations"], s["n_top"]) == (2, 1)
    s = retrieval_skew_summary(scores, gender, occ, top_occupations=["B", "C"], k=2)
    assert s["top_max_skew"] == pytest.approx(0.0, abs=1e-12) and s["n_top"] == 1
    assert math.isnan(retrieval_skew_summary(scores, gender, occ, top_occupations=["C"], k=2)["top_max_skew"])


def test_gender_bias_table_by_hand():
    # two occupations (0, 1) of four images each: women, women, men, men
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    gender = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    right = {"zero-shot": [1, 1, 0, 0, 1, 0, 1, 0],  # occupation 0: women 100, men 0 -> gap 100; 1: 50/50 -> 0
             "edit": [1, 0, 1, 0, 1, 1, 1, 0]}       # occupation 0: 50/50 -> 0; 1: women 100, men 50 -> 50
    pred = {name: np.where(np.array(r) == 1, y, 9) for name, r in right.items()}
    true_logit = {"zero-shot": np.array([4, 3, 2, 1, 1, 4, 2, 3.0]),  # top 2: two women (log 2); a woman and a man (0)
                  "edit": np.array([1, 2, 3, 4, 1, 2, 3, 4.0])}       # top 2: two men (log 2); two men (log 2)
    t = gender_bias_table(pred, true_logit, y, gender, top_k=1, k=2)
    assert list(t.columns) == ["overall_bias", "top1_bias", "max_skew_at_2", "top1_max_skew_at_2"]
    assert t.loc["zero-shot", "overall_bias"] == 50.0 and t.loc["zero-shot", "top1_bias"] == 100.0
    # the top occupation is the zero-shot one (occupation 0) for every row
    assert t.loc["edit", "overall_bias"] == 25.0 and t.loc["edit", "top1_bias"] == 0.0
    assert t.loc["zero-shot", "max_skew_at_2"] == pytest.approx(math.log(2) / 2)
    assert t.loc["zero-shot", "top1_max_skew_at_2"] == pytest.approx(math.log(2))
    assert t.loc["edit", "max_skew_at_2"] == pytest.approx(math.log(2))
    # fewer than k images per occupation: the skew is not defined, the bias still is
    t5 = gender_bias_table(pred, true_logit, y, gender, top_k=1, k=5)
    assert t5["max_skew_at_5"].isna().all() and t5.loc["edit", "overall_bias"] == 25.0
    with pytest.raises(KeyError, match="baseline"):
        gender_bias_table(pred, true_logit, y, gender, baseline="Ortho-Cali")


def test_concept_max_skew_caps_k_at_the_split_size():
    logits = torch.tensor([[4.0, 1.0], [3.0, 2.0], [2.0, 3.0], [1.0, 4.0]])
    # k = 1000 > 4 images: the whole split, 3 women / 1 man for both concepts: log(0.75 / 0.5)
    mean, per = concept_max_skew(logits, np.array([0, 0, 0, 1]), concept_names=["good", "evil"])
    assert per == pytest.approx({"good": math.log(1.5), "evil": math.log(1.5)}) and mean == pytest.approx(math.log(1.5))
    # k = 1: "good" ranks a woman first (log 2), "evil" the man (log 2)
    mean, per = concept_max_skew(logits, np.array([0, 0, 0, 1]), k=1)
    assert per == pytest.approx({"0": math.log(2), "1": math.log(2)})
    with pytest.raises(ValueError, match="concept names"):
        concept_max_skew(logits, np.zeros(4), concept_names=["good"])


@pytest.fixture
def faces():
    """Eight faces, women first; two concepts (classifier = identity). L0H0 writes 2 e_gender (a gender
    head: women score higher on concept 0, men on concept 1); L1H1 writes gender-free scores v, w."""
    s = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    heads = np.zeros((8, 2, 3, 2), dtype=np.float32)  # [batch, layer, head, d_embed]
    heads[np.arange(8), 0, 0, s] = 2.0
    heads[:, 1, 1, 0] = [8, 6, 4, 2, 7, 5, 3, 1]
    heads[:, 1, 1, 1] = [1, 3, 5, 7, 2, 4, 6, 8]
    terms = Terms(heads, np.zeros((8, 1, 2), np.float32), None, np.ones(8, np.float32), (0, 1), True)
    split = EvalSplit(logit_lens(terms, torch.eye(2)), terms, np.zeros(8, dtype=np.int64), s, ["female", "male"],
                      spurious=s)
    sel = HeadSelection(spurious=[(0, 0)], salient=[(1, 1)], rule="manual", groups="true")
    return split, sel, head_means(terms)


def test_skew_methods_table_by_hand(faces):
    split, sel, means = faces
    table, details = skew_methods_table(split, sel, means, "val", concept_names=["good", "evil"], k=4,
                                        ortho_classifier=torch.eye(2)[:, [1, 0]],
                                        roboshot_reject=torch.tensor([[1.0, 0.0]]), n_random=3, seed=0)
    # zero-shot, concept 0 = 2 [woman] + v = [10, 8, 6, 4, 7, 5, 3, 1]: top 4 = three women, one man;
    # concept 1 likewise for men: both log(0.75 / 0.5)
    assert table.loc["zero-shot", "max_skew_good"] == pytest.approx(math.log(1.5))
    assert table.loc["zero-shot", "max_skew"] == pytest.approx(math.log(1.5))
    # Ortho-Cali here swaps the two concepts: the same skews, the other way round
    assert table.loc["Ortho-Cali", "max_skew"] == pytest.approx(math.log(1.5))
    # RoboShot rejects e_0: concept 0 scores 0 for every face (ties: the first four, all women, log 2) and
    # concept 1 scores 1 for every face (the same)
    assert table.loc["RoboShot", "max_skew"] == pytest.approx(math.log(2))
    # ablating the gender head (its mean [1, 1] for everyone): concept 0 = 1 + v, top 4 = two women, two men
    assert table.loc["ablate", "max_skew"] == pytest.approx(0.0, abs=1e-12) and table.loc["ablate", "heads"] == "L0H0"
    assert torch.allclose(details["logits"]["ablate"], split.logits(details["ltc"]))
    # random heads exclude L0H0 and L1H1, and every other head writes nothing: the zero-shot skew, sd 0
    assert table.loc["random", "max_skew"] == pytest.approx(math.log(1.5)) and table.loc["random", "max_skew_sd"] == 0.0
    assert (table["k"] == 4).all()
    empty = HeadSelection(spurious=[], salient=[], rule="manual", groups="true")
    with pytest.raises(ValueError, match="no spurious head"):
        skew_methods_table(split, empty, means, "val", concept_names=["good", "evil"])


def test_concept_skew_frame_by_hand():
    logits = np.array([[4.0, 1.0], [3.0, 2.0], [2.0, 3.0], [1.0, 4.0]])
    f = concept_skew_frame(logits, np.array([0, 0, 1, 1]), ["good", "evil"], k=3)
    # good: top 3 = woman, woman, man -> 66.7 / 33.3, skew log((2/3) / (1/2)); evil: man, man, woman
    assert f.loc["good", "share_female"] == pytest.approx(200 / 3) and f.loc["evil", "share_male"] == pytest.approx(200 / 3)
    assert f["max_skew"].tolist() == pytest.approx([math.log(4 / 3)] * 2) and (f["k"] == 3).all()


def test_notebooks_that_need_a_class_label_refuse_fairface_saying_what_to_run():
    from types import SimpleNamespace

    from ltcutils.experiment import Experiment

    ex = Experiment.__new__(Experiment)  # no model needed: only the splits' info is read
    ex.dataset = "fairface"
    ex._splits = {"val": SimpleNamespace(info={"has_class_label": False}), "test": SimpleNamespace(info={})}
    assert not ex.has_class_label("val") and ex.has_class_label("test")
    with pytest.raises(ValueError, match=r"fairface has no class label .*notebook 03_ablate_heads cannot run on it: "
                                         r"it scores accuracy\. .*ltc run 00 01 05 .*heads_from"):
        ex.require_class_label("val", "03_ablate_heads", "it scores accuracy")
    ex.require_class_label("test", "03_ablate_heads", "it scores accuracy")  # a dataset with a class passes


def test_fairface_rows_reach_the_report_table():
    """`ltc report --metrics max_skew` reads FairFace's methods metrics (rows with max_skew, no wg)."""
    from ltcutils.workbook import paper_table
    from ltcutils.workbook.report import method_rows

    m = {"zero_shot": {"max_skew": 0.31, "k": 1000}, "ablate": {"max_skew": 0.12, "k": 1000},
         "random": {"max_skew": 0.3, "max_skew_sd": 0.02}, "signal": {"no_signal": False}}
    assert list(method_rows(m)) == ["zero_shot", "ablate", "random"]
    cells = paper_table(m, ["max_skew"])
    assert cells.iloc[:, 0].tolist() == ["0.31", "0.12", "0.3 ± 0.02"]
