"""A streaming, resumable, memory-mapped store of per-image decompositions.

Layout of one store (one model x weights x dataset x split)::

    <dir>/meta.json        model, weights fingerprint, dataset, split, count, dtype, layers,
                           normalized, package version, fingerprint, label names
    <dir>/labels.npz       y, spurious, group, ids, [candidates], extra label arrays (no pickle)
    <dir>/heads.npy        [n, layer, head, d_embed]   (dtype: float16 or float32)
    <dir>/mlps.npy         [n, n_layers + 1, d_embed]  index 0 = embedding term ([n, 1, d_embed]: their sum)
    <dir>/rest.npy         [n, d_embed]                only when some layers are not captured
    <dir>/norm.npy         [n] float32                 unedited embedding norm
    <dir>/valid.npy        [n] bool                    False for images skipped as unreadable
    <dir>/progress.json    shards completed (written atomically after each shard is flushed)

The arrays are pre-allocated ``.npy`` files (created under a temporary name, then renamed) and
filled shard by shard; a shard counts as written only once ``progress.json`` says so, and that
file is replaced atomically after the shard's rows are flushed. A killed capture therefore
never leaves a half-written shard marked valid: re-running ``capture`` with the same arguments
resumes at the first unfinished shard. A store whose fingerprint does not match the requested
model / data / settings is refused (or rebuilt with ``rebuild=True``). Nothing is pickled.

Example::

    >>> store = ltc.store.capture(model, dataset, "cache")            # doctest: +SKIP
    >>> store.heads.shape, store.heads.dtype                          # doctest: +SKIP
    ((2000, 4, 4, 64), dtype('float16'))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .datasets.base import DatasetError, GroupDataset
from .decompose import head_label

__all__ = ["ActivationStore", "StoreError", "StoreMismatchError", "StoreWriter", "open_writer", "store_spec",
           "capture", "store_dir", "Terms", "atomic_write"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class StoreError(RuntimeError):
    """A store is missing, incomplete or unreadable."""


class StoreMismatchError(StoreError):
    """A store exists at the path but was made from other inputs."""


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file so that readers see either the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "none"


def store_dir(root: str | os.PathLike, model, dataset: GroupDataset) -> Path:
    """Default location ``root/<model>/<weights>/<dataset>/<split>-<data fingerprint>`` of a store.

    The data fingerprint in the name keeps differently sized or subsampled splits apart; a
    store at this path made with other settings (dtype, layers) is refused by :func:`capture`.
    """
    weights = model.fingerprint.split(":")[-1][:16] if model.fingerprint != "random" else "random"
    leaf = f"{_slug(dataset.split)}-{dataset.fingerprint()[:8]}"
    return Path(root) / _slug(model.name) / _slug(weights) / _slug(dataset.name) / leaf


def _as_float_tensor(a, device: str | torch.device = "cpu") -> torch.Tensor:
    """A (memory-mapped) array slice as a float32 tensor: copy in its own dtype, convert in torch."""
    return torch.from_numpy(np.array(a)).to(device=device, dtype=torch.float32)


@dataclass
class Terms:
    """Decomposition terms of a set of images, as arrays (memory-mapped or in RAM).

    Attributes:
        heads: ``[n, layer, head, d_embed]``; mlps ``[n, n_layers + 1, d_embed]``;
        rest: ``[n, d_embed]`` or None (all layers captured); norm: ``[n]``.
        layers: captured layer indices; normalized: terms divided by the embedding norm.
    """

    heads: Any
    mlps: Any
    rest: Any
    norm: Any
    layers: tuple[int, ...]
    normalized: bool

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def n_heads(self) -> int:
        return int(self.heads.shape[2])

    def labels(self) -> list[str]:
        """``L{l}H{h}`` labels in ``heads.reshape(n, -1)`` order."""
        return [head_label(l, h) for l in self.layers for h in range(self.n_heads)]

    def head_t(self, layer_pos: int, head: int, sl: slice | np.ndarray = slice(None),
               device: str | torch.device = "cpu") -> torch.Tensor:
        """One head's terms ``[rows, d_embed]`` as float32 torch (reads only that head's bytes)."""
        return _as_float_tensor(self.heads[sl, layer_pos, head], device)

    def chunks(self, size: int = 256) -> Iterator[slice]:
        """Row slices of at most ``size`` images."""
        for i in range(0, len(self), size):
            yield slice(i, min(i + size, len(self)))

    def heads_t(self, sl: slice | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """``heads[sl]`` as float32 torch."""
        return _as_float_tensor(self.heads[sl], device)

    def static_t(self, sl: slice | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """Sum of the non-head terms (MLPs, embedding, rest) ``[rows, d_embed]`` as float32 torch."""
        s = _as_float_tensor(self.mlps[sl], device).sum(1)
        if self.rest is not None:
            s = s + _as_float_tensor(self.rest[sl], device)
        return s

    def take(self, index: np.ndarray) -> "Terms":
        """Rows at ``index`` loaded into RAM (float32 numpy)."""
        idx = np.asarray(index)
        f = lambda a: None if a is None else np.asarray(a[idx], dtype=np.float32)  # noqa: E731
        return Terms(f(self.heads), f(self.mlps), f(self.rest), np.asarray(self.norm[idx]), self.layers,
                     self.normalized)


class ActivationStore:
    """A completed store opened read-only; arrays are ``np.memmap`` (nothing loaded up front)."""

    def __init__(self, path: str | os.PathLike, allow_partial: bool = False):
        self.path = Path(path)
        meta_p = self.path / "meta.json"
        if not meta_p.is_file():
            raise StoreError(f"no activation store at {self.path} (meta.json missing); create it with ltc.store.capture")
        self.meta: dict = json.loads(meta_p.read_text())
        prog = _read_progress(self.path)
        self.complete = prog["done"] == self.meta["n_shards"]
        if not self.complete and not allow_partial:
            raise StoreError(
                f"store {self.path} is incomplete ({prog['done']}/{self.meta['n_shards']} shards); "
                "re-run ltc.store.capture with the same arguments to resume it"
            )
        with np.load(self.path / "labels.npz", allow_pickle=False) as z:
            self.labels: dict[str, np.ndarray] = {k: z[k] for k in z.files}
        mm = lambda name: np.load(self.path / f"{name}.npy", mmap_mode="r")  # noqa: E731
        self.terms = Terms(
            mm("heads"), mm("mlps"), mm("rest") if self.meta["has_rest"] else None, mm("norm"),
            tuple(self.meta["layers"]), bool(self.meta["normalized"]),
        )
        self.valid: np.ndarray = np.load(self.path / "valid.npy")

    def __len__(self) -> int:
        return int(self.meta["n"])

    def __repr__(self) -> str:
        m = self.meta
        return (f"ActivationStore({m['dataset']}/{m['split']}, n={m['n']}, model={m['model']['model']}, "
                f"dtype={m['dtype']}, layers={m['layers']})")

    @property
    def heads(self) -> np.memmap:
        return self.terms.heads

    @property
    def y(self) -> np.ndarray:
        return self.labels["y"]

    @property
    def group(self) -> np.ndarray:
        return self.labels["group"]

    @property
    def spurious(self) -> np.ndarray:
        return self.labels["spurious"]

    @property
    def candidates(self) -> np.ndarray | None:
        return self.labels.get("candidates")

    def nbytes_per_image(self) -> float:
        """Bytes on disk per image over all arrays."""
        total = sum(f.stat().st_size for f in self.path.glob("*.npy"))
        return total / max(len(self), 1)


def _read_progress(path: Path) -> dict:
    p = path / "progress.json"
    if not p.is_file():
        return {"done": 0}
    return json.loads(p.read_text())


def _fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _new_array(path: Path, shape: tuple[int, ...], dtype) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    del arr
    os.replace(tmp, path)


def store_spec(model, dataset: GroupDataset, *, dtype: str, layers: Sequence[int], normalized: bool, mlps: str,
               shard_size: int) -> dict:
    """What a store is made from; its hash is the store's fingerprint."""
    return {
        "format": FORMAT_VERSION,
        "model": model.describe(),
        "dataset": {"name": dataset.name, "split": dataset.split, "fingerprint": dataset.fingerprint(),
                    "n": len(dataset)},
        "dtype": dtype,
        "layers": list(layers),
        "normalized": normalized,
        "mlps": mlps,
        "shard_size": shard_size,
    }


class StoreWriter:
    """A store being filled shard by shard (arrays memory-mapped read-write).

    Made by :func:`open_writer`; the filling loop lives in :mod:`ltcutils.capture`. Rows of a
    shard are written with :meth:`write`, then :meth:`commit_shard` flushes them and records the
    shard as done; a shard that was not committed is redone on the next capture.
    """

    def __init__(self, path: Path):
        self.path = path
        self.meta: dict = json.loads((path / "meta.json").read_text())
        self.n = int(self.meta["n"])
        self.shard_size = int(self.meta["shard_size"])
        self.n_shards = int(self.meta["n_shards"])
        self.mlps_mode = self.meta["mlps"]
        self.layers = tuple(self.meta["layers"])
        self._heads = np.load(path / "heads.npy", mmap_mode="r+")
        self._mlps = np.load(path / "mlps.npy", mmap_mode="r+")
        self._rest = np.load(path / "rest.npy", mmap_mode="r+") if self.meta["has_rest"] else None
        self._norm = np.load(path / "norm.npy", mmap_mode="r+")
        self.valid = np.load(path / "valid.npy")

    def shard_rows(self, s: int) -> range:
        """Row indices of shard ``s``."""
        return range(s * self.shard_size, min((s + 1) * self.shard_size, self.n))

    def done_shards(self) -> int:
        """How many leading shards are recorded as written."""
        return int(_read_progress(self.path)["done"])

    def missing_shards(self) -> list[int]:
        """Shards still to write, in order."""
        return list(range(self.done_shards(), self.n_shards))

    def write(self, rows: np.ndarray, d) -> None:
        """Store the decomposition ``d`` (a :class:`~ltcutils.decompose.Decomposition`) at ``rows``."""
        self._heads[rows] = d.heads.cpu().numpy()
        m = d.mlps if self.mlps_mode == "each" else d.mlps.sum(1, keepdim=True)
        self._mlps[rows] = m.cpu().numpy()
        if self._rest is not None:
            self._rest[rows] = d.rest.cpu().numpy()
        self._norm[rows] = d.norm.cpu().numpy()

    def mark_invalid(self, rows: np.ndarray) -> None:
        """Record images that could not be read (``store.valid`` is False there)."""
        self.valid[rows] = False

    def commit_shard(self, s: int) -> None:
        """Flush the arrays and record shard ``s`` (and every shard before it) as written."""
        for mm in (self._heads, self._mlps, self._rest, self._norm):
            if mm is not None:
                mm.flush()
        atomic_write(self.path / "valid.npy", _npy_bytes(self.valid))
        atomic_write(self.path / "progress.json", json.dumps({"done": s + 1}))

    def close(self) -> "ActivationStore":
        """Release the arrays and open the finished store read-only."""
        del self._heads, self._mlps, self._rest, self._norm
        if not self.valid.all():
            log.warning("%s/%s: %d unreadable images were skipped (store.valid marks them)", self.meta["dataset"],
                        self.meta["split"], int((~self.valid).sum()))
        return ActivationStore(self.path)


def open_writer(path: str | os.PathLike, model, dataset: GroupDataset, spec: dict, *,
                rebuild: bool = False) -> "StoreWriter | ActivationStore":
    """Open the store at ``path`` for filling: allocate it if new, resume it if it matches ``spec``.

    Returns:
        the finished :class:`ActivationStore` when nothing is left to write, else a
        :class:`StoreWriter`.

    Raises:
        StoreMismatchError: a store at ``path`` was made from other inputs (and not ``rebuild``).
    """
    path = Path(path)
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"{dataset.name}/{dataset.split} is empty; nothing to capture")
    fp = _fingerprint(spec)
    meta_p = path / "meta.json"
    if meta_p.is_file():
        old = json.loads(meta_p.read_text())
        if old.get("fingerprint") != fp:
            if not rebuild:
                raise StoreMismatchError(
                    f"the store at {path} was made from other inputs (fingerprint {old.get('fingerprint')} != {fp}: "
                    f"model {old.get('model', {}).get('model')}/{old.get('model', {}).get('weights')}, dataset "
                    f"{old.get('dataset')}/{old.get('split')} n={old.get('n')}, dtype {old.get('dtype')}, layers "
                    f"{old.get('layers')}). Use another path, pass rebuild=True to replace it, or delete the folder."
                )
            shutil.rmtree(path)
        elif _read_progress(path)["done"] == old["n_shards"]:
            return ActivationStore(path)

    if not meta_p.is_file():
        cfg = model.hooked.cfg
        shard_size = spec["shard_size"]
        n_shards = (n + shard_size - 1) // shard_size
        keep = spec["layers"]
        path.mkdir(parents=True, exist_ok=True)
        np_dtype = np.float16 if spec["dtype"] == "float16" else np.float32
        _new_array(path / "heads.npy", (n, len(keep), cfg.heads, cfg.d_embed), np_dtype)
        _new_array(path / "mlps.npy", (n, cfg.layers + 1 if spec["mlps"] == "each" else 1, cfg.d_embed), np_dtype)
        has_rest = len(keep) < cfg.layers
        if has_rest:
            _new_array(path / "rest.npy", (n, cfg.d_embed), np_dtype)
        _new_array(path / "norm.npy", (n,), np.float32)
        np.save(path / "valid.npy", np.ones(n, dtype=bool))
        labels = {"y": dataset.y, "spurious": dataset.spurious, "group": dataset.group,
                  "ids": np.asarray(dataset.ids, dtype=str)}
        if dataset.candidates is not None:
            labels["candidates"] = dataset.candidates
        for k, v in dataset.extra.items():
            arr = np.asarray(v)
            if arr.dtype == object:  # np.savez would pickle it; store text instead
                arr = arr.astype(str)
            labels[f"extra_{k}"] = arr
        atomic_write(path / "labels.npz", _npz_bytes(labels))
        meta = dict(spec, fingerprint=fp, n=n, n_shards=n_shards, has_rest=has_rest, model=model.describe(),
                    dataset=dataset.name, split=dataset.split, dataset_fingerprint=dataset.fingerprint(),
                    dataset_info=dataset.info, class_names=dataset.class_names,
                    spurious_names=dataset.spurious_names, group_names=dataset.group_names,
                    package_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write(meta_p, json.dumps(meta, indent=1, default=str))
    return StoreWriter(path)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def capture(*args, **kwargs) -> "ActivationStore":
    """Same as :func:`ltcutils.capture.capture` (kept here because a store is what it makes)."""
    from .capture import capture as _capture

    return _capture(*args, **kwargs)
