"""The dataset interface shared by the synthetic benchmark and the real benchmarks.

Every dataset is a split of labelled images with a class label ``y``, a spurious label
``spurious`` and a ``group`` (for two binary labels ``group = 2 * y + spurious``, as in
Waterbirds). Label conventions are stated once per dataset in its module docstring.

Shapes: ``y``, ``spurious``, ``group`` are ``[n]`` int64 numpy arrays. ``candidates`` (optional)
is ``[n, k]``: the global class indices each image is classified among (GenderBias: true and
paired occupation); None means every image is classified among all ``class_names``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

__all__ = ["GroupDataset", "DatasetError"]


class DatasetError(ValueError):
    """A dataset root, metadata file, split or image is missing or malformed."""


class _SubsetLoader:
    """``i -> parent(index[i])``; a class, not a closure, so a subset pickles into DataLoader workers."""

    def __init__(self, parent: Callable[[int], Image.Image], index: np.ndarray):
        self.parent, self.index = parent, index

    def __call__(self, i: int) -> Image.Image:
        return self.parent(int(self.index[int(i)]))


@dataclass
class GroupDataset:
    """One split of a group-labelled image dataset.

    Attributes:
        name: dataset name ("synthetic", "waterbirds", ...); also names its prompt bank.
        split: split name ("train", "val", "test", "common", ...).
        class_names: ``[n_class]`` human-readable class names (global class index order).
        spurious_names: names of the spurious attribute's values (index order).
        y, spurious, group: ``[n]`` int64 labels.
        group_names: names of the groups (index order).
        load_image: ``i -> PIL.Image`` (RGB) for item ``i``.
        ids: ``[n]`` stable identifiers (file names relative to the root, or seeds).
        candidates: optional ``[n, k]`` global class indices per image.
        extra: further per-image label arrays (e.g. "place", "occupation", "age").
        info: JSON-able description of where the data came from (root, parameters).
        conflicting_groups: the bias-conflicting group ids (where the spurious attribute points to
            another class than the true one), set by each loader from its own label convention;
            None where the dataset defines none (``ltcutils.locate`` then asks for them).
    """

    name: str
    split: str
    class_names: list[str]
    spurious_names: list[str]
    y: np.ndarray
    spurious: np.ndarray
    group: np.ndarray
    group_names: list[str]
    load_image: Callable[[int], Image.Image]
    ids: list[str]
    candidates: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    conflicting_groups: list[int] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.conflicting_groups is not None:
            self.conflicting_groups = sorted(int(g) for g in self.conflicting_groups)
            bad = [g for g in self.conflicting_groups if not 0 <= g < len(self.group_names)]
            if bad:
                raise DatasetError(f"{self.name}/{self.split}: conflicting_groups {bad} are not group ids "
                                   f"0..{len(self.group_names) - 1}")
        for key in ("y", "spurious", "group"):
            arr = np.asarray(getattr(self, key), dtype=np.int64)
            if arr.shape != (n,):
                raise DatasetError(f"{self.name}/{self.split}: {key} has shape {arr.shape}, expected ({n},)")
            setattr(self, key, arr)
        if self.candidates is not None:
            self.candidates = np.asarray(self.candidates, dtype=np.int64)
            if self.candidates.ndim != 2 or self.candidates.shape[0] != n:
                raise DatasetError(f"{self.name}/{self.split}: candidates must be [n, k], got {self.candidates.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def image(self, i: int) -> Image.Image:
        """The RGB image of item ``i``."""
        return self.load_image(int(i))

    def subset(self, index: Sequence[int] | np.ndarray) -> "GroupDataset":
        """A new dataset holding the items at ``index`` (same loader, same labels)."""
        idx = np.asarray(index, dtype=np.int64)
        parent = _SubsetLoader(self.load_image, idx)
        return GroupDataset(
            self.name, self.split, self.class_names, self.spurious_names, self.y[idx], self.spurious[idx],
            self.group[idx], self.group_names, parent, [self.ids[i] for i in idx],
            None if self.candidates is None else self.candidates[idx],
            {k: v[idx] for k, v in self.extra.items()}, dict(self.info, subset=len(idx)),
            conflicting_groups=self.conflicting_groups,
        )

    def fingerprint(self) -> str:
        """Hash of the dataset identity: name, split, ids and labels (not the pixels)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.split, self.class_names, self.spurious_names,
                             self.info], sort_keys=True, default=str).encode())
        h.update("\n".join(self.ids).encode())
        for arr in (self.y, self.spurious, self.group):
            h.update(np.ascontiguousarray(arr).tobytes())
        if self.candidates is not None:
            h.update(np.ascontiguousarray(self.candidates).tobytes())
        return h.hexdigest()[:16]

    def group_counts(self) -> dict[str, int]:
        """Number of items per group name."""
        counts = np.bincount(self.group, minlength=self.n_groups)
        return {name: int(c) for name, c in zip(self.group_names, counts)}
