"""Per-class salient heads and injection by pseudo-class (CounterAnimal's protocol), checked by hand.

The world: four classes, the classifier is the identity (class c's logit is coordinate c of the
embedding), two layers of two heads. Every correctly classified image has one head writing
``3 e_y`` and nothing else, so its top head is that head. Per class, the top heads are:

=====  ===========================  =====================================  ====================
class  top heads of correct images  single-map rule (F > 1/K)              with L0H1 excluded
=====  ===========================  =====================================  ====================
0      L0H0 x3, L1H1                F = .75/.25, K 2: L0H0                 L0H0
1      L0H1, L1H0                   F = .5/.5, K 2: none                   fallback
2      L1H1 x2, L0H0                F = .67/.33, K 2: L1H1                 L1H1
3      L0H1 x2, L1H0                F = .67/.33, K 2: L0H1                 L0H1 excluded: fallback
=====  ===========================  =====================================  ====================

One more image of class 0 is misclassified (its L0H1 writes ``3 e_2``) and counts nowhere.
"""

import numpy as np
import pytest
import torch

from ltcutils import classwise
from ltcutils.correct import Correction, head_delta
from ltcutils.evaluate import EvalSplit
from ltcutils.lens import logit_lens
from ltcutils.locate import HeadSelection, LocateError, select_heads
from ltcutils.store import Terms

TOPS = {0: [(0, 0)] * 3 + [(1, 1)], 1: [(0, 1), (1, 0)], 2: [(1, 1), (1, 1), (0, 0)], 3: [(0, 1), (0, 1), (1, 0)]}


def world(stream=False):
    rows = [(c, top, c) for c, tops in TOPS.items() for top in tops] + [(0, (0, 1), 2)]  # (y, head, class written)
    heads = np.zeros((len(rows), 2, 2, 4), dtype=np.float32)
    for i, (_, (l, h), c) in enumerate(rows):
        heads[i, l, h, c] = 3.0
    y = np.array([r[0] for r in rows])
    terms = Terms(heads, np.zeros((len(y), 1, 4), np.float32), None, np.ones(len(y), np.float32), (0, 1), True)
    lens = logit_lens(terms, torch.eye(4), chunk=3, stream=stream)
    return EvalSplit(lens, terms, y, np.zeros(len(y), int), ["common", "counter"], name="counteranimal/common",
                     spurious=np.zeros(len(y), int), meta={"dataset": "counteranimal"})


def test_single_map_rule_by_hand():
    assert classwise.single_map_heads(np.array([[0.75, 0.0], [0.0, 0.25]]), [4, 7]) == [(4, 0)]
    assert classwise.single_map_heads(np.array([[0.5, 0.5], [0.0, 0.0]]), [0, 1]) == []  # K 2: 0.5 is not > 0.5
    assert classwise.single_map_heads(np.array([[1.0, 0.0]]), [0]) == []  # K 1: one head alone is not > 1/1
    assert classwise.single_map_heads(np.zeros((2, 2)), [0, 1]) == []


@pytest.mark.parametrize("stream", [False, True])
def test_per_class_heads_by_hand(stream):
    split = world(stream)
    by_class, table = classwise.locate_per_class(split.lens, split.y, exclude=[(0, 1)], fallback=[(1, 0), (0, 1)])
    assert by_class == {0: [(0, 0)], 1: [(1, 0)], 2: [(1, 1)], 3: [(1, 0)]}  # the excluded head leaves the fallback too
    assert table["n_correct"].tolist() == [4, 2, 3, 3]  # the misclassified class-0 image is not counted
    assert table["fallback"].tolist() == [False, True, False, True]
    assert table["K"].tolist() == [2, 2, 2, 2]
    no_exclude, _ = classwise.locate_per_class(split.lens, split.y, fallback=[(1, 0)])
    assert no_exclude[3] == [(0, 1)]


def test_select_heads_reuses_spurious_and_locates_salient_per_class(tmp_path):
    """CounterAnimal's default (salient="auto"): the heads file's spurious heads, salient heads per
    class on the locate split with the file's salient heads as fallback; "reused" keeps today's path."""
    split = world()
    path = HeadSelection(spurious=[(0, 1)], salient=[(1, 0)], rule="manual", groups="true",
                         split="val").save(tmp_path / "waterbirds_heads.json")
    means = torch.zeros(2, 2, 4)
    located = select_heads(split, means, "common", heads_from=path)
    sel = located.selection
    assert sel.spurious == [(0, 1)] and located.reused_from == str(path)
    assert sel.salient_by_class == {0: [(0, 0)], 1: [(1, 0)], 2: [(1, 1)], 3: [(1, 0)]}
    assert sel.salient == [(0, 0), (1, 0), (1, 1)]  # the union, in class order
    assert sel.counts["per_class_fallback"] == 2 and sel.counts["n_classes"] == 4
    again = HeadSelection.load(sel.save(tmp_path / "heads.json"))
    assert again.salient_by_class == sel.salient_by_class and again.salient == sel.salient
    reused = select_heads(split, means, "common", heads_from=path, salient="reused").selection
    assert reused.salient == [(1, 0)] and reused.salient_by_class == {}
    with pytest.raises(LocateError, match="heads_from"):  # the common split has no bias-conflicting image
        select_heads(split, means, "common", conflicting=[1])
    with pytest.raises(ValueError, match="salient must be"):
        select_heads(split, means, "common", heads_from=path, salient="per-class")


def test_a_per_class_head_must_be_listed_in_salient(tmp_path):
    bad = HeadSelection(spurious=[(0, 1)], salient=[(1, 0)], rule="manual", groups="true",
                        salient_by_class={0: [(1, 1)]})
    with pytest.raises(ValueError, match=r"per-class salient heads \['L1H1'\] are missing from salient"):
        bad.save(tmp_path / "bad.json")


NAMES = ["fox", "wolf", "owl", "hawk", "cat"]
E = torch.eye(5)


def test_pseudo_classes_and_injection_by_class_by_hand():
    """Four images, classes fox (0) and owl (2) have heads; pairs "fox|wolf" (direction e3) and
    "owl|hawk" (e1). Zero-shot tops: fox (kept), hawk (owl's partner -> owl), wolf (fox's partner
    -> fox), cat (no partner: the better of fox and owl, owl here). Every head's term is the
    all-ones vector; with scale kept, injecting along q adds (x . q) q = q, so each image's edit is
    its class's direction, once: only its class's head is injected."""
    logits = torch.tensor([[5.0, 0, 1, 0, 0], [0, 0, 1, 4, 0], [1, 6, 0, 0, 0], [1, 0, 2, 0, 7]])
    pseudo, how = classwise.pseudo_classes(logits, [0, 2], {0: {1}, 1: {0}, 2: {3}, 3: {2}})
    assert pseudo.tolist() == [0, 2, 0, 2]
    assert how.tolist() == ["top", "partner", "partner", "best of classes"]
    keyed = {"fox|wolf": E[[3]], "owl|hawk": E[[1]]}
    bases = classwise.class_concept_bases({0: [(0, 0)], 2: [(1, 1)]}, keyed, NAMES, logits)
    assert bases.keys == ["fox", "owl"] and bases.index.tolist() == [0, 1, 0, 1]
    assert bases.heads == [[(0, 0)], [(1, 1)]]
    heads = torch.ones(4, 2, 2, 5)
    corr = Correction().with_injection([(0, 0), (1, 1)], bases, strength=1.0, renormalize=False)
    assert torch.allclose(head_delta(heads, [0, 1], corr), E[[3, 1, 3, 1]])
    # the random control keeps each image's number of injected heads, on the drawn heads
    assert bases.reassigned([(1, 0), (0, 1)]).heads == [[(1, 0)], [(1, 0)]]
    # the live encoder's per-image index keeps each basis's heads; a subset of images too
    assert bases.with_index([1, 0]).heads == bases.heads and bases.take(np.array([1])).index.tolist() == [1]
    # images whose pseudo-class has no concept pair get no injection, with a warning
    with pytest.warns(UserWarning, match="2 of 4 images"):
        only_fox = classwise.class_concept_bases({0: [(0, 0)], 2: [(1, 1)]}, {"fox|wolf": E[[3]]}, NAMES, logits)
    assert only_fox.index.tolist() == [0, -1, 0, -1]


def test_injection_basis_dispatches_on_the_selection():
    split = world()
    per_class = HeadSelection(spurious=[(0, 1)], salient=[(0, 0)], rule="manual", groups="true",
                              salient_by_class={0: [(0, 0)]})
    plain = HeadSelection(spurious=[(0, 1)], salient=[(0, 0)], rule="manual", groups="true")
    names = ["a", "b", "c", "d"]
    text = {"injection_basis": None, "injection_keyed": {"a|b": torch.eye(4)[[2]]}}
    got = classwise.injection_basis(text, names, split.lens, None, per_class)
    assert got.heads == [[(0, 0)]] and got.keys == ["a"]
    with pytest.warns(UserWarning):  # pair-keyed without per-class heads: the top-2 classes' pair
        pairwise = classwise.injection_basis(text, names, split.lens, None, plain)
    assert pairwise.heads is None
    assert classwise.injection_basis({"injection_basis": E[[0]], "injection_keyed": None}, names, split.lens,
                                     selection=plain) is not None
    with pytest.raises(ValueError, match="keyed by class pair"):
        classwise.injection_basis({"injection_basis": E[[0]], "injection_keyed": None}, names, split.lens,
                                  selection=per_class)


def test_per_class_salient_heads_on_located_spurious_heads():
    """Without a heads file: the contrast-located selections, each with per-class salient heads.

    Eight images, groups 2y + s = 0,0,1,1,2,2,3,3; L0H0 writes a * e_s (a = 1 for images 3 and 5,
    else 2), L1H1 writes 1.5 e_y. Conflicting images 2 and 4 are wrong (top head L0H0), 3 and 5
    right (top L1H1): the 1/K rule makes L0H0 spurious, L1H1 salient. Per class, the correct
    images' top heads are L0H0 x2 and L1H1 (class 0: images 0, 1, 3), so F(L0H0) = 2/3 > 1/2, but
    it is spurious: the class falls back to L1H1; class 1 likewise. LTC-full contrasts all images
    (L0H0: 1 - 4/6, below 1/K) and selects nothing, so its classes keep L0H0."""
    g = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    y, s = g // 2, g % 2
    heads = np.zeros((8, 2, 2, 2), dtype=np.float32)
    heads[np.arange(8), 0, 0, s] = [2, 2, 2, 1, 2, 1, 2, 2]
    heads[np.arange(8), 1, 1, y] = 1.5
    terms = Terms(heads, np.zeros((8, 1, 2), np.float32), None, np.ones(8, np.float32), (0, 1), True)
    split = EvalSplit(logit_lens(terms, torch.eye(2)), terms, y, g, ["a/u", "a/v", "b/u", "b/v"], spurious=s,
                      meta={"dataset": "waterbirds"})
    located = select_heads(split, torch.zeros(2, 2, 2), "val", rule="threshold", conflicting=[1, 2],
                           salient="per_class")
    sel, full = located.selection, located.full
    assert sel.spurious == [(0, 0)] and sel.salient_by_class == {0: [(1, 1)], 1: [(1, 1)]}
    assert sel.salient == [(1, 1)] and sel.counts["per_class_fallback"] == 2
    assert located.paper.salient_by_class == sel.salient_by_class
    assert full.spurious == [] and full.salient_by_class == {0: [(0, 0)], 1: [(0, 0)]}
    # the same split's default for Waterbirds is the contrast: no per-class lists
    assert select_heads(split, torch.zeros(2, 2, 2), "val", rule="threshold", conflicting=[1, 2]).selection \
        .salient_by_class == {}
