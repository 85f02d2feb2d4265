"""Heads by name: one codec, and every head from outside checked against the model it edits."""

import json
import warnings

import numpy as np
import pytest
import torch

import ltcutils as ltc
from ltcutils.correct import Correction, DebiasedEncoder
from ltcutils.heads import check_heads, head_label, model_shape, parse_head, parse_heads
from ltcutils.locate import HeadSelection


def test_codec_round_trips_and_is_the_only_one():
    for l, h in [(0, 0), (3, 1), (31, 15)]:
        assert parse_head(head_label(l, h)) == (l, h)
    assert parse_head(" l10h3 ") == (10, 3) and parse_head(np.array([2, 1])) == (2, 1)
    # every module names heads through ltcutils.heads (no second codec, no second Head type)
    assert ltc.decompose.head_label is head_label and ltc.locate.parse_head is parse_head
    assert ltc.locate.HeadSelection is ltc.heads.HeadSelection and ltc.locate.parse_heads is parse_heads
    for mod in (ltc.correct, ltc.baselines, ltc.groundtruth, ltc.interpret.importance):
        assert mod.Head is ltc.heads.Head


@pytest.mark.parametrize("bad", ["L3H-1", "L-1H2", "L3", "3H1", "L3H1x", "LxH1", ""])
def test_malformed_labels_are_refused(bad):
    # before: "L3H-1" parsed as (3, -1), which indexes head 3 of a 4-head layer
    with pytest.raises(ValueError, match="not of the form"):
        parse_head(bad)


@pytest.mark.parametrize("bad", [(3, -1), (-1, 0), (True, 1), (1.5, 0), (1, 2, 3), "L1H1"])
def test_malformed_pairs_are_refused(bad):
    with pytest.raises(ValueError):
        parse_heads([bad] if not isinstance(bad, str) else bad)  # a bare string is not a list of heads


def test_check_heads_names_the_head_and_the_shape():
    assert check_heads(["L3H3", (0, 1)], 4, 4) == [(3, 3), (0, 1)]
    with pytest.raises(ValueError, match=r"L99H0 is outside the model: layers are 0..3 and heads 0..3"):
        check_heads([(99, 0)], 4, 4)
    with pytest.raises(ValueError, match=r"L1H4 is outside the model"):
        check_heads(["L1H4"], 4, 4)
    with pytest.raises(ValueError, match=r"layer 1, which the store did not capture.*\[2, 3\]"):
        check_heads([(1, 0)], 4, 4, layers=[2, 3])
    assert model_shape({"vit": {"n_layers": 4, "n_heads": 2}}) == (4, 2) and model_shape({}) is None


def test_mean_ablation_of_a_head_not_in_the_store_says_why():
    means = torch.zeros(2, 4, 8)  # layers [2, 3] captured, 4 heads
    # before: "99 is not in list" from list.index
    with pytest.raises(ValueError, match=r"L99H0 is in layer 99, which the store did not capture"):
        Correction.mean_ablation([(99, 0)], means, [2, 3], reference="val")
    with pytest.raises(ValueError, match=r"L3H7 does not exist: layers have heads 0..3"):
        Correction.mean_ablation([(3, 7)], means, [2, 3], reference="val")
    with pytest.raises(ValueError, match="must be >= 0"):
        Correction(ablate=[(3, -1)], ablate_values=torch.zeros(1, 8))


def test_live_encoder_refuses_heads_outside_the_model(tiny):
    n_l, n_h = tiny.hooked.cfg.n_layers, tiny.hooked.cfg.n_heads
    corr = Correction.zero_ablation([(0, n_h)], tiny.hooked.cfg.d_embed)
    with pytest.raises(ValueError, match=f"L0H{n_h} is outside the model"):
        DebiasedEncoder(tiny, corr)
    with pytest.raises(ValueError, match=f"L{n_l}H0 is outside the model"):
        DebiasedEncoder(tiny, Correction.zero_ablation([(n_l, 0)], tiny.hooked.cfg.d_embed))


def _selection(model: dict, spurious=((3, 2),), salient=((0, 1),)):
    return HeadSelection(spurious=list(spurious), salient=list(salient), rule="manual", groups="true", model=model)


def test_save_validates_before_writing(tmp_path, tiny):
    p = tmp_path / "heads.json"
    # before: both files were written, and notebook 02's assert failed only afterwards
    with pytest.raises(ValueError, match="no spurious head was selected"):
        _selection(tiny.describe(), spurious=()).save(p)
    with pytest.raises(ValueError, match=r"\['L3H2'\] are both spurious and salient"):
        _selection(tiny.describe(), salient=[(3, 2)]).save(p)
    n_l = tiny.hooked.cfg.n_layers
    with pytest.raises(ValueError, match=f"L{n_l}H0 is outside the model"):
        _selection(tiny.describe(), spurious=[(n_l, 0)]).save(p)
    assert not p.exists()
    assert _selection(tiny.describe(), spurious=()).save(p, allow_empty=True) == p and p.is_file()


def test_load_checks_heads_against_the_model(tmp_path, tiny):
    p = _selection(tiny.describe()).save(tmp_path / "heads.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same model: no warning
        sel = HeadSelection.load(p, model=tiny)
    assert sel.spurious == [(3, 2)]
    # a file edited by hand to an impossible head is refused against the model...
    d = json.loads(p.read_text())
    d["spurious"] = [[3, -1]]
    (tmp_path / "neg.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="must be >= 0"):
        HeadSelection.load(tmp_path / "neg.json")
    d["spurious"] = ["L99H0"]
    (tmp_path / "far.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"far.json: spurious head L99H0 is outside the model"):
        HeadSelection.load(tmp_path / "far.json", model=tiny)
    # ... and against the layers the store captured
    with pytest.raises(ValueError, match="layer 3, which the store did not capture"):
        HeadSelection.load(p, model=tiny, layers=[0, 1])


def test_heads_from_other_weights_warn_by_name(tmp_path, tiny):
    other = dict(tiny.describe(), model="ViT-B-16", weights="tag:ViT-B-16/openai")
    p = _selection(other).save(tmp_path / "heads.json")
    with pytest.warns(UserWarning, match=r"located on ViT-B-16 \(weights tag:ViT-B-16/openai.*applied to ltc-tiny"):
        HeadSelection.load(p, model=tiny)
    q = HeadSelection(spurious=[(3, 2)], salient=[], rule="manual", groups="true").save(tmp_path / "bare.json")
    with pytest.warns(UserWarning, match="records no model"):
        HeadSelection.load(q, model=tiny)
    with pytest.raises(ValueError, match="not a heads file"):
        (tmp_path / "junk.json").write_text("{not json")
        HeadSelection.load(tmp_path / "junk.json")


def test_locate_records_the_model(tiny):
    from test_locate import _benchmark

    lens, y, g = _benchmark()
    sel = ltc.locate.locate(lens, y, g, conflicting=[1, 2], model=tiny)
    assert sel.model["weights"] == tiny.fingerprint and model_shape(sel.model) == (
        tiny.hooked.cfg.n_layers, tiny.hooked.cfg.n_heads)
