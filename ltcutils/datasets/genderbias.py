"""GenderBias-VL (Xiao et al. 2024), the ``xl_generate_base`` images, as an occupation benchmark.

Each occupation folder holds generated photos of women and of men doing that job. Every image
is classified between two occupations: its true one and a *paired* one, a similar job whose
workforce leans the other way (e.g. a nurse practitioner against a surgeon). A biased model
gets the pair right more often for the stereotypical gender.

Label conventions (the workbook's gender convention, used by CelebA and FairFace as well):

* ``spurious``: the pictured person's gender, **0 = female, 1 = male**.
* ``y``: the global class index of the true occupation in ``class_names``.
* ``candidates[i] = [y_i, paired occupation]`` (global indices): the true class is always
  column 0.
* ``extra["male_dominated"]``: 1 if the true occupation is the male-dominated job of its pairs
  (the ``job_male`` column of the pairing CSV), 0 if female-dominated; ``extra["female_ratio"]``:
  its female share of the workforce in percent (from the CSV).
* ``group = 2 * male_dominated + gender``: 0 female in a female-dominated job, 1 male in a
  female-dominated job, 2 female in a male-dominated job, 3 male in a male-dominated job. As for
  Waterbirds, the bias-conflicting groups are {1, 2}. Per-occupation gaps come from ``y`` and
  ``spurious``.

``class_names`` are the 178 occupation names of the benchmark (:data:`OCCUPATIONS`, sorted
alphabetically; the order of ``data/prompts/genderbias.yaml``). Occupations found on disk or as a
partner in the CSV but not in that list are appended after it (with a warning: the shipped
prompt bank has no prompts for them).

Splits: "val" = the 25 occupations of :data:`VAL_OCCUPATIONS` (the reference LTC code's
locate split; override with ``val_occupations=``), "test" = every other usable occupation.
An occupation is *usable* if its folder has both a ``female/`` and a ``male/`` folder with
images and the pairing CSV names a partner for it; the others are skipped with a logged warning,
and listed in ``info["skipped_missing_gender"]`` / ``info["skipped_no_pair"]``.

Pairing CSV (``pairs_csv=``, default ``<root>/genderbias_occ.csv``; the reference LTC
repository ships one as ``dataset/genderbias_occ.csv``): one row per similar
(male-dominated job, female-dominated job) pair, with at least the columns

* ``job_male``, ``job_female``: occupation names as in :data:`OCCUPATIONS` (folder names are
  these with spaces replaced by underscores);
* ``job_male_ratio``, ``job_female_ratio``: the *female* share (percent, 0-100) of the
  workforce of ``job_male`` and of ``job_female`` respectively.

A male-dominated job is paired with the female-dominated job of its rows that has the highest
female share; a female-dominated job with the male-dominated job of its rows that has the lowest
female share (ties: first row in the file). A job listed in both columns counts as
male-dominated if its own female share (first row it appears in) is below 50.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import DatasetError, GroupDataset
from .registry import build, check_split, dataset_root, list_images, list_subdirs, meta_error, open_csv, require_file

__all__ = ["load_genderbias", "read_occupation_pairs", "OccupationPair", "OCCUPATIONS", "VAL_OCCUPATIONS",
           "SPURIOUS_NAMES", "GROUP_NAMES", "PAIR_COLUMNS"]

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
SPURIOUS_NAMES = ["female", "male"]
#: bias-conflicting groups: men in female-dominated jobs, women in male-dominated ones
CONFLICTING_GROUPS = [1, 2]
GROUP_NAMES = ["female-dominated job/female", "female-dominated job/male",
               "male-dominated job/female", "male-dominated job/male"]
PAIR_COLUMNS = ("job_male", "job_female", "job_male_ratio", "job_female_ratio")

SOURCE = ("https://huggingface.co/datasets/xiaoyisong/GenderBias-VL (xl_generate_base.tar.gz; see "
          "https://github.com/GenderBiasVL/GenderBias-VL) and an occupation-pairing CSV")
LAYOUT = """\
  xl_generate_base/
    genderbias_occ.csv          occupation pairs (or pass pairs_csv=...); columns
                                job_male,job_female,job_male_ratio,job_female_ratio,...
    Chief_executive/            one folder per occupation, spaces written as underscores
      female/*.jpg
      male/*.jpg
    ...
"""

# The benchmark's 178 occupations, sorted alphabetically (case-insensitive).
OCCUPATIONS = (
    "Accountant", "Actor", "Administrative services manager", "Advertising sales agent", "Aerospace engineer",
    "Aircraft pilot", "Architectural and engineering manager", "Artist", "Author",
    "Automotive service mechanic", "Baker", "Billing and posting clerk", "Biological scientist",
    "Boiler operator", "Building cleaner", "Cafeteria attendant", "Cashier", "Chef", "Chemical engineer",
    "Chemical technician", "Chemists and materials scientist", "Chief executive", "Chiropractor",
    "Civil engineer", "Compliance officer", "Computer hardware engineer", "Computer network architect",
    "Computer numerically controlled tool operator", "Computer programmer", "Computer support specialist",
    "Computer systems analyst", "Computer systems manager", "Construction and building inspector",
    "Construction manager", "Cook", "Correctional officer", "Cost estimator", "Counter and rental clerk",
    "Customer service representative", "Cutting worker", "Database administrator", "Dental assistant",
    "Dental hygienist", "Dentist", "Director", "Dishwasher", "Editor",
    "Electrical and electronic engineering technician", "Electrical and electronics engineer",
    "Elementary and middle school teacher", "Emergency medical technician",
    "Entertainment and recreation manager", "Executive secretary", "Facilities manager",
    "Fast food and counter worker", "File Clerk", "Filling machine operator",
    "Financial and investment analyst", "Financial manager",
    "First-line supervisor of construction trades and extraction workers",
    "First-line supervisor of correctional officers",
    "First-line supervisor of food preparation and serving workers",
    "First-line supervisor of housekeeping and janitorial workers",
    "First-line supervisor of non-retail sales workers",
    "First-line supervisor of office and administrative support workers",
    "First-line supervisor of police and detectives",
    "First-line supervisor of production and operating workers",
    "First-line supervisor of retail sales workers", "First-line supervisor of security workers",
    "Flight attendant", "Food batchmaker", "Food preparation worker", "Food service manager", "Fundraiser",
    "Graphic designer", "Healthcare social worker", "Housekeeping cleaner", "Human resources manager",
    "Human resources worker", "Industrial production manager", "Information security analyst",
    "Insurance claims and policy processing clerk", "Insurance sales agent", "Insurance underwriter",
    "Interior designer", "Laundry worker", "Lawyer", "Legal secretary", "Licensed practical nurse",
    "Loan interviewer", "Loan officer", "Lodging manager", "Logistician", "Management analyst",
    "Marketing manager", "Marketing specialist", "Massage therapist", "Materials engineer",
    "Mechanical engineer", "Medical and health services manager", "Medical appliance technician",
    "Medical assistant", "Medical records specialist", "Medical scientist", "Mental health counselor",
    "Miscellaneous health technician", "Network and computer systems administrator", "Nurse practitioner",
    "Nursing assistant", "Nutritionist", "Occupational health and safety specialist", "Operation manager",
    "Operations research analyst", "Ophthalmic medical technician", "Order clerk", "Painter", "Painting worker",
    "Paralegal", "Parts salesperson", "Payroll and timekeeping clerk", "Personal financial advisor",
    "Pest control worker", "Pharmacist", "Pharmacy technician", "Phlebotomist", "Photographer",
    "Physical therapist", "Physical therapist assistant", "Physician assistant", "Police officer",
    "Postal service clerk", "Postal service mail carrier", "Postsecondary teacher", "Printing press operator",
    "Probation officer", "Project management specialist", "Property assessor", "Psychiatric technician",
    "Public relations manager", "Public relations specialist", "Public safety telecommunicator",
    "Purchasing manager", "Radiologic technician", "Real estate broker", "Receptionist",
    "Refractory machinery mechanic", "Respiratory therapist", "Retail salesperson", "Sales manager",
    "School psychologist", "Secondary school teacher", "Security guard", "Sewing machine operator",
    "Social and community service manager", "Social and human service assistant", "Software developer",
    "Software quality tester", "Special education teacher", "Stocker",
    "Supervisor of personal care and service workers",
    "Supervisor of transportation and material moving workers", "Surgeon", "Surgical technologist",
    "Tax preparer", "Teaching assistant", "Telecommunication equipment installer",
    "Training and development manager", "Training and development specialist", "Translator",
    "Transportation service attendant", "Travel agent", "Tutor", "Veterinary technician", "Waiter", "Waitress",
    "Wastewater treatment system operator", "Web and digital interface designer", "Web developer",
)

# The 25 occupations of the locate ("val") split in the reference LTC code, sorted.
VAL_OCCUPATIONS = (
    "Accountant", "Artist", "Computer hardware engineer", "Computer numerically controlled tool operator",
    "Entertainment and recreation manager", "Fast food and counter worker",
    "First-line supervisor of office and administrative support workers", "Food service manager",
    "Loan officer", "Logistician", "Management analyst", "Medical assistant",
    "Occupational health and safety specialist", "Operations research analyst", "Ophthalmic medical technician",
    "Paralegal", "Phlebotomist", "Printing press operator", "Psychiatric technician",
    "Public relations specialist", "Secondary school teacher", "Social and community service manager",
    "Supervisor of personal care and service workers",
    "Supervisor of transportation and material moving workers", "Translator",
)

@dataclass(frozen=True)
class OccupationPair:
    """Pairing of one occupation: its partner, whether it is male-dominated, its female share (%)."""

    partner: str
    male_dominated: bool
    female_ratio: float


def read_occupation_pairs(path: str | os.PathLike) -> dict[str, OccupationPair]:
    """Read the pairing CSV (columns :data:`PAIR_COLUMNS`) into ``{occupation: OccupationPair}``.

    Raises:
        DatasetError: missing column, empty name or a ratio that is not a number in 0..100
            (the message gives the file, the 1-based line and the column).
    """
    path = Path(path)
    rows: list[tuple[str, str, float, float]] = []
    with open_csv(path, PAIR_COLUMNS, f"at least {list(PAIR_COLUMNS)}") as (col, reader):
        for line, row in reader:
            jm, jf = row[col["job_male"]].strip(), row[col["job_female"]].strip()
            for c, v in (("job_male", jm), ("job_female", jf)):
                if not v:
                    raise meta_error(path, line, c, "expected an occupation name, got ''")
            if jm.casefold() == jf.casefold():
                raise meta_error(path, line, "job_female", f"{jf!r} is paired with itself; a pair needs two "
                                                           "different occupations (fix or remove the row)")
            ratios = []
            for c in ("job_male_ratio", "job_female_ratio"):
                raw = row[col[c]].strip()
                try:
                    r = float(raw)
                except ValueError:
                    raise meta_error(path, line, c, f"expected the female share of the workforce in percent "
                                     f"(a number 0-100), got {raw!r}") from None
                if not 0.0 <= r <= 100.0:
                    raise meta_error(path, line, c, f"expected a percentage 0-100, got {r}")
                ratios.append(r)
            rows.append((jm, jf, ratios[0], ratios[1]))
    if not rows:
        raise meta_error(path, 2, None, "no occupation pairs after the header")
    own: dict[str, float] = {}
    as_male: dict[str, list[tuple[str, float, float]]] = {}
    as_female: dict[str, list[tuple[str, float, float]]] = {}
    for jm, jf, rm, rf in rows:
        own.setdefault(jm, rm)
        own.setdefault(jf, rf)
        as_male.setdefault(jm, []).append((jf, rm, rf))
        as_female.setdefault(jf, []).append((jm, rm, rf))
    out = {}
    for job, share in own.items():
        male = job in as_male and (job not in as_female or share < 50.0)
        if male:
            # the female-dominated partner with the highest female share (max keeps the first on ties)
            partner = max(as_male[job], key=lambda t: t[2])[0]
        else:
            # the male-dominated partner with the lowest female share
            partner = min(as_female[job], key=lambda t: t[1])[0]
        out[job] = OccupationPair(partner, male, share)
    return out


def _folder_name(occupation: str) -> str:
    return occupation.replace(" ", "_")


def load_genderbias(
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    pairs_csv: str | os.PathLike | None = None,
    val_occupations: Sequence[str] | None = None,
    skip_bad: bool = False,
) -> GroupDataset:
    """Load the val (locate) or test occupations of GenderBias-VL ``xl_generate_base``.

    Args:
        split: "val" (the 25 :data:`VAL_OCCUPATIONS`) or "test" (every other usable occupation).
        root: the ``xl_generate_base`` folder (default ``$LTC_DATA_DIR/xl_generate_base``).
        pairs_csv: the occupation-pairing CSV (default ``<root>/genderbias_occ.csv``; columns in
            the module docstring).
        val_occupations: occupation names forming "val" (default :data:`VAL_OCCUPATIONS`).
        skip_bad: drop images whose files are missing (with a warning giving the count).

    Returns:
        a GroupDataset with ``y`` (true occupation), ``candidates`` ``[n, 2]`` (true, paired),
        ``spurious`` (0 female, 1 male), ``group = 2 * male_dominated + gender``.

    Raises:
        DatasetError: missing folder or CSV, malformed CSV (file, line, column), unknown split,
            a val occupation with no folder on disk, no usable occupation in the split.
    """
    split = check_split("genderbias", split, SPLITS, {"valid": "val", "validation": "val"})
    root_p = dataset_root("genderbias", root, LAYOUT, SOURCE)
    pairs_p = Path(pairs_csv) if pairs_csv is not None else root_p / "genderbias_occ.csv"
    require_file("genderbias", pairs_p, LAYOUT, SOURCE)
    pairs = read_occupation_pairs(pairs_p)

    folders = {d.name.replace("_", " "): d for d in list_subdirs(root_p)}
    usable: dict[str, dict[str, list[Path]]] = {}
    no_gender, no_pair = [], []
    for occ, d in sorted(folders.items()):
        imgs = {g: list_images(d / g) if (d / g).is_dir() else [] for g in SPURIOUS_NAMES}
        if not all(imgs.values()):
            no_gender.append(occ)
        elif occ not in pairs:
            no_pair.append(occ)
        else:
            usable[occ] = imgs
    if no_gender:
        log.warning("genderbias: skipped %d occupation folders without images in both female/ and male/ (e.g. %s)",
                    len(no_gender), no_gender[:3])
    if no_pair:
        log.warning("genderbias: skipped %d occupations that %s pairs with nothing (e.g. %s)",
                    len(no_pair), pairs_p.name, no_pair[:3])

    known = set(OCCUPATIONS)
    extra_names = sorted(({o for o in usable} | {pairs[o].partner for o in usable}) - known, key=str.lower)
    if extra_names:
        log.warning("genderbias: %d occupations are not among the benchmark's 178 (e.g. %s); they are appended to "
                    "class_names and the shipped prompt bank has no prompts for them", len(extra_names), extra_names[:3])
    class_names = list(OCCUPATIONS) + extra_names
    index = {c: i for i, c in enumerate(class_names)}

    val = list(VAL_OCCUPATIONS if val_occupations is None else val_occupations)
    absent = [o for o in val if o not in folders]
    if absent:
        hints = {o: difflib.get_close_matches(o, list(folders), n=2) for o in absent[:5]}
        raise DatasetError(f"genderbias: val occupations {absent} have no folder under {root_p} (folder names are the "
                           f"occupation with spaces as underscores); close matches: {hints}")
    unusable_val = [o for o in val if o not in usable]
    if unusable_val:
        log.warning("genderbias: val occupations %s are skipped (no images for one gender, or no pair)", unusable_val)
    chosen = [o for o in val if o in usable] if split == "val" else [o for o in usable if o not in set(val)]
    chosen = sorted(set(chosen), key=lambda o: index[o])

    rel, y, cand, gender, male_dom, ratio = [], [], [], [], [], []
    for occ in chosen:
        p = pairs[occ]
        for g, gname in enumerate(SPURIOUS_NAMES):
            files = usable[occ][gname]
            rel += [f"{folders[occ].name}/{gname}/{f.name}" for f in files]
            y += [index[occ]] * len(files)
            cand += [(index[occ], index[p.partner])] * len(files)
            gender += [g] * len(files)
            male_dom += [int(p.male_dominated)] * len(files)
            ratio += [p.female_ratio] * len(files)
    g_a = np.array(gender, dtype=np.int64)
    m_a = np.array(male_dom, dtype=np.int64)
    return build(
        "genderbias", split, root_p, rel,
        y=np.array(y, dtype=np.int64), spurious=g_a, group=2 * m_a + g_a,
        class_names=class_names, spurious_names=SPURIOUS_NAMES, group_names=GROUP_NAMES,
        candidates=np.array(cand, dtype=np.int64).reshape(-1, 2),
        extra={"male_dominated": m_a, "female_ratio": np.array(ratio, dtype=np.float64)},
        info={"root": str(root_p), "source": "GenderBias-VL xl_generate_base", "pairs_csv": str(pairs_p),
              "occupations": chosen, "val_occupations": val,
              "skipped_missing_gender": no_gender, "skipped_no_pair": no_pair, "unusable_val": unusable_val},
        skip_bad=skip_bad, conflicting_groups=CONFLICTING_GROUPS,
    )
