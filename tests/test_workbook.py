"""The workbook runner (ltcutils.workbook) on a tiny fixture notebook: parameters, files, metrics,
errors, the report and the CLI. Each papermill run starts a kernel (about 1-4 s): four in all."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "nb" / "00_demo_fixture.ipynb"


def write_nb(path: Path, params_src: str, *code: str) -> Path:
    """A small notebook: title, a parameters cell, then the given code cells."""
    cells = [new_markdown_cell(f"# {path.stem}"), new_code_cell(params_src, metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(c) for c in code]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, str(path))
    return path


# ------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the fixture: one through the API (file + params), one through the CLI."""
    base = tmp_path_factory.mktemp("runs")
    pfile = base / "params.yaml"
    pfile.write_text("label: from_file\nnotebooks:\n  00_demo_fixture:\n    scale: 3.0\n    n: 9\n")
    r1 = wb.run_workbook([FIXTURE], params={"n": 5}, params_file=pfile, out=base / "r1", progress=False)
    rc = wb.main(["run", str(FIXTURE), "-p", "n", "4", "--out", str(base / "r2"), "-q"])
    return base, r1, rc


def test_run_injects_parameters_and_writes_metrics(runs):
    base, r1, _ = runs
    out = (base / "r1").resolve()
    assert r1.ok and r1.out == out
    run = r1["00_demo_fixture"]
    assert run.status == "ok" and run.seconds > 0
    # -p beats the per-notebook section (n: 9), which beats the top level; scale from the section
    assert run.parameters == {"label": "from_file", "scale": 3.0, "n": 5, "output_dir": str(out)}
    m = json.loads((out / "metrics" / "00_demo_fixture.json").read_text())
    # total = scale * (0+1+2+3+4) = 3 * 10
    assert m["n"] == 5 and m["total"] == 30.0 and m["label"] == "from_file"
    assert m["nested"] == {"half": 15.0, "deep": {"n_squared": 25}}
    assert r1.metrics == {"00_demo_fixture": m}
    # relative paths land in the run folder (cwd), output_dir points there as well
    assert m["cwd"] == str(out)
    assert (out / "relative_marker.txt").read_text() == "from_file"
    assert (out / "items.txt").read_text().split() == ["0", "1", "2", "3", "4"]
    executed = nbformat.read(str(out / "00_demo_fixture.ipynb"), as_version=4)
    assert executed.metadata.papermill.parameters == run.parameters
    assert sum("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells) == 1
    manifest = json.loads((out / wb.MANIFEST).read_text())
    assert manifest["ok"] and manifest["notebooks"][0]["parameters"]["n"] == 5
    assert "00_demo_fixture" in r1.summary() and "all ok" in r1.summary()


def test_kernel_runs_this_interpreter(runs):
    """The notebook kernel is the interpreter that runs the runner (the project venv's python)."""
    _, r1, _ = runs
    assert r1["00_demo_fixture"].metrics["python"] == sys.executable
    assert r1.python == sys.executable == wb.kernel_interpreter("python3")


def test_cli_run_and_report_merge_two_runs(runs, capsys):
    base, _, rc = runs
    assert rc == 0
    m2 = json.loads((base / "r2" / "metrics" / "00_demo_fixture.json").read_text())
    assert m2["total"] == 12.0 and m2["label"] == "demo"  # 2.0 * (0+1+2+3), defaults elsewhere

    df = wb.report([base / "r1", base / "r2"], out=base / "cmp")
    assert list(df["run"]) == ["r1", "r2"] and list(df["notebook"]) == ["00_demo_fixture"] * 2
    assert list(df["status"]) == ["ok", "ok"]
    assert list(df["total"]) == [30.0, 12.0]
    assert list(df["nested.deep.n_squared"]) == [25, 16]
    assert list(df["param.n"]) == [5, 4]
    assert list(df["param.scale"]) == [3.0, 2.0]  # r2: the notebook's default, read from its source
    assert list(df["param.label"]) == ["from_file", "demo"]
    assert "param.output_dir" not in df.columns
    assert list(df.columns[:4]) == ["run", "notebook", "status", "seconds"]
    back = pd.read_csv(base / "cmp.csv")
    assert list(back["total"]) == [30.0, 12.0] and list(back["param.n"]) == [5, 4]
    md = (base / "cmp.md").read_text().splitlines()
    assert md[0].startswith("| run ") and len(md) == 4
    assert "| r1 " in md[2] and "from_file" in md[2]

    capsys.readouterr()
    assert wb.main(["report", str(base / "r1"), str(base / "r2")]) == 0
    printed = capsys.readouterr().out
    assert "| r2 " in printed and "nested.half" in printed


def test_failing_notebook_stops_the_run_and_names_the_cell(tmp_path):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    shutil.copy(FIXTURE, nbdir / FIXTURE.name)
    write_nb(nbdir / "01_fail_here.ipynb", "k = 2  # divisor\noutput_dir = '.'  # run folder",
             # reads what 00 wrote through output_dir: a missing file would fail in this cell instead
             "from pathlib import Path\nitems = Path(output_dir, 'items.txt').read_text().split()\n"
             "assert items == ['0', '1', '2'], items",
             "values = [1, 2, 3]  # the failing cell\nratio = values[0] / (k - k)",
             "never = True")
    write_nb(nbdir / "02_never_run.ipynb", "output_dir = '.'  # run folder", "x = 1")
    out = tmp_path / "run"
    stale = out / "metrics" / "01_fail_here.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    with pytest.raises(wb.NotebookFailed) as info:
        wb.run_workbook(notebooks_dir=nbdir, out=out, params={"k": 3}, progress=False)
    e = info.value
    assert e.notebook == "01_fail_here"
    assert e.cell_index == 3  # index in the source notebook: title, parameters, reader, failing cell
    assert e.ename == "ZeroDivisionError" and e.source_line == "values = [1, 2, 3]  # the failing cell"
    msg = str(e)
    assert "01_fail_here.ipynb failed at cell index 3" in msg
    assert "raised at: ratio = values[0] / (k - k)" in msg and "ZeroDivisionError" in msg
    assert str(out.resolve() / "01_fail_here.ipynb") in msg
    partial = nbformat.read(str(e.output), as_version=4)
    assert any(o.get("ename") == "ZeroDivisionError" for c in partial.cells for o in c.get("outputs", []))
    res = e.result
    assert [n.status for n in res.notebooks] == ["ok", "failed", "not run"]
    assert res["00"].metrics["n"] == 3 and res["01_fail_here"].parameters["k"] == 3
    assert not stale.exists()  # the old metrics of a rerun notebook are gone
    assert not (out / "02_never_run.ipynb").exists()
    assert "FAILED" in res.summary()


# ------------------------------------------------------------------------- no kernel needed
def test_unknown_parameter_is_an_error_listing_valid_names(tmp_path, capsys):
    with pytest.raises(wb.ParameterError, match=r"\['nn'\].*\n.*00_demo_fixture: label, n, scale") as info:
        wb.run_workbook([FIXTURE], params={"nn": 1}, out=tmp_path / "x", progress=False)
    assert "output_dir" not in str(info.value)
    assert not (tmp_path / "x").exists()  # nothing ran, nothing was created
    assert wb.main(["run", str(FIXTURE), "-p", "nn", "1", "--out", str(tmp_path / "y")]) == 2
    assert "unknown parameter(s) ['nn']" in capsys.readouterr().err


@pytest.mark.parametrize("params, pfile, match", [
    ({}, {"nope": 1}, r"in the parameters file: no notebook declares"),
    ({}, {"notebooks": {"00_demo_fixture": {"m": 1}}}, r"\['m'\] for notebook 00_demo_fixture.*label, n, scale"),
    ({}, {"notebooks": {"07_missing": {"n": 1}}}, r"section for notebook '07_missing'"),
    ({"output_dir": "/tmp"}, None, r"set by the runner"),
    ({}, {"notebooks": {"00_demo_fixture": {"output_dir": "x"}}}, r"set by the runner"),
    ({"n": {1, 2}}, None, r"type set"),
    ({}, {"n": 1, "defaults": {"n": 2}}, r"both at top level and under defaults"),
    ({}, {"notebooks": [1]}, r"section 'notebooks' must be a mapping"),
])
def test_parameter_errors(params, pfile, match):
    with pytest.raises(wb.ParameterError, match=match):
        wb.resolve_parameters([FIXTURE], params, pfile)


def test_resolve_parameters_precedence_and_scope(tmp_path):
    other = write_nb(tmp_path / "01_other_step.ipynb", "seed = 0  # seed\nn = 1  # count", "x = 1")
    spec = {"defaults": {"seed": 7}, "label": "top", "n": 10,
            "notebooks": {"01_other_step": {"n": 20}}, "checks": {"00_demo_fixture": {"n": "> 0"}}}
    got = wb.resolve_parameters([FIXTURE, other], {"scale": 5.0}, spec)
    assert got == {"00_demo_fixture": {"label": "top", "n": 10, "scale": 5.0},
                   "01_other_step": {"seed": 7, "n": 20}}
    # a file default declared only by a notebook outside the selection is fine ...
    assert wb.resolve_parameters([FIXTURE], None, {"seed": 1}, all_notebooks=[FIXTURE, other]) == \
        {"00_demo_fixture": {}}
    # ... a command-line parameter is not: it must reach a selected notebook
    with pytest.raises(wb.ParameterError, match=r"\['seed'\] on the command line"):
        wb.resolve_parameters([FIXTURE], {"seed": 1}, None, all_notebooks=[FIXTURE, other])


def test_select_and_list_notebooks(tmp_path):
    for name in ["02_b_c.ipynb", "01_a_b.ipynb", "10_x_y.ipynb", "notes.ipynb", "1_bad.ipynb", "03_a.txt"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in wb.list_notebooks(tmp_path)] == ["01_a_b.ipynb", "02_b_c.ipynb", "10_x_y.ipynb"]
    assert [p.name for p in wb.select_notebooks(["10", "01_a_b"], tmp_path)] == ["01_a_b.ipynb", "10_x_y.ipynb"]
    assert wb.select_notebooks([FIXTURE], tmp_path) == [FIXTURE.resolve()]
    assert wb.select_notebooks(None, tmp_path) == wb.list_notebooks(tmp_path)
    with pytest.raises(wb.WorkbookError, match="'05' matches no notebook.*Available: 01_a_b, 02_b_c, 10_x_y"):
        wb.select_notebooks(["05"], tmp_path)
    (tmp_path / "01_a_c.ipynb").write_text("{}")
    with pytest.raises(wb.WorkbookError, match="'01' is ambiguous"):
        wb.select_notebooks(["01"], tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wb.list_notebooks(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(wb.WorkbookError, match="no notebooks"):
        wb.select_notebooks(None, empty)


def test_notebook_parameters_of_the_fixture():
    p = wb.notebook_parameters(FIXTURE)
    assert list(p) == ["n", "scale", "label", "output_dir"]
    assert p["n"]["default"] == "3" and p["label"]["help"] == "a string parameter, echoed in the metrics"


def test_fixture_notebook_is_hygienic():
    assert wb.notebook_problems(FIXTURE) == []


def test_write_metrics_converts_and_is_atomic(tmp_path):
    metrics = {"a": np.float32(0.5), "b": np.int64(3), "c": torch.tensor(2.5), "d": torch.tensor([1, 2]),
               "e": np.array([[1.0, 2.0]]), "f": float("nan"), "g": {"h": np.bool_(True), 4: (1, 2)},
               "p": tmp_path / "x"}
    path = wb.write_metrics("05_some_stage.ipynb", metrics, tmp_path)
    assert path == tmp_path / "metrics" / "05_some_stage.json"
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 3, "c": 2.5, "d": [1, 2], "e": [[1.0, 2.0]],
                                            "f": None, "g": {"h": True, "4": [1, 2]}, "p": str(tmp_path / "x")}
    assert sorted(p.name for p in path.parent.iterdir()) == ["05_some_stage.json"]  # no temp file left
    assert wb.write_metrics(tmp_path / "nb" / "05_some_stage.ipynb", {"z": 1}, tmp_path) == path
    assert wb.read_metrics(tmp_path) == {"05_some_stage": {"z": 1}}
    with pytest.raises(TypeError, match="mapping"):
        wb.write_metrics("05_x", [1, 2], tmp_path)
    with pytest.raises(TypeError, match=r"metrics.o: cannot write a value of type object"):
        wb.write_metrics("05_x", {"o": object()}, tmp_path)
    assert not (tmp_path / "metrics" / "05_x.json").exists()


def test_flatten_and_markdown_table():
    assert wb.flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}}) == {"a": 1, "b.c": 2, "b.d.e": 3}
    df = pd.DataFrame({"run": ["x", "y|z"], "wg": [0.12345, float("nan")], "n": [3, 10]})
    assert wb.markdown_table(df) == (
        "| run  |     wg |   n |\n"
        "| ---- | -----: | --: |\n"
        "| x    | 0.1235 |   3 |\n"
        "| y\\|z |        |  10 |")


@pytest.mark.parametrize("expr, cond, passed", [
    ("wg", ">= 0.5", True), ("wg", "> 0.6", False), ("ltc.wg - zero.wg", ">= 0.25", True),
    ("ltc.wg - zero.wg", "> 0.3", False), ("ltc.wg + zero.wg", "== 0.9 +- 1e-9", True),
    ("n", "== 3", True), ("n", "!= 3", False), ("ok", "== true", True), ("ok", "== false", False),
    ("wg", "< 1e3", True), ("wg", "<= -1", False),
])
def test_checks(expr, cond, passed):
    metrics = {"wg": 0.6, "n": 3, "ok": True, "ltc": {"wg": 0.6}, "zero": {"wg": 0.3}}
    assert (wb.check_metrics(metrics, {expr: cond}) == []) is passed


def test_check_messages_and_format_errors():
    metrics = {"wg": 0.6, "name": "x", "bad": None}
    assert wb.check_metrics(metrics, {"wg": [">= 0", "> 0.7"]}) == ["wg = 0.6, expected > 0.7"]
    assert "metric 'gone' is missing; have: bad, name, wg" in wb.check_metrics(metrics, {"gone": "> 0"})[0]
    assert "is not a number" in wb.check_metrics(metrics, {"name": "> 0"})[0]
    assert "is null" in wb.check_metrics(metrics, {"bad": "> 0"})[0]
    for expr, cond in [("__import__('os').system('true')", "> 0"), ("wg", "0.5"), ("wg", ">= x"),
                       ("wg", 0.5), ("wg", "> 1 +- 2"), ("a - b", "== true"), ("wg; x", "> 0")]:
        with pytest.raises(ValueError):
            wb.parse_check(expr, cond)
