"""CounterAnimal (Wang et al. 2024, "A Sober Look at the Robustness of CLIPs to Spurious Features").

About 45 ImageNet animal classes, each photographed on a *common* background (the one the
class usually appears on in web data) and on a *counter* background (an unusual one). Models
that lean on the background lose accuracy from common to counter.

Label conventions:

* ``y``: the ImageNet-1k class index (0..999), read from the class folder name
  ``"<index> <name>"`` (e.g. ``1 goldfish``). ``class_names`` are all 1000 ImageNet names of
  ``data/imagenet_classes.txt`` (index order): images are classified 1000-way.
* ``spurious``: 0 = common background, 1 = counter background.
* ``group = spurious`` (2 groups, "common" and "counter"). Per-class results come from ``y``.
* ``extra["background"]``: index into ``info["background_names"]``, the background word taken
  from the sub-folder name (``common-water`` -> ``water``; ``unknown`` if the name has none).

Sub-folder naming: each class folder holds one sub-folder whose name contains "common" and
one whose name contains "counter" (matched case-insensitively, as the reference LTC code
does). The exact spelling of the published sub-folders could not be verified offline; any
name with those words works (``common``, ``common-water``, ``Counter_grass``, ...).

Splits: "common" (used to locate heads and as the reference split), "counter" (evaluation),
and "all" (both).

Locating: the common split holds no bias-conflicting image, so spurious heads come from another
dataset's heads file (the paper reuses Waterbirds'; notebook 02's ``heads_from``), and salient
heads are located per class on the common split and injected by pseudo-class
(``info["salient_protocol"] = "per_class"``, :mod:`ltcutils.classwise`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..resources import data_path
from .base import DatasetError, GroupDataset
from .registry import build, check_split, dataset_root, list_images, list_subdirs

__all__ = ["load_counteranimal", "imagenet_class_names", "IMAGENET_CLASSES_FILE", "SPURIOUS_NAMES"]

SPLITS = ("common", "counter", "all")
SPURIOUS_NAMES = ["common", "counter"]
#: bias-conflicting groups: the counter backgrounds
CONFLICTING_GROUPS = [1]
#: salient heads located per class and injected by pseudo-class (ltcutils.classwise)
SALIENT_PROTOCOL = "per_class"
IMAGENET_CLASSES_FILE = data_path("imagenet_classes.txt")
_CLASS_DIR = re.compile(r"^(\d+)[ _](.+)$")

SOURCE = "https://counteranimal.github.io/ (CounterAnimal, Wang et al., NeurIPS 2024)"
LAYOUT = """\
  counteranimal/
    1 goldfish/                 one folder per class: "<ImageNet index> <name>"
      common-<background>/*.jpg  a sub-folder whose name contains "common"
      counter-<background>/*.jpg a sub-folder whose name contains "counter"
    ...
"""


def imagenet_class_names(path: str | os.PathLike | None = None) -> list[str]:
    """The 1000 ImageNet class names, one per line in index order (default: data/imagenet_classes.txt).

    Raises:
        DatasetError: the file is missing or does not hold exactly 1000 non-empty lines.
    """
    p = Path(path) if path is not None else IMAGENET_CLASSES_FILE
    if not p.is_file():
        raise DatasetError(f"ImageNet class-name file {p} is missing; it ships as data/imagenet_classes.txt")
    names = p.read_text().splitlines()
    while names and not names[-1].strip():
        names.pop()
    empty = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if len(names) != 1000 or empty:
        raise DatasetError(f"{p}: expected 1000 non-empty lines (one class name each, index order), got "
                           f"{len(names)} lines" + (f", empty at lines {empty[:5]}" if empty else ""))
    return [n.strip() for n in names]


def _background(sub: str) -> str:
    word = re.sub(r"(?i)common|counter", "", sub).strip(" -_.")
    return word.replace("_", " ") or "unknown"


def load_counteranimal(
    split: str = "counter",
    root: str | os.PathLike | None = None,
    *,
    classes_file: str | os.PathLike | None = None,
    skip_bad: bool = False,
) -> GroupDataset:
    """Load the common, counter or all images of CounterAnimal.

    Args:
        split: "common", "counter" or "all".
        root: the dataset folder holding the class folders (default ``$LTC_DATA_DIR/counteranimal``).
        classes_file: the 1000 ImageNet class names (default ``data/imagenet_classes.txt``).
        skip_bad: drop images whose files are missing (with a warning giving the count).

    Returns:
        a GroupDataset with ``y`` = ImageNet index, ``spurious`` = 0 common / 1 counter.

    Raises:
        DatasetError: missing folder, a class folder not named ``"<index> <name>"``, an index
            outside 0..999, a class folder without exactly one "common" and one "counter"
            sub-folder, unknown split.
    """
    split = check_split("counteranimal", split, SPLITS)
    root_p = dataset_root("counteranimal", root, LAYOUT, SOURCE)
    class_names = imagenet_class_names(classes_file)
    class_dirs = list_subdirs(root_p)
    if not class_dirs:
        raise DatasetError(f"counteranimal: {root_p} holds no class folders.\nExpected layout:\n{LAYOUT}Get the data from {SOURCE}")
    rel: list[str] = []
    y: list[int] = []
    sp: list[int] = []
    bg: list[str] = []          # background word of each image
    all_bg: set[str] = set()     # over both kinds, so indices do not depend on the split
    classes: list[int] = []
    for d in class_dirs:
        m = _CLASS_DIR.match(d.name)
        if not m:
            raise DatasetError(f"counteranimal: folder {d} is not named '<ImageNet index> <name>' (e.g. '1 goldfish'); "
                               "move other folders out of the dataset folder")
        idx = int(m.group(1))
        if not 0 <= idx < len(class_names):
            raise DatasetError(f"counteranimal: folder {d} has ImageNet index {idx}, expected 0..{len(class_names) - 1}")
        subs = list_subdirs(d)
        kinds = {}
        for kind in SPURIOUS_NAMES:
            hits = [s for s in subs if kind in s.name.lower()]
            if len(hits) != 1:
                raise DatasetError(f"counteranimal: class folder {d} must hold exactly one sub-folder whose name contains "
                                   f"{kind!r}, found {[s.name for s in hits]} among {[s.name for s in subs]}")
            kinds[kind] = hits[0]
        if kinds["common"] == kinds["counter"]:
            raise DatasetError(f"counteranimal: sub-folder {kinds['common']} names both 'common' and 'counter'")
        classes.append(idx)
        for s_val, kind in enumerate(SPURIOUS_NAMES):
            sub = kinds[kind]
            word = _background(sub.name)
            all_bg.add(word)
            if split != "all" and kind != split:
                continue
            files = list_images(sub)
            rel += [f"{d.name}/{sub.name}/{f.name}" for f in files]
            y += [idx] * len(files)
            sp += [s_val] * len(files)
            bg += [word] * len(files)
    names = sorted(all_bg)
    bg_index = {b: i for i, b in enumerate(names)}
    y_a = np.array(y, dtype=np.int64)
    sp_a = np.array(sp, dtype=np.int64)
    return build(
        "counteranimal", split, root_p, rel,
        y=y_a, spurious=sp_a, group=sp_a.copy(), class_names=class_names,
        spurious_names=SPURIOUS_NAMES, group_names=list(SPURIOUS_NAMES),
        extra={"background": np.array([bg_index[b] for b in bg], dtype=np.int64)},
        info={"root": str(root_p), "source": "CounterAnimal", "classes": sorted(classes),
              "background_names": names, "salient_protocol": SALIENT_PROTOCOL},
        skip_bad=skip_bad, conflicting_groups=CONFLICTING_GROUPS,
    )
