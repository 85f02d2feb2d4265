"""Capture: decompose every image of a split and stream the terms into a store.

The on-disk format (arrays, metadata, shard records) belongs to :mod:`ltcutils.store`; this
module is the loop that fills it: read images, run the hooked forward, write each shard's rows,
commit the shard. An interrupted capture resumes with the shards not yet committed.

Input pipeline: images are decoded and preprocessed by ``torch.utils.data.DataLoader`` worker
processes (``num_workers``) while the model runs; on an accelerator the batches are pinned and
copied without blocking. Rows keep the dataset's order whatever the number of workers.

Precision: ``precision="fp32" | "fp16" | "bf16"`` runs the forward under ``torch.autocast`` on
the model's device type. The terms then sum to the fp32 unit embedding within
:data:`TOLERANCE` (L2 distance per image, ``normalized=True``, before the store's own dtype
rounding). On CPU, fp32 is the default; bf16 works (fast where the CPU has bf16 instructions);
fp16 works but is slow on CPU (a warning says so), so it is meant for accelerators.

Several processes: run the module under ``torchrun``; each process (rank) writes disjoint
shards of the same memory-mapped arrays and the store records each shard on its own, so a
crash of any rank leaves the finished shards, and the same command resumes only the missing
ones. Rank 0 allocates the store; the missing shards are dealt out in turn
(``missing[rank::world]``). Backend: gloo on CPU, NCCL on NVIDIA GPUs (the default for the device)::

    torchrun --nproc-per-node 2 -m ltcutils.capture --model ViT-B-16 --pretrained laion2b_s34b_b88k \\
        --dataset waterbirds --split test --cache cache
    ltc capture --nproc-per-node 2 --model ViT-B-16 ...   # the same, launched for you through torchrun

Decoding is the dataset's own (the whole JPEG) followed by the model's preprocess (open_clip's
Resize + CenterCrop). PIL's draft mode (downscaling inside the JPEG decoder) was measured and is
not used: on 300-500 px JPEGs at ltc-tiny's 48 px it cuts reading from ~2.3 to 1.0-1.8 ms per
image, but moves the trained tiny model's unit embedding by up to 0.15-0.38 in L2 (mean
0.02-0.10), far beyond the fp16/bf16 :data:`TOLERANCE`; at 224 px it seldom applies (halving
needs both sides >= 448 px).

Example::

    >>> store = ltc.capture.capture(model, dataset, "cache")          # doctest: +SKIP
    >>> store.heads.shape, store.heads.dtype                          # doctest: +SKIP
    ((2000, 4, 4, 64), dtype('float16'))
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .datasets.base import DatasetError, GroupDataset
from .decompose import _layer_list, decompose
from .store import ActivationStore, StoreError, StoreMismatchError, open_writer, store_dir, store_spec, verify_shards

__all__ = ["capture", "default_workers", "PRECISIONS", "TOLERANCE", "SERIAL_BELOW", "SERIAL_BELOW_SPAWNED", "main", "parser", "torchrun_command"]

#: torch dtype of the forward for each ``precision``.
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: Largest L2 distance, per image, between the sum of the terms (``normalized=True``, in the
#: forward's precision, before the store's dtype rounding) and the fp32 unit embedding of
#: open_clip's ``encode_image``. Tested in tests/test_capture.py; fp16 and bf16 keep ~11 and ~8
#: significant bits, accumulated over ~160 terms.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2}

#: With ``num_workers=None``, captures of fewer images than this stay in one process when workers
#: are forked (Linux up to Python 3.13): a forked worker is up in ~0.03 s, but its first batch
#: arrives only after it is decoded, and a one-process traceback is simpler to read.
SERIAL_BELOW = 256

#: The same threshold where workers are started with ``spawn`` or ``forkserver`` (macOS, Windows,
#: Linux from Python 3.14): each worker imports torch, open_clip and ltcutils again before its
#: first image, 5-20 s on a 2-core machine, the time to decode a few thousand images.
SERIAL_BELOW_SPAWNED = 4096


def default_workers(n_images: int | None = None, start_method: str | None = None) -> int:
    """Worker processes for decoding: one per core this process may use (at most 8).

    The forward does not get a core of its own: where reading is the bound (small models, large
    JPEGs) a worker on every core is faster (ltc-tiny on 300-500 px JPEGs, 2 idle cores: 2 workers
    gave 1.15-1.2x the images/s of 1), and where the forward is the bound the workers sit on full
    queues and cost nothing.

    Args:
        n_images: images left to capture; below :data:`SERIAL_BELOW` (forked workers) or
            :data:`SERIAL_BELOW_SPAWNED` (spawned ones) the answer is 0.
        start_method: how workers would start (default: :func:`mp_start_method`).

    Returns:
        0 (decode in the main process) to 8. Under ``torchrun`` the cores are shared among the
        ranks of the node (``LOCAL_WORLD_SIZE``).
    """
    below = SERIAL_BELOW if (start_method or mp_start_method()) == "fork" else SERIAL_BELOW_SPAWNED
    if n_images is not None and n_images < below:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_rank))


class _Images(torch.utils.data.Dataset):
    """Item ``i`` -> ``(i, pixels [3, H, W] or None, error or None)``; never raises on a bad image.

    Runs inside DataLoader workers, so it must pickle where workers are spawned (not forked).
    """

    def __init__(self, dataset: GroupDataset, preprocess):
        self.dataset, self.preprocess = dataset, preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(self.dataset.image(i)), None
        except (OSError, ValueError, DatasetError) as exc:  # DatasetError is a ValueError
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(items):
    """``(idx [b] int64, pixels [b_ok, 3, H, W] or None, ok [b] bool, errors [b])``."""
    idx = np.array([i for i, _, _ in items], dtype=np.int64)
    ok = np.array([px is not None for _, px, _ in items], dtype=bool)
    good = [px for _, px, _ in items if px is not None]
    return idx, (torch.stack(good) if good else None), ok, [e for _, _, e in items]


def _batches(writer, shards: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row batches in shard order; a batch never crosses a shard boundary."""
    out = []
    for s in shards:
        rows = writer.shard_rows(s)
        out += [list(range(b, min(b + batch_size, rows.stop))) for b in range(rows.start, rows.stop, batch_size)]
    return out


def _loader(images: _Images, batches: list[list[int]], num_workers: int, device: torch.device,
            start_method: str | None = None):
    """The DataLoader of one capture: ``batches`` in order, ``num_workers`` processes started by
    ``start_method`` (None: the platform's default, see :func:`mp_start_method`)."""
    method = start_method or mp_start_method()
    if num_workers and method != "fork":
        try:
            pickle.dumps(images)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
            raise TypeError(
                f"num_workers={num_workers} needs a picklable dataset and preprocess on this platform (workers are "
                f"started with {method!r}); pickling failed: {exc}. Make load_image a module-level "
                "callable, or pass num_workers=0.") from exc
    accel = device.type != "cpu"
    return torch.utils.data.DataLoader(
        images, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate, pin_memory=accel,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
        multiprocessing_context=start_method if num_workers else None)


def mp_start_method() -> str:
    """How DataLoader workers are started here (``"fork"`` on Linux until Python 3.14)."""
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=False)


def _as_float32(d):
    """A Decomposition with every floating tensor in float32 (bf16 has no numpy dtype)."""
    conv = {f.name: getattr(d, f.name).float() for f in dataclasses.fields(d)
            if f.init and isinstance(getattr(d, f.name), torch.Tensor) and getattr(d, f.name).dtype != torch.float32
            and getattr(d, f.name).is_floating_point()}
    return dataclasses.replace(d, **conv) if conv else d


def _world():
    """``(torch.distributed or None, rank, world size)`` of an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _share(dist, device: torch.device, obj):
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=None if device.type == "cpu" else device)
    return box[0]


_ERRORS = {"StoreMismatchError": StoreMismatchError, "StoreError": StoreError, "DatasetError": DatasetError}


def _open(path: Path, model, dataset: GroupDataset, spec: dict, rebuild: bool, device: torch.device):
    """``(writer or finished store, shards this rank writes)``; rank 0 allocates, the others follow."""
    dist, rank, world = _world()
    if dist is None:
        w = open_writer(path, model, dataset, spec, rebuild=rebuild)
        return w, ([] if isinstance(w, ActivationStore) else w.missing_shards())
    w, own, failure, missing = None, None, None, []
    if rank == 0:
        try:
            w = open_writer(path, model, dataset, spec, rebuild=rebuild)
            missing = [] if isinstance(w, ActivationStore) else w.missing_shards()
        except (StoreError, DatasetError) as exc:
            own, failure = exc, (type(exc).__name__, str(exc))
    failure, missing = _share(dist, device, (failure, missing))  # the missing list is read once, by rank 0
    if own is not None:
        raise own
    if failure is not None:
        raise _ERRORS.get(failure[0], StoreError)(f"(rank 0) {failure[1]}")
    if rank != 0:
        w = open_writer(path, model, dataset, spec, rebuild=False)
    return w, list(missing[rank::world])


def capture(
    model,
    dataset: GroupDataset,
    root: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    batch_size: int = 64,
    shard_size: int = 512,
    dtype: str = "float16",
    layers: Sequence[int] | None = None,
    normalized: bool = True,
    mlps: str = "each",
    skip_bad: bool = False,
    rebuild: bool = False,
    progress: bool = True,
    num_workers: int | None = None,
    precision: str = "fp32",
    verify: bool | None = None,
) -> ActivationStore:
    """Decompose every image of ``dataset`` and stream the terms to disk; resume if interrupted.

    Args:
        model: a :class:`~ltcutils.models.LoadedModel` (it runs on its own device).
        dataset: the split to capture.
        root: store root; the store goes to :func:`~ltcutils.store.store_dir` under it (or give ``path``).
        batch_size: images per forward pass. shard_size: images per resumable unit.
        dtype: "float16" (half the disk) or "float32".
        layers: attention layers to keep per head (default all; the others go into ``rest``).
        normalized: divide terms by the embedding norm (terms sum to the unit embedding).
        mlps: ``"each"`` keeps every MLP term; ``"sum"`` keeps only their sum.
        skip_bad: an unreadable image is recorded as invalid (``store.valid``) instead of raising.
        rebuild: delete and rebuild a store made from other inputs instead of refusing it.
        num_workers: DataLoader worker processes decoding images; None picks
            :func:`default_workers` (0 for captures under :data:`SERIAL_BELOW` images); 0 decodes
            in this process (the serial path).
        precision: "fp32", "fp16" or "bf16" for the forward (autocast on the model's device);
            a store made at another precision than fp32 records it, so it is not mixed up.
        verify: read the finished store back and compare every shard with the digest its writer
            recorded (:func:`~ltcutils.store.verify_shards`); None (default) does it after a
            capture by several processes only, on rank 0. Shards that differ lose their record
            and the capture raises, so rerunning the same command recomputes exactly those.

    Under an initialised ``torch.distributed`` process group (``torchrun``), every rank must call
    this with the same arguments; each writes its share of the missing shards.

    Returns:
        the completed :class:`~ltcutils.store.ActivationStore`.

    Raises:
        StoreMismatchError: a store at the path was made from another model / data / settings.
        StoreError: with ``verify``, shards read back differently from what was written.
        DatasetError: an image cannot be read (and ``skip_bad`` is False). Finished shards stay.
        ValueError: an unknown ``mlps``, ``dtype`` or ``precision``, or ``batch_size`` < 1.
    """
    if path is None:
        if root is None:
            raise ValueError("give either root (a cache folder) or path (the store's own folder)")
        path = store_dir(root, model, dataset)
    path = Path(path)
    if mlps not in ("each", "sum"):
        raise ValueError(f"mlps must be 'each' or 'sum', got {mlps!r}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if int(batch_size) < 1 or int(shard_size) < 1:
        raise ValueError(f"batch_size and shard_size must be at least 1, got {batch_size} and {shard_size}")
    hooked = model.hooked
    dev = next(hooked.parameters()).device
    if precision == "fp16" and dev.type == "cpu":
        warnings.warn("precision='fp16' on the CPU works but is several times slower than fp32; use bf16 or fp32 "
                      "on a CPU, fp16 on an accelerator", stacklevel=2)
    keep = _layer_list(hooked, layers)
    spec = store_spec(model, dataset, dtype=dtype, layers=keep, normalized=normalized, mlps=mlps,
                      shard_size=shard_size)
    if precision != "fp32":
        spec["precision"] = precision  # fp32 stores keep the fingerprint they always had
    writer, mine = _open(path, model, dataset, spec, rebuild, dev)
    dist, rank, world = _world()
    if not isinstance(writer, ActivationStore):
        _fill(writer, mine, model, dataset, keep, normalized, skip_bad, progress and rank == 0, num_workers,
              precision, dev, batch_size, world)
    if dist is not None:
        dist.barrier()  # every rank's shards are committed before anyone opens the finished store
    if verify or (verify is None and world > 1 and not isinstance(writer, ActivationStore)):
        bad = verify_shards(path, drop=True) if rank == 0 else None
        if dist is not None:
            bad = _share(dist, dev, bad)
        if bad:
            raise StoreError(
                f"the store at {path}: shards {bad} read back differently from what their process wrote, so their "
                "records were removed; rerun the same command to recompute exactly those. Across several nodes "
                "this means the shared filesystem does not keep memory-mapped writes by different nodes to one "
                "file page apart (NFS and similar): capture on one node, or give each node its own store")
    return writer if isinstance(writer, ActivationStore) else writer.close()


def _fill(writer, shards, model, dataset, keep, normalized, skip_bad, progress, num_workers, precision, dev,
          batch_size, world) -> None:
    """Write and commit ``shards`` of ``writer`` in order."""
    batches = _batches(writer, shards, int(batch_size))
    n_rows = sum(len(b) for b in batches)
    workers = default_workers(n_rows * world) if num_workers is None else int(num_workers)
    images = _Images(dataset, model.preprocess)
    loader = _loader(images, batches, workers, dev)
    in_dtype = next(model.hooked.parameters()).dtype  # a model converted to fp16/bf16 takes pixels in kind
    auto = precision != "fp32"
    last_row = {writer.shard_rows(s).stop - 1: s for s in shards}
    desc = f"capture {dataset.name}/{dataset.split}" + (f" [rank 0 of {world}]" if world > 1 else "")
    bar = _progress(total=n_rows, desc=desc, enabled=progress)
    for idx, pixels, ok, errors in loader:
        if not ok.all():
            if not skip_bad:
                j = int(np.flatnonzero(~ok)[0])
                i = int(idx[j])
                raise DatasetError(
                    f"{dataset.name}/{dataset.split}: cannot read image {i} ({dataset.ids[i]}): {errors[j]}. "
                    "Finished shards are kept; fix or remove the file and re-run, or pass skip_bad=True.")
            writer.mark_invalid(idx[~ok])
        if pixels is not None:
            px = pixels.to(dev, dtype=in_dtype if not auto else None, non_blocking=dev.type != "cpu")
            with torch.autocast(device_type=dev.type, dtype=PRECISIONS[precision], enabled=auto):
                d = decompose(model.hooked, px, layers=keep, normalized=normalized)
            writer.write(idx[ok], _as_float32(d))
        bar.update(len(idx))
        if int(idx[-1]) in last_row:
            writer.commit_shard(last_row[int(idx[-1])])
    bar.close()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="img")


# ----------------------------------------------------------------------------- command line
def _device(arg: str) -> torch.device:
    """``--device``: "auto" is this rank's accelerator (LOCAL_RANK) when there is one, else the CPU."""
    if arg != "auto":
        return torch.device(arg)
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if acc is None:
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.accelerator.device_count())
    return torch.device(acc.type, index)


def parser(prog: str = "python -m ltcutils.capture") -> argparse.ArgumentParser:
    """The options of ``python -m ltcutils.capture`` (``ltc capture`` checks them before launching)."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model name or ltc-tiny")
    ap.add_argument("--pretrained", default=None, help="tag or checkpoint file; omit (or 'none') for random weights")
    ap.add_argument("--seed", type=int, default=0, help="torch seed before building the model (random weights)")
    ap.add_argument("--dataset", required=True, help="a name from ltcutils.datasets (waterbirds, celeba, ...)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--root", default=None, help="the dataset's folder (default: $LTC_DATA_DIR/<its folder>)")
    ap.add_argument("--dataset-skip-bad", action="store_true", help="drop listed images whose files are missing")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--cache", help="store root (the store goes to its default folder under it)")
    where.add_argument("--out", help="the store's own folder")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--layers", default=None, help="comma-separated layers to keep per head (default all)")
    ap.add_argument("--mlps", default="each", choices=["each", "sum"])
    ap.add_argument("--no-normalize", action="store_true", help="keep raw terms (not divided by the norm)")
    ap.add_argument("--skip-bad", action="store_true", help="record unreadable images as invalid instead of failing")
    ap.add_argument("--rebuild", action="store_true", help="replace a store made from other inputs")
    ap.add_argument("--num-workers", type=int, default=None, help="decoding processes per rank (default: from cores)")
    ap.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    ap.add_argument("--device", default="auto", help="auto (this rank's accelerator, else cpu), cpu, or a device")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads per rank")
    ap.add_argument("--no-progress", action="store_true")
    return ap


#: ``torchrun`` options that ``ltc capture`` passes on (its own spelling; see ``torchrun --help``).
TORCHRUN_OPTIONS = ("--nnodes", "--node-rank", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--max-restarts")


def torchrun_command(capture_args: Sequence[str], nproc_per_node: int | str = 1, **torchrun: str | int | None
                     ) -> list[str]:
    """The ``torchrun`` (``python -m torch.distributed.run``) command that runs this module on N processes.

    Args:
        capture_args: options of ``python -m ltcutils.capture`` (``--dataset ... --cache ...``).
        nproc_per_node: processes on this node: a number, or torchrun's ``gpu`` / ``auto``.
        torchrun: ``nnodes``, ``node_rank``, ``rdzv_backend``, ``rdzv_endpoint``, ``rdzv_id``,
            ``max_restarts`` (None leaves torchrun's default). Without ``nnodes`` (or with 1) and
            without ``rdzv_endpoint`` the run is ``--standalone`` (a local rendezvous on a free port).

    Returns:
        the argument list, starting with this Python interpreter.

    Raises:
        ValueError: an unknown torchrun option.
    """
    known = {o[2:].replace("-", "_"): o for o in TORCHRUN_OPTIONS}
    unknown = sorted(set(torchrun) - set(known))
    if unknown:
        raise ValueError(f"unknown torchrun option(s) {unknown}; ltc capture passes on {sorted(known)}")
    set_ = {k: v for k, v in torchrun.items() if v is not None}
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if str(set_.get("nnodes", "1")) == "1" and "rdzv_endpoint" not in set_:
        cmd.append("--standalone")
    cmd += ["--nproc-per-node", str(nproc_per_node)]
    for k, v in set_.items():
        cmd += [known[k], str(v)]
    return cmd + ["-m", "ltcutils.capture", *capture_args]


def main(argv: list[str] | None = None) -> None:
    """``python -m ltcutils.capture`` / ``torchrun ... -m ltcutils.capture``: capture one store."""
    a = parser().parse_args(argv)

    from .datasets.registry import load_dataset
    from .models import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    device = _device(a.device)
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if device.type != "cpu":
            torch.accelerator.set_device_index(device.index)
        dist.init_process_group(backend=dist.get_default_backend_for_device(device))
    try:
        torch.manual_seed(a.seed)
        pretrained = None if a.pretrained in (None, "", "none", "None") else a.pretrained
        model = load_model(a.model, pretrained, device=device)
        kw = {"skip_bad": True} if a.dataset_skip_bad else {}
        ds = load_dataset(a.dataset, a.split, a.root, **kw)
        layers = None if a.layers is None else [int(x) for x in a.layers.split(",") if x.strip()]
        st = capture(model, ds, a.cache, path=a.out, batch_size=a.batch_size, shard_size=a.shard_size,
                     dtype=a.dtype, layers=layers, normalized=not a.no_normalize, mlps=a.mlps, skip_bad=a.skip_bad,
                     rebuild=a.rebuild, progress=not a.no_progress, num_workers=a.num_workers, precision=a.precision)
        if not distributed or dist.get_rank() == 0:
            print(f"store: {st.path} ({len(st)} images, {int((~st.valid).sum())} invalid)")
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
