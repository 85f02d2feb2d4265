"""The whole workbook on a *real* benchmark layout: a Waterbirds folder fabricated in its published
layout (metadata.csv + class folders), its images rendered by the synthetic generator so the shipped
tiny model has something to be biased about. This exercises every notebook's real-data path
(prompt bank, loader, splits from metadata, no ground truth) without any download."""

import csv
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402
from ltcutils.datasets import synthetic  # noqa: E402
from ltcutils.locate import HeadSelection  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLACES = {0: "/b/bamboo_forest/00000001.jpg", 1: "/o/ocean/00000002.jpg"}
SPLITS = {"train": 0, "val": 1, "test": 2}
#: every notebook but 07: the probes train on a train split, which GenderBias and CounterAnimal lack
NO_PROBES = [p.stem for p in wb.list_notebooks(ROOT / "notebooks") if not p.stem.startswith("07_")]


def fabricate_waterbirds(root: Path, per_group: dict[str, int]) -> Path:
    """metadata.csv and JPEG images; bird class / place come from the synthetic item labels."""
    root.mkdir(parents=True)
    rows = []
    for split, n in per_group.items():
        ds = synthetic.make_split(split, n_per_group=n, seed=0) if split != "train" else \
            synthetic.make_split("train", n=4 * n, p_aligned=0.5, seed=0)
        for i in range(len(ds)):
            folder = "001.Black_footed_Albatross" if ds.y[i] else "100.Brown_Pelican_land"
            fn = f"{folder}/{split}_{ds.ids[i]}.jpg"
            (root / folder).mkdir(exist_ok=True)
            ds.image(i).save(root / fn, quality=95)
            rows.append([len(rows) + 1, fn, int(ds.y[i]), SPLITS[split], int(ds.spurious[i]), PLACES[int(ds.spurious[i])]])
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def real_layout_run(tmp_path_factory):
    root = fabricate_waterbirds(tmp_path_factory.mktemp("data") / "waterbird_complete95_forest2water2",
                                {"train": 5, "val": 60, "test": 60})
    params = {"dataset": "waterbirds", "data_root": str(root), "n_per_group": None, "n_random": 5, "n_boot": 50,
              "n_check": 4, "n_patch_images": 2, "strengths": [0.0, 1.0], "k_cap": 2}
    return wb.run_workbook(params=params, out=tmp_path_factory.mktemp("run") / "wb", raise_on_error=False,
                           progress=False)


@pytest.mark.notebook
def test_every_notebook_runs_on_the_real_layout(real_layout_run):
    failed = [n for n in real_layout_run.notebooks if n.status != "ok"]
    assert not failed, failed[0].error
    m = real_layout_run.metrics
    assert m["00_explore_benchmark"]["n_images"] == 240
    assert m["01_decompose_embeddings"]["rel_err"]["rel_err_raw"] < 1e-5
    assert m["02_locate_heads"]["grade"] == {}  # no ground truth for a real dataset
    table = m["05_compare_methods"]
    assert {"zero_shot", "ablate", "ltc", "random"} <= set(table)


def fabricate_genderbias(root: Path, per_gender: int = 12) -> Path:
    """``xl_generate_base/``: occupation folders with female/ and male/ images, and the pairing CSV."""
    import numpy as np
    from PIL import Image

    pairs = [  # (male-dominated, female-dominated, similarity, female % of each)
        ("Computer hardware engineer", "Medical assistant", 0.5, 15.0, 85.0),  # both validation occupations
        ("Logistician", "Accountant", 0.5, 30.0, 60.0),
        ("Aircraft pilot", "Flight attendant", 0.9, 8.0, 78.0),  # test occupations
        ("Aerospace engineer", "Baker", 0.5, 15.0, 64.0),
    ]
    rng = np.random.default_rng(0)
    for row in pairs:
        for occ in row[:2]:
            for g in ("female", "male"):
                (root / occ.replace(" ", "_") / g).mkdir(parents=True, exist_ok=True)
                for k in range(per_gender):
                    px = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                    Image.fromarray(px).save(root / occ.replace(" ", "_") / g / f"{k}.png")
    with open(root / "genderbias_occ.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job_male", "job_female", "similarity", "job_male_ratio", "job_female_ratio"])
        w.writerows(pairs)
    return root


@pytest.fixture(scope="module")
def genderbias_run(tmp_path_factory):
    """The workbook (probes aside) on a fabricated GenderBias, heads located with the authors' groups;
    one run for every GenderBias check and for the FairFace run that reuses its heads."""
    root = fabricate_genderbias(tmp_path_factory.mktemp("data") / "xl_generate_base")
    params = {"dataset": "genderbias", "data_root": str(root), "n_per_group": None, "n_random": 5, "n_boot": 50,
              "k_cap": 2, "n_check": 4, "n_patch_images": 2, "strengths": [0.0, 1.0], "locate_groups": "authors",
              "dataset_options": {"val_occupations": ["Computer hardware engineer", "Medical assistant",
                                                      "Logistician", "Accountant"]}}
    return wb.run_workbook(NO_PROBES, params=params, out=tmp_path_factory.mktemp("run") / "wb",
                           raise_on_error=False, progress=False)


@pytest.mark.notebook
def test_gender_benchmark_runs_with_per_image_classifiers(genderbias_run):
    """GenderBias: per-image [true, paired] classifiers, keyed concept pairs, gender-bias metrics,
    RoboShot with each image's occupation-pair directions, the authors' locate groups."""
    run = genderbias_run
    failed = [n for n in run.notebooks if n.status != "ok"]
    assert not failed, failed[0].error
    gender = run.metrics["05_compare_methods"]["gender"]
    assert {"overall_bias", "top10_bias", "max_skew_at_10", "top10_max_skew_at_10"} <= set(gender["zero-shot"])
    assert 0 <= gender["zero-shot"]["overall_bias"] <= 100  # percent points
    assert "RoboShot" in gender and "roboshot" in run.metrics["05_compare_methods"]
    # 4 val occupations (fewer than 10, so all kept), each with its worse gender's 12 images
    counts = run.metrics["02_locate_heads"]["counts"]
    assert counts["locate_groups"] == "authors" and counts["n_conflicting"] == 4 * 12
    assert run.metrics["04_inject_knowledge"]["n_directions"] >= 1  # keyed concept pairs became bases
    table = (run.out / "results.csv").read_text()
    assert "each image's class-pair directions" in table  # the fabricated test pair Aircraft pilot|Flight attendant


def fabricate_fairface(root: Path, per_gender: dict[str, int]) -> Path:
    """``fairface/`` (tests/fixtures_real.make_fairface) with ``per_gender`` women and men per split."""
    from fixtures_real import make_fairface

    ages, races = ["20-29", "30-39", "50-59"], ["White", "Black", "East Asian", "Indian"]
    rows = {split: [(f"{split}/{i + 1}.jpg", ages[i % 3], ("Female", "Male")[i % 2], races[i % 4], "True")
                    for i in range(2 * n)] for split, n in per_gender.items()}
    return make_fairface(root, rows)


@pytest.mark.notebook
def test_fairface_reuses_genderbias_heads(genderbias_run, tmp_path):
    """FairFace as in the paper: no class, nothing located; the GenderBias run's heads are ablated
    (heads_from) and every row is scored by MaxSkew@k of the ten concept rankings (k = 6 here: the
    default 1000 is capped at the split size, 20, whose gender mix is exactly even, so every skew
    would be 0). Notebook 02 refuses it, saying what to run instead."""
    root = fabricate_fairface(tmp_path / "fairface", {"train": 8, "val": 10})
    heads = genderbias_run.out / "heads.json"
    params = {"dataset": "fairface", "data_root": str(root), "n_per_group": None, "locate_split": "train",
              "eval_split": "val", "heads_from": str(heads), "n_random": 3, "n_boot": 20, "n_check": 2,
              "skew_k": 6}
    run = wb.run_workbook(["00", "01", "05"], params=params, out=tmp_path / "wb", raise_on_error=False, progress=False)
    failed = [n for n in run.notebooks if n.status != "ok"]
    assert not failed, failed[0].error
    m = run.metrics
    assert m["00_explore_benchmark"]["n_images"] == 20 and m["00_explore_benchmark"]["zero_shot"]["k"] == 6
    assert set(m["00_explore_benchmark"]["concept_skew"]) == {"good", "evil", "smart", "dumb", "attractive",
                                                             "unattractive", "lawful", "criminal", "friendly",
                                                             "unfriendly"}
    table = m["05_compare_methods"]
    assert {"zero_shot", "ortho_cali", "roboshot", "ablate", "random"} <= set(table)
    # the same ranking read by notebook 00 (concept_skew_frame) and by notebook 05's table (skew_methods_table)
    assert table["zero_shot"]["max_skew"] == pytest.approx(m["00_explore_benchmark"]["zero_shot"]["max_skew"])
    assert all(table[r]["k"] == 6 for r in ("zero_shot", "ortho_cali", "roboshot", "ablate"))
    # MaxSkew with a uniform prior over two genders lies in [0, log 2]
    assert all(0 <= table[r]["max_skew"] <= np.log(2) + 1e-9 for r in ("zero_shot", "ablate", "random"))
    located = HeadSelection.load(heads)
    assert located.data["dataset"] == "genderbias"
    csv_text = (tmp_path / "wb" / "results.csv").read_text()
    assert ",".join(located.labels("spurious")) in csv_text  # the ablate row names the reused heads
    refused = wb.run_workbook(["02"], params={k: v for k, v in params.items() if k not in ("n_random", "n_boot",
                                                                                             "n_check", "skew_k")},
                              out=tmp_path / "wb", raise_on_error=False, progress=False)
    assert refused.notebooks[0].status != "ok"
    assert "fairface has no class label" in refused.notebooks[0].error and "heads_from" in refused.notebooks[0].error


@pytest.mark.notebook
def test_heads_from_another_run_are_reused(tmp_path):
    """A heads file saved elsewhere (here: written by hand) replaces locating, explicitly."""
    from ltcutils.locate import HeadSelection

    heads = HeadSelection(spurious=[(3, 2), (3, 0)], salient=[(0, 1)], rule="manual", groups="true",
                          split="val", data={"dataset": "synthetic"}).save(tmp_path / "elsewhere.json")
    run = wb.run_workbook(["02", "03"], params={"n_per_group": 50, "heads_from": str(heads), "n_random": 3},
                          out=tmp_path / "wb", raise_on_error=False, progress=False)
    failed = [n for n in run.notebooks if n.status != "ok"]
    assert not failed, failed[0].error
    assert run.metrics["02_locate_heads"]["selection"]["spurious"] == ["L3H2", "L3H0"]
    assert run.metrics["02_locate_heads"]["selection"]["reused_from"] == str(heads)
    assert run.metrics["03_ablate_heads"]["heads"] == ["L3H2", "L3H0"]


#: the fabricated CounterAnimal classes: ImageNet index -> (name, synthetic species drawn)
CA_CLASSES = {10: ("sparrow", 0), 20: ("robin", 1), 30: ("duck", 3), 40: ("swan", 4)}


def fabricate_counteranimal(base: Path) -> tuple[Path, Path, Path]:
    """``counteranimal/`` in the published layout with synthetic birds as the animals (waterbirds'
    common background is water, landbirds' land; counter the other), and, since the tiny CLIP knows
    no ImageNet name, a 1000-name class file and a bank in which those four indices carry its bird
    words and every other index the one filler "rock" (so the 1000-way argmax has a real choice)."""
    import yaml

    names = ["rock"] * 1000
    for idx, (name, _) in CA_CLASSES.items():
        names[idx] = name
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("\n".join(names) + "\n")
    pairs = {"duck|sparrow": [["a bird with webbed feet", "a bird with talon feet"]],
             "swan|robin": [["a bird with a long neck", "a bird with a short neck"]]}
    bank = {"dataset": "counteranimal", "class_names": names, "class_templates": ["a photo of a {}"],
            "spurious_names": ["common", "counter"],
            "spurious_prompts": {"common": ["a photo of a bird"], "counter": ["a photo of a bird on water"]},
            "injection": pairs, "roboshot": {"reject": [["a bird on water", "a bird on land"]], "accept": pairs},
            "ortho_cali": {"spurious_prompts": ["a photo of land", "a photo of water"],
                           "candidate_prompts": {n: [f"a photo of a {n} on land", f"a photo of a {n} on water"]
                                                 for n, _ in CA_CLASSES.values()}}}
    (base / "bank.yaml").write_text(yaml.safe_dump(bank))
    root = base / "counteranimal"
    for idx, (name, species) in CA_CLASSES.items():
        seeds = [s for s in range(5000) if synthetic.item_labels(s)[1] == species][:6]
        water = int(synthetic.SPECIES_CLASS[species])
        for sub, bg in (("common-x", water), ("counter-y", 1 - water)):
            (root / f"{idx} {name}" / sub).mkdir(parents=True)
            for k, seed in enumerate(seeds):
                synthetic.render(seed, background=bg).save(root / f"{idx} {name}" / sub / f"{k}.jpg")
    return root, base / "classes.txt", base / "bank.yaml"


@pytest.mark.notebook
def test_counteranimal_runs_with_reused_heads(tmp_path):
    """CounterAnimal as in the paper: spurious heads reused from elsewhere (heads_from), located
    nowhere here; salient heads located per class on the common split (the default) and injected
    by pseudo-class; 1000-way zero-shot over the class file's names; common -> counter backgrounds."""
    from ltcutils.locate import HeadSelection

    root, classes, bank = fabricate_counteranimal(tmp_path / "data")
    heads = HeadSelection(spurious=[(3, 2)], salient=[(3, 1)], rule="manual", groups="true", split="val",
                          data={"dataset": "synthetic"}).save(tmp_path / "waterbirds_heads.json")
    params = {"dataset": "counteranimal", "data_root": str(root), "n_per_group": None, "locate_split": "common",
              "eval_split": "counter", "heads_from": str(heads), "n_random": 3, "n_boot": 20, "n_check": 2,
              "n_patch_images": 2, "strengths": [0.0, 1.0],
              "dataset_options": {"classes_file": str(classes), "prompt_bank": str(bank)}}
    run = wb.run_workbook(NO_PROBES, params=params, out=tmp_path / "wb", raise_on_error=False, progress=False)
    failed = [n for n in run.notebooks if n.status != "ok"]
    assert not failed, failed[0].error
    m = run.metrics
    assert m["03_ablate_heads"]["heads"] == ["L3H2"]
    assert m["00_explore_benchmark"]["n_images"] == 24  # the counter split: 4 classes x 6
    assert m["02_locate_heads"]["selection"]["spurious"] == ["L3H2"]
    # salient heads per class: one list per class, never the reused spurious head; a class with no
    # head above 1/K (or none correct) takes the file's salient heads; the saved salient list is the union
    per_class = m["02_locate_heads"]["salient_per_class"]
    assert set(per_class) == {name for name, _ in CA_CLASSES.values()}
    table = HeadSelection.load(tmp_path / "wb" / "heads.json").data["per_class"]
    assert all(row["heads"] == "L3H1" for row in table if row["fallback"])
    located = [row for row in table if not row["fallback"]]
    assert located and all(row["n_correct"] > 0 and "L3H2" not in row["heads"] for row in located)
    saved = HeadSelection.load(tmp_path / "wb" / "heads.json")
    assert set(saved.labels("salient")) == {h for hs in per_class.values() for h in hs}
    # every class has one pair naming it ("duck|sparrow", "swan|robin"): four one-direction bases
    assert m["04_inject_knowledge"]["n_directions"] == 4
    assert {"inject", "ltc", "random"} <= set(m["05_compare_methods"])
    # notebook 05 corrects with notebook 02's per-class selection, not the raw heads file it was also given
    import pandas as pd

    results = pd.read_csv(tmp_path / "wb" / "results.csv", index_col="method")
    assert results.loc["LTC", "heads"] == ",".join(["L3H2"] + [f"+{h}" for h in saved.labels("salient")])


CELEBA_BANK = """\
dataset: celeba
class_names: [not blond, blond]
class_prompts: {not blond: ["a photo of a landbird"], blond: ["a photo of a waterbird"]}
spurious_names: [female, male]
spurious_prompts: {female: ["a photo of water"], male: ["a photo of land"]}
injection:
  - ["a bird with webbed feet", "a bird with talon feet"]
  - ["a bird with a long neck", "a bird with a short neck"]
roboshot:
  reject: [["a bird on water", "a bird on land"]]
  accept: [["a bird with webbed feet", "a bird with talon feet"]]
ortho_cali:
  spurious_prompts: ["a photo of water", "a photo of land"]
  candidate_prompts:
    not blond: ["a landbird on water", "a landbird on land"]
    blond: ["a waterbird on water", "a waterbird on land"]
"""


def fabricate_celeba(root: Path, per_group: int = 30, n_train: int = 80) -> Path:
    """``celeba/`` in the published layout (tests/fixtures_real.make_celeba writes the annotation files)
    with synthetic birds as the faces: Blond_Hair = waterbird, Male = land background, so blond
    goes with female (water) in train as in CelebA, and the tiny model is biased the same way."""
    from fixtures_real import make_celeba

    splits = {"train": synthetic.make_split("train", n=n_train, p_aligned=0.9, seed=0),
              "val": synthetic.make_split("val", n_per_group=per_group, seed=0),
              "test": synthetic.make_split("test", n_per_group=per_group, seed=0)}
    rows, images = [], []
    for split, ds in splits.items():
        for i in range(len(ds)):
            blond, male = (1 if ds.y[i] else -1), (-1 if ds.spurious[i] else 1)
            rows.append((f"{len(rows) + 1:06d}.jpg", SPLITS[split], blond, male, 1 if i % 3 == 0 else -1))
            images.append(ds.image(i))
    make_celeba(root, rows)
    for (fn, *_), im in zip(rows, images):
        im.save(root / "img_align_celeba" / fn, quality=95)
    return root


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    return fabricate_celeba(tmp_path_factory.mktemp("data") / "celeba")


@pytest.fixture(scope="module")
def celeba_run(celeba_root, tmp_path_factory):
    """The whole workbook, probes included, on a fabricated CelebA (one run for every CelebA check)."""
    root = celeba_root
    bank = root.parent / "celeba_birds.yaml"
    bank.write_text(CELEBA_BANK)
    params = {"dataset": "celeba", "data_root": str(root), "n_per_group": None, "n_random": 5, "n_boot": 50,
              "n_check": 4, "n_patch_images": 2, "strengths": [0.0, 1.0], "k_cap": 2, "epochs": 10,
              "dataset_options": {"prompt_bank": str(bank)}}
    return wb.run_workbook(params=params, out=tmp_path_factory.mktemp("run") / "wb", raise_on_error=False,
                           progress=False)


@pytest.mark.notebook
def test_celeba_runs_the_whole_workbook(celeba_run):
    run = celeba_run
    failed = [n for n in run.notebooks if n.status != "ok"]
    assert not failed, failed[0].error
    assert [n.name[:2] for n in run.notebooks] == [p.stem[:2] for p in wb.list_notebooks(ROOT / "notebooks")]
    m = run.metrics
    assert m["00_explore_benchmark"]["n_images"] == 4 * 30  # the test split
    assert m["02_locate_heads"]["grade"] == {}  # no ground truth for a real dataset
    assert {"zero_shot", "ablate", "ltc", "random"} <= set(m["05_compare_methods"])
    probes = m["07_train_probes"]
    assert {"erm_probe", "jtt_probe_reference", "jtt_probe_two_stage", "jtt_ltc"} <= set(probes)
    assert probes["context"]["n_train"] == 80
    # CelebA's bias-conflicting groups come from the attributes: blond goes with female here, so
    # they are non-blond women and blond men, whose train images the reference JTT upsamples
    assert probes["context"]["n_pseudo_conflicting"] > 0


@pytest.mark.notebook
def test_celeba_takes_another_target_and_spurious_attribute(celeba_root, tmp_path):
    """dataset_options choose the attributes: Eyeglasses (every third image) against Male; with no
    prompt bank given, the dataset's own bank for that pair names the classes; notebook 00 reads
    the split with the new labels."""
    params = {"dataset": "celeba", "data_root": str(celeba_root), "n_per_group": None,
              "dataset_options": {"target": "Eyeglasses", "spurious": "Male"}}
    run = wb.run_workbook(["00"], params=params, out=tmp_path / "wb", raise_on_error=False, progress=False)
    failed = [n for n in run.notebooks if n.status != "ok"]
    assert not failed, failed[0].error
    m = run.metrics["00_explore_benchmark"]
    assert m["n_images"] == 120
    counts = {k: v for k, v in m["zero_shot"].items() if k.startswith("n_")}
    assert sum(v for k, v in counts.items() if k.startswith("n_eyeglasses/")) == 40  # every third test image
