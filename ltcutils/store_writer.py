"""Filling a store: allocation (free space checked, blocks reserved), shard writes, shard records.

The format is described in :mod:`ltcutils.store`; this module is the write side of it, used by
the capture loop (:mod:`ltcutils.capture`) through :func:`open_writer` and :class:`StoreWriter`.
Several processes may hold writers on one store and commit disjoint shards in any order.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .datasets.base import DatasetError, GroupDataset
from .io import atomic_write
from .store import (_ARRAYS, FORMAT_VERSION, SHARDS, ActivationStore, StoreError, StoreMismatchError,
                    _canonical, _check_meta, _checksum, _done_shards, _expected_shapes, _fingerprint, _open_array,
                    _read_meta, _shard_file, _vit_size, shard_digest)

__all__ = ["StoreWriter", "open_writer"]

log = logging.getLogger("ltcutils.store")


def _spec_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``field: stored X, requested Y`` for each leaf where two specs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _spec_diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if _canonical(old) == _canonical(new):
        return []
    short = lambda v: (repr(v)[:60] + "...") if len(repr(v)) > 63 else repr(v)  # noqa: E731
    return [f"{prefix}: stored {short(old)}, requested {short(new)}"]


def _embed_and_mlps(d, n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding term ``[batch, d_embed]`` and the MLP terms ``[batch, n_layers, d_embed]`` of ``d``.

    Reads ``d.embed`` where the Decomposition carries it; older ones keep it in ``mlps[:, 0]``.
    """
    if d.mlps.shape[1] == n_layers + 1:
        return d.mlps[:, 0], d.mlps[:, 1:]
    return d.embed, d.mlps


class StoreWriter:
    """A store being filled shard by shard (arrays memory-mapped read-write).

    Made by :func:`open_writer`; the filling loop lives in :mod:`ltcutils.capture`. Rows of a
    shard are written with :meth:`write`, then :meth:`commit_shard` flushes them and records
    that shard (and only it) as done. Several processes may each hold a writer on the same
    store and commit disjoint shards in any order; a shard not committed is redone next time.
    """

    def __init__(self, path: Path):
        self.path = path
        self.meta: dict = _read_meta(path)
        _check_meta(path, self.meta)
        self.n = int(self.meta["n"])
        self.shard_size = int(self.meta["shard_size"])
        self.n_shards = int(self.meta["n_shards"])
        self.mlps_mode = self.meta["mlps"]
        self.layers = tuple(self.meta["layers"])
        self._n_layers = _vit_size(self.meta["spec"]["model"]["vit"])[1]
        shapes = _expected_shapes(self.meta)
        self._arrays = {k: _open_array(path, k, shape, "r+") for k, shape in shapes.items()}

    def shard_rows(self, s: int) -> range:
        """Row indices of shard ``s``."""
        return range(s * self.shard_size, min((s + 1) * self.shard_size, self.n))

    def done_shards(self) -> set[int]:
        """The shards recorded as written (by any process) for this allocation."""
        return _done_shards(self.path, self.meta)

    def missing_shards(self) -> list[int]:
        """Shards still to write, in order."""
        done = self.done_shards()
        return [s for s in range(self.n_shards) if s not in done]

    def write(self, rows: np.ndarray, d) -> None:
        """Store the decomposition ``d`` (a :class:`~ltcutils.decompose.Decomposition`) at ``rows``."""
        a = self._arrays
        embed, mlps = _embed_and_mlps(d, self._n_layers)
        a["heads"][rows] = d.heads.cpu().numpy()
        a["embed"][rows] = embed.cpu().numpy()
        a["mlps"][rows] = (mlps if self.mlps_mode == "each" else mlps.sum(1, keepdim=True)).cpu().numpy()
        if "rest" in a:
            a["rest"][rows] = d.rest.cpu().numpy()
        a["norm"][rows] = d.norm.cpu().numpy()
        a["valid"][rows] = True  # a row redone after an earlier attempt marked it unreadable is valid again

    def mark_invalid(self, rows: np.ndarray) -> None:
        """Record images that could not be read (``store.valid`` is False there)."""
        self._arrays["valid"][np.asarray(rows, dtype=np.int64)] = False

    def commit_shard(self, s: int) -> None:
        """Flush the arrays, then record shard ``s`` as written (one small file, atomically)."""
        rows = self.shard_rows(s)
        for mm in self._arrays.values():
            mm.flush()
        n_bad = int((~np.asarray(self._arrays["valid"][rows.start:rows.stop])).sum())
        rec = {"store_id": self.meta["store_id"], "fingerprint": self.meta["fingerprint"], "shard": s,
               "rows": [rows.start, rows.stop], "invalid": n_bad, "digest": shard_digest(self._arrays, rows)}
        atomic_write(_shard_file(self.path, s), json.dumps(rec))

    def close(self) -> "ActivationStore":
        """Release the arrays and open the finished store read-only."""
        self._arrays.clear()
        st = ActivationStore(self.path)
        if not st.valid.all():
            log.warning("%s/%s: %d unreadable images were skipped (store.valid marks them)", self.meta["dataset"],
                        self.meta["split"], int((~st.valid).sum()))
        return st


@contextlib.contextmanager
def _allocation_lock(path: Path):
    """Only one process at a time decides whether to allocate the store at ``path``."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_writer(path: str | os.PathLike, model, dataset: GroupDataset, spec: dict, *,
                rebuild: bool = False) -> "StoreWriter | ActivationStore":
    """Open the store at ``path`` for filling: allocate it if new, resume it if it matches ``spec``.

    Safe to call from several processes at once (the first allocates, the others open it).

    Returns:
        the finished :class:`ActivationStore` when nothing is left to write, else a
        :class:`StoreWriter`.

    Raises:
        StoreMismatchError: a store at ``path`` was made from other inputs (and not ``rebuild``);
            the message names the fields that differ.
        StoreError: the store at ``path`` is damaged (and not ``rebuild``), or the disk lacks the
            space it needs ("needs N GB at PATH").
    """
    path = Path(path)
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"{dataset.name}/{dataset.split} is empty; nothing to capture")
    fp = _fingerprint(spec)
    with _allocation_lock(path):
        if (path / "meta.json").is_file():
            try:
                old = _read_meta(path)
                if old.get("format", 1) != FORMAT_VERSION:
                    _check_meta(path, old)  # raises: names the format and the fix
                if old.get("fingerprint") != fp:
                    diff = _spec_diff(old.get("spec", {}), spec)
                    raise StoreMismatchError(
                        f"the store at {path} was made from other inputs ({'; '.join(diff) or 'fingerprint'}). "
                        f"Use another path or cache_dir, pass rebuild=True (in a notebook: the rebuild parameter) "
                        "to replace it, or delete the folder.")
                st = ActivationStore(path, allow_partial=True)
                if st.complete:
                    return st
                del st
            except StoreError:
                if not rebuild:
                    raise
                log.warning("rebuilding the store at %s", path)
                _clear(path)
        elif any((path / f"{k}.npy").exists() for k in _ARRAYS) or (path / SHARDS).exists():
            log.warning("%s holds store files but no meta.json (an interrupted allocation or a deleted file); "
                        "rebuilding it", path)
            _clear(path)
        if not (path / "meta.json").is_file():
            _allocate(path, model, dataset, spec, fp)
    return StoreWriter(path)


def _clear(path: Path) -> None:
    """Remove the files a store consists of (nothing else in the folder)."""
    (path / "meta.json").unlink(missing_ok=True)  # first: the folder stops being a store at once
    shutil.rmtree(path / SHARDS, ignore_errors=True)
    for p in path.glob("*"):
        if p.is_file() and (p.name in {f"{k}.npy" for k in _ARRAYS} | {"labels.npz", "progress.json"}
                            or p.name.endswith(".tmp")):
            p.unlink()


def _shapes_for(model, spec: dict, n: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    d = int(spec["model"]["vit"]["d_embed"])
    n_heads, n_layers = _vit_size(spec["model"]["vit"])
    dt = np.float16 if spec["dtype"] == "float16" else np.float32
    shapes = {"heads": ((n, len(spec["layers"]), n_heads, d), dt), "embed": ((n, d), dt),
              "mlps": ((n, n_layers if spec["mlps"] == "each" else 1, d), dt),
              "norm": ((n,), np.float32), "valid": ((n,), np.bool_)}
    if len(spec["layers"]) < n_layers:
        shapes["rest"] = ((n, d), dt)
    return shapes


def _allocate(path: Path, model, dataset: GroupDataset, spec: dict, fp: str) -> None:
    n = len(dataset)
    shapes = _shapes_for(model, spec, n)
    need = sum(int(np.prod(s)) * np.dtype(dt).itemsize + 128 for s, dt in shapes.values())
    free = shutil.disk_usage(path).free
    if need > free:
        raise StoreError(f"the store for {dataset.name}/{dataset.split} needs {_size(need)} at {path}, but only "
                         f"{free} bytes ({_size(free)}) are free there; free some space or pass another cache_dir")
    made: list[Path] = []
    try:
        for name, (shape, dt) in shapes.items():
            tmp = path / f".{name}.npy.tmp"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
            made.append(tmp)
            _reserve(tmp)  # real blocks now, so a full disk fails here and not as SIGBUS mid-capture
            if name == "valid":
                arr[:] = True
                arr.flush()
            del arr
        for tmp in made:
            os.replace(tmp, path / tmp.name[1:-4])
        labels = {"y": dataset.y, "spurious": dataset.spurious, "group": dataset.group,
                  "ids": np.asarray(dataset.ids, dtype=str)}
        if dataset.candidates is not None:
            labels["candidates"] = dataset.candidates
        for k, v in dataset.extra.items():
            arr = np.asarray(v)
            if arr.dtype == object:  # np.savez would pickle it; store text instead
                arr = arr.astype(str)
            labels[f"extra_{k}"] = arr
        atomic_write(path / "labels.npz", lambda f: np.savez(f, **labels))
        shard_size = int(spec["shard_size"])
        meta = dict(spec=spec, format=FORMAT_VERSION, fingerprint=fp, store_id=uuid.uuid4().hex, n=n,
                    n_shards=(n + shard_size - 1) // shard_size, shard_size=shard_size, layers=list(spec["layers"]),
                    normalized=spec["normalized"], dtype=spec["dtype"], mlps=spec["mlps"], has_rest="rest" in shapes,
                    model=model.describe(), dataset=dataset.name, split=dataset.split,
                    dataset_fingerprint=dataset.fingerprint(), dataset_info=dataset.info,
                    class_names=dataset.class_names, spurious_names=dataset.spurious_names,
                    group_names=dataset.group_names, conflicting_groups=dataset.conflicting_groups,
                    package_version=__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        meta = json.loads(_canonical(meta))
        meta["checksum"] = _checksum(meta)
        atomic_write(path / "meta.json", json.dumps(meta, indent=1))
    except OSError as exc:
        for tmp in made:
            tmp.unlink(missing_ok=True)
        _clear(path)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"the store for {dataset.name}/{dataset.split} needs {_size(need)} at {path}, but the "
                             f"disk has no space left for it ({exc.strerror}); free some space or pass another "
                             "cache_dir") from exc
        raise


def _size(nbytes: int) -> str:
    """``12.3 GB`` / ``45.6 MB`` / ``789 kB`` (decimal units, as ``df -H``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{max(nbytes / 1e3, 0.1):.1f} kB"


def _reserve(file: Path) -> None:
    """Allocate the blocks of a (sparse) file; a no-op where the system has no posix_fallocate."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    fd = os.open(file, os.O_RDWR)
    try:
        try:
            fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                return  # the file system cannot reserve; the free-space check above stands alone
            raise
    finally:
        os.close(fd)
