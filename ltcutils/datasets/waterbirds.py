"""Waterbirds (Sagawa et al. 2020): CUB birds pasted on Places backgrounds.

Label conventions (used everywhere in the workbook):

* ``y``: 0 = landbird, 1 = waterbird (the metadata's ``y`` column).
* ``spurious``: the background, 0 = land, 1 = water (the metadata's ``place`` column).
* ``group = 2 * y + spurious``: 0 landbird on land, 1 landbird on water, 2 waterbird on land,
  3 waterbird on water. The bias-conflicting groups (G_N) are {1, 2}.
* ``extra["place_category"]``: index of the Places category the background came from, read
  from ``place_filename`` (``/b/bamboo_forest/...`` -> ``bamboo_forest``); the names are
  ``info["place_category_names"]`` (first the four of the standard release, in the order
  bamboo_forest, forest/broadleaf, ocean, lake/natural; any other category after them).

Class prompts live in the prompt bank ``data/prompts/waterbirds.yaml``
("a photo of a landbird." / "a photo of a waterbird."); change them there or pass your own
bank to :func:`ltcutils.text.load_prompt_bank`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import DatasetError, GroupDataset
from .registry import build, check_split, dataset_root, inside_root, meta_error, open_csv, require_file

__all__ = ["load_waterbirds", "CLASS_NAMES", "SPURIOUS_NAMES", "GROUP_NAMES", "PLACE_CATEGORIES",
           "EXPECTED_SIZES", "EXPECTED_GROUP_SIZES"]

SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
CLASS_NAMES = ["landbird", "waterbird"]
SPURIOUS_NAMES = ["land", "water"]
GROUP_NAMES = ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]
#: bias-conflicting groups: landbirds on water, waterbirds on land
CONFLICTING_GROUPS = [1, 2]
PLACE_CATEGORIES = ("bamboo_forest", "forest/broadleaf", "ocean", "lake/natural")
COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
#: Sizes of the standard ``waterbird_complete95_forest2water2`` release.
EXPECTED_SIZES = {"train": 4795, "val": 1199, "test": 5794}
EXPECTED_GROUP_SIZES = {"train": (3498, 184, 56, 1057), "val": (467, 466, 133, 133), "test": (2255, 2255, 642, 642)}

SOURCE = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz (Sagawa et al., GroupDRO)"
LAYOUT = """\
  waterbird_complete95_forest2water2/
    metadata.csv            columns img_id,img_filename,y,split,place,place_filename
    001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
    ...                     (200 CUB class folders; img_filename is relative to this folder)
"""


def _place_category(raw: str) -> str:
    """``/b/bamboo_forest/00000001.jpg`` -> ``bamboo_forest``; ``/l/lake/natural/x.jpg`` -> ``lake/natural``."""
    parts = [p for p in raw.strip().split("/") if p]
    parts = parts[:-1]  # drop the file name
    if parts and len(parts[0]) == 1:  # the Places one-letter index folder
        parts = parts[1:]
    return "/".join(parts) or "unknown"


def _read_metadata(path: Path) -> list[tuple[int, str, int, int, int, str]]:
    """Rows (line, img_filename, y, split, place, place_category) of ``metadata.csv``, validated."""
    rows = []
    allowed = {"y": (0, 1, "0 (landbird) or 1 (waterbird)"), "split": (0, 2, "0 (train), 1 (val) or 2 (test)"),
               "place": (0, 1, "0 (land) or 1 (water)")}
    with open_csv(path, COLUMNS, f"columns {list(COLUMNS)}") as (col, reader):
        for line, row in reader:
            vals = {}
            for name, (lo, hi, what) in allowed.items():
                raw = row[col[name]].strip()
                try:
                    v = int(raw)
                except ValueError:
                    raise meta_error(path, line, name, f"expected an integer {what}, got {raw!r}") from None
                if not lo <= v <= hi:
                    raise meta_error(path, line, name, f"expected {what}, got {v}")
                vals[name] = v
            fname = row[col["img_filename"]].strip()
            if not fname:
                raise meta_error(path, line, "img_filename", "expected an image path relative to the dataset folder, got ''")
            inside_root(path, line, "img_filename", fname)
            rows.append((line, fname, vals["y"], vals["split"], vals["place"],
                         _place_category(row[col["place_filename"]])))
    return rows


def load_waterbirds(
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    class_names: list[str] | None = None,
    skip_bad: bool = False,
) -> GroupDataset:
    """Load one split of Waterbirds from its published folder.

    Args:
        split: "train", "val" (alias "valid") or "test".
        root: the ``waterbird_complete95_forest2water2`` folder (default
            ``$LTC_DATA_DIR/waterbird_complete95_forest2water2``).
        class_names: names for y = 0, 1 (default ``["landbird", "waterbird"]``, as in the
            prompt bank).
        skip_bad: drop images whose files are missing (with a warning giving the count).

    Returns:
        a GroupDataset with ``y``, ``spurious`` (place), ``group = 2 y + place``,
        ``extra["place_category"]`` and ``info["place_category_names"]``.

    Raises:
        DatasetError: missing folder or ``metadata.csv``, malformed metadata (file, line, column),
            unknown split.
    """
    split = check_split("waterbirds", split, SPLITS, {"valid": "val", "validation": "val"})
    root_p = dataset_root("waterbirds", root, LAYOUT, SOURCE)
    meta = require_file("waterbirds", root_p / "metadata.csv", LAYOUT, SOURCE)
    rows = _read_metadata(meta)
    seen = sorted({r[5] for r in rows} - set(PLACE_CATEGORIES))
    categories = list(PLACE_CATEGORIES) + seen
    cat_index = {c: i for i, c in enumerate(categories)}
    mine = [r for r in rows if r[3] == _SPLIT_CODE[split]]
    y = np.array([r[2] for r in mine], dtype=np.int64)
    place = np.array([r[4] for r in mine], dtype=np.int64)
    names = list(class_names) if class_names is not None else list(CLASS_NAMES)
    if len(names) != 2:
        raise DatasetError(f"waterbirds: class_names must name the 2 classes (y=0, y=1), got {names}")
    return build(
        "waterbirds", split, root_p, [r[1] for r in mine],
        y=y, spurious=place, group=2 * y + place,
        class_names=names, spurious_names=SPURIOUS_NAMES,
        group_names=[f"{names[g // 2]} on {SPURIOUS_NAMES[g % 2]}" for g in range(4)],
        extra={"place_category": np.array([cat_index[r[5]] for r in mine], dtype=np.int64)},
        info={"root": str(root_p), "source": "waterbird_complete95_forest2water2", "metadata": "metadata.csv",
              "place_category_names": categories},
        skip_bad=skip_bad, expected=EXPECTED_SIZES[split], conflicting_groups=CONFLICTING_GROUPS,
    )
