"""Crafted metadata is refused with the file, line and value; an empty group is named in the metrics."""

import csv
import warnings

import numpy as np
import pytest

import ltcutils as ltc
from fixtures_real import (GENDERBIAS_PAIRS, make_celeba, make_fairface, make_waterbirds, write_pairs_csv)
from ltcutils.datasets.base import DatasetError


def _rewrite_csv_cell(path, row_index, column, value):
    rows = list(csv.reader(open(path, newline="")))
    rows[row_index + 1][rows[0].index(column)] = value
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("value", ["../../etc/passwd", "/etc/passwd", "a/../../outside.jpg"])
def test_waterbirds_image_paths_must_stay_inside_the_dataset(tmp_path, value):
    root = make_waterbirds(tmp_path / "wb")
    _rewrite_csv_cell(root / "metadata.csv", 0, "img_filename", value)
    with pytest.raises(DatasetError, match=rf"metadata.csv: line 2, column 'img_filename': {value!r} points "
                                           r"outside the dataset folder"):
        ltc.datasets.registry.load_dataset("waterbirds", "train", root=root)


def test_fairface_image_paths_must_stay_inside_the_dataset(tmp_path):
    root = make_fairface(tmp_path / "ff")
    _rewrite_csv_cell(root / "fairface_label_val.csv", 2, "file", "../../secret.jpg")
    with pytest.raises(DatasetError, match=r"fairface_label_val.csv: line 4, column 'file': '../../secret.jpg' "
                                           r"points outside"):
        ltc.datasets.registry.load_dataset("fairface", "val", root=root)


def test_celeba_image_names_must_stay_inside_the_dataset(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    p = root / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].replace("000002.jpg", "../../000002.jpg")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt: line 4: '../../000002.jpg' points outside"):
        ltc.datasets.registry.load_dataset("celeba", "train", root=root)


def test_a_genderbias_job_paired_with_itself_is_refused(tmp_path):
    p = write_pairs_csv(tmp_path / "pairs.csv", list(GENDERBIAS_PAIRS) + [("Chef", "Chef", 1.0, 24.0, 24.0)])
    line = len(GENDERBIAS_PAIRS) + 2
    with pytest.raises(DatasetError, match=rf"pairs.csv: line {line}, column 'job_female': 'Chef' is paired "
                                           r"with itself"):
        from ltcutils.datasets.genderbias import read_occupation_pairs

        read_occupation_pairs(p)


def test_an_empty_group_is_named_in_the_metrics_and_the_table():
    # groups 0..3; group 3 has no items: WG is the minimum over 0..2, and the metrics say so
    pred = np.array([0, 0, 1, 1, 0, 1])
    y = np.array([0, 0, 1, 1, 1, 0])
    group = np.array([0, 0, 1, 1, 2, 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = ltc.metrics.summary(pred, y, group, group_names=["a", "b", "c", "d"])
    assert m["wg"] == 0.0 and m["worst_group"] == "c"  # hand count: group c has 0 of 2 right
    assert m["empty_groups"] == "d" and m["n_d"] == 0
    assert any("group d has no items" in str(w.message) for w in caught)
    full = ltc.metrics.summary(pred, y, np.array([0, 0, 1, 1, 2, 3]), group_names=["a", "b", "c", "d"])
    assert "empty_groups" not in full
    table = ltc.metrics.results_table({"zero-shot": m, "full": full})
    assert table.loc["zero-shot", "empty_groups"] == "d"
