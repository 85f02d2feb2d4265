"""The method end to end on the embedded default: deterministic, live == cached, bias corrected."""

import numpy as np
import pytest
import torch

import ltcutils as ltc


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return ltc.experiment.setup(output_dir=out / "outputs", n_per_group=100, seed=0)


def _run(ex):
    W = ex.classifier()
    ref, test = ex.store("val", progress=False), ex.store("test", progress=False)
    val_split = ltc.evaluate.EvalSplit.from_store(ref, W)
    split = ltc.evaluate.EvalSplit.from_store(test, W)
    means = ltc.correct.head_means(ref.terms)

    def wg(sel):
        c = ltc.correct.Correction.mean_ablation(sel.spurious, means, ref.terms.layers, "val")
        return ltc.evaluate.score(val_split, ltc.correct.corrected_logits(val_split.lens, c, ref.terms))["wg"]

    sel, _ = ltc.locate.choose_k(
        lambda k: ltc.locate.locate(val_split.lens, val_split.y, val_split.group, rule="topk", k=k, score="margin",
                                    conflicting=val_split.conflicting_groups()),
        wg, k_cap=4)
    text = ltc.text.text_directions(ex.model, ex.bank, W)
    table, details = ltc.evaluate.methods_table(split, sel, means, "val", basis=text["injection_basis"],
                                                renormalize=False, n_random=20, n_boot=200, seed=0)
    return sel, table, details


def test_same_seed_same_heads_and_metrics(ex):
    sel1, t1, _ = _run(ex)
    sel2, t2, _ = _run(ex)
    assert sel1.spurious == sel2.spurious and sel1.salient == sel2.salient
    assert t1.drop(columns=["heads"], errors="ignore").equals(t2.drop(columns=["heads"], errors="ignore"))


def test_ltc_corrects_the_shipped_model(ex):
    sel, table, _ = _run(ex)
    zs, ltc_row, rnd = table.loc["zero-shot"], table.loc["LTC"], table.loc["random"]
    assert zs.avg_group - zs.wg >= 20, "the shipped model is biased"
    assert ltc_row.wg >= zs.wg + 15
    assert ltc_row.wg > rnd.wg + 2 * rnd.wg_sd


def test_live_encoder_on_the_shipped_model(ex):
    sel, _, details = _run(ex)
    test = ex.store("test", progress=False)
    ds = ex.split("test")
    idx = [0, 150, 250, 399]
    px = torch.stack([ex.model.preprocess(ds.image(i)) for i in idx])
    live = ltc.correct.DebiasedEncoder(ex.model, details["ltc"])(px)
    lens = ltc.lens.logit_lens(test.terms, ex.classifier())
    cached = ltc.correct.corrected_embedding(lens, details["ltc"], test.terms)[idx]
    # the store is float16: agreement is at its precision
    assert torch.allclose(live, cached, atol=3e-3)
    assert (live @ ex.classifier()).argmax(1).tolist() == (cached @ ex.classifier()).argmax(1).tolist()
