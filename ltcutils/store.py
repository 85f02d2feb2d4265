"""A streaming, resumable, memory-mapped store of per-image decompositions.

Layout of one store (one model x weights x dataset x split), format 2::

    <dir>/meta.json        what the store was made from (``spec``) and its fingerprint, a random
                           ``store_id`` of this allocation, count, shard size, array shapes, label
                           names, package version, and a checksum over all of it
    <dir>/labels.npz       y, spurious, group, ids, [candidates], extra label arrays (no pickle)
    <dir>/heads.npy        [n, layer, head, d_embed]   (dtype: float16 or float32)
    <dir>/embed.npy        [n, d_embed]                the embedding term (class token after ln_pre)
    <dir>/mlps.npy         [n, n_layers, d_embed]      one term per MLP ([n, 1, d_embed]: their sum)
    <dir>/rest.npy         [n, d_embed]                only when some layers are not captured
    <dir>/norm.npy         [n] float32                 unedited embedding norm
    <dir>/valid.npy        [n] bool                    False for images skipped as unreadable
    <dir>/shards/NNNNNN.json  one record per written shard: store_id, fingerprint, rows

The arrays are allocated first (space reserved, the free space checked before), then
``labels.npz``, then ``meta.json`` last: a folder without ``meta.json`` is an unfinished
allocation and is rebuilt. Shards are filled in any order, by one process or several writing
disjoint rows of the same memory-mapped arrays; a shard counts as written only once its own
record exists, and that record is written atomically after the shard's rows (and valid flags)
are flushed and names the allocation's ``store_id``. A killed capture therefore never leaves a
half-written shard counted, a record can never vouch for another allocation's zeros, and a
re-run computes only the missing shards. ``meta.json`` is checked on every open (checksum,
fingerprint, array shapes): an edited or damaged store is refused with the path and the fix.
A store made from other inputs is refused naming the fields that differ (or rebuilt with
``rebuild=True``). Nothing is pickled.

Example::

    >>> store = ltc.capture.capture(model, dataset, "cache")          # doctest: +SKIP
    >>> store.heads.shape, store.heads.dtype                          # doctest: +SKIP
    ((2000, 4, 4, 64), dtype('float16'))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .datasets.base import GroupDataset
from .decompose import head_label
from .io import atomic_write

__all__ = ["ActivationStore", "StoreError", "StoreMismatchError", "StoreWriter", "open_writer", "store_spec",
           "capture", "store_dir", "Terms", "atomic_write", "FORMAT_VERSION"]

FORMAT_VERSION = 2
SHARDS = "shards"
_ARRAYS = ("heads", "embed", "mlps", "rest", "norm", "valid")
_FIX = "capture again with rebuild=True (in a notebook: the rebuild parameter) or delete the folder"


class StoreError(RuntimeError):
    """A store is missing, incomplete, damaged or unreadable."""


class StoreMismatchError(StoreError):
    """A store exists at the path but was made from other inputs."""


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "none"


def store_dir(root: str | os.PathLike, model, dataset: GroupDataset) -> Path:
    """Default location ``root/<model>/<weights>/<dataset>/<split>-<data fingerprint>`` of a store.

    The weights part comes from the weights' content (a file's SHA-256, a tag, or the hash of
    random weights), so a copy of a checkpoint finds the same store. The data fingerprint in
    the name keeps differently sized or subsampled splits apart; a store at this path made
    with other settings (dtype, layers) is refused by :func:`~ltcutils.capture.capture`.
    """
    kind, _, digest = model.fingerprint.rpartition(":")
    weights = f"{kind.split(':')[0]}-{digest[:12]}" if kind.startswith("random") else digest[:16]
    leaf = f"{_slug(dataset.split)}-{dataset.fingerprint()[:8]}"
    return Path(root) / _slug(model.name) / _slug(weights) / _slug(dataset.name) / leaf


def _as_float_tensor(a, device: str | torch.device = "cpu") -> torch.Tensor:
    """A (memory-mapped) array slice as a float32 tensor: copy in its own dtype, convert in torch."""
    return torch.from_numpy(np.array(a)).to(device=device, dtype=torch.float32)


@dataclass
class Terms:
    """Decomposition terms of a set of images, as arrays (memory-mapped or in RAM).

    Attributes:
        heads: ``[n, layer, head, d_embed]``; mlps ``[n, n_layers, d_embed]`` (``[n, 1, d_embed]``
        when stored summed); rest: ``[n, d_embed]`` or None (all layers captured); norm: ``[n]``;
        embed: ``[n, d_embed]`` the embedding term (None only for hand-built Terms that keep it
        inside ``mlps``). layers: captured layer indices; normalized: terms divided by the
        embedding norm.
    """

    heads: Any
    mlps: Any
    rest: Any
    norm: Any
    layers: tuple[int, ...]
    normalized: bool
    embed: Any = None

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
        """Sum of the non-head terms (embedding, MLPs, rest) ``[rows, d_embed]`` as float32 torch."""
        s = _as_float_tensor(self.mlps[sl], device).sum(1)
        if self.embed is not None:
            s = s + _as_float_tensor(self.embed[sl], device)
        if self.rest is not None:
            s = s + _as_float_tensor(self.rest[sl], device)
        return s

    def head_set(self, heads: Sequence[tuple[int, int]], rows: slice | np.ndarray = slice(None)) -> torch.Tensor:
        """Summed terms ``[rows, d_embed]`` (float32) of a head set given as ``(layer, head)`` pairs.

        Layers are layer *indices* (as in ``L3H1``), mapped to their captured position here.

        Raises:
            ValueError: a head's layer was not captured per head.
        """
        out = None
        for l, h in heads:
            if int(l) not in self.layers:
                raise ValueError(f"L{l}H{h}: layer {l} was not captured per head (captured: {list(self.layers)})")
            t = self.head_t(self.layers.index(int(l)), int(h), rows)
            out = t if out is None else out + t
        if out is None:
            n = len(np.arange(len(self))[rows])
            return torch.zeros(n, int(self.heads.shape[-1]))
        return out

    def mean_norms(self, n_max: int = 1000) -> dict[str, np.ndarray | float]:
        """Mean norm of every kind of term over the first ``n_max`` images.

        Returns:
            ``{"heads": [layer, head], "attention": [layer] (each layer's heads summed),
            "mlps": [n_mlps], "embed": float (nan when the embedding term is kept inside mlps)}``.
        """
        sl = slice(0, min(len(self), n_max))
        heads = self.heads_t(sl)
        return {"heads": heads.norm(dim=-1).mean(0).numpy(), "attention": heads.sum(2).norm(dim=-1).mean(0).numpy(),
                "mlps": _as_float_tensor(self.mlps[sl]).norm(dim=-1).mean(0).numpy(),
                "embed": float("nan") if self.embed is None else float(_as_float_tensor(self.embed[sl]).norm(dim=-1).mean())}

    def take(self, index: np.ndarray) -> "Terms":
        """Rows at ``index`` loaded into RAM (float32 numpy)."""
        idx = np.asarray(index)
        f = lambda a: None if a is None else np.asarray(a[idx], dtype=np.float32)  # noqa: E731
        return Terms(f(self.heads), f(self.mlps), f(self.rest), np.asarray(self.norm[idx]), self.layers,
                     self.normalized, f(self.embed))


# ------------------------------------------------------------------ meta: checksum, checks
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _fingerprint(spec: dict) -> str:
    return hashlib.sha256(_canonical(spec).encode()).hexdigest()[:16]


def _checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(_canonical(json.loads(_canonical(body))).encode()).hexdigest()[:16]


def _damaged(path: Path, what: str) -> StoreError:
    what = " ".join(str(what).split())  # one line, whatever the underlying library wrote
    return StoreError(f"the store at {path} is damaged: {what}; {_FIX}")


def _read_meta(path: Path) -> dict:
    """``meta.json`` parsed; raises StoreError when missing or not JSON."""
    p = path / "meta.json"
    if not p.is_file():
        raise StoreError(f"no activation store at {path} (meta.json missing); create it with ltc.capture.capture")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"meta.json is not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _damaged(path, "meta.json does not hold a JSON object")
    return meta


def _vit_size(vit: dict) -> tuple[int, int]:
    """(n_heads, n_layers) of a ``ViTConfig.to_dict()`` (TransformerLens names, or the older heads/layers)."""
    return int(vit.get("n_heads", vit.get("heads"))), int(vit.get("n_layers", vit.get("layers")))


def _expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    vit = meta["spec"]["model"]["vit"]
    n, d = int(meta["n"]), int(vit["d_embed"])
    n_heads, n_layers = _vit_size(vit)
    shapes = {"heads": (n, len(meta["layers"]), n_heads, d), "embed": (n, d),
              "mlps": (n, n_layers if meta["mlps"] == "each" else 1, d), "norm": (n,), "valid": (n,)}
    if meta["has_rest"]:
        shapes["rest"] = (n, d)
    return shapes


def _check_meta(path: Path, meta: dict) -> None:
    """Refuse a meta.json of another format, edited by hand, or inconsistent with itself."""
    if meta.get("format") != FORMAT_VERSION:
        raise StoreMismatchError(
            f"the store at {path} is in store format {meta.get('format', 1)}; this version of ltcutils reads "
            f"format {FORMAT_VERSION}; {_FIX}")
    need = ("spec", "fingerprint", "store_id", "n", "n_shards", "shard_size", "layers", "normalized", "dtype",
            "mlps", "has_rest", "checksum")
    missing = [k for k in need if k not in meta]
    if missing:
        raise _damaged(path, f"meta.json lacks {missing}")
    if meta["checksum"] != _checksum(meta):
        raise _damaged(path, "meta.json was edited or is corrupt (its checksum does not match its content), so "
                             "its shapes and labels cannot be trusted")
    spec = meta["spec"]
    if meta["fingerprint"] != _fingerprint(spec):
        raise _damaged(path, "meta.json does not match its own fingerprint")
    for key in ("layers", "normalized", "dtype", "mlps", "shard_size"):
        if meta[key] != spec.get(key):
            raise _damaged(path, f"meta.json field {key!r} = {meta[key]!r} does not match the spec ({spec.get(key)!r})")
    n, size = int(meta["n"]), int(meta["shard_size"])
    if n != spec["dataset"]["n"] or size < 1 or int(meta["n_shards"]) != (n + size - 1) // size:
        raise _damaged(path, f"meta.json counts (n={n}, n_shards={meta['n_shards']}) do not match the spec")


def _open_array(path: Path, name: str, shape: tuple[int, ...], mode: str = "r") -> np.memmap:
    """``<name>.npy`` memory-mapped, its shape checked against ``meta.json``."""
    try:
        arr = np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _damaged(path, f"{name}.npy cannot be opened ({type(exc).__name__}: {exc})") from exc
    if arr.shape != shape:
        raise _damaged(path, f"{name}.npy has shape {arr.shape} but meta.json describes {shape}")
    return arr


def _read_labels(path: Path, meta: dict) -> dict[str, np.ndarray]:
    try:
        with np.load(path / "labels.npz", allow_pickle=False) as z:
            labels = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _damaged(path, f"labels.npz cannot be read ({type(exc).__name__}: {exc})") from exc
    n = int(meta["n"])
    for key in ("y", "spurious", "group", "ids"):
        if key not in labels or len(labels[key]) != n:
            raise _damaged(path, f"labels.npz: {key!r} is missing or does not have {n} rows")
    for key, names in (("y", "class_names"), ("group", "group_names")):
        if names in meta and len(labels[key]) and int(labels[key].max()) >= len(meta[names]):
            raise _damaged(path, f"labels.npz: {key} reaches {int(labels[key].max())} but meta.json names "
                                 f"{len(meta[names])} {names}")
    return labels


# ------------------------------------------------------------------ shard records
def _shard_file(path: Path, s: int) -> Path:
    return path / SHARDS / f"{s:06d}.json"


def shard_digest(arrays: dict[str, np.ndarray], rows: range) -> str:
    """SHA-256 (first 32 hex digits) of the bytes of ``rows`` in every array, arrays in name order.

    Recorded by the writer when it commits a shard (from its own mapping) and recomputed by
    :func:`verify_shards` from a fresh read of the files: the two differ when what reached the
    file is not what the rank wrote.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name][rows.start:rows.stop]).tobytes())
    return h.hexdigest()[:32]


def verify_shards(path: str | os.PathLike, drop: bool = False) -> list[int]:
    """The committed shards whose bytes on disk differ from the digest their writer recorded.

    Reads the whole store once, a shard at a time. Shards recorded without a digest (stores
    written before digests were kept) are not checked.

    Args:
        path: the store folder.
        drop: remove the records of the shards that differ, so the next capture into this
            store recomputes exactly those.

    Returns:
        The differing shard numbers, sorted (empty when every checked shard reads back as written).
    """
    path = Path(path)
    meta = _read_meta(path)
    _check_meta(path, meta)
    arrays = {k: _open_array(path, k, shape) for k, shape in _expected_shapes(meta).items()}
    size, n, bad = int(meta["shard_size"]), int(meta["n"]), []
    for s in sorted(_done_shards(path, meta)):
        rec = json.loads(_shard_file(path, s).read_text(encoding="utf-8"))
        if "digest" not in rec:
            continue
        if shard_digest(arrays, range(s * size, min((s + 1) * size, n))) != rec["digest"]:
            bad.append(s)
    arrays.clear()
    if drop:
        for s in bad:
            _shard_file(path, s).unlink(missing_ok=True)
    return bad


def _done_shards(path: Path, meta: dict) -> set[int]:
    """Shards whose record names this allocation (``store_id``) and fingerprint.

    Records of another allocation (a folder rebuilt, files copied in) are ignored; a record of
    this allocation that is unreadable or out of range means the store is damaged.
    """
    folder = path / SHARDS
    if not folder.is_dir():
        return set()
    done: set[int] = set()
    for p in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            owner = (rec["store_id"], rec["fingerprint"])
            s, rows = int(rec["shard"]), [int(r) for r in rec["rows"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise _damaged(path, f"shard record {SHARDS}/{p.name} is unreadable ({type(exc).__name__}: {exc})") \
                from exc
        if owner != (meta["store_id"], meta["fingerprint"]):
            continue
        start, stop = s * int(meta["shard_size"]), min((s + 1) * int(meta["shard_size"]), int(meta["n"]))
        if not 0 <= s < int(meta["n_shards"]) or p.name != _shard_file(path, s).name or rows != [start, stop]:
            raise _damaged(path, f"shard record {SHARDS}/{p.name} claims shard {s} rows {rows}, but the store has "
                                 f"{meta['n_shards']} shards of {meta['shard_size']}")
        done.add(s)
    return done


class ActivationStore:
    """A completed store opened read-only; arrays are ``np.memmap`` (nothing loaded up front).

    Raises:
        StoreError: no store, an incomplete one (unless ``allow_partial``), or a damaged or
            edited one (the message names the file and the fix).
    """

    def __init__(self, path: str | os.PathLike, allow_partial: bool = False):
        self.path = Path(path)
        self.meta: dict = _read_meta(self.path)
        _check_meta(self.path, self.meta)
        done = _done_shards(self.path, self.meta)
        n_shards = int(self.meta["n_shards"])
        self.complete = len(done) == n_shards
        if not self.complete and not allow_partial:
            raise StoreError(
                f"store {self.path} is incomplete ({n_shards - len(done)} of {n_shards} shards missing); "
                "re-run ltc.capture.capture with the same arguments to resume it"
            )
        self.labels: dict[str, np.ndarray] = _read_labels(self.path, self.meta)
        shapes = _expected_shapes(self.meta)
        arrays = {k: _open_array(self.path, k, shape) for k, shape in shapes.items()}
        self.terms = Terms(arrays["heads"], arrays["mlps"], arrays.get("rest"), arrays["norm"],
                           tuple(self.meta["layers"]), bool(self.meta["normalized"]), arrays["embed"])
        self.valid: np.ndarray = np.array(arrays["valid"])

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


def store_spec(model, dataset: GroupDataset, *, dtype: str, layers: Sequence[int], normalized: bool, mlps: str,
               shard_size: int) -> dict:
    """What a store is made from; its hash is the store's fingerprint.

    The model enters by its weights' fingerprint (content, not file path: a copy of a
    checkpoint, or another clone of the project, reuses the store) and its architecture.
    """
    described = model.describe()
    return {
        "format": FORMAT_VERSION,
        "model": {k: v for k, v in described.items() if k != "pretrained"},
        "dataset": {"name": dataset.name, "split": dataset.split, "fingerprint": dataset.fingerprint(),
                    "n": len(dataset)},
        "dtype": dtype,
        "layers": list(layers),
        "normalized": normalized,
        "mlps": mlps,
        "shard_size": shard_size,
    }


def capture(*args, **kwargs) -> "ActivationStore":
    """Same as :func:`ltcutils.capture.capture` (kept here because a store is what it makes)."""
    from .capture import capture as _capture

    return _capture(*args, **kwargs)


def __getattr__(name: str):
    """``StoreWriter`` and ``open_writer`` live in :mod:`ltcutils.store_writer` (imported on first use)."""
    if name in ("StoreWriter", "open_writer"):
        from . import store_writer

        return getattr(store_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
