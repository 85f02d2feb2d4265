"""The notebook glue: setup, the cached text tensors, the validated heads file, the subsets."""

import json

import numpy as np
import pytest
import torch

import ltcutils as ltc
from ltcutils.experiment import stratified_subset
from ltcutils.locate import HeadSelection
from ltcutils.text import text_cache_path, zero_shot_classifier


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return ltc.experiment.setup(output_dir=out / "outputs", n_per_group=2, seed=0)


def test_setup_places_outputs_and_cache(ex):
    assert ex.output_dir.is_dir() and ex.cache_dir == ex.output_dir.parent / "cache"
    assert ex.heads_file == ex.output_dir / "heads.json"
    assert ex.dataset == "synthetic" and ex.bank.class_names == list(ex.split("val").class_names)


def test_classifier_is_encoded_once_and_read_back(ex, monkeypatch):
    W = ex.classifier()
    assert torch.allclose(W, zero_shot_classifier(ex.model, ex.bank).cpu())  # the cache holds the same tensor
    assert torch.allclose(ex.spurious_classifier(), zero_shot_classifier(ex.model, ex.bank, spurious=True).cpu())
    assert text_cache_path(ex.cache_dir, ex.model, ex.bank).is_file()
    # another experiment on the same model and bank (another notebook) reads the file, encodes nothing
    ex2 = ltc.experiment.setup(output_dir=ex.output_dir, cache_dir=ex.cache_dir, n_per_group=2, seed=0)

    def no_text(*a, **k):
        raise AssertionError("the prompt bank was encoded again")

    monkeypatch.setattr(ex2.model, "encode_text", no_text)
    assert torch.equal(ex2.classifier(), W)
    assert ex2.text()["injection_basis"] is not None


def test_classifier_is_a_copy(ex):
    W = ex.classifier()
    W.zero_()  # a notebook editing its classifier must not change the next call's
    assert ex.classifier().abs().sum() > 0


def test_heads_file_is_checked_against_this_model(ex):
    n_l, n_h = ex.model.hooked.cfg.n_layers, ex.model.hooked.cfg.n_heads
    HeadSelection(spurious=[(n_l - 1, 0)], salient=[], rule="manual", groups="true",
                  model=ex.model.describe()).save(ex.heads_file)
    assert ex.heads().spurious == [(n_l - 1, 0)]
    d = json.loads(ex.heads_file.read_text())
    d["spurious"] = [[0, n_h]]  # a head this model does not have (a file edited by hand, or another model's)
    ex.heads_file.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"L0H{n_h} is outside the model"):
        ex.heads()


def test_eval_split_knows_its_conflicting_groups(ex):
    split = ltc.evaluate.EvalSplit.from_store(ex.store("val", progress=False), ex.classifier())
    assert split.conflicting_groups() == [1, 2] and len(split.y) == 8


def test_stratified_subset_by_hand():
    group = np.array([0] * 6 + [1] * 3 + [2])
    idx = stratified_subset(group, 5, seed=0)
    # round(5 * 6/10) = 3, round(5 * 3/10) = 2 (banker's rounding of 1.5), at least 1 of group 2
    assert np.bincount(group[idx], minlength=3).tolist() == [3, 2, 1]
    assert np.array_equal(idx, np.sort(idx)) and np.array_equal(idx, stratified_subset(group, 5, seed=0))


def test_default_weights_only_for_the_tiny_model():
    with pytest.raises(ValueError, match="pretrained='default' means the shipped tiny checkpoint"):
        ltc.experiment.setup(model="ViT-B-16", pretrained="default")
