"""The activation store: streaming capture, reuse, resume after interruption, refusal on mismatch."""

import json

import numpy as np
import pytest
import torch

import ltcutils as ltc
from conftest import make_fake_dataset
from ltcutils.datasets.base import DatasetError
from ltcutils.store import ActivationStore, StoreError, StoreMismatchError, capture


def _pixels(model, ds, idx):
    return torch.stack([model.preprocess(ds.image(i)) for i in idx])


def test_capture_matches_decompose_and_is_memory_mapped(tiny, tmp_path):
    ds = make_fake_dataset(20)
    st = capture(tiny, ds, tmp_path, batch_size=8, shard_size=8, dtype="float32", progress=False)
    c = tiny.hooked.cfg
    assert isinstance(st.heads, np.memmap) and st.heads.shape == (20, c.n_layers, c.n_heads, c.d_embed)
    d = ltc.decompose.decompose(tiny.hooked, _pixels(tiny, ds, range(20)))
    assert np.allclose(st.heads, d.heads.numpy(), atol=1e-6)
    assert np.allclose(st.terms.mlps, d.mlps.numpy(), atol=1e-6)
    assert (st.y == ds.y).all() and (st.group == ds.group).all()
    assert list(st.labels["ids"]) == ds.ids
    meta = json.loads((st.path / "meta.json").read_text())
    for key in ("model", "dataset", "split", "n", "dtype", "layers", "package_version", "fingerprint"):
        assert key in meta
    # the identity survives the store (fp32)
    total = st.terms.static_t(slice(None)) + st.terms.heads_t(slice(None)).sum((1, 2))
    ref = torch.nn.functional.normalize(tiny.clip.encode_image(_pixels(tiny, ds, range(20))), dim=-1)
    assert torch.allclose(total, ref, atol=1e-5)


def test_fp16_and_layer_range(tiny, tmp_path):
    ds = make_fake_dataset(10)
    st = capture(tiny, ds, path=tmp_path / "s", layers=[2, 3], dtype="float16", progress=False)
    c = tiny.hooked.cfg
    assert st.heads.dtype == np.float16 and st.heads.shape == (10, 2, c.n_heads, c.d_embed)
    assert st.terms.rest is not None
    full = ltc.decompose.decompose(tiny.hooked, _pixels(tiny, ds, range(10)))
    total = st.terms.static_t(slice(None)) + st.terms.heads_t(slice(None)).sum((1, 2))
    assert torch.allclose(total, full.total(), atol=2e-3)
    assert st.terms.labels()[0] == "L2H0"


def test_reuse_resume_and_mismatch(tiny, tmp_path):
    ds = make_fake_dataset(24)
    calls = {"n": 0}
    load = ds.load_image

    def flaky(i):
        calls["n"] += 1
        if calls["n"] > 13:  # dies in the middle of the second shard
            raise KeyboardInterrupt
        return load(i)

    ds.load_image = flaky
    with pytest.raises(KeyboardInterrupt):
        capture(tiny, ds, tmp_path, batch_size=4, shard_size=8, progress=False)
    path = ltc.store.store_dir(tmp_path, tiny, ds)
    assert sorted(f.name for f in (path / "shards").iterdir()) == ["000000.json"]  # one record per finished shard
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(path)
    ds.load_image = load
    calls["n"] = 0

    def counting(i):
        calls["n"] += 1
        return load(i)

    ds.load_image = counting
    st = capture(tiny, ds, tmp_path, batch_size=4, shard_size=8, progress=False)
    assert calls["n"] == 16  # only the two unfinished shards were recomputed
    ref = capture(tiny, make_fake_dataset(24), tmp_path / "ref", batch_size=4, shard_size=8, progress=False)
    assert np.array_equal(np.asarray(st.heads), np.asarray(ref.heads))
    calls["n"] = 0
    capture(tiny, ds, tmp_path, batch_size=4, shard_size=8, progress=False)
    assert calls["n"] == 0  # a finished store is reused
    other = make_fake_dataset(24, seed=5)
    assert ltc.store.store_dir(tmp_path, tiny, other) != path  # other data, other folder
    with pytest.raises(StoreMismatchError, match="other inputs.*rebuild=True"):
        capture(tiny, other, path=path, progress=False)
    with pytest.raises(StoreMismatchError, match="other inputs"):
        capture(tiny, ds, path=path, dtype="float32", progress=False)
    st2 = capture(tiny, other, path=path, rebuild=True, progress=False)
    assert not np.array_equal(np.asarray(st2.heads), np.asarray(ref.heads))


def test_unreadable_image(tiny, tmp_path):
    ds = make_fake_dataset(8)
    load = ds.load_image

    def broken(i):
        if i == 5:
            raise OSError("cannot identify image file 'x.jpg'")
        return load(i)

    ds.load_image = broken
    with pytest.raises(DatasetError, match="cannot read image 5.*skip_bad=True"):
        capture(tiny, ds, tmp_path, shard_size=4, batch_size=4, progress=False)
    st = capture(tiny, ds, tmp_path / "skip", skip_bad=True, shard_size=4, batch_size=4, progress=False)
    assert st.valid.tolist() == [True] * 5 + [False] + [True] * 2


def test_bytes_per_image_fp16(tiny, tmp_path):
    st = capture(tiny, make_fake_dataset(8), tmp_path, progress=False)
    # heads 4*4*64 + mlps 5*64 halves + 4-byte norm + 1-byte valid (+ npy headers amortised)
    c = tiny.hooked.cfg  # fp16 heads + MLP and embedding terms, float32 norm, bool valid
    expected = (c.n_layers * c.n_heads * c.d_embed + (c.n_layers + 1) * c.d_embed) * 2 + 4 + 1
    assert expected <= st.nbytes_per_image() < expected + 200


def test_object_extras_are_stored_as_text_not_pickled(tiny, tmp_path):
    ds = make_fake_dataset(4)
    ds.extra = {"note": np.array(["a", None, "c", 1], dtype=object)}
    st = capture(tiny, ds, tmp_path, progress=False)
    assert st.labels["extra_note"].tolist() == ["a", "None", "c", "1"]


def test_summed_mlp_terms_keep_the_identity(tiny, tmp_path):
    ds = make_fake_dataset(6)
    each = capture(tiny, ds, path=tmp_path / "each", dtype="float32", progress=False)
    summed = capture(tiny, ds, path=tmp_path / "sum", dtype="float32", mlps="sum", progress=False)
    assert summed.terms.mlps.shape == (6, 1, 64)
    assert torch.allclose(summed.terms.static_t(slice(None)), each.terms.static_t(slice(None)), atol=1e-6)
    assert summed.nbytes_per_image() < each.nbytes_per_image()
    with pytest.raises(ValueError, match="mlps must be"):
        capture(tiny, ds, path=tmp_path / "bad", mlps="some", progress=False)


def test_shard_digests_catch_bytes_that_did_not_reach_the_file_and_the_rerun_redoes_only_those(tiny, tmp_path):
    """What reached disk is checked against what the writer wrote: a shard changed behind the
    writer's back (as a page written back by another node would) is found, loses its record,
    and the next capture recomputes exactly that shard."""
    from ltcutils.store import verify_shards

    ds = make_fake_dataset(24)
    st = capture(tiny, ds, tmp_path, batch_size=4, shard_size=8, progress=False)
    path, ref = st.path, np.array(st.heads)
    recs = [json.loads((path / "shards" / f"{s:06d}.json").read_text()) for s in range(3)]
    assert all(len(r["digest"]) == 32 for r in recs) and len({r["digest"] for r in recs}) == 3
    assert verify_shards(path) == []
    del st
    heads = np.load(path / "heads.npy", mmap_mode="r+")
    heads[9, 0, 0, :4] = 7.0  # row 9 is in shard 1; one stale page is enough
    heads.flush()
    del heads
    valid = np.load(path / "valid.npy", mmap_mode="r+")
    valid[23] = False  # shard 2, another array
    valid.flush()
    del valid
    assert verify_shards(path) == [1, 2]
    assert verify_shards(path, drop=True) == [1, 2]
    assert sorted(p.name for p in (path / "shards").iterdir()) == ["000000.json"]
    calls = {"n": 0}
    load = ds.load_image

    def counting(i):
        calls["n"] += 1
        return load(i)

    ds.load_image = counting
    st = capture(tiny, ds, tmp_path, batch_size=4, shard_size=8, progress=False, verify=True)
    # valid.all(): a redone row is valid again (the writer used to leave an earlier False in place)
    assert calls["n"] == 16 and np.array_equal(np.asarray(st.heads), ref) and st.valid.all()
    assert verify_shards(path) == []


def test_capture_with_verify_raises_naming_the_shards_and_keeps_the_good_ones(tiny, tmp_path, monkeypatch):
    import ltcutils.capture as cap

    monkeypatch.setattr(cap, "verify_shards", lambda path, drop=False: [2])
    with pytest.raises(StoreError, match=r"shards \[2\] read back differently.*rerun the same command"):
        capture(tiny, make_fake_dataset(24), tmp_path, batch_size=4, shard_size=8, progress=False, verify=True)
