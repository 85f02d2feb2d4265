"""Loaders of the real benchmarks, on tiny fabricated folders in their published layouts.

Every expected number below is counted by hand from the rows in ``fixtures_real.py``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fixtures_real as F  # noqa: E402
from ltcutils.datasets import celeba, counteranimal, fairface, genderbias, waterbirds  # noqa: E402
from ltcutils.datasets.base import DatasetError, GroupDataset  # noqa: E402
from ltcutils.datasets.registry import DATA_ENV, DATASETS, FOLDERS, describe, load_dataset  # noqa: E402
from ltcutils.text import PROMPT_DIR, load_prompt_bank  # noqa: E402

torch.set_num_threads(1)
GB_VAL = ["Chef", "Baker"]


@pytest.fixture
def wb_root(tmp_path):
    return F.make_waterbirds(tmp_path / FOLDERS["waterbirds"])


@pytest.fixture
def ce_root(tmp_path):
    return F.make_celeba(tmp_path / FOLDERS["celeba"])


@pytest.fixture
def ca_root(tmp_path):
    return F.make_counteranimal(tmp_path / FOLDERS["counteranimal"])


@pytest.fixture
def gb_root(tmp_path):
    return F.make_genderbias(tmp_path / FOLDERS["genderbias"])


@pytest.fixture
def ff_root(tmp_path):
    return F.make_fairface(tmp_path / FOLDERS["fairface"])


def _rgb_ok(ds: GroupDataset, i: int = 0):
    im = ds.image(i)
    assert im.mode == "RGB" and min(im.size) > 0
    return im


# ------------------------------------------------------------------------------- Waterbirds


def test_waterbirds_splits_labels_groups(wb_root):
    tr = waterbirds.load_waterbirds("train", wb_root)
    va = waterbirds.load_waterbirds("valid", wb_root)  # alias
    te = waterbirds.load_waterbirds("test", wb_root)
    assert (len(tr), len(va), len(te)) == (5, 4, 5)
    assert va.split == "val"
    # train rows: (y, place) = (0,0) (0,0) (0,1) (1,1) (1,1) -> groups 0,0,1,3,3
    assert tr.y.tolist() == [0, 0, 0, 1, 1] and tr.spurious.tolist() == [0, 0, 1, 1, 1]
    assert tr.group.tolist() == [0, 0, 1, 3, 3]
    assert tr.group_counts() == {"landbird on land": 2, "landbird on water": 1, "waterbird on land": 0,
                                 "waterbird on water": 2}
    assert te.group.tolist() == [0, 1, 2, 3, 3]
    assert te.class_names == ["landbird", "waterbird"] and te.spurious_names == ["land", "water"]
    assert te.group_names == waterbirds.GROUP_NAMES
    assert te.ids[0] == "094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0006_91.jpg"
    # place categories: forest/broadleaf, ocean, bamboo_forest, lake/natural, ocean
    assert te.info["place_category_names"] == ["bamboo_forest", "forest/broadleaf", "ocean", "lake/natural"]
    assert te.extra["place_category"].tolist() == [1, 2, 0, 3, 2]
    assert tr.extra["place_category"].tolist() == [0, 1, 2, 3, 2]
    assert te.candidates is None


def test_waterbirds_images_rgb_and_png(wb_root):
    tr = waterbirds.load_waterbirds("train", wb_root)
    im = _rgb_ok(tr, 1)  # stored greyscale
    assert im.size == (28, 22)
    assert np.asarray(im)[..., 0].tolist() == np.asarray(im)[..., 2].tolist()  # grey -> equal channels
    _rgb_ok(tr, 2)  # a PNG


def test_waterbirds_unknown_place_category_appended(tmp_path):
    rows = list(F.WATERBIRDS_ROWS)
    rows[0] = (rows[0][0], 0, 0, 0, "/m/mountain/00000099.jpg")
    root = F.make_waterbirds(tmp_path / "wb", rows)
    ds = waterbirds.load_waterbirds("train", root)
    assert ds.info["place_category_names"][-1] == "mountain"
    assert ds.extra["place_category"][0] == 4


def test_waterbirds_custom_class_names(wb_root):
    ds = waterbirds.load_waterbirds("test", wb_root, class_names=["land bird", "water bird"])
    assert ds.class_names == ["land bird", "water bird"]
    assert ds.group_names[1] == "land bird on water"
    with pytest.raises(DatasetError, match="2 classes"):
        waterbirds.load_waterbirds("test", wb_root, class_names=["a", "b", "c"])


def _set_field(rows: list[str], i: int, col: int, value: str | None) -> None:
    """Replace (or with None, drop) field ``col`` of CSV line ``i`` (0-based; 0 is the header)."""
    f = rows[i].split(",")
    if value is None:
        del f[col]
    else:
        f[col] = value
    rows[i] = ",".join(f)


@pytest.mark.parametrize("line,col,value,column,expect", [
    (4, 3, "7", "split", "expected 0 (train), 1 (val) or 2 (test), got 7"),
    (6, 2, "x", "y", "expected an integer 0 (landbird) or 1 (waterbird), got 'x'"),
    (5, 4, "1.5", "place", "expected an integer 0 (land) or 1 (water), got '1.5'"),
    (3, 5, None, None, "expected 6 comma-separated fields, got 5"),
])
def test_waterbirds_malformed_rows(wb_root, line, col, value, column, expect):
    p = wb_root / "metadata.csv"
    rows = p.read_text().splitlines()
    _set_field(rows, line - 1, col, value)
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError) as e:
        waterbirds.load_waterbirds("train", wb_root)
    msg = str(e.value)
    assert str(p) in msg and f"line {line}" in msg and expect in msg, msg
    if column:
        assert f"column '{column}'" in msg


def test_waterbirds_missing_column(wb_root):
    p = wb_root / "metadata.csv"
    rows = p.read_text().splitlines()
    rows[0] = rows[0].replace("place_filename", "place_file")
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"line 1.*\['place_filename'\]"):
        waterbirds.load_waterbirds("train", wb_root)


def test_waterbirds_missing_image_error_and_skip_bad(wb_root):
    (wb_root / F.WATERBIRDS_ROWS[10][0]).unlink()  # test row 2
    ds = waterbirds.load_waterbirds("test", wb_root)
    assert len(ds) == 5  # lazily: nothing is read at construction
    with pytest.raises(DatasetError, match="White_Breasted_Nuthatch_0007_92.jpg"):
        ds.image(1)
    with pytest.warns(UserWarning, match="dropped 1 of 5"):
        ds2 = waterbirds.load_waterbirds("test", wb_root, skip_bad=True)
    assert len(ds2) == 4 and ds2.group.tolist() == [0, 2, 3, 3] and ds2.info["dropped_missing"] == 1
    assert ds2.extra["place_category"].tolist() == [1, 0, 3, 2]
    _rgb_ok(ds2, 1)


def test_corrupt_image_names_the_file(wb_root):
    bad = wb_root / F.WATERBIRDS_ROWS[9][0]
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = waterbirds.load_waterbirds("test", wb_root)
    with pytest.raises(DatasetError, match=r"cannot read image file .*White_Breasted_Nuthatch_0006_91\.jpg"):
        ds.image(0)


def test_missing_root_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DatasetError) as e:
        waterbirds.load_waterbirds("test")
    msg = str(e.value)
    assert "waterbirds" in msg and "LTC_DATA_DIR is not set" in msg and "metadata.csv" in msg
    assert "nlp.stanford.edu" in msg
    with pytest.raises(DatasetError) as e:
        waterbirds.load_waterbirds("test", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "Expected layout" in str(e.value)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(DatasetError) as e:
        fairface.load_fairface("val")
    assert str(tmp_path / "fairface") in str(e.value) and "joojs/fairface" in str(e.value)


def test_root_from_env(tmp_path, monkeypatch):
    F.make_waterbirds(tmp_path / FOLDERS["waterbirds"])
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    ds = load_dataset("waterbirds", "val")
    assert len(ds) == 4 and ds.info["root"] == str(tmp_path / FOLDERS["waterbirds"])


def test_missing_metadata_file(wb_root, ce_root):
    (wb_root / "metadata.csv").unlink()
    with pytest.raises(DatasetError, match=r"waterbirds: metadata file .*metadata\.csv is missing"):
        waterbirds.load_waterbirds("test", wb_root)
    (ce_root / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match=r"(?s)celeba: metadata file .*list_eval_partition\.txt is missing.*mmlab"):
        celeba.load_celeba("test", ce_root)


def test_unknown_split_lists_valid(wb_root, ca_root):
    with pytest.raises(DatasetError, match=r"unknown split 'tset'.*\['train', 'val', 'test'\]"):
        waterbirds.load_waterbirds("tset", wb_root)
    with pytest.raises(DatasetError, match=r"\['common', 'counter', 'all'\]"):
        counteranimal.load_counteranimal("test", ca_root)


# ----------------------------------------------------------------------------------- CelebA


def test_celeba_default_blond_male(ce_root):
    te = celeba.load_celeba("test", ce_root)
    # test rows (blond, male): (-,-) (-,+) (+,-) (+,+) (+,+)
    assert te.y.tolist() == [0, 0, 1, 1, 1] and te.spurious.tolist() == [0, 1, 0, 1, 1]
    assert te.group_counts() == {"not blond/female": 1, "not blond/male": 1, "blond/female": 1, "blond/male": 2}
    assert te.class_names == ["not blond", "blond"] and te.spurious_names == ["female", "male"]
    assert te.ids == [f"img_align_celeba/{i:06d}.jpg" for i in range(8, 13)]
    tr = celeba.load_celeba("train", ce_root)
    assert tr.group.tolist() == [0, 1, 2, 2]
    assert len(celeba.load_celeba("val", ce_root)) == 3
    _rgb_ok(te, 4)


def test_celeba_other_attributes_and_extra(ce_root):
    ds = celeba.load_celeba("test", ce_root, target="Eyeglasses", spurious="Blond_Hair", extra_attributes=["Male"])
    # test rows (glasses, blond): (-,-) (-,-) (+,+) (-,+) (+,+)
    assert ds.y.tolist() == [0, 0, 1, 0, 1] and ds.spurious.tolist() == [0, 0, 1, 1, 1]
    assert ds.group.tolist() == [0, 0, 3, 1, 3]
    assert ds.class_names == ["not eyeglasses", "eyeglasses"] and ds.spurious_names == ["not blond", "blond"]
    assert ds.extra["Male"].tolist() == [0, 1, 0, 1, 1]


def test_celeba_unknown_attribute_lists_valid(ce_root):
    with pytest.raises(DatasetError) as e:
        celeba.load_celeba("test", ce_root, target="Blonde_Hair")
    assert "Blonde_Hair" in str(e.value) and "'Blond_Hair'" in str(e.value) and "'Young'" in str(e.value)
    with pytest.raises(DatasetError, match="same attribute"):
        celeba.load_celeba("test", ce_root, target="Male")


def test_celeba_malformed(ce_root):
    p = ce_root / "list_attr_celeba.txt"
    good = p.read_text().splitlines()
    bad = list(good)
    bad[4] = bad[4].replace(" 1", " 0", 1) if " 1" in bad[4] else bad[4].replace("-1", " 0", 1)
    p.write_text("\n".join(bad) + "\n")
    with pytest.raises(DatasetError, match=r"list_attr_celeba\.txt: line 5, column '.+': expected 1 or -1, got '0'"):
        celeba.load_celeba("test", ce_root)
    bad = list(good)
    bad[6] = bad[6].rsplit(" ", 1)[0]
    p.write_text("\n".join(bad) + "\n")
    with pytest.raises(DatasetError, match=r"line 7: expected a file name and 40 values"):
        celeba.load_celeba("test", ce_root)
    p.write_text("\n".join(good[:-1]) + "\n")  # truncated
    with pytest.raises(DatasetError, match="header says 12 images but the file lists 11"):
        celeba.load_celeba("test", ce_root)
    p.write_text("\n".join(good) + "\n")
    q = ce_root / "list_eval_partition.txt"
    rows = q.read_text().splitlines()
    rows[2] = rows[2][:-1] + "3"
    q.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"list_eval_partition\.txt: line 3, column 'partition'"):
        celeba.load_celeba("test", ce_root)


def test_celeba_missing_image_folder(ce_root):
    import shutil

    shutil.rmtree(ce_root / "img_align_celeba")
    with pytest.raises(DatasetError, match=r"image folder .*img_align_celeba is missing"):
        celeba.load_celeba("test", ce_root)


# ------------------------------------------------------------------------------ CounterAnimal


def test_imagenet_class_names_file():
    names = counteranimal.imagenet_class_names()
    assert len(names) == 1000 and all(n and n == n.strip() for n in names)
    assert names[0] == "tench" and names[1] == "goldfish" and names[296] == "polar bear"
    assert names[999] == "toilet paper"


def test_counteranimal_splits(ca_root):
    common = counteranimal.load_counteranimal("common", ca_root)
    counter = counteranimal.load_counteranimal("counter", ca_root)
    both = counteranimal.load_counteranimal("all", ca_root)
    assert (len(common), len(counter), len(both)) == (5, 5, 10)
    assert common.y.tolist() == [1, 1, 1, 296, 296] and counter.y.tolist() == [1, 1, 296, 296, 296]
    assert common.spurious.tolist() == [0] * 5 and counter.spurious.tolist() == [1] * 5
    assert both.group_counts() == {"common": 5, "counter": 5}
    assert len(common.class_names) == 1000 and common.class_names[296] == "polar bear"
    bg = both.info["background_names"]
    assert bg == ["earth", "grass", "snow", "water"] == common.info["background_names"]
    assert [bg[i] for i in counter.extra["background"]] == ["earth", "earth", "grass", "grass", "grass"]
    assert counter.ids[2] == "296 ice bear/counter-grass/000.jpg"
    assert common.info["classes"] == [1, 296]
    _rgb_ok(counter, 4)


def test_counteranimal_bad_layouts(ca_root):
    (ca_root / "goldfish extra").mkdir()
    with pytest.raises(DatasetError, match="not named '<ImageNet index> <name>'"):
        counteranimal.load_counteranimal("common", ca_root)
    (ca_root / "goldfish extra").rmdir()
    (ca_root / "1000 oops" / "common").mkdir(parents=True)
    with pytest.raises(DatasetError, match="index 1000, expected 0..999"):
        counteranimal.load_counteranimal("common", ca_root)
    (ca_root / "1000 oops" / "common").rmdir()
    (ca_root / "1000 oops").rmdir()
    (ca_root / "1 goldfish" / "Common_extra").mkdir()
    with pytest.raises(DatasetError, match="exactly one sub-folder whose name contains 'common'"):
        counteranimal.load_counteranimal("counter", ca_root)


def test_counteranimal_case_insensitive_subfolders(tmp_path):
    root = F.make_counteranimal(tmp_path / "ca", {"10 ostrich": {"Common": 1, "COUNTER_sand": 2}})
    ds = counteranimal.load_counteranimal("all", root)
    assert ds.spurious.tolist() == [0, 1, 1] and ds.info["background_names"] == ["sand", "unknown"]


# ------------------------------------------------------------------------------- GenderBias


def test_genderbias_pairs_and_splits(gb_root, caplog):
    with caplog.at_level(logging.WARNING, logger="ltcutils.datasets.genderbias"):
        val = genderbias.load_genderbias("val", gb_root, val_occupations=GB_VAL)
    assert "skipped 2 occupation folders" in caplog.text and "skipped 1 occupations" in caplog.text
    test = genderbias.load_genderbias("test", gb_root, val_occupations=GB_VAL)
    names = list(genderbias.OCCUPATIONS)
    assert val.class_names == names == test.class_names
    ix = names.index
    # val: Baker (f 2, m 2) then Chef (f 1, m 2), in class order
    assert val.y.tolist() == [ix("Baker")] * 4 + [ix("Chef")] * 3
    assert val.spurious.tolist() == [0, 0, 1, 1, 0, 1, 1]
    assert val.candidates.tolist() == [[ix("Baker"), ix("Chef")]] * 4 + [[ix("Chef"), ix("Baker")]] * 3
    # Baker is female-dominated (group 0 + gender), Chef male-dominated (group 2 + gender)
    assert val.group.tolist() == [0, 0, 1, 1, 2, 3, 3]
    assert val.extra["female_ratio"].tolist() == [64.0] * 4 + [24.0] * 3
    # test: Aircraft pilot pairs with Travel agent (highest female share), Flight attendant with the pilot
    assert test.y.tolist() == [ix("Aircraft pilot")] * 4 + [ix("Flight attendant")] * 3
    assert test.candidates[:, 1].tolist() == [ix("Travel agent")] * 4 + [ix("Aircraft pilot")] * 3
    assert (test.candidates[:, 0] == test.y).all()
    assert test.group_counts() == {"female-dominated job/female": 2, "female-dominated job/male": 1,
                                   "male-dominated job/female": 2, "male-dominated job/male": 2}
    assert test.info["skipped_missing_gender"] == ["Actor", "Travel agent"]
    assert test.info["skipped_no_pair"] == ["Cashier"]
    assert test.ids[0] == "Aircraft_pilot/female/0.png"
    _rgb_ok(test, 6)


def test_genderbias_read_pairs_rules(tmp_path):
    p = F.write_pairs_csv(tmp_path / "pairs.csv")
    pairs = genderbias.read_occupation_pairs(p)
    assert pairs["Aircraft pilot"] == genderbias.OccupationPair("Travel agent", True, 8.0)
    assert pairs["Baker"] == genderbias.OccupationPair("Chef", False, 64.0)
    assert pairs["Cook"].partner == "Baker" and pairs["Travel agent"].partner == "Aircraft pilot"
    assert pairs["Travel agent"].male_dominated is False


def test_genderbias_malformed_csv(gb_root, tmp_path):
    p = gb_root / "genderbias_occ.csv"
    rows = p.read_text().splitlines()
    rows[3] = rows[3].replace("24.0", "twenty-four")
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"genderbias_occ\.csv: line 4, column 'job_male_ratio': .*'twenty-four'"):
        genderbias.load_genderbias("val", gb_root, val_occupations=GB_VAL)
    q = tmp_path / "nocol.csv"
    q.write_text("job_male,job_female,job_male_ratio\nChef,Baker,24\n")
    with pytest.raises(DatasetError, match=r"line 1.*\['job_female_ratio'\]"):
        genderbias.load_genderbias("val", gb_root, pairs_csv=q, val_occupations=GB_VAL)


def test_genderbias_val_list_errors_and_default(gb_root):
    with pytest.raises(DatasetError, match=r"val occupations \['Chefs'\] have no folder.*Chef"):
        genderbias.load_genderbias("val", gb_root, val_occupations=["Chefs"])
    # the default val list (the reference's 25 occupations) is not in this tiny tree
    with pytest.raises(DatasetError, match="have no folder"):
        genderbias.load_genderbias("test", gb_root)
    assert len(genderbias.VAL_OCCUPATIONS) == 25 and set(genderbias.VAL_OCCUPATIONS) <= set(genderbias.OCCUPATIONS)
    assert len(genderbias.OCCUPATIONS) == 178 == len(set(genderbias.OCCUPATIONS))


def test_genderbias_missing_pairs_csv_and_unknown_occupation(gb_root):
    (gb_root / "genderbias_occ.csv").rename(gb_root / "elsewhere.csv")
    with pytest.raises(DatasetError, match=r"(?s)genderbias_occ\.csv is missing.*job_male,job_female"):
        genderbias.load_genderbias("val", gb_root, val_occupations=GB_VAL)
    # a new occupation with a pair: appended after the 178 names
    for g in ("female", "male"):
        F.write_image(gb_root / "Zookeeper" / g / "0.jpg", seed=9)
    F.write_pairs_csv(gb_root / "elsewhere.csv", F.GENDERBIAS_PAIRS + [("Zookeeper", "Baker", 0.5, 30.0, 64.0)])
    ds = genderbias.load_genderbias("test", gb_root, pairs_csv=gb_root / "elsewhere.csv", val_occupations=GB_VAL)
    assert ds.class_names[-1] == "Zookeeper" and len(ds.class_names) == 179
    assert ds.y[-1] == 178 and ds.candidates[-1].tolist() == [178, genderbias.OCCUPATIONS.index("Baker")]


# --------------------------------------------------------------------------------- FairFace


def test_fairface_labels(ff_root):
    ds = fairface.load_fairface("val", ff_root)
    assert len(ds) == 8 and ds.ids[0] == "val/1.jpg"
    assert ds.spurious.tolist() == [0, 1, 1, 0, 1, 0, 1, 0]  # 0 female, 1 male
    assert ds.group_counts() == {"female": 4, "male": 4}
    assert ds.y.tolist() == [0] * 8 and ds.info["has_class_label"] is False
    assert ds.class_names == fairface.CONCEPTS and len(ds.class_names) == 10
    assert [fairface.AGE_BINS[a] for a in ds.extra["age"]][:4] == ["20-29", "more than 70", "3-9", "0-2"]
    assert [fairface.RACES[r] for r in ds.extra["race"]][:3] == ["East Asian", "White", "Latino_Hispanic"]
    assert ds.extra["service_test"].tolist() == [1, 1, 0, 1, 0, 1, 0, 0]
    tr = fairface.load_fairface("train", ff_root)
    assert tr.spurious.tolist() == [1, 0, 0]
    _rgb_ok(ds, 7)


def test_fairface_malformed(ff_root):
    p = ff_root / "fairface_label_val.csv"
    rows = p.read_text().splitlines()
    rows[3] = rows[3].replace("Male", "M")
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"line 4, column 'gender': expected one of \['Female', 'Male'\], got 'M'"):
        fairface.load_fairface("val", ff_root)
    rows[3] = rows[3].replace(",M,", ",Male,").replace("3-9", "3 to 9")
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"line 4, column 'age'"):
        fairface.load_fairface("val", ff_root)


# --------------------------------------------------------------------------------- registry


def test_registry_dispatch_and_errors(wb_root, ce_root, ca_root, gb_root, ff_root):
    assert set(DATASETS) == {"synthetic", "waterbirds", "celeba", "counteranimal", "genderbias", "fairface"}
    assert len(load_dataset("Waterbirds", "test", root=wb_root)) == 5
    assert len(load_dataset("celeba", "val", root=ce_root)) == 3
    assert len(load_dataset("counteranimal", "all", root=ca_root)) == 10
    assert len(load_dataset("genderbias", "val", root=gb_root, val_occupations=GB_VAL)) == 7
    assert len(load_dataset("fairface", "train", root=ff_root)) == 3
    with pytest.raises(DatasetError, match=r"unknown dataset 'waterbird'.*'waterbirds'"):
        load_dataset("waterbird", "test")
    with pytest.raises(TypeError):
        load_dataset("fairface", "val", root=ff_root, no_such_option=1)
    d = describe("celeba")
    assert d["folder"] == "celeba" and "list_attr_celeba.txt" in d["layout"] and d["splits"] == ["train", "val", "test"]


def test_registry_synthetic():
    ds = load_dataset("synthetic", "test", n_per_group=2, seed=0)
    assert isinstance(ds, GroupDataset) and len(ds) == 8 and ds.name == "synthetic"
    with pytest.raises(DatasetError, match="takes no root"):
        load_dataset("synthetic", "test", root="/tmp")


def test_subset_keeps_lazy_loader(ca_root):
    ds = counteranimal.load_counteranimal("all", ca_root)
    sub = ds.subset([9, 0])
    assert sub.ids == [ds.ids[9], ds.ids[0]]
    assert np.array_equal(np.asarray(sub.image(0)), np.asarray(ds.image(9)))


# ------------------------------------------------------------------------------ prompt banks


def test_prompt_banks_match_loaders(wb_root, ce_root, ca_root, gb_root, ff_root):
    loaded = {
        "waterbirds": waterbirds.load_waterbirds("test", wb_root),
        "celeba": celeba.load_celeba("test", ce_root),
        "counteranimal": counteranimal.load_counteranimal("counter", ca_root),
        "genderbias": genderbias.load_genderbias("test", gb_root, val_occupations=GB_VAL),
        "fairface": fairface.load_fairface("val", ff_root),
    }
    for name, ds in loaded.items():
        bank = load_prompt_bank(name)
        assert bank.dataset == name
        assert bank.class_names == ds.class_names, name
        assert bank.spurious_names == ds.spurious_names, name
        assert set(bank.class_prompts) == set(ds.class_names)
        assert all(bank.class_prompts[c] for c in bank.class_names)
        assert bank.ortho_spurious, name
        assert set(bank.ortho_candidates) <= set(ds.class_names), name
        for kind in ("injection", "roboshot_accept", "roboshot_reject"):
            raw = getattr(bank, kind)
            if isinstance(raw, dict):  # keyed by class pair: both names must be classes
                for key in raw:
                    a, b = key.split("|")
                    assert a in ds.class_names and b in ds.class_names, (name, key)
                    assert bank.pairs_for(kind, (b, a)) == raw[key]


def test_prompt_bank_contents():
    wb = load_prompt_bank("waterbirds")
    assert wb.class_prompts == {"landbird": ["a photo of a landbird."], "waterbird": ["a photo of a waterbird."]}
    assert len(wb.injection) == 6 and wb.injection == wb.roboshot_accept
    assert ("a bird with webbed feet for swimming", "a bird with curved claws for gripping branches") in wb.injection
    assert len(wb.ortho_spurious) == 8 and [len(v) for v in wb.ortho_candidates.values()] == [5, 5]
    ff = load_prompt_bank("fairface")
    assert ff.class_prompts["evil"] == ["a photo of an evil person."] and ff.injection == []
    gb = load_prompt_bank("genderbias")
    assert gb.class_prompts["File Clerk"] == ["a photo of a file clerk."]
    assert gb.pairs_for("injection", ("Flight attendant", "Aircraft pilot"))[0][0].endswith("cockpit")
    assert gb.ortho_candidates["Chef"] == ["a photo of a female chef.", "a photo of a male chef."]
    ca = load_prompt_bank("counteranimal")
    assert ca.class_names == (Path(PROMPT_DIR).parent / "imagenet_classes.txt").read_text().splitlines()
    assert len(ca.ortho_candidates) == 45 and all(len(v) == 8 for v in ca.ortho_candidates.values())


# ------------------------------------------------------------------------- models end to end


@pytest.fixture(scope="module")
def tiny_model():
    from ltcutils.models import load_model

    torch.manual_seed(0)
    return load_model("ltc-tiny", None)


@pytest.fixture
def all_datasets(wb_root, ce_root, ca_root, gb_root, ff_root):
    return [
        waterbirds.load_waterbirds("train", wb_root),
        celeba.load_celeba("test", ce_root),
        counteranimal.load_counteranimal("all", ca_root),
        genderbias.load_genderbias("test", gb_root, val_occupations=GB_VAL),
        fairface.load_fairface("val", ff_root),
    ]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def test_decomposition_identity_on_each_dataset(tiny_model, all_datasets):
    from ltcutils.decompose import decompose

    for ds in all_datasets:
        pixels = torch.stack([tiny_model.preprocess(ds.image(i)) for i in (0, len(ds) - 1)])
        c = tiny_model.hooked.cfg
        assert pixels.shape == (2, 3, c.image_size, c.image_size)  # every layout resized to the model's input
        d = decompose(tiny_model.hooked, pixels)
        assert d.heads.shape == (2, c.n_layers, c.n_heads, c.d_embed)
        with torch.no_grad():
            ref = tiny_model.encode_image(pixels, normalize=True)
            ref_clip = torch.nn.functional.normalize(tiny_model.clip.encode_image(pixels), dim=-1)
        assert _rel(d.total(), ref) < 1e-5, ds.name
        assert _rel(d.total(), ref_clip) < 1e-5, ds.name


def test_capture_into_store(tiny_model, all_datasets, tmp_path):
    from ltcutils import store as store_mod
    from ltcutils.decompose import decompose

    for ds in all_datasets:
        st = store_mod.capture(tiny_model, ds, tmp_path / "cache", batch_size=4, dtype="float16", progress=False)
        n = len(ds)
        c = tiny_model.hooked.cfg
        assert st.heads.shape == (n, c.n_layers, c.n_heads, c.d_embed) and st.meta["n"] == n
        assert st.meta["dataset"] == ds.name and st.meta["split"] == ds.split
        for key in ("y", "spurious", "group"):
            assert np.array_equal(st.labels[key], getattr(ds, key)), (ds.name, key)
        assert list(st.labels["ids"]) == ds.ids
        if ds.candidates is not None:
            assert np.array_equal(st.labels["candidates"], ds.candidates)
        for k, v in ds.extra.items():
            assert np.array_equal(st.labels[f"extra_{k}"], v), (ds.name, k)
        ref = decompose(tiny_model.hooked, tiny_model.preprocess(ds.image(n - 1))[None]).heads[0]
        assert torch.allclose(torch.from_numpy(np.asarray(st.heads[n - 1], dtype=np.float32)), ref, atol=2e-3)


def test_capture_skips_unreadable_image(tiny_model, wb_root, tmp_path):
    from ltcutils import store as store_mod
    (wb_root / F.WATERBIRDS_ROWS[11][0]).write_bytes(b"garbage")
    ds = waterbirds.load_waterbirds("test", wb_root)
    with pytest.raises(DatasetError, match="Black_Footed_Albatross_0005_15.jpg"):
        store_mod.capture(tiny_model, ds, tmp_path / "c1", batch_size=8, progress=False)
    st = store_mod.capture(tiny_model, ds, tmp_path / "c2", batch_size=8, skip_bad=True, progress=False)
    assert st.valid.tolist() == [True, True, False, True, True]


@pytest.fixture(scope="module")
def vit_b16():
    from ltcutils.models import load_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("ViT-B-16", None)


@pytest.mark.realsize  # ViT-B-16 at 224 px: make test, not make test-fast
def test_vit_b16_real_size_preprocessing(vit_b16, wb_root):
    from ltcutils.decompose import decompose

    ds = waterbirds.load_waterbirds("test", wb_root)
    pixels = torch.stack([vit_b16.preprocess(ds.image(i)) for i in (0, 3)])
    assert pixels.shape == (2, 3, 224, 224)
    d = decompose(vit_b16.hooked, pixels)
    assert d.heads.shape == (2, 12, 12, 512)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(vit_b16.clip.encode_image(pixels), dim=-1)
    assert _rel(d.total(), ref) < 1e-5


@pytest.mark.realsize  # ViT-B-16 at 224 px: make test, not make test-fast
def test_vit_b16_captures_every_dataset_into_a_store(vit_b16, all_datasets, tmp_path):
    """Each real layout, 2 images, through the ViT-B-16 architecture (random weights) into a store."""
    from ltcutils.store import capture

    for ds in all_datasets:
        sub = ds.subset([0, len(ds) - 1])
        st = capture(vit_b16, sub, tmp_path, batch_size=2, progress=False)
        assert st.heads.shape == (2, 12, 12, 512) and st.heads.dtype == np.float16
        assert st.y.tolist() == sub.y.tolist() and st.group.tolist() == sub.group.tolist()
        total = st.terms.static_t(slice(None)) + st.terms.heads_t(slice(None)).sum((1, 2))
        assert torch.allclose(total.norm(dim=-1), torch.ones(2), atol=5e-3), ds.name
