"""Text preparation and its on-disk cache: equal to computing afresh, reused, and never stale."""

import hashlib
import logging

import numpy as np
import pytest
import torch

from ltcutils.text import (PromptBank, bank_hash, load_prompt_bank, prepared_text, text_cache_path,
                           text_directions, zero_shot_classifier)


class FakeTextModel:
    """A text tower stand-in: each string gets a fixed pseudo-random vector; calls are counted."""

    def __init__(self, fingerprint="sha256:abc", name="fake-clip", d=16, salt=""):
        self.fingerprint, self.name, self.d, self.salt, self.calls = fingerprint, name, d, salt, 0

    def encode_text(self, texts, normalize=True):
        self.calls += 1
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256((self.salt + t).encode()).digest()[:4], "little")
            rows.append(torch.from_numpy(np.random.default_rng(seed).standard_normal(self.d)).float())
        e = torch.stack(rows)
        return torch.nn.functional.normalize(e, dim=-1) if normalize else e


@pytest.fixture
def bank():
    return load_prompt_bank("synthetic")


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert list(a[k]) == list(b[k]) and all(torch.equal(a[k][j], b[k][j]) for j in a[k])
        elif a[k] is None:
            assert b[k] is None, k
        else:
            assert torch.equal(a[k], b[k]), k


def test_cache_equals_fresh_and_is_reused(tmp_path, bank):
    m = FakeTextModel()
    fresh = prepared_text(m, bank, None)
    W = zero_shot_classifier(m, bank)
    assert torch.equal(fresh["classifier"], W)
    _same({k: v for k, v in fresh.items() if k not in ("classifier", "spurious_classifier")},
          text_directions(m, bank, W))
    first = prepared_text(m, bank, tmp_path)
    path = text_cache_path(tmp_path, m, bank)
    assert path.is_file() and path.parent.parent == tmp_path / "text"
    _same(first, fresh)
    m.calls = 0
    again = prepared_text(m, bank, tmp_path)
    assert m.calls == 0  # nothing re-encoded
    _same(again, fresh)


def test_cache_is_keyed_by_weights_and_bank_content(tmp_path, bank):
    a = FakeTextModel("sha256:aaa")
    prepared_text(a, bank, tmp_path)
    b = FakeTextModel("sha256:bbb", salt="other weights")  # other weights: another file, other tensors
    got_b = prepared_text(b, bank, tmp_path)
    assert text_cache_path(tmp_path, a, bank) != text_cache_path(tmp_path, b, bank)
    assert not torch.equal(got_b["classifier"], prepared_text(a, bank, tmp_path)["classifier"])
    edited = PromptBank.from_dict({"dataset": "synthetic", "class_names": list(bank.class_names),
                                   "class_templates": ["a drawing of a {}."]})
    assert bank_hash(edited) != bank_hash(bank)
    assert torch.equal(prepared_text(a, edited, tmp_path)["classifier"], zero_shot_classifier(a, edited))
    # the same content from another file path shares the entry
    same = PromptBank(**{**bank.__dict__, "source": "/elsewhere/synthetic.yaml"})
    assert text_cache_path(tmp_path, a, same) == text_cache_path(tmp_path, a, bank)


def test_unidentified_random_weights_are_not_cached(tmp_path, bank):
    m = FakeTextModel("random")
    assert text_cache_path(tmp_path, m, bank) is None
    prepared_text(m, bank, tmp_path)
    assert not (tmp_path / "text").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_inputs", "wrong_shape"])
def test_damaged_or_foreign_cache_files_are_recomputed(tmp_path, bank, damage, caplog):
    from safetensors.torch import load_file, save_file

    m = FakeTextModel()
    fresh = prepared_text(m, bank, tmp_path)
    path = text_cache_path(tmp_path, m, bank)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        if damage == "other_inputs":
            meta = dict(meta, weights="sha256:someone-else")
        else:
            tensors["classifier"] = tensors["classifier"][:, :1].contiguous()
        save_file(tensors, str(path), metadata=meta)
    with caplog.at_level(logging.WARNING, logger="ltcutils.text"):
        got = prepared_text(m, bank, tmp_path)
    assert "recomputing" in caplog.text
    _same(got, fresh)
    m.calls = 0
    prepared_text(m, bank, tmp_path)
    assert m.calls == 0  # the replaced file is good again


def test_evaluate_text_directions_is_a_deprecated_alias(bank):
    import ltcutils as ltc

    m = FakeTextModel()
    W = zero_shot_classifier(m, bank)
    with pytest.warns(DeprecationWarning, match="moved to ltc.text.text_directions"):
        old = ltc.evaluate.text_directions(m, bank, W)
    _same(old, text_directions(m, bank, W))


def test_pair_keyed_roboshot_directions_are_prepared_and_cached(tmp_path):
    """GenderBias keys its RoboShot accept pairs (and injection pairs) by occupation pair and shares one
    reject list: the keyed ones become one orthonormal basis per pair, and the cache keeps them."""
    import warnings

    from ltcutils.correct import orthonormal_basis
    from ltcutils.text import pair_directions

    bank = load_prompt_bank("genderbias")
    m = FakeTextModel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out any more, so nothing to warn about
        fresh = prepared_text(m, bank, tmp_path)
    assert fresh["roboshot_accept"] is None and fresh["roboshot_reject_keyed"] is None
    assert fresh["roboshot_reject"].shape == (len(bank.roboshot_reject), m.d)
    key = "Aircraft pilot|Flight attendant"
    assert list(fresh["roboshot_accept_keyed"]) == list(bank.roboshot_accept) and key in fresh["roboshot_accept_keyed"]
    expected = orthonormal_basis(pair_directions(m, bank.roboshot_accept[key]))
    assert torch.allclose(fresh["roboshot_accept_keyed"][key], expected)
    m.calls = 0
    cached = prepared_text(m, bank, tmp_path)
    assert m.calls == 0
    _same(cached, fresh)
