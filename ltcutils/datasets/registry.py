"""One entry point for every benchmark, and the file helpers the real-data loaders share.

``load_dataset(name, split, root=None, **kw)`` returns a :class:`~ltcutils.datasets.base.GroupDataset`
for any name in :data:`DATASETS`. Real datasets are looked up in ``root`` (the dataset's own
folder) or, when ``root`` is None, in ``$LTC_DATA_DIR/<folder>``, where ``<folder>`` is the name
the published archive unpacks to (see :data:`FOLDERS` and ``data/README.md``); here
``$LTC_DATA_DIR/waterbird_complete95_forest2water2``::

    >>> import ltcutils as ltc                                           # doctest: +SKIP
    >>> ds = ltc.datasets.registry.load_dataset("waterbirds", "test")   # doctest: +SKIP
    >>> ds.group_counts()                                               # doctest: +SKIP
    {'landbird on land': 2255, 'landbird on water': 2255, 'waterbird on land': 642, 'waterbird on water': 642}

The synthetic benchmark needs no files: ``load_dataset("synthetic", "test", n_per_group=50)``.

Images are read lazily (only when ``dataset.image(i)`` is called), with PIL, and converted to
RGB. A missing or unreadable image raises :class:`DatasetError` naming the file. Loaders take
``skip_bad=True`` to drop files that do not exist at construction (with a warning giving the
count); files that exist but cannot be decoded are only found when read (``ltc.store.capture``
has its own ``skip_bad`` for those).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from .base import DatasetError, GroupDataset

__all__ = ["DATASETS", "FOLDERS", "DATA_ENV", "load_dataset", "dataset_root", "describe", "default_prompt_bank", "conflicting_by_correlation",
           "conflicting_groups_from_meta"]

log = logging.getLogger(__name__)

#: Environment variable naming the folder that holds the real datasets' folders.
DATA_ENV = "LTC_DATA_DIR"

#: Every dataset name :func:`load_dataset` accepts.
DATASETS: tuple[str, ...] = ("synthetic", "waterbirds", "celeba", "counteranimal", "genderbias", "fairface")

#: Folder name under ``$LTC_DATA_DIR`` for each real dataset.
FOLDERS: dict[str, str] = {
    "waterbirds": "waterbird_complete95_forest2water2",
    "celeba": "celeba",
    "counteranimal": "counteranimal",
    "genderbias": "xl_generate_base",
    "fairface": "fairface",
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None, **kw: Any) -> GroupDataset:
    """Load one split of a benchmark by name.

    Args:
        name: one of :data:`DATASETS`.
        split: the split name (each loader lists its own: e.g. Waterbirds "train"/"val"/"test",
            CounterAnimal "common"/"counter", GenderBias "val"/"test").
        root: the dataset's own folder; default ``$LTC_DATA_DIR/<FOLDERS[name]>``. Must be None
            for "synthetic" (it is generated, not read).
        **kw: passed to the loader (``load_<name>`` in ``ltcutils.datasets.<name>``; for
            "synthetic", ``ltcutils.datasets.synthetic.make_split``).

    Returns:
        the split as a :class:`GroupDataset`.

    Raises:
        DatasetError: unknown name, missing or malformed data (see each loader).
    """
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {list(DATASETS)}")
    if key == "synthetic":
        if root is not None:
            raise DatasetError("the synthetic benchmark is generated in memory and takes no root; drop root=...")
        from .synthetic import make_split

        return make_split(split, **kw)
    module = importlib.import_module(f".{key}", __package__)
    return getattr(module, f"load_{key}")(split=split, root=root, **kw)


def default_prompt_bank(name: str, **loader_options: Any):
    """The prompt bank a dataset loaded with ``loader_options`` is classified with.

    A loader module may define ``prompt_bank(**loader_options)`` (CelebA: a bank for the chosen
    attribute pair); otherwise this is the shipped ``data/prompts/<name>.yaml``.
    """
    from ..text import load_prompt_bank

    key = str(name).strip().lower()
    make = getattr(importlib.import_module(f".{key}", __package__), "prompt_bank", None) if key in DATASETS else None
    return make(**loader_options) if callable(make) else load_prompt_bank(key)


def describe(name: str) -> dict[str, Any]:
    """Folder name, source, expected layout and splits of a real dataset (for docs and notebooks)."""
    key = str(name).strip().lower()
    if key not in FOLDERS:
        raise DatasetError(f"no on-disk layout for {name!r}; real datasets: {sorted(FOLDERS)}")
    m = importlib.import_module(f".{key}", __package__)
    return {"name": key, "folder": FOLDERS[key], "source": m.SOURCE, "layout": m.LAYOUT, "splits": list(m.SPLITS)}


# ----------------------------------------------------------------------------------------------
# helpers shared by the loaders (not part of the public API)


def _where_to_get(dataset: str, layout: str, source: str) -> str:
    return (f"Expected layout:\n{layout.rstrip()}\nGet the data from: {source} (see data/README.md). "
            f"Pass root=<the dataset folder>, or set {DATA_ENV} to the folder that holds "
            f"{FOLDERS.get(dataset, dataset)!r}.")


def dataset_root(dataset: str, root: str | os.PathLike | None, layout: str, source: str) -> Path:
    """The dataset folder: ``root`` or ``$LTC_DATA_DIR/<folder>``; it must exist.

    Raises:
        DatasetError: neither given, or the folder does not exist (the message shows the path
            tried, the expected layout and where to get the data).
    """
    folder = FOLDERS.get(dataset, dataset)
    if root is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise DatasetError(
                f"{dataset}: no root given and {DATA_ENV} is not set, so there is nowhere to look for "
                f"the {folder!r} folder. {_where_to_get(dataset, layout, source)}"
            )
        path, how = Path(env).expanduser() / folder, f" ({DATA_ENV}={env} + {folder!r})"
    else:
        path, how = Path(root).expanduser(), ""
    if not path.is_dir():
        raise DatasetError(f"{dataset}: dataset folder {path}{how} does not exist. {_where_to_get(dataset, layout, source)}")
    return path


def require_file(dataset: str, path: Path, layout: str, source: str) -> Path:
    """``path`` if it is a file, else a DatasetError with the layout and the source."""
    if not path.is_file():
        raise DatasetError(f"{dataset}: metadata file {path} is missing. {_where_to_get(dataset, layout, source)}")
    return path


def require_dir(dataset: str, path: Path, layout: str, source: str) -> Path:
    """``path`` if it is a folder, else a DatasetError with the layout and the source."""
    if not path.is_dir():
        raise DatasetError(f"{dataset}: image folder {path} is missing. {_where_to_get(dataset, layout, source)}")
    return path


def check_split(dataset: str, split: str, valid: Sequence[str], aliases: dict[str, str] | None = None) -> str:
    """The canonical split name, or a DatasetError listing the valid ones."""
    s = str(split).strip().lower()
    s = (aliases or {}).get(s, s)
    if s not in valid:
        raise DatasetError(f"{dataset}: unknown split {split!r}; valid splits: {list(valid)}")
    return s


def meta_error(path: Path, line: int, column: str | None, message: str) -> DatasetError:
    """A DatasetError pointing at ``path``, 1-based ``line`` and ``column``."""
    col = f", column {column!r}" if column is not None else ""
    return DatasetError(f"{path}: line {line}{col}: {message}")


def inside_root(path: Path, line: int, column: str | None, value: str) -> str:
    """``value`` (an image path from a metadata file) if it stays inside the dataset folder.

    The check is on the text (``..`` and absolute paths), so a dataset folder that links its
    images in from elsewhere still works.

    Raises:
        DatasetError: ``value`` is absolute or climbs out of the folder (names the file, line, value).
    """
    norm = os.path.normpath(value)
    if os.path.isabs(value) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise meta_error(path, line, column, f"{value!r} points outside the dataset folder; image paths must be "
                                             "relative to it (fix or remove the row)")
    return value


@contextlib.contextmanager
def open_csv(
    path: Path, columns: Sequence[str], expected: str
) -> Iterator[tuple[dict[str, int], Iterator[tuple[int, list[str]]]]]:
    """Open a metadata CSV whose header must hold ``columns``; yield ``(col, rows)``.

    ``col`` maps every header name (stripped) to its field index. ``rows`` streams the data
    rows as ``(1-based line, fields)``, skipping blank lines; a row whose field count differs
    from the header's raises as it is reached, so errors come in file order.

    Args:
        path: the CSV file.
        columns: the columns the header must contain.
        expected: how to describe the expected header in the error message (e.g.
            ``"columns ['file', 'age']"``).

    Raises:
        DatasetError: empty file, header without ``columns``, a row with the wrong field count
            (file, 1-based line).
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise meta_error(path, 1, None, f"the file is empty; expected a header with columns {list(columns)}")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise meta_error(path, 1, None, f"header lacks column(s) {missing}; expected {expected}, found {header}")
        col = {c: header.index(c) for c in header}

        def rows() -> Iterator[tuple[int, list[str]]]:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise meta_error(path, line, None, f"expected {len(header)} comma-separated fields, got {len(row)}")
                yield line, row

        yield col, rows()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def list_subdirs(folder: Path) -> list[Path]:
    """Non-hidden sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_rgb(path: Path, dataset: str) -> Image.Image:
    """Read an image file as RGB, or raise DatasetError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise DatasetError(f"{dataset}: image file {path} does not exist (was the archive fully extracted?); "
                           "load with skip_bad=True to drop missing files") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise DatasetError(f"{dataset}: cannot read image file {path}: {exc}. Re-download or delete it "
                           "(with skip_bad=True a deleted file is dropped)") from exc


class _ImageLoader:
    """``i -> PIL RGB image`` over a fixed list of paths (lazy)."""

    def __init__(self, paths: list[Path], dataset: str):
        self.paths, self.dataset = paths, dataset

    def __call__(self, i: int) -> Image.Image:
        return open_rgb(self.paths[int(i)], self.dataset)


def build(
    name: str,
    split: str,
    root: Path,
    rel_paths: list[str],
    *,
    y: np.ndarray,
    spurious: np.ndarray,
    group: np.ndarray,
    class_names: list[str],
    spurious_names: list[str],
    group_names: list[str],
    candidates: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
    info: dict[str, Any] | None = None,
    skip_bad: bool = False,
    expected: int | None = None,
    conflicting_groups: Sequence[int] | None = None,
) -> GroupDataset:
    """Assemble a GroupDataset over ``root / rel_paths``, dropping missing files if ``skip_bad``.

    ``conflicting_groups`` is the loader's own statement of its bias-conflicting groups (see
    :attr:`GroupDataset.conflicting_groups`).
    """
    extra = dict(extra or {})
    info = dict(info or {})
    paths = [root / r for r in rel_paths]
    if skip_bad and paths:
        ok = np.fromiter((p.is_file() for p in paths), dtype=bool, count=len(paths))
        n_bad = int((~ok).sum())
        info["dropped_missing"] = n_bad
        if n_bad:
            first = [rel_paths[i] for i in np.flatnonzero(~ok)[:3]]
            warnings.warn(f"{name}/{split}: dropped {n_bad} of {len(paths)} images whose files are missing "
                          f"under {root} (e.g. {first})", stacklevel=3)
            keep = np.flatnonzero(ok)
            paths = [paths[i] for i in keep]
            rel_paths = [rel_paths[i] for i in keep]
            y, spurious, group = np.asarray(y)[keep], np.asarray(spurious)[keep], np.asarray(group)[keep]
            candidates = None if candidates is None else np.asarray(candidates)[keep]
            extra = {k: np.asarray(v)[keep] for k, v in extra.items()}
    if not paths:
        raise DatasetError(f"{name}/{split}: no images found under {root}; check the split and the folder layout")
    if expected is not None and not skip_bad and len(paths) != expected:
        log.warning("%s/%s: %d images, the published release has %d; is the download complete?",
                    name, split, len(paths), expected)
    return GroupDataset(
        name=name, split=split, class_names=list(class_names), spurious_names=list(spurious_names),
        y=y, spurious=spurious, group=group, group_names=list(group_names),
        load_image=_ImageLoader(paths, name), ids=list(rel_paths), candidates=candidates,
        extra=extra, info=info, conflicting_groups=None if conflicting_groups is None else list(conflicting_groups),
    )


def conflicting_by_correlation(y: np.ndarray, spurious: np.ndarray) -> list[int] | None:
    """Bias-conflicting groups of two binary labels with ``group = 2 * y + spurious``, from their correlation.

    The spurious attribute "points to" the class it co-occurs with more often than chance; a
    group is bias-conflicting when it points to the other class. With ``n_ys`` the count of
    ``(y, spurious)``: ``n_11 n_00 > n_10 n_01`` (positive association) gives ``[1, 2]``
    (Waterbirds' layout), a negative one gives ``[0, 3]`` (CelebA blond hair vs male: blond
    goes with female, so non-blond women and blond men conflict), no association gives None.

    Example:

        >>> conflicting_by_correlation(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 0]))
        [1, 2]
        >>> conflicting_by_correlation(np.array([0, 0, 1, 1, 1]), np.array([1, 1, 0, 0, 1]))
        [0, 3]

    Raises:
        DatasetError: labels that are not 0/1 or of different lengths.
    """
    y, s = np.asarray(y, dtype=np.int64), np.asarray(spurious, dtype=np.int64)
    if y.shape != s.shape or y.ndim != 1 or not (np.isin(y, (0, 1)).all() and np.isin(s, (0, 1)).all()):
        raise DatasetError("conflicting_by_correlation needs two [n] arrays of 0/1 labels of equal length")
    n = np.bincount(2 * y + s, minlength=4).astype(np.int64)
    assoc = int(n[3]) * int(n[0]) - int(n[2]) * int(n[1])
    if assoc == 0:
        return None
    return [1, 2] if assoc > 0 else [0, 3]


def conflicting_groups_from_meta(meta: dict[str, Any]) -> list[int] | None:
    """The conflicting groups of the dataset a store was made from, recomputed from its definition.

    For stores written before their meta recorded ``conflicting_groups``: the split is loaded
    again through its loader (the root and the loader options recorded in
    ``meta["dataset_info"]``) and its own ``conflicting_groups`` returned.

    Raises:
        DatasetError: the dataset can no longer be loaded (the message names the store's
            dataset and says how to proceed).
    """
    import inspect

    name, split = meta.get("dataset"), meta.get("split")
    info = dict(meta.get("dataset_info") or {})
    try:
        if name == "synthetic":
            from .synthetic import make_split as loader
            root = None
        else:
            loader = getattr(importlib.import_module(f".{name}", __package__), f"load_{name}")
            root = info.get("root")
        params = set(inspect.signature(loader).parameters) - {"split", "root", "skip_bad"}
        kw = {k: v for k, v in info.items() if k in params}
        ds = load_dataset(str(name), str(split), root=root, **kw)
    except (DatasetError, ImportError, AttributeError, TypeError, OSError) as exc:
        raise DatasetError(
            f"this store of {name}/{split} was written before stores recorded their bias-conflicting groups, and "
            f"the dataset cannot be loaded to recompute them ({exc}); pass conflicting=[...] explicitly, or "
            "recapture the store (rebuild=True)") from exc
    return ds.conflicting_groups
