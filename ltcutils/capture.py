"""Capture: decompose every image of a split and stream the terms into a store.

The on-disk format (arrays, metadata, shard records) belongs to :mod:`ltcutils.store`; this
module is the loop that fills it: read images, run the hooked forward, write each shard's rows,
commit the shard. An interrupted capture resumes at the first shard not yet committed.

Example::

    >>> store = ltc.capture.capture(model, dataset, "cache")          # doctest: +SKIP
    >>> store.heads.shape, store.heads.dtype                          # doctest: +SKIP
    ((2000, 4, 4, 64), dtype('float16'))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .datasets.base import DatasetError, GroupDataset
from .decompose import _layer_list, decompose
from .store import ActivationStore, open_writer, store_dir, store_spec

__all__ = ["capture"]


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
) -> ActivationStore:
    """Decompose every image of ``dataset`` and stream the terms to disk; resume if interrupted.

    Args:
        model: a :class:`~ltcutils.models.LoadedModel`.
        dataset: the split to capture.
        root: store root; the store goes to :func:`~ltcutils.store.store_dir` under it (or give ``path``).
        batch_size: images per forward pass. shard_size: images per resumable unit.
        dtype: "float16" (half the disk) or "float32".
        layers: attention layers to keep per head (default all; the others go into ``rest``).
        normalized: divide terms by the embedding norm (terms sum to the unit embedding).
        mlps: ``"each"`` keeps the embedding term and every MLP term (``[n, layers + 1, d_embed]``);
            ``"sum"`` keeps only their sum (``[n, 1, d_embed]``), about 8% less disk for ViT-B-16
            when only the heads are studied.
        skip_bad: an unreadable image is recorded as invalid (``store.valid``) instead of raising.
        rebuild: delete and rebuild a store made from other inputs instead of refusing it.

    The model runs on its own device (``load_model(..., device=...)``); results move to the CPU
    batch by batch.

    Returns:
        the completed :class:`~ltcutils.store.ActivationStore`.

    Raises:
        StoreMismatchError: a store at the path was made from another model / data / settings.
        DatasetError: an image cannot be read (and ``skip_bad`` is False). Finished shards stay.
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
    hooked = model.hooked
    keep = _layer_list(hooked, layers)
    spec = store_spec(model, dataset, dtype=dtype, layers=keep, normalized=normalized, mlps=mlps,
                      shard_size=shard_size)
    writer = open_writer(path, model, dataset, spec, rebuild=rebuild)
    if isinstance(writer, ActivationStore):
        return writer

    dev = next(hooked.parameters()).device
    todo = writer.missing_shards()
    done_rows = writer.n - sum(len(writer.shard_rows(s)) for s in todo)
    bar = _progress(total=writer.n, initial=done_rows, desc=f"capture {dataset.name}/{dataset.split}",
                    enabled=progress)
    for s in todo:
        shard = writer.shard_rows(s)
        for b in range(shard.start, shard.stop, batch_size):
            idx = list(range(b, min(b + batch_size, shard.stop)))
            pixels, ok = _load_batch(model, dataset, idx, skip_bad)
            rows = np.asarray(idx)[ok]
            writer.mark_invalid(np.asarray(idx)[~ok])
            if len(rows):
                writer.write(rows, decompose(hooked, pixels.to(dev), layers=keep, normalized=normalized))
            bar.update(len(idx))
        writer.commit_shard(s)
    bar.close()
    return writer.close()


def _load_batch(model, dataset: GroupDataset, idx: list[int], skip_bad: bool) -> tuple[torch.Tensor, np.ndarray]:
    ims, ok = [], np.ones(len(idx), dtype=bool)
    for j, i in enumerate(idx):
        try:
            ims.append(model.preprocess(dataset.image(i)))
        except (OSError, ValueError, DatasetError) as exc:
            if not skip_bad:
                raise DatasetError(
                    f"{dataset.name}/{dataset.split}: cannot read image {i} ({dataset.ids[i]}): {exc}. "
                    "Finished shards are kept; fix or remove the file and re-run, or pass skip_bad=True."
                ) from exc
            ok[j] = False
    if not ims:
        size = model.hooked.cfg.image_size
        return torch.zeros(0, 3, size, size), ok
    return torch.stack(ims), ok


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, unit="img")
