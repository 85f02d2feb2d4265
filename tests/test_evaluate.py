"""What each row of the methods table means, checked on a world small enough to compute by hand.

Eight images, two classes, classifier = identity (class c's logit is coordinate c of the
embedding). Head L0H0 writes ``2 * e_s`` (it votes for the spurious label), head L1H1 writes
``1.5 * e_y`` (it votes for the class), every other head writes nothing. Groups ``2 y + s``
hold 3, 1, 1, 3 images, so the sample-weighted and group-balanced averages differ.

Zero-shot logits are ``2 e_s + 1.5 e_y``: the spurious head wins, so exactly the two
bias-conflicting images (groups 1 and 2) are wrong.
"""

import numpy as np
import pytest
import torch

from ltcutils.correct import head_means
from ltcutils.evaluate import EvalSplit, methods_table, score, table_metrics
from ltcutils.lens import logit_lens
from ltcutils.locate import HeadSelection
from ltcutils.store import Terms

GROUPS = [0, 0, 0, 1, 2, 3, 3, 3]


@pytest.fixture
def world():
    g = np.array(GROUPS)
    y, s = g // 2, g % 2
    heads = np.zeros((8, 2, 3, 2), dtype=np.float32)  # [batch, layer, head, d_embed]
    heads[np.arange(8), 0, 0, s] = 2.0
    heads[np.arange(8), 1, 1, y] = 1.5
    terms = Terms(heads, np.zeros((8, 1, 2), np.float32), None, np.ones(8, np.float32), (0, 1), True)
    W = torch.eye(2)
    split = EvalSplit(logit_lens(terms, W), terms, y, g, ["a/u", "a/v", "b/u", "b/v"])
    sel = HeadSelection(spurious=[(0, 0)], salient=[(1, 1)], rule="manual", groups="true")
    return split, sel, head_means(terms)


def test_score_by_hand(world):
    split, _, _ = world
    r = score(split, split.lens.logits())
    # per group: 3/3, 0/1, 0/1, 3/3 correct
    assert (r["wg"], r["avg_sample"], r["avg_group"]) == (0.0, 75.0, 50.0)
    # the sum of the head logits is the logits of the summed embedding (the lens is exact)
    assert torch.allclose(split.lens.logits(), split.lens.total @ split.lens.classifier)


def test_each_row_by_hand(world):
    split, sel, means = world
    # means over this split (an explicit choice here): L0H0 -> [1, 1], L1H1 -> [0.75, 0.75]
    assert torch.allclose(means[0, 0], torch.tensor([1.0, 1.0])) and torch.allclose(means[1, 1], torch.tensor([0.75, 0.75]))
    table, details = methods_table(
        split, sel, means, "test", basis=torch.tensor([[0.0, 1.0]]), strength=1.0, renormalize=False,
        ortho_classifier=torch.eye(2)[:, [1, 0]], roboshot_accept=torch.tensor([[0.0, 1.0]]), textspan_heads=[(0, 0)],
        n_random=5, ci=False, seed=0)
    row = lambda name: tuple(float(table.loc[name, k]) for k in ("wg", "avg_sample", "avg_group"))  # noqa: E731
    pred = details["pred"]
    # zero-shot: the spurious head decides, pred = s
    assert row("zero-shot") == (0.0, 75.0, 50.0) and pred["zero-shot"].tolist() == [0, 0, 0, 1, 0, 1, 1, 1]
    # ablate: L0H0 -> its mean [1, 1] adds the same to both classes, the class head decides: all right
    assert row("ablate") == (100.0, 100.0, 100.0) and pred["ablate"].tolist() == (np.array(GROUPS) // 2).tolist()
    # TextSpan with the same head is the same edit
    assert row("TextSpan") == row("ablate")
    # inject (scale kept) along e_1 into L1H1: y=1 images get 1.5 e_1 more, y=0 images nothing.
    # Group 2 ([2, 1.5] -> [2, 3]) turns right, group 1 ([1.5, 2]) stays wrong.
    assert row("inject") == (0.0, 87.5, 75.0)
    # LTC = ablate + inject: [1, 1] + (1.5 or 3) e_y, all right
    assert row("LTC") == (100.0, 100.0, 100.0)
    # the reference's unit-norm injection rescales L1H1 to e_y: [1, 1] + e_y, all right as well
    assert row("LTC (unit-norm injection)") == (100.0, 100.0, 100.0)
    # Ortho-Cali row = the embedding through the given classifier (here the classes swapped: pred = 1 - s)
    assert pred["Ortho-Cali"].tolist() == [1, 1, 1, 0, 1, 0, 0, 0] and row("Ortho-Cali") == (0.0, 25.0, 50.0)
    # RoboShot accept e_1 on the unit embedding: pred 1 iff 2 x_1 > x_0; group 2: 2 * 1.5 > 2
    assert pred["RoboShot"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1] and row("RoboShot") == (0.0, 87.5, 75.0)
    # random: as many random heads, none of them located; here they carry nothing, so nothing changes
    rnd = details["random"]
    assert len(rnd) == 5 and not any({"L0H0", "L1H1"} & set(h.split(",")) for h in rnd["heads"])
    assert rnd["heads"].map(lambda h: len(h.split(","))).eq(2).all()  # 1 ablated + 1 injected, as LTC
    assert row("random") == row("zero-shot") and table.loc["random", "wg_sd"] == 0.0
    # the metrics file keys
    keys = table_metrics(table)
    assert {"zero_shot", "ablate", "inject", "ltc", "ltc_unit_norm_injection", "ortho_cali", "roboshot", "textspan",
            "random"} <= set(keys) and keys["ltc"]["wg"] == 100.0


def test_rows_use_each_images_candidates(world):
    split, _, _ = world
    # with candidates, a class outside an image's set can never be predicted (global indices kept)
    split.candidates = np.array([[1, 1]] * 4 + [[0, 1]] * 4)
    assert split.predict(split.lens.logits()).tolist() == [1, 1, 1, 1, 0, 1, 1, 1]


def test_roboshot_row_with_per_image_directions(world):
    """Per-image directions (GenderBias's occupation pairs) feed the same RoboShot row: with every image on
    the accept direction e_1 it is the shared row of test_each_row_by_hand; images without a pair (-1)
    are only normalised, i.e. zero-shot."""
    from ltcutils.correct import ConceptBases

    split, sel, means = world
    accept = ConceptBases([torch.tensor([[0.0, 1.0]])], np.zeros(8, dtype=np.int64), ["a|b"])
    table, details = methods_table(split, sel, means, "test", roboshot_accept=accept, n_random=0, ci=False)
    assert details["pred"]["RoboShot"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert "class-pair" in table.loc["RoboShot", "what"]
    none = ConceptBases([torch.tensor([[0.0, 1.0]])], -np.ones(8, dtype=np.int64), ["a|b"])
    _, d0 = methods_table(split, sel, means, "test", roboshot_accept=none, n_random=0, ci=False)
    assert d0["pred"]["RoboShot"].tolist() == d0["pred"]["zero-shot"].tolist()
