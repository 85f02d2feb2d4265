"""The paper-shaped methods table (ltcutils.workbook.report) on fabricated metrics files: row
order, cells checked by hand, formats, the 120-column fit of two runs, and the CLI."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402
rp = importlib.import_module("ltcutils.workbook.report")  # the module (wb.report is the function)


def row(wg, avg, ci=True):
    r = {"wg": wg, "avg_sample": avg, "avg_group": avg - 1.0, "gap": avg - wg, "gap_group": avg - 1.0 - wg,
         "n": 5794, "worst_group": "waterbird/land"}
    if ci:
        r.update(wg_ci_low=wg - 3.04, wg_ci_high=wg + 2.96, avg_sample_ci_low=avg - 0.96, avg_sample_ci_high=avg + 1.04,
                 avg_group_ci_low=avg - 2.0, avg_group_ci_high=avg)
    return r


def methods(offset=0.0):
    """Every row notebook 05 can write (keys as ltc.evaluate.table_metrics makes them), in a shuffled order."""
    keys = ["random_inject_only", "ltc_full", "random", "inject", "zero_shot", "ltc_threshold_rule", "roboshot",
            "ltc", "ablate", "ortho_cali", "ltc_unit_norm_injection", "textspan", "ltc_paper_recipe", "mystery"]
    m = {k: row(40.0 + i + offset, 80.0 + i / 10 + offset) for i, k in enumerate(keys)}
    for k in ("random", "random_inject_only"):
        m[k] = {"wg": 45.0 + offset, "wg_sd": 3.25, "avg_sample": 81.0, "avg_sample_sd": 1.2, "gap": 36.0,
                "gap_sd": 2.0, "draws": 50}
    m["ltc_over_random_2sd"] = 3.2  # not a method: a number
    m["gender"] = {"LTC": {"overall_bias": 0.12345}}  # merged into the LTC row by row name
    return m


def make_run(root, name, metrics):
    wb.write_metrics("05_compare_methods", metrics, root / name)
    return root / name


def test_rows_come_in_the_fixed_order_of_their_kind():
    rows = rp.method_rows(methods())
    assert list(rows) == ["zero_shot", "ortho_cali", "roboshot", "textspan", "mystery", "ablate", "inject", "ltc",
                          "ltc_paper_recipe", "ltc_unit_norm_injection", "ltc_full", "ltc_threshold_rule",
                          "random", "random_inject_only"]
    assert rows["ltc"]["overall_bias"] == 0.12345
    assert rp.method_key("LTC (threshold rule)") == "ltc_threshold_rule"
    assert rp.method_key("zero-shot") == "zero_shot"


def test_cells_by_hand():
    r = row(72.34, 88.96)
    assert rp.format_cell(r, "wg") == "72.3 [69.3,75.3]"  # 72.34 - 3.04 = 69.30, + 2.96 = 75.30
    assert rp.format_cell(r, "avg_sample") == "89.0 [88.0,90.0]"
    assert rp.format_cell(r, "gap") == "16.6"  # 88.96 - 72.34 = 16.62, no CI written
    assert rp.format_cell(r, "wg", ci=False) == "72.3"
    assert rp.format_cell({"wg": 45.0, "wg_sd": 3.25}, "wg") == "45.0 ± 3.2"  # round half to even: 3.25 -> 3.2
    assert rp.format_cell({"overall_bias": 0.12345}, "overall_bias") == "0.123"
    assert rp.format_cell({}, "wg") == "" and rp.format_cell({"worst_group": "a/b"}, "worst_group") == "a/b"


def test_paper_table_is_what_notebook_05_shows():
    df = wb.paper_table(methods())
    assert list(df.columns) == ["WG", "Avg(sample)", "Gap"]
    assert df.index[0] == "zero-shot" and df.index[-2] == "random"
    assert df.loc["zero-shot", "WG"] == "44.0 [41.0,47.0]"  # zero_shot is key 4: wg 44.0
    assert df.loc["random", "WG"] == "45.0 ± 3.2"
    assert df.loc["LTC (threshold)", "Gap"] == "35.5"  # 80.5 - 45.0
    other = wb.paper_table(methods(), ["wg", "avg_group", "overall_bias"])
    assert list(other.columns) == ["WG", "Avg(group)", "overall_bias"]
    assert other.loc["LTC", "overall_bias"] == "0.123" and other.loc["zero-shot", "overall_bias"] == ""


def test_report_of_two_runs_fits_120_columns(tmp_path, capsys):
    a, b = make_run(tmp_path, "a", methods()), make_run(tmp_path, "b", methods(1.5))
    assert wb.main(["report", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    lines = out.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    table = [line for line in lines if line.startswith("|")]
    assert table[0].split("|")[1:5] == [" method             ", " WG a             ", " Avg(sample) a ", " Gap a      "]
    assert len(table) == 2 + 14  # header, rule, one line per method
    assert "| zero-shot " in table[2] and "44.0 [41.0,47.0]" in table[2] and "45.5 [42.5,48.5]" in table[2]
    words = " ".join(out.split())  # the caption is wrapped to the width
    assert "Avg(sample) = sample-weighted accuracy" in words and "Gap = Avg(sample) - WG" in words
    assert "CIs of Avg(sample), Gap left out to fit the width" in words  # said, not hidden
    # one run keeps every CI
    assert wb.main(["report", str(a)]) == 0
    one = capsys.readouterr().out
    assert "80.4 [79.4,81.4]" in one and "left out" not in one  # zero-shot: avg 80.4, CI -0.96/+1.04
    assert wb.main(["report", str(a), str(b), "--width", "0"]) == 0  # no limit: every CI
    assert "left out" not in capsys.readouterr().out
    # accuracies of 100 widen every cell: even WG's CI goes, and the caption says so
    full = methods()
    full["zero_shot"].update(wg=100.0, wg_ci_low=98.12, wg_ci_high=100.0, avg_sample=100.0)
    c, d = make_run(tmp_path, "c", full), make_run(tmp_path, "d", full)
    assert wb.main(["report", str(c), str(d)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120 and "100.0 " in out
    assert "CIs of WG, Avg(sample), Gap left out" in " ".join(out.split())


def test_report_of_two_real_looking_runs_fits_120_columns(tmp_path, capsys):
    """Run names longer than 3 characters are numbered; wide random sd cells; WG keeps its CI."""
    m = methods()
    m["random_paper_recipe"] = {"wg": 16.9, "wg_sd": 18.4, "avg_sample": 58.7, "avg_sample_sd": 3.2, "gap": 41.8,
                                "gap_sd": 16.0, "draws": 50}
    a, b = make_run(tmp_path, "seed-0", m), make_run(tmp_path, "seed-1", methods(1.5))
    assert wb.main(["report", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120, max(out.splitlines(), key=len)
    header = [line for line in out.splitlines() if line.startswith("|")][0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "WG 1", "Avg(sample) 1", "Gap 1",
                                                                  "WG 2", "Avg(sample) 2", "Gap 2"]
    words = " ".join(out.split())
    assert f"Runs: 1 = {a}, 2 = {b}." in words and "CIs of Avg(sample), Gap left out" in words
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in out.splitlines() if line.startswith("| ")}
    assert rows["random (paper)"][:3] == ["16.9 ± 18.4", "58.7 ± 3.2", "41.8 ± 16.0"]
    assert rows["zero-shot"][:3] == ["44.0 [41.0,47.0]", "80.4", "36.4"]  # WG keeps its CI


def test_formats_and_out(tmp_path, capsys):
    a, b = make_run(tmp_path, "a", methods()), make_run(tmp_path, "b", methods(1.5))
    assert wb.main(["report", str(a), str(b), "--format", "csv", "--out", str(tmp_path / "t")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["method"] == "zero-shot" and float(rows[0]["b:wg"]) == 45.5
    assert float(rows[0]["a:wg_ci_low"]) == pytest.approx(40.96) and rows[0]["a:wg_sd"] == ""
    assert (tmp_path / "t.csv").read_text().startswith("method,a:wg,")
    assert wb.main(["report", str(a), str(b), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "\\multicolumn{3}{c}{" in tex and "\\cmidrule(lr){2-4} \\cmidrule(lr){5-7}" in tex
    assert "zero-shot & 44.0 [41.0,47.0] &" in tex and "45.0 $\\pm$ 3.2" in tex and "\\bottomrule" in tex
    assert wb.main(["report", str(a), "--format", "html", "--metrics", "wg,avg", "--out", str(tmp_path / "h")]) == 0
    page = (tmp_path / "h.html").read_text()
    assert page.startswith('<table class="paper-table"><caption>') and "<th>Avg(sample)</th>" in page
    assert "<th>Gap</th>" not in page and "<th>zero-shot</th><td>44.0 [41.0,47.0]</td>" in page


def test_errors_and_fallback(tmp_path, capsys):
    a = make_run(tmp_path, "a", methods())
    with pytest.raises(wb.WorkbookError, match="no method has the metric"):
        rp.paper_report([a], metrics=["wg", "bogus"])
    wb.write_metrics("00_other", {"x": 1}, tmp_path / "flat")
    with pytest.raises(wb.WorkbookError, match="ltc report --all"):
        rp.paper_report([a, tmp_path / "flat"])
    assert wb.main(["report", str(a), "--metrics", "bogus"]) == 2
    assert "available: " in capsys.readouterr().err
    # a run folder without methods metrics: the flat table, with a note
    assert wb.main(["report", str(tmp_path / "flat")]) == 0
    cap = capsys.readouterr()
    assert "showing every metric (--all)" in cap.err and "| flat " in cap.out
    assert wb.main(["report", str(a), "--all"]) == 0
    assert "zero_shot.wg_ci_low" in capsys.readouterr().out


# ------------------------------------------------------------------------------ regression checks (ltc check)
def test_set_membership_checks_on_fabricated_metrics():
    m = {"paper_rule": {"spurious": ["L10H10", "L11H3", "L11H6"], "salient": ["L11H5"]}, "rule": "topk", "k": 2}
    ok = [("paper_rule.spurious", {"contains": ["L10H10", "L11H3"]}),
          ("paper_rule.salient", {"contains": "L11H5"}),  # a single value is one item
          ("paper_rule.spurious", {"contains_any": ["L0H0", "L11H6"]}),
          ("paper_rule.spurious", {"subset_of": ["L10H10", "L11H3", "L11H6", "L11H0"]}),
          ("paper_rule.salient", {"excludes": ["L10H10", "L11H3"]}),
          ("rule", {"in": ["topk", "threshold"]}), ("k", {"in": [1, 2, 3]})]
    for expr, cond in ok:
        passed, _, msg = wb.parse_check(expr, cond).evaluate(m)
        assert passed, msg
    bad = [("paper_rule.spurious", {"contains": ["L10H10", "L11H5"]}, "missing ['L11H5']"),
           ("paper_rule.spurious", {"contains_any": ["L0H0"]}, "at least one of"),
           ("paper_rule.spurious", {"subset_of": ["L10H10", "L11H3"]}, "nothing outside"),
           ("paper_rule.spurious", {"excludes": ["L11H6"]}, "none of"),
           ("rule", {"in": ["threshold"]}, "is one of"),
           ("paper_rule.spurious", {"in": ["L10H10"]}, "is a list"),
           ("paper_rule.heads", {"contains": ["L10H10"]}, "is missing")]
    for expr, cond, words in bad:
        passed, _, msg = wb.parse_check(expr, cond).evaluate(m)
        assert not passed and words in msg, msg
    assert wb.check_metrics(m, {"paper_rule.spurious": [{"contains": ["L11H3"]}, {"excludes": ["L11H5"]}]}) == []
    for cond, words in (({"contains": [], }, "non-empty"), ({"has": ["a"]}, "unknown operation"),
                        ({"contains": ["a"], "in": ["b"]}, "one operation"), ({"in": [True]}, "strings or numbers")):
        with pytest.raises(ValueError, match=words):
            wb.parse_check("paper_rule.spurious", cond)
    with pytest.raises(ValueError, match="single metric key"):
        wb.parse_check("a - b", {"contains": ["x"]})


def reference_like_metrics():
    """Metrics as a ViT-B-16 Waterbirds run matching the reference's committed outputs would write them."""
    return {"00_explore_benchmark": {"n_images": 4795, "zero_shot": {"avg_sample": 88.9}, "spurious_accuracy": 91.2},
            "02_locate_heads": {"counts": {"n_conflicting": 508, "n_correct": 245, "n_wrong": 263},
                                "paper_rule": {"spurious": ["L10H10", "L11H3", "L11H6"], "salient": ["L11H5"]}},
            "05_compare_methods": {"zero_shot": {"wg": 45.0}, "ltc": {"wg": 70.0}, "ltc_paper_recipe": {"wg": 68.0}},
            "07_train_probes": {"erm_probe": {"wg": 35.2}, "jtt_probe_reference": {"wg": 72.3},
                                "jtt_ltc_over_jtt": 14.1}}


def test_gpu_checks_pass_on_the_reference_numbers_and_fail_off_them(tmp_path, capsys):
    gpu = Path(__file__).resolve().parents[1] / ".github" / "gpu-params.yaml"
    spec = wb.load_params_file(gpu)
    assert spec["notebooks"]["02_locate_heads"] == {"groups": "pseudo"} and spec["defaults"]["locate_split"] == "train"
    good = reference_like_metrics()
    for stem, m in good.items():
        wb.write_metrics(stem, m, tmp_path / "good")
    assert wb.main(["check", str(tmp_path / "good"), "-f", str(gpu)]) == 0
    assert "all checks passed" in capsys.readouterr().out
    bad = reference_like_metrics()
    bad["02_locate_heads"]["paper_rule"]["spurious"] = ["L10H10", "L11H6"]  # L11H3 not located
    bad["05_compare_methods"]["ltc"]["wg"] = 44.0  # LTC below zero-shot
    bad["00_explore_benchmark"]["zero_shot"]["avg_sample"] = 86.0  # off the reference's 88.9 by 2.9
    for stem, m in bad.items():
        wb.write_metrics(stem, m, tmp_path / "bad")
    assert wb.main(["check", str(tmp_path / "bad"), "-f", str(gpu)]) == 1
    out = capsys.readouterr().out
    assert "3 check(s) failed" in out and "missing ['L11H3']" in out
    assert "FAIL 05_compare_methods: ltc.wg - zero_shot.wg = -1" in out


def test_notebook_table_and_ltc_report_show_the_same_cells(tmp_path, capsys):
    """Notebook 05 displays ``paper_table(metrics)``; ``ltc report`` prints the same strings."""
    m = methods()
    run = make_run(tmp_path, "a", m)
    shown = wb.paper_table(m)
    assert wb.main(["report", str(run), "--width", "0"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")][2:]
    printed = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert printed == [[label, *cells] for label, cells in zip(shown.index, shown.values.tolist())]
