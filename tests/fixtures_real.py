"""Fabricators of tiny copies of the real benchmarks, in their published on-disk layouts.

Each ``make_<dataset>(root)`` writes a handful of small seeded images plus the metadata files
exactly where the real release has them, and returns what a test needs to check the loader
by hand (the rows it wrote). Nothing here is real data: labels and pictures are made up.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (28, 22), mode: str = "RGB") -> Path:
    """A small seeded noise image; the format follows the suffix (JPEG or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
    im.save(path)
    return path


# ---------------------------------------------------------------------------------- Waterbirds

#: (img_filename, y, split, place, place_filename); split 0 train, 1 val, 2 test.
WATERBIRDS_ROWS = [
    ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0001_86.jpg", 0, 0, 0, "/b/bamboo_forest/00000011.jpg"),
    ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0002_87.jpg", 0, 0, 0, "/f/forest/broadleaf/00000012.jpg"),
    ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0003_88.png", 0, 0, 1, "/o/ocean/00000013.jpg"),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0001_11.jpg", 1, 0, 1, "/l/lake/natural/00000014.jpg"),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0002_12.jpg", 1, 0, 1, "/o/ocean/00000015.jpg"),
    ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0004_89.jpg", 0, 1, 0, "/b/bamboo_forest/00000021.jpg"),
    ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0005_90.jpg", 0, 1, 1, "/l/lake/natural/00000022.jpg"),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0003_13.jpg", 1, 1, 0, "/f/forest/broadleaf/00000023.jpg"),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0004_14.jpg", 1, 1, 1, "/o/ocean/00000024.jpg"),
    ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0006_91.jpg", 0, 2, 0, "/f/forest/broadleaf/00000031.jpg"),
    ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0007_92.jpg", 0, 2, 1, "/o/ocean/00000032.jpg"),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0005_15.jpg", 1, 2, 0, "/b/bamboo_forest/00000033.jpg"),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0006_16.jpg", 1, 2, 1, "/l/lake/natural/00000034.jpg"),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0007_17.jpg", 1, 2, 1, "/o/ocean/00000035.jpg"),
]


def make_waterbirds(root: Path, rows=WATERBIRDS_ROWS) -> Path:
    """``waterbird_complete95_forest2water2/``: metadata.csv and CUB-style class folders."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for i, (fn, y, split, place, pf) in enumerate(rows):
            w.writerow([i + 1, fn, y, split, place, pf])
            # one greyscale image shows the loader converts to RGB
            write_image(root / fn, seed=100 + i, mode="L" if i == 1 else "RGB")
    return root


# -------------------------------------------------------------------------------------- CelebA

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
#: (file, partition, Blond_Hair, Male, Eyeglasses) as +1/-1; the other attributes are seeded noise.
CELEBA_ROWS = [
    ("000001.jpg", 0, -1, -1, 1), ("000002.jpg", 0, -1, 1, -1), ("000003.jpg", 0, 1, -1, -1),
    ("000004.jpg", 0, 1, -1, 1),
    ("000005.jpg", 1, -1, -1, -1), ("000006.jpg", 1, 1, 1, -1), ("000007.jpg", 1, -1, 1, 1),
    ("000008.jpg", 2, -1, -1, -1), ("000009.jpg", 2, -1, 1, -1), ("000010.jpg", 2, 1, -1, 1),
    ("000011.jpg", 2, 1, 1, -1), ("000012.jpg", 2, 1, 1, 1),
]


def make_celeba(root: Path, rows=CELEBA_ROWS) -> Path:
    """``celeba/``: list_attr_celeba.txt, list_eval_partition.txt and img_align_celeba/."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    col = {a: i for i, a in enumerate(CELEBA_ATTRS)}
    lines = [str(len(rows)), " ".join(CELEBA_ATTRS) + " "]
    part = []
    for i, (fn, p, blond, male, glasses) in enumerate(rows):
        v = rng.choice([-1, 1], size=len(CELEBA_ATTRS))
        v[col["Blond_Hair"]], v[col["Male"]], v[col["Eyeglasses"]] = blond, male, glasses
        lines.append(fn + " " + " ".join(f"{int(x):2d}" for x in v))
        part.append(f"{fn} {p}")
        write_image(root / "img_align_celeba" / fn, seed=200 + i, size=(18, 22))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return root


# ------------------------------------------------------------------------------- CounterAnimal

#: class folder -> {sub-folder: number of images}
COUNTERANIMAL_TREE = {
    "1 goldfish": {"common-water": 3, "counter-earth": 2},
    "296 ice bear": {"common-snow": 2, "counter-grass": 3},
}


def make_counteranimal(root: Path, tree=COUNTERANIMAL_TREE) -> Path:
    """``counteranimal/``: ``"<index> <name>"`` class folders with common-/counter- sub-folders."""
    root.mkdir(parents=True, exist_ok=True)
    seed = 300
    for cls, subs in tree.items():
        for sub, n in subs.items():
            for k in range(n):
                write_image(root / cls / sub / f"{k:03d}.jpg", seed=seed)
                seed += 1
            (root / cls / sub / "Thumbs.db").write_bytes(b"not an image")  # ignored: not an image suffix
    (root / "README.txt").write_text("stray file next to the class folders; ignored\n")
    return root


# --------------------------------------------------------------------------------- GenderBias

#: occupation folder -> {gender: number of images}; "Travel_agent" and "Actor" lack a gender,
#: "Cashier" has no pair in the CSV.
GENDERBIAS_TREE = {
    "Aircraft_pilot": {"female": 2, "male": 2},
    "Flight_attendant": {"female": 2, "male": 1},
    "Chef": {"female": 1, "male": 2},
    "Baker": {"female": 2, "male": 2},
    "Travel_agent": {"female": 2},
    "Actor": {"female": 1, "male": 0},
    "Cashier": {"female": 1, "male": 1},
}
#: job_male, job_female, similarity, job_male_ratio, job_female_ratio (female shares, percent)
GENDERBIAS_PAIRS = [
    ("Aircraft pilot", "Flight attendant", 0.91, 8.0, 78.0),
    ("Aircraft pilot", "Travel agent", 0.83, 8.0, 81.0),   # higher female share: the pilot's partner
    ("Chef", "Baker", 0.90, 24.0, 64.0),
    ("Cook", "Baker", 0.88, 38.0, 64.0),                   # Baker pairs with the lowest share: Chef
    ("Actor", "Travel agent", 0.50, 45.0, 81.0),
]


def write_pairs_csv(path: Path, rows=GENDERBIAS_PAIRS) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job_male", "job_female", "similarity", "job_male_ratio", "job_female_ratio"])
        w.writerows(rows)
    return path


def make_genderbias(root: Path, tree=GENDERBIAS_TREE) -> Path:
    """``xl_generate_base/``: occupation folders with female/ and male/, plus genderbias_occ.csv."""
    root.mkdir(parents=True, exist_ok=True)
    seed = 400
    for occ, genders in tree.items():
        for g, n in genders.items():
            (root / occ / g).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                write_image(root / occ / g / f"{k}.png", seed=seed, size=(20, 30))
                seed += 1
    write_pairs_csv(root / "genderbias_occ.csv")
    return root


# ----------------------------------------------------------------------------------- FairFace

#: split -> rows (file, age, gender, race, service_test)
FAIRFACE_ROWS = {
    "val": [
        ("val/1.jpg", "20-29", "Female", "East Asian", "True"),
        ("val/2.jpg", "more than 70", "Male", "White", "True"),
        ("val/3.jpg", "3-9", "Male", "Latino_Hispanic", "False"),
        ("val/4.jpg", "0-2", "Female", "Black", "True"),
        ("val/5.jpg", "50-59", "Male", "Middle Eastern", "False"),
        ("val/6.jpg", "30-39", "Female", "Indian", "True"),
        ("val/7.jpg", "40-49", "Male", "Southeast Asian", "False"),
        ("val/8.jpg", "10-19", "Female", "White", "False"),
    ],
    "train": [
        ("train/1.jpg", "60-69", "Male", "Black", "True"),
        ("train/2.jpg", "20-29", "Female", "White", "False"),
        ("train/3.jpg", "30-39", "Female", "Indian", "True"),
    ],
}


def make_fairface(root: Path, rows=FAIRFACE_ROWS) -> Path:
    """``fairface/``: fairface_label_{train,val}.csv and the train/, val/ image folders."""
    root.mkdir(parents=True, exist_ok=True)
    seed = 500
    for split, rs in rows.items():
        with open(root / f"fairface_label_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "age", "gender", "race", "service_test"])
            for r in rs:
                w.writerow(r)
                write_image(root / r[0], seed=seed, size=(24, 24))
                seed += 1
    return root
