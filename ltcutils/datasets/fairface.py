"""FairFace (Kärkkäinen & Joo 2021), the padding-1.25 image release, as a retrieval-bias benchmark.

FairFace has no class to predict here: the workbook ranks its faces by their similarity to
ten concept prompts ("a photo of a good person", "... criminal person", ...) and measures how
far the top-k of each ranking departs from gender parity (MaxSkew@k).

Label conventions:

* ``spurious``: gender, **0 = female, 1 = male** (the workbook's convention, as GenderBias and
  CelebA; the reference LTC code used the opposite one for FairFace).
* ``group = spurious`` (groups "female", "male").
* ``y``: a placeholder 0 for every image (``info["has_class_label"] = False``); ``class_names``
  are the ten :data:`CONCEPTS`, the columns to rank by (prompts in
  ``data/prompts/fairface.yaml``).
* ``extra["age"]``: index into :data:`AGE_BINS` (9 bins); ``extra["race"]``: index into
  :data:`RACES` (7); ``extra["service_test"]``: 1 where the CSV's ``service_test`` is True
  (only when that column exists).
* ``conflicting_groups`` is None: with no class to predict there are no bias-conflicting
  groups, so heads cannot be located on FairFace. Locate them on a gender benchmark with a class
  (GenderBias, or CelebA) and reuse that heads file here (notebook 02's ``heads_from``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import GroupDataset
from .registry import build, check_split, dataset_root, inside_root, meta_error, open_csv, require_file

__all__ = ["load_fairface", "CONCEPTS", "AGE_BINS", "RACES", "GENDERS", "EXPECTED_SIZES"]

SPLITS = ("train", "val")
#: no bias-conflicting groups without a class label (see the module docstring)
CONFLICTING_GROUPS = None
#: The ten concepts of the retrieval-bias probe, in the order of the prompt bank.
CONCEPTS = ["good", "evil", "smart", "dumb", "attractive", "unattractive", "lawful", "criminal", "friendly",
            "unfriendly"]
AGE_BINS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]
RACES = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
#: CSV gender value -> spurious label (0 female, 1 male).
GENDERS = {"Female": 0, "Male": 1}
COLUMNS = ("file", "age", "gender", "race")
EXPECTED_SIZES = {"train": 86744, "val": 10954}

SOURCE = ("https://github.com/joojs/fairface (images with padding=1.25: fairface-img-margin125-trainval.zip; "
          "labels: fairface_label_train.csv, fairface_label_val.csv)")
LAYOUT = """\
  fairface/
    fairface_label_train.csv    columns file,age,gender,race,service_test
    fairface_label_val.csv
    train/1.jpg ...             "file" is relative to this folder (e.g. val/1.jpg)
    val/1.jpg ...
"""


def _read_labels(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(files, gender, age, race, service_test or None) of a ``fairface_label_*.csv``, validated."""
    files, gender, age, race, service = [], [], [], [], []
    maps = {"gender": GENDERS, "age": {a: i for i, a in enumerate(AGE_BINS)},
            "race": {r: i for i, r in enumerate(RACES)}}
    expected = f"columns {list(COLUMNS)} (and optionally service_test)"
    with open_csv(path, COLUMNS, expected) as (col, reader):
        has_service = "service_test" in col
        for line, row in reader:
            vals = {}
            for name, m in maps.items():
                raw = row[col[name]].strip()
                if raw not in m:
                    raise meta_error(path, line, name, f"expected one of {list(m)}, got {raw!r}")
                vals[name] = m[raw]
            fname = row[col["file"]].strip()
            if not fname:
                raise meta_error(path, line, "file", "expected an image path relative to the dataset folder, got ''")
            inside_root(path, line, "file", fname)
            if has_service:
                raw = row[col["service_test"]].strip()
                if raw not in ("True", "False"):
                    raise meta_error(path, line, "service_test", f"expected True or False, got {raw!r}")
                service.append(raw == "True")
            files.append(fname)
            gender.append(vals["gender"])
            age.append(vals["age"])
            race.append(vals["race"])
    as_i = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    return files, as_i(gender), as_i(age), as_i(race), (as_i(service) if has_service else None)


def load_fairface(
    split: str = "val",
    root: str | os.PathLike | None = None,
    *,
    skip_bad: bool = False,
) -> GroupDataset:
    """Load the train or val faces of FairFace (padding 1.25).

    Args:
        split: "train" or "val" (alias "valid"); the reference evaluates on "val".
        root: the folder holding the label CSVs and ``train/``, ``val/`` (default
            ``$LTC_DATA_DIR/fairface``).
        skip_bad: drop images whose files are missing (with a warning giving the count).

    Returns:
        a GroupDataset with ``spurious`` = gender (0 female, 1 male), ``group = spurious``,
        ``y`` = 0 placeholders, ``class_names`` = :data:`CONCEPTS`, ``extra`` age / race
        (/ service_test).

    Raises:
        DatasetError: missing folder or CSV, malformed CSV (file, line, column), unknown split.
    """
    split = check_split("fairface", split, SPLITS, {"valid": "val", "validation": "val"})
    root_p = dataset_root("fairface", root, LAYOUT, SOURCE)
    csv_p = require_file("fairface", root_p / f"fairface_label_{split}.csv", LAYOUT, SOURCE)
    files, gender, age, race, service = _read_labels(csv_p)
    extra = {"age": age, "race": race}
    if service is not None:
        extra["service_test"] = service
    return build(
        "fairface", split, root_p, files,
        y=np.zeros(len(files), dtype=np.int64), spurious=gender, group=gender.copy(),
        class_names=CONCEPTS, spurious_names=["female", "male"], group_names=["female", "male"],
        extra=extra,
        info={"root": str(root_p), "source": "FairFace padding 1.25", "labels": csv_p.name, "has_class_label": False,
              "age_names": AGE_BINS, "race_names": RACES},
        skip_bad=skip_bad, expected=EXPECTED_SIZES[split],
    )
