"""CelebA (Liu et al. 2015), aligned-and-cropped release, as a two-attribute group benchmark.

Label conventions:

* ``y = 1`` where the *target* attribute is +1 (default ``Blond_Hair``), else 0.
* ``spurious = 1`` where the *spurious* attribute is +1 (default ``Male``), else 0. With the
  default this is the workbook's gender convention: 0 female, 1 male.
* ``group = 2 * y + spurious``; with the defaults 0 not blond/female, 1 not blond/male,
  2 blond/female, 3 blond/male. The rarest group is blond/male.
* ``conflicting_groups`` follow the chosen pair: the groups where the spurious attribute
  points to the other class, from the sign of the two attributes' association over the whole
  annotation file (:func:`~ltcutils.datasets.registry.conflicting_by_correlation`). With the
  defaults blond hair goes with female, so they are ``[0, 3]`` (non-blond women, blond men);
  for ``target="Smiling"`` they are whatever that pair's association says.

Any two of the 40 attribute names can be chosen (``target=``, ``spurious=``); other attributes
can be carried along in ``extra`` (``extra_attributes=``, as 0/1 arrays).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import DatasetError, GroupDataset
from .registry import (build, check_split, conflicting_by_correlation, dataset_root, inside_root, meta_error,
                       require_dir, require_file)

__all__ = ["load_celeba", "prompt_bank", "ATTRIBUTES", "EXPECTED_SIZES", "EXPECTED_GROUP_SIZES"]

SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
#: The 40 attribute names of ``list_attr_celeba.txt``, in file order.
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
_DEFAULT_NAMES = {"Blond_Hair": ["not blond", "blond"], "Male": ["female", "male"]}
EXPECTED_SIZES = {"train": 162770, "val": 19867, "test": 19962}
#: Blond_Hair x Male group sizes of the standard partition (groups 0..3 as above).
EXPECTED_GROUP_SIZES = {"train": (71629, 66874, 22880, 1387), "val": (8535, 8276, 2874, 182),
                        "test": (9767, 7535, 2480, 180)}

SOURCE = ("https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Img/img_align_celeba.zip, "
          "Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt)")
LAYOUT = """\
  celeba/
    list_attr_celeba.txt       line 1: image count; line 2: the 40 attribute names;
                               then "000001.jpg -1  1 ..." (40 values of +1/-1, whitespace separated)
    list_eval_partition.txt    "000001.jpg 0" (0 train, 1 val, 2 test)
    img_align_celeba/000001.jpg ...
"""


def _names_for(attr: str, given: Sequence[str] | None, what: str) -> list[str]:
    if given is not None:
        names = [str(n) for n in given]
        if len(names) != 2:
            raise DatasetError(f"celeba: {what} must give 2 names (attribute -1, +1), got {names}")
        return names
    if attr in _DEFAULT_NAMES:
        return list(_DEFAULT_NAMES[attr])
    pretty = attr.replace("_", " ").lower()
    return [f"not {pretty}", pretty]


def _check_attr(attr: str, names: Sequence[str], path: Path, what: str) -> int:
    if attr not in names:
        raise DatasetError(f"celeba: unknown {what} attribute {attr!r} (in {path}); valid attributes: {list(names)}")
    return list(names).index(attr)


def _read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, file names, values ``[n, 40]`` as +1/-1 int8) of ``list_attr_celeba.txt``."""
    with open(path) as f:
        lines = f.read().splitlines()
    if len(lines) < 2:
        raise meta_error(path, len(lines) + 1, None, "expected an image count on line 1 and the 40 attribute names on line 2")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise meta_error(path, 1, None, f"expected the number of images (an integer), got {lines[0].strip()!r}") from None
    names = lines[1].split()
    if len(names) != len(ATTRIBUTES):
        raise meta_error(path, 2, None, f"expected {len(ATTRIBUTES)} attribute names, got {len(names)}: {names[:5]}...")
    width = len(names) + 1
    ok = {"n", "p"}
    files, codes = [], []
    for i, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != width:
            raise meta_error(path, i, None, f"expected a file name and {len(names)} values of +1/-1, got {len(parts)} fields")
        # "1" -> "p", "-1" -> "n": a valid row becomes exactly one letter per attribute
        code = "".join(parts[1:]).replace("-1", "n").replace("1", "p")
        if len(code) != len(names) or not set(code) <= ok:
            c = next(j for j, v in enumerate(parts[1:]) if v not in ("1", "-1"))
            raise meta_error(path, i, names[c], f"expected 1 or -1, got {parts[1 + c]!r}")
        files.append(inside_root(path, i, None, parts[0]))
        codes.append(code)
    if len(files) != count:
        raise meta_error(path, 1, None, f"the header says {count} images but the file lists {len(files)}; "
                         "the file is truncated or the count is wrong (re-download it)")
    buf = np.frombuffer("".join(codes).encode("ascii"), dtype=np.uint8).reshape(len(files), len(names))
    return names, files, np.where(buf == ord("p"), 1, -1).astype(np.int8)


def _read_partition(path: Path) -> dict[str, int]:
    out = {}
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise meta_error(path, i, None, f"expected '<file name> <0|1|2>', got {line.strip()!r}")
            if parts[1] not in ("0", "1", "2"):
                raise meta_error(path, i, "partition", f"expected 0 (train), 1 (val) or 2 (test), got {parts[1]!r}")
            out[parts[0]] = int(parts[1])
    return out


def load_celeba(
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    target: str = "Blond_Hair",
    spurious: str = "Male",
    class_names: Sequence[str] | None = None,
    spurious_names: Sequence[str] | None = None,
    extra_attributes: Sequence[str] = (),
    skip_bad: bool = False,
) -> GroupDataset:
    """Load one split of CelebA with a target and a spurious attribute chosen by name.

    Args:
        split: "train", "val" (alias "valid") or "test" (from ``list_eval_partition.txt``).
        root: the ``celeba`` folder (default ``$LTC_DATA_DIR/celeba``).
        target: attribute giving ``y`` (default "Blond_Hair").
        spurious: attribute giving ``spurious`` (default "Male").
        class_names: names of y = 0, 1 (default ["not blond", "blond"] for Blond_Hair).
        spurious_names: names of spurious = 0, 1 (default ["female", "male"] for Male).
        extra_attributes: further attribute names carried as 0/1 arrays in ``extra``.
        skip_bad: drop images whose files are missing (with a warning giving the count).

    Raises:
        DatasetError: missing folder or files, malformed annotation (file, line, column),
            unknown split, unknown attribute name (the message lists the 40 valid ones).
    """
    split = check_split("celeba", split, SPLITS, {"valid": "val", "validation": "val"})
    root_p = dataset_root("celeba", root, LAYOUT, SOURCE)
    attr_p = require_file("celeba", root_p / "list_attr_celeba.txt", LAYOUT, SOURCE)
    part_p = require_file("celeba", root_p / "list_eval_partition.txt", LAYOUT, SOURCE)
    require_dir("celeba", root_p / "img_align_celeba", LAYOUT, SOURCE)
    names, files, vals = _read_attributes(attr_p)
    t = _check_attr(target, names, attr_p, "target")
    s = _check_attr(spurious, names, attr_p, "spurious")
    if t == s:
        raise DatasetError(f"celeba: target and spurious are the same attribute {target!r}; choose two different ones")
    extra_idx = {a: _check_attr(a, names, attr_p, "extra") for a in extra_attributes}
    part = _read_partition(part_p)
    missing = [f for f in files if f not in part]
    if missing:
        raise DatasetError(f"celeba: {len(missing)} images of {attr_p.name} are not in {part_p} (e.g. {missing[:3]}); "
                           "the two files come from different releases")
    code = _SPLIT_CODE[split]
    rows = np.array([i for i, f in enumerate(files) if part[f] == code], dtype=np.int64)
    y = (vals[rows, t] == 1).astype(np.int64)
    sp = (vals[rows, s] == 1).astype(np.int64)
    cn = _names_for(target, class_names, "class_names")
    sn = _names_for(spurious, spurious_names, "spurious_names")
    return build(
        "celeba", split, root_p, [f"img_align_celeba/{files[i]}" for i in rows],
        y=y, spurious=sp, group=2 * y + sp, class_names=cn, spurious_names=sn,
        group_names=[f"{cn[g // 2]}/{sn[g % 2]}" for g in range(4)],
        extra={a: (vals[rows, j] == 1).astype(np.int64) for a, j in extra_idx.items()},
        info={"root": str(root_p), "source": "celeba img_align_celeba", "target": target, "spurious": spurious},
        skip_bad=skip_bad, expected=EXPECTED_SIZES[split],
        conflicting_groups=conflicting_by_correlation((vals[:, t] == 1).astype(np.int64), (vals[:, s] == 1).astype(np.int64)),
    )


def prompt_bank(target: str = "Blond_Hair", spurious: str = "Male", class_names: Sequence[str] | None = None,
                spurious_names: Sequence[str] | None = None, **loader_options):
    """The prompt bank for a CelebA attribute pair: the shipped one for the defaults, else one built from the names.

    For ``Blond_Hair`` vs ``Male`` with the default names this is ``data/prompts/celeba.yaml``.
    For any other pair the classes and spurious values are the loader's names (e.g. "not
    eyeglasses" / "eyeglasses"), prompted as "a photo of a person, {name}."; the concept pairs
    are the two class prompts (injection, RoboShot's accept step) and the two spurious prompts
    (RoboShot's reject step, Ortho-Cali's spurious prompts), with Ortho-Cali candidates for
    every class x spurious value. A bank written for the attributes says more; pass its path as
    ``prompt_bank`` instead.

    Args:
        target, spurious, class_names, spurious_names: as :func:`load_celeba`.
        loader_options: the loader's other options (ignored here).
    Returns:
        a :class:`~ltcutils.text.PromptBank` whose class names match the loaded split's.
    Raises:
        DatasetError: an unknown attribute name, or target == spurious.
    """
    from ..text import PromptBank, load_prompt_bank

    for what, attr in (("target", target), ("spurious", spurious)):
        if attr not in ATTRIBUTES:
            raise DatasetError(f"celeba: unknown {what} attribute {attr!r}; valid attributes: {list(ATTRIBUTES)}")
    if target == spurious:
        raise DatasetError(f"celeba: target and spurious are the same attribute {target!r}; choose two different ones")
    cn = _names_for(target, class_names, "class_names")
    sn = _names_for(spurious, spurious_names, "spurious_names")
    if (target, spurious) == ("Blond_Hair", "Male") and cn == _DEFAULT_NAMES["Blond_Hair"] \
            and sn == _DEFAULT_NAMES["Male"]:
        return load_prompt_bank("celeba")
    say = lambda name: f"a photo of a person, {name}."  # noqa: E731
    return PromptBank.from_dict({
        "dataset": "celeba", "class_names": cn, "class_prompts": {c: [say(c)] for c in cn},
        "spurious_names": sn, "spurious_prompts": {v: [say(v)] for v in sn},
        "injection": [[say(cn[1]), say(cn[0])]],
        "roboshot": {"reject": [[say(sn[1]), say(sn[0])]], "accept": [[say(cn[1]), say(cn[0])]]},
        "ortho_cali": {"spurious_prompts": [say(v) for v in sn],
                       "candidate_prompts": {c: [f"a photo of a person, {c}, {v}." for v in sn] for c in cn}},
    }, source=f"ltcutils.datasets.celeba.prompt_bank(target={target!r}, spurious={spurious!r})")
