"""Weights are fingerprinted by content (a copied checkpoint reuses its cache; random weights by
their values); bad devices, model names and pickled checkpoints are named before anything else."""

import argparse
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import ltcutils as ltc
from conftest import make_fake_dataset
from ltcutils.models import ModelLoadError, load_model
from ltcutils.store import StoreMismatchError, capture, store_dir


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("ckpt")
    p = d / "a" / "tiny.safetensors"
    p.parent.mkdir()
    save_file({k: v.contiguous() for k, v in tiny.clip.state_dict().items()}, str(p))
    return p


def test_a_copied_checkpoint_reuses_the_store(ckpt, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed.safetensors"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    a, b = load_model("ltc-tiny", pretrained=ckpt), load_model("ltc-tiny", pretrained=copy)
    assert a.fingerprint == b.fingerprint
    ds = make_fake_dataset(8)
    first = capture(a, ds, tmp_path / "cache", shard_size=4, progress=False)
    calls = []
    load = ds.load_image
    ds.load_image = lambda i: calls.append(i) or load(i)
    again = capture(b, ds, tmp_path / "cache", shard_size=4, progress=False)  # the copy: same store, no work
    assert again.path == first.path and calls == []


def test_a_mismatch_names_the_field_that_differs(tiny, tmp_path):
    ds = make_fake_dataset(8)
    capture(tiny, ds, path=tmp_path / "s", shard_size=4, progress=False)
    with pytest.raises(StoreMismatchError, match=r"dtype: stored 'float16', requested 'float32'") as info:
        capture(tiny, ds, path=tmp_path / "s", shard_size=4, dtype="float32", progress=False)
    assert "layers" not in str(info.value)  # only what differs is listed
    assert "rebuild" in str(info.value)


def test_random_weights_are_fingerprinted_by_their_values():
    torch.manual_seed(0)
    a = load_model("ltc-tiny", pretrained=None)
    torch.manual_seed(1)
    b = load_model("ltc-tiny", pretrained=None)
    torch.manual_seed(0)
    c = load_model("ltc-tiny", pretrained=None)
    assert a.fingerprint.startswith("random:") and a.fingerprint != "random"
    assert a.fingerprint != b.fingerprint and a.fingerprint == c.fingerprint
    ds = make_fake_dataset(4)
    assert store_dir("cache", a, ds) != store_dir("cache", b, ds)


def _unavailable_device() -> str:
    for kind in ("cuda", "xpu", "mps"):
        try:
            torch.empty(0, device=kind)
        except (RuntimeError, AssertionError):
            return kind
    pytest.skip("every accelerator kind is available here")


def test_an_unavailable_device_is_named_not_the_checkpoint(ckpt):
    dev = _unavailable_device()
    with pytest.raises(ModelLoadError, match=rf"device '{dev}' is not available on this machine.*device='cpu'"):
        load_model("ltc-tiny", pretrained=ckpt, device=dev)
    with pytest.raises(ModelLoadError, match=rf"device '{dev}' is not available"):
        ltc.experiment.setup(device=dev, output_dir="unused-out")


def test_a_pickled_checkpoint_is_refused_without_the_unsafe_advice(tiny, tmp_path):
    p = tmp_path / "pickled.pt"
    torch.save({"state_dict": tiny.clip.state_dict(), "args": argparse.Namespace(lr=1)}, p)
    with pytest.raises(ModelLoadError) as info:
        load_model("ltc-tiny", pretrained=p)
    msg = str(info.value)
    assert "pickled Python objects" in msg and "safetensors" in msg
    assert "weights_only=False" not in msg and "weights_only" not in msg.replace("weights_only=True", "")
    assert "\n" not in msg


@pytest.mark.parametrize("name, match", [("ViT-B-99", r"unknown model name 'ViT-B-99'"),
                                         ("RN50", r"RN50 has a ModifiedResNet image tower, not a ViT")])
def test_setup_names_a_bad_model_before_the_pretrained_default(name, match, tmp_path):
    with pytest.raises(ModelLoadError, match=match):
        ltc.experiment.setup(model=name, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_saved_checkpoint_has_the_usual_mode_and_loads(tiny, tmp_path):
    import stat

    from ltcutils.io import file_mode

    p = ltc.train.save_checkpoint(tiny.clip, tmp_path / "ck" / "tiny.safetensors", metadata={"steps": 1})
    assert stat.S_IMODE(p.stat().st_mode) == file_mode() and sorted(x.name for x in p.parent.iterdir()) == [p.name]
    assert ltc.train.read_checkpoint_metadata(p) == {"steps": 1}
    assert load_model("ltc-tiny", pretrained=p).fingerprint.startswith("sha256:")
