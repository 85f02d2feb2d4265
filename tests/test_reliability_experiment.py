"""Notebook parameters are checked where they enter (setup), and the rebuild choice reaches the cache."""

import numpy as np
import pytest

import ltcutils as ltc
from conftest import make_fake_dataset
from ltcutils.store import StoreMismatchError


@pytest.mark.parametrize("name, value", [("n_per_group", "abc"), ("n_per_group", 0), ("n_per_group", -5),
                                         ("batch_size", 0), ("max_images", 0), ("batch_size", 2.5),
                                         ("n_per_group", True)])
def test_bad_sizes_are_named(name, value, tmp_path):
    with pytest.raises(ValueError, match=rf"{name} must be a positive whole number.*got {value!r}"):
        ltc.experiment.setup(pretrained=None, output_dir=tmp_path / "out", **{name: value})
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or created


@pytest.mark.parametrize("text", ["None", "none", "null"])
def test_pretrained_none_as_text_means_random_weights(text, tmp_path):
    ex = ltc.experiment.setup(pretrained=text, output_dir=tmp_path / "out")
    assert ex.model.pretrained is None and ex.model.fingerprint.startswith("random:")


def test_a_single_class_split_is_refused(tmp_path, monkeypatch):
    ex = ltc.experiment.setup(pretrained=None, output_dir=tmp_path / "out")
    ds = make_fake_dataset(8)
    ds.y[:] = 0
    ds.group[:] = ds.spurious
    monkeypatch.setattr(ltc.datasets.registry, "load_dataset", lambda *a, **k: ds)
    monkeypatch.setattr(ex.bank, "class_names", list(ds.class_names))
    with pytest.raises(ValueError, match=r"fake/test has images of one class only \('a', 8 images\).*at least two"):
        ex.split("test")


def test_rebuild_reaches_the_capture(tmp_path):
    kw = dict(pretrained=None, n_per_group=1, output_dir=tmp_path / "out", batch_size=8)
    ex = ltc.experiment.setup(**kw)
    first = ex.store("test", progress=False)
    assert first.meta["layers"] == list(range(ex.model.hooked.cfg.n_layers))  # every layer by default
    stored = ", ".join(map(str, first.meta["layers"]))
    with pytest.raises(StoreMismatchError, match=rf"layers: stored \[{stored}\], requested \[2, 3\].*rebuild"):
        ltc.experiment.setup(layers=[2, 3], **kw).store("test", progress=False)
    again = ltc.experiment.setup(layers=[2, 3], rebuild=True, **kw).store("test", progress=False)
    assert again.path == first.path and again.meta["layers"] == [2, 3] and again.complete
    assert np.asarray(again.heads).shape[1] == 2
