"""Capture's input pipeline (DataLoader workers), precision, and device-agnostic accelerator path."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ltcutils as ltc
from conftest import make_fake_dataset
from ltcutils.capture import (PRECISIONS, SERIAL_BELOW, SERIAL_BELOW_SPAWNED, TOLERANCE, _device, _Images, _loader,
                              capture, default_workers)
from ltcutils.datasets.base import DatasetError, GroupDataset
from ltcutils.store import ActivationStore, StoreMismatchError

ARRAYS = ("heads", "embed", "mlps", "rest", "norm", "valid")


class PidLogging:
    """A picklable loader: noise image ``i``; notes the pid that decoded it; ``bad`` rows raise OSError."""

    def __init__(self, n: int, folder: Path, bad: tuple[int, ...] = ()):
        self.pixels = np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        self.folder, self.bad = folder, bad

    def __call__(self, i: int) -> Image.Image:
        (self.folder / f"{os.getpid()}").touch()
        if i in self.bad:
            raise OSError(f"cannot identify image file 'img{i}.jpg'")
        return Image.fromarray(self.pixels[i])


def _dataset(n: int, folder: Path, bad: tuple[int, ...] = ()) -> GroupDataset:
    folder.mkdir(parents=True, exist_ok=True)
    y = np.arange(n) % 2
    s = (np.arange(n) // 2) % 2
    return GroupDataset("pidds", "test", ["a", "b"], ["u", "v"], y, s, 2 * y + s, ["0", "1", "2", "3"],
                        PidLogging(n, folder, bad), [f"img{i}.jpg" for i in range(n)])


def _arrays(st: ActivationStore) -> dict:
    return {k: np.load(st.path / f"{k}.npy") for k in ARRAYS if (st.path / f"{k}.npy").exists()}


def test_workers_decode_elsewhere_keep_order_and_equal_serial(tiny, tmp_path):
    ds = _dataset(30, tmp_path / "pids")
    serial = capture(tiny, ds, path=tmp_path / "serial", batch_size=4, shard_size=8, dtype="float32",
                     num_workers=0, progress=False)
    assert {p.name for p in (tmp_path / "pids").iterdir()} == {str(os.getpid())}
    for p in (tmp_path / "pids").iterdir():
        p.unlink()
    par = capture(tiny, ds, path=tmp_path / "par", batch_size=4, shard_size=8, dtype="float32", num_workers=2,
                  progress=False)
    pids = {p.name for p in (tmp_path / "pids").iterdir()}
    assert str(os.getpid()) not in pids and len(pids) == 2  # both workers decoded, the main process did not
    a, b = _arrays(serial), _arrays(par)
    assert a.keys() == b.keys() and "embed" in a
    for k in a:  # same rows in the same places: the dataset's order
        assert np.array_equal(a[k], b[k]), k
    assert list(par.labels["ids"]) == ds.ids
    # and they are the decomposition of the images in that order
    px = torch.stack([tiny.preprocess(ds.image(i)) for i in range(30)])
    ref = torch.nn.functional.normalize(tiny.clip.encode_image(px).detach(), dim=-1)
    total = par.terms.static_t(slice(None)) + par.terms.heads_t(slice(None)).sum((1, 2))
    assert torch.allclose(total, ref, atol=1e-5)


def test_bad_image_in_a_worker_raises_naming_it_and_keeps_finished_shards(tiny, tmp_path):
    ds = _dataset(12, tmp_path / "pids", bad=(5,))
    with pytest.raises(DatasetError, match=r"cannot read image 5 \(img5.jpg\): OSError: cannot identify.*skip_bad=True"):
        capture(tiny, ds, path=tmp_path / "s", batch_size=2, shard_size=4, num_workers=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == ["000000.json"]
    st = capture(tiny, ds, path=tmp_path / "skip", batch_size=2, shard_size=4, num_workers=1, skip_bad=True,
                 progress=False)
    assert st.valid.tolist() == [True] * 5 + [False] + [True] * 6
    ok = capture(tiny, _dataset(12, tmp_path / "pids2"), path=tmp_path / "ok", batch_size=2, shard_size=4,
                 num_workers=0, progress=False)
    keep = np.flatnonzero(st.valid)
    # equal up to fp16 rounding (row 4 went through the model in a batch of one instead of two)
    np.testing.assert_allclose(np.asarray(st.heads)[keep], np.asarray(ok.heads)[keep], rtol=0, atol=1e-4)
    assert not np.asarray(st.heads)[5].any()  # the skipped row is left empty, not filled from a neighbour


def test_default_workers(monkeypatch):
    assert default_workers(SERIAL_BELOW - 1, "fork") == 0
    assert default_workers(SERIAL_BELOW, "fork") >= 1
    assert default_workers(SERIAL_BELOW, "spawn") == 0  # a spawned worker re-imports torch first
    assert default_workers(SERIAL_BELOW_SPAWNED, "forkserver") >= 1
    monkeypatch.setattr(ltc.capture, "mp_start_method", lambda: "fork")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(10_000) == 2  # a worker per core; the forward shares them
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert default_workers(10_000) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 ranks share the node's 32 cores
    assert default_workers(10_000) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # more ranks than cores: still one worker each
    assert default_workers(10_000) == 1


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_precision_keeps_the_identity_within_its_tolerance(tiny, tmp_path, precision):
    """Terms sum to the fp32 unit embedding within TOLERANCE[precision]; low precision did run."""
    if precision == "fp16" and next(tiny.hooked.parameters()).device.type == "cpu":
        ctx = pytest.warns(UserWarning, match="fp16.*slower")
    else:
        ctx = _nullcontext()
    ds = make_fake_dataset(16)
    with ctx:
        st = capture(tiny, ds, path=tmp_path / precision, batch_size=8, shard_size=8, dtype="float32",
                     precision=precision, progress=False)
    px = torch.stack([tiny.preprocess(ds.image(i)) for i in range(16)])
    ref = torch.nn.functional.normalize(tiny.clip.encode_image(px).detach().float(), dim=-1)
    total = st.terms.static_t(slice(None)) + st.terms.heads_t(slice(None)).sum((1, 2))
    err = float((total - ref).norm(dim=-1).max())
    assert err <= TOLERANCE[precision], f"{precision}: {err}"
    if precision == "fp32":
        assert st.meta["spec"].get("precision") is None  # fp32 stores keep their old fingerprint
    else:
        assert err > 1e-5, f"{precision} gave fp32 accuracy ({err}): autocast did not run"
        assert st.meta["spec"]["precision"] == precision
        with pytest.raises(StoreMismatchError, match="precision"):  # never mixed up with an fp32 store
            capture(tiny, ds, path=st.path, batch_size=8, shard_size=8, dtype="float32", progress=False)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_bad_precision_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        capture(tiny, make_fake_dataset(4), path=tmp_path / "s", precision="int8", progress=False)


def test_accelerator_path_is_device_agnostic(tiny, tmp_path):
    """The code an accelerator runs (device choice, pinning, autocast type) without naming one."""
    src = Path(ltc.capture.__file__).read_text()
    assert not re.search(r"['\"]cuda", src), "capture.py must not name a device type"
    dev = _device("auto")
    if torch.accelerator.is_available():
        assert dev.type == torch.accelerator.current_accelerator().type
    else:
        assert dev == torch.device("cpu")
    images = _Images(make_fake_dataset(4), tiny.preprocess)
    assert _loader(images, [[0, 1]], 0, torch.device("cpu")).pin_memory is False
    # any accelerator type gets pinned batches; checked on a device type this machine may not have
    assert _loader(images, [[0, 1]], 0, torch.device("meta")).pin_memory is True
    # the whole capture on the accelerator when there is one, else on the CPU, same code
    model = tiny if dev.type == "cpu" else _on(dev)
    st = capture(model, make_fake_dataset(8), path=tmp_path / "s", batch_size=4, shard_size=4, dtype="float32",
                 num_workers=1, progress=False)
    assert st.complete and np.isfinite(np.asarray(st.heads)).all()


def _on(dev):
    torch.manual_seed(0)
    return ltc.models.load_model("ltc-tiny", None, device=dev)


def test_a_subset_pickles_for_spawned_workers(tmp_path):
    import pickle

    ds = _dataset(6, tmp_path / "pids").subset([4, 1])
    back = pickle.loads(pickle.dumps(ds))  # a closure here used to make this fail
    assert back.ids == ["img4.jpg", "img1.jpg"]
    assert np.array_equal(np.asarray(back.image(0)), np.asarray(ds.image(0)))


def test_a_synthetic_split_pickles_and_feeds_forked_workers_like_the_serial_path(tiny, tmp_path):
    import pickle

    from ltcutils.datasets import synthetic as syn

    ds = syn.make_split("test", n_per_group=3)
    back = pickle.loads(pickle.dumps(ds))  # spawned workers receive the dataset pickled
    assert back.ids == ds.ids and back.fingerprint() == ds.fingerprint()
    assert all(np.array_equal(np.asarray(back.image(i)), np.asarray(ds.image(i))) for i in (0, 5, 11))
    serial = capture(tiny, ds, path=tmp_path / "serial", batch_size=4, shard_size=4, dtype="float32",
                     num_workers=0, progress=False)
    forked = capture(tiny, ds, path=tmp_path / "forked", batch_size=4, shard_size=4, dtype="float32",
                     num_workers=2, progress=False)  # Linux starts workers with fork
    a, b = _arrays(serial), _arrays(forked)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_synthetic_split_feeds_workers_started_either_way(tiny, method):
    """The capture's own DataLoader over a synthetic split, workers started by ``method``, equals the
    serial read in order (spawn re-imports torch in each worker: seconds, hence integration)."""
    import multiprocessing

    from ltcutils.datasets import synthetic as syn

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"this platform cannot start processes with {method}")
    ds = syn.make_split("val", n_per_group=2).subset([7, 0, 3, 5, 1, 2])
    images = _Images(ds, tiny.preprocess)
    batches = [[0, 1, 2], [3, 4], [5]]
    got = list(_loader(images, batches, 2, torch.device("cpu"), start_method=method))
    assert [b[0].tolist() for b in got] == batches
    want = torch.stack([tiny.preprocess(ds.image(i)) for i in range(6)])
    assert torch.equal(torch.cat([b[1] for b in got]), want)
