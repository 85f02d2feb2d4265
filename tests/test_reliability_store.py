"""The store never reads as complete unless every shard it claims was written under its own
fingerprint; damaged, edited or foreign files are refused with the path and the fix."""

import errno
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ltcutils as ltc
from conftest import make_fake_dataset
from ltcutils.store import ActivationStore, StoreError, StoreMismatchError, capture


def _cap(model, ds, path, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("shard_size", 4)
    return capture(model, ds, path=path, progress=False, **kw)


@pytest.fixture
def complete(tiny, tmp_path):
    ds = make_fake_dataset(12)
    st = _cap(tiny, ds, tmp_path / "s", dtype="float32")
    return ds, st


# ------------------------------------------------------------------ item 1: deleted meta.json
def test_deleted_meta_rebuilds_never_zeros_marked_complete(tiny, complete):
    ds, st = complete
    ref = np.array(st.heads)
    assert np.abs(ref).sum() > 0
    path = st.path
    del st
    (path / "meta.json").unlink()
    with pytest.raises(StoreError, match="no activation store"):
        ActivationStore(path)
    again = _cap(tiny, ds, path, dtype="float32")
    assert again.complete and np.array_equal(np.array(again.heads), ref)  # really recomputed, not zeros


def test_shard_records_of_another_allocation_do_not_count(tiny, complete):
    """Shard records carry the allocation's id: records from a previous store are ignored."""
    ds, st = complete
    path = st.path
    old_records = {p.name: p.read_bytes() for p in (path / "shards").iterdir()}
    del st
    shutil.rmtree(path)
    w = ltc.store.open_writer(path, tiny, ds, ltc.store.store_spec(
        tiny, ds, dtype="float32", layers=list(range(tiny.hooked.cfg.n_layers)), normalized=True, mlps="each",
        shard_size=4))
    (path / "shards").mkdir(exist_ok=True)
    for name, data in old_records.items():  # a stale copy of the old records lands in the new store
        (path / "shards" / name).write_bytes(data)
    assert w.missing_shards() == [0, 1, 2]
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(path)


# ------------------------------------------------------------------ item 6: meta checked on open
@pytest.mark.parametrize("field, value", [("layers", [0, 1, 2, 3, 4]), ("n", 11), ("normalized", False),
                                          ("class_names", ["x", "y"])])
def test_edited_meta_is_refused(complete, field, value):
    _, st = complete
    meta = json.loads((st.path / "meta.json").read_text())
    meta[field] = value
    (st.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=re.escape(str(st.path)) + r".*meta.json.*(edited|does not match).*rebuild=True"):
        ActivationStore(st.path)


# ------------------------------------------------------------------ item 9: damaged files
@pytest.mark.parametrize("damage", ["meta_json", "heads_truncated", "labels_zip", "shard_json", "shard_beyond",
                                    "valid_truncated"])
def test_damaged_store_files_give_one_clear_error(tiny, complete, damage):
    ds, st = complete
    p = st.path
    del st
    if damage == "meta_json":
        (p / "meta.json").write_text("{not json")
    elif damage == "heads_truncated":
        with open(p / "heads.npy", "r+b") as f:
            f.truncate(1000)
    elif damage == "labels_zip":
        (p / "labels.npz").write_bytes(b"PK\x03\x04garbage")
    elif damage == "shard_json":
        next((p / "shards").iterdir()).write_text("{\"oops\": 1}")
    elif damage == "shard_beyond":
        rec = json.loads(next((p / "shards").iterdir()).read_text())
        (p / "shards" / "000099.json").write_text(json.dumps(dict(rec, shard=99)))
    elif damage == "valid_truncated":
        with open(p / "valid.npy", "r+b") as f:
            f.truncate(100)
    with pytest.raises(StoreError) as info:
        ActivationStore(p)
    msg = str(info.value)
    assert str(p) in msg and "rebuild=True" in msg and "\n" not in msg, msg
    # and the capture that would reuse it says the same, then rebuild=True repairs it
    with pytest.raises(StoreError):
        _cap(tiny, ds, p, dtype="float32")
    fixed = _cap(tiny, ds, p, dtype="float32", rebuild=True)
    assert fixed.complete and np.abs(np.array(fixed.heads)).sum() > 0


# ------------------------------------------------------------------ item 3: free space
def test_not_enough_space_is_named_before_anything_is_allocated(tiny, tmp_path, monkeypatch):
    ds = make_fake_dataset(12)
    keep = _cap(tiny, ds, tmp_path / "earlier", dtype="float32")
    before = np.array(keep.heads)

    class Usage:
        total, used, free = 10**9, 10**9 - 1000, 1000

    monkeypatch.setattr(ltc.store_writer.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(StoreError, match=r"needs \d+\.\d kB at .*new, but only 1000 bytes"):
        _cap(tiny, ds, tmp_path / "new", dtype="float32")
    assert not (tmp_path / "new" / "heads.npy").exists()
    assert np.array_equal(np.array(ActivationStore(keep.path).heads), before)


def test_enospc_during_allocation_is_named(tiny, tmp_path, monkeypatch):
    ds = make_fake_dataset(12)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ltc.store_writer.os, "posix_fallocate", full, raising=False)
    with pytest.raises(StoreError, match=r"needs \d+\.\d kB at .*no space left"):
        _cap(tiny, ds, tmp_path / "new")
    assert not (tmp_path / "new" / "meta.json").exists()


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_capture_into_a_small_tmpfs_fails_with_the_size_and_keeps_earlier_stores(tiny, tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "20m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests above cover the logic")
    try:
        small = _cap(tiny, make_fake_dataset(12), mnt / "earlier", dtype="float32")
        before = np.array(small.heads)
        big = make_fake_dataset(12)
        big.ids = [str(i) for i in range(12)] * 2000  # 24000 rows: about 100 MB or more of fp32 terms
        for k in ("y", "spurious", "group"):
            setattr(big, k, np.tile(getattr(big, k), 2000))
        cfg = tiny.hooked.cfg
        per_row = 4 * ((cfg.n_layers * cfg.n_heads + 1 + cfg.n_layers) * cfg.d_embed + 1) + 1  # heads embed mlps norm valid
        mb = f"{(24000 * per_row + 6 * 128) / 1e6:.1f}"
        with pytest.raises(StoreError, match=rf"needs {re.escape(mb)} MB at .*big"):
            _cap(tiny, big, mnt / "big", dtype="float32")
        assert np.array_equal(np.array(ActivationStore(small.path).heads), before)
        assert not (mnt / "big" / "meta.json").exists()
    finally:
        import gc

        small = None
        gc.collect()
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


# ------------------------------------------------------------------ per-shard completion (multi-process)
def test_shards_commit_in_any_order_and_resume_only_the_missing(tiny, tmp_path):
    ds = make_fake_dataset(12)
    spec = ltc.store.store_spec(tiny, ds, dtype="float32", layers=list(range(tiny.hooked.cfg.n_layers)),
                                normalized=True, mlps="each", shard_size=4)
    a = ltc.store.open_writer(tmp_path / "s", tiny, ds, spec)
    b = ltc.store.open_writer(tmp_path / "s", tiny, ds, spec)  # a second rank on the same arrays
    d = ltc.decompose.decompose(tiny.hooked, _pixels(tiny, ds, range(12)))
    rows2 = np.arange(8, 12)
    b.write(rows2, _rows(d, rows2))
    b.mark_invalid(np.array([9]))
    b.commit_shard(2)
    assert a.missing_shards() == [0, 1]
    rows0 = np.arange(0, 4)
    a.write(rows0, _rows(d, rows0))
    a.commit_shard(0)
    assert b.missing_shards() == [1]
    with pytest.raises(StoreError, match="incomplete.*1 of 3 shards missing"):
        ActivationStore(tmp_path / "s")
    rows1 = np.arange(4, 8)
    a.write(rows1, _rows(d, rows1))
    a.commit_shard(1)
    st = a.close()
    assert st.valid.tolist() == [True] * 9 + [False] + [True] * 2  # rank b's flag survived rank a's commits
    assert np.allclose(st.heads, d.heads.numpy(), atol=1e-6)
    embed, mlps = (d.embed, d.mlps) if hasattr(d, "embed") else (d.mlps[:, 0], d.mlps[:, 1:])
    assert np.allclose(st.terms.embed, embed.numpy(), atol=1e-6)
    assert np.allclose(st.terms.mlps, mlps.numpy(), atol=1e-6)


def _pixels(model, ds, idx):
    import torch

    return torch.stack([model.preprocess(ds.image(i)) for i in idx])


def _rows(d, rows):
    """The decomposition of some rows (every batch-first tensor field sliced)."""
    import copy

    import torch

    out = copy.copy(d)
    for k, v in vars(d).items():
        if isinstance(v, torch.Tensor) and v.ndim:
            setattr(out, k, v[rows])
    return out


# ------------------------------------------------------------------ item 10: file modes
def test_atomically_written_files_have_the_usual_mode(complete, tmp_path):
    _, st = complete
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    for name in ("meta.json", "labels.npz", "heads.npy", "valid.npy"):
        assert stat.S_IMODE((st.path / name).stat().st_mode) == want, name
    ltc.store.atomic_write(tmp_path / "x.json", "{}")
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == want
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_store_of_the_previous_format_is_named_and_rebuilt_on_request(tiny, tmp_path):
    ds = make_fake_dataset(8)
    old = tmp_path / "s"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "n": 8, "n_shards": 1}))
    (old / "progress.json").write_text(json.dumps({"done": 1}))
    np.save(old / "heads.npy", np.zeros((8, 4, 4, 64), np.float16))
    with pytest.raises(StoreMismatchError, match=r"is in store format 1; this version of ltcutils reads format 2; "
                                                 r"capture again with rebuild=True"):
        _cap(tiny, ds, old)
    st = _cap(tiny, ds, old, rebuild=True)
    assert st.complete and np.abs(np.array(st.heads)).sum() > 0 and not (old / "progress.json").exists()
