"""Notebook 07's probes as rows of the results table (ltcutils.workbook.probe_rows) on fabricated
metrics folders: rows last and labelled with what they use, CIs by hand, caption, absent probes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402
from ltcutils.workbook.base import WorkbookError  # noqa: E402
from ltcutils.workbook.probe_rows import PROBE_ROWS, with_probe_rows  # noqa: E402


def cell(wg, lo, hi, avg):
    return {"wg": wg, "wg_ci_low": lo, "wg_ci_high": hi, "avg_sample": avg, "avg_sample_ci_low": avg - 2.0,
            "avg_sample_ci_high": avg + 2.0, "gap": avg - wg, "val_wg": wg + 1.0, "epoch": 9.0, "upsampled": 100.0}


METHODS = {"zero_shot": cell(28.4, 22.8, 34.0, 70.7), "ltc": cell(62.4, 56.4, 68.0, 82.3),
           "random": {"wg": 28.4, "wg_sd": 3.9, "avg_sample": 70.5, "gap": 42.1, "draws": 50}}
PROBES = {"erm_probe": cell(56.4, 50.0, 62.4, 79.0), "jtt_probe_reference": cell(83.2, 78.0, 85.6, 85.1),
          "jtt_probe_two_stage": cell(74.4, 68.8, 78.4, 81.0), "jtt_ltc": cell(66.44, 60.79, 72.4, 83.4),
          "jtt_ablate": cell(63.6, 57.99, 69.6, 82.7), "jtt_ltc_over_jtt": -16.8,
          "context": {"zero_shot_wg": 28.4, "n_train": 2000}}


def make_run(path, probes=True):
    wb.write_metrics("05_compare_methods", METHODS, path)
    if probes:
        wb.write_metrics("07_train_probes", PROBES, path)
    return path


def test_probe_rows_join_the_methods_table_last_with_their_cis(tmp_path):
    table = wb.paper_report([make_run(tmp_path / "run")])
    keys = [k for k, _ in table.rows]
    assert keys == ["zero_shot", "ltc", "random", "probe_erm", "probe_jtt_reference", "probe_jtt_two_stage",
                    "probe_jtt_ltc", "probe_jtt_ablate"]
    df = table.frame()
    # 66.44 -> 66.4, CI 60.79 -> 60.8 and 72.4; each probe row says it uses labels and training
    assert df.loc["JTT probe + LTC [labels, training]", "WG"] == "66.4 [60.8,72.4]"
    assert df.loc["JTT probe (reference) [labels, training]", "WG"] == "83.2 [78.0,85.6]"
    assert df.loc["ERM probe [labels, training]", "Avg(sample)"] == "79.0 [77.0,81.0]"
    assert df.loc["LTC", "WG"] == "62.4 [56.4,68.0]"  # the methods rows are unchanged
    assert "Rows marked [labels, training] are notebook 07's probes" in table.caption()
    assert "Every other row uses no label and no training" in table.render("md")


def test_without_notebook_07_the_table_has_no_probe_row(tmp_path):
    table = wb.paper_report([make_run(tmp_path / "run", probes=False)])
    assert [k for k, _ in table.rows] == ["zero_shot", "ltc", "random"]
    assert "labels, training" not in table.caption()
    with pytest.raises(WorkbookError, match="no method metrics"):  # probes alone do not make a methods table
        wb.write_metrics("07_train_probes", PROBES, tmp_path / "only07")
        wb.paper_report([tmp_path / "only07"])


def test_two_runs_one_with_probes(tmp_path):
    table = wb.paper_report([make_run(tmp_path / "a"), make_run(tmp_path / "b", probes=False)])
    df = table.frame()
    assert df.loc["JTT probe (two-stage) [labels, training]"].tolist()[:3] == ["74.4 [68.8,78.4]",
                                                                                 "81.0 [79.0,83.0]", "6.6"]
    assert df.loc["JTT probe (two-stage) [labels, training]"].tolist()[3:] == ["", "", ""]


def test_with_probe_rows_copies_and_skips_what_is_not_a_row():
    out = with_probe_rows(METHODS, PROBES)
    assert [k for k in out if k.startswith("probe_")] == [row for _, row, _ in PROBE_ROWS]
    assert "jtt_ltc_over_jtt" not in out and "context" not in out and "probe_context" not in out
    out["probe_erm"]["wg"] = 0.0
    assert PROBES["erm_probe"]["wg"] == 56.4  # the inputs are not changed
    assert with_probe_rows(METHODS, None) == METHODS and with_probe_rows(None, PROBES) is None


def test_ltc_report_prints_the_probe_rows(tmp_path, capsys):
    from ltcutils.workbook.cli import main

    assert main(["report", str(make_run(tmp_path / "run"))]) == 0
    out = capsys.readouterr().out
    assert "| JTT probe + LTC [labels, training]" in out and "66.4 [60.8,72.4]" in out
