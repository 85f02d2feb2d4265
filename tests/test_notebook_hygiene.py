"""Notebook hygiene: every notebook in notebooks/ follows the workbook conventions and is covered by
tests/ci_params.yaml. The checker functions themselves are tested on small in-memory notebooks."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
CI_PARAMS = ROOT / "tests" / "ci_params.yaml"
NOTEBOOKS = wb.list_notebooks(NOTEBOOK_DIR) if NOTEBOOK_DIR.is_dir() else []


# --------------------------------------------------------------------------- the real notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_follows_conventions(path):
    problems = wb.notebook_problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def test_ci_params_cover_every_notebook():
    problems = wb.ci_problems(NOTEBOOKS, CI_PARAMS)
    assert not problems, "tests/ci_params.yaml:\n  " + "\n  ".join(problems)


def test_gpu_params_fit_the_notebooks():
    """The weekly GPU run (.github/gpu-params.yaml) would stop on a parameter no notebook declares."""
    if not NOTEBOOKS:
        pytest.skip("no notebooks in notebooks/ yet")
    problems = wb.ci_problems(NOTEBOOKS, ROOT / ".github" / "gpu-params.yaml", require_entries=False)
    assert not problems, ".github/gpu-params.yaml:\n  " + "\n  ".join(problems)


def test_ci_params_file_has_the_three_sections():
    data = yaml.safe_load(CI_PARAMS.read_text())
    assert set(data) == {"defaults", "notebooks", "checks"}, "ci_params.yaml: keep parameters in the sections"
    assert all(isinstance(data[k] or {}, dict) for k in data)


def test_no_stray_notebooks_outside_the_numbering():
    """A notebook in notebooks/ that the runner would skip (bad name) is caught here."""
    if not NOTEBOOK_DIR.is_dir():
        return
    stray = [p.name for p in NOTEBOOK_DIR.glob("*.ipynb") if p not in NOTEBOOKS]
    assert not stray, f"notebooks the runner ignores (name them NN_verb_object.ipynb): {stray}"


# --------------------------------------------------------------------------- the checkers
NAME = "03_locate_heads.ipynb"


def good_notebook():
    cells = [
        new_markdown_cell("# Locate heads\n\nWhat this notebook does."),
        new_code_cell('model = "ltc-tiny"  # open_clip model name\n'
                      'layers = [2, 3]  # layers to read\n'
                      'threshold = -0.5  # margin cut-off\n'
                      'extra = {"a": (1, 2)}  # a nested literal\n'
                      'output_dir = "outputs"  # run folder', metadata={"tags": ["parameters"]}),
        new_code_cell("import ltcutils as ltc"),
        new_markdown_cell("## Check\n\nNo `%pip install` here: markdown may mention it."),
        new_code_cell("assert threshold < 0"),
        new_code_cell('ltc.workbook.write_metrics("03_locate_heads", {"n": len(layers)}, output_dir)'),
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}})


def test_good_notebook_has_no_problems():
    assert wb.notebook_problems(good_notebook(), NAME) == []
    # a function is allowed in a cell tagged exercise (writing it is the learner's task), and nested defs
    nb = good_notebook()
    _exercise(EXERCISE)(nb)
    nb.cells.insert(5, new_code_cell("result = sorted([3, 1], key=lambda v: -v)\nprint(result)"))
    assert wb.notebook_problems(nb, NAME) == []
    # comments may name what code must not do
    nb = good_notebook()
    nb.cells[1].source += '\ndevice = "cpu"  # "cpu", or "cuda" on a GPU machine; never sys.path'
    assert wb.notebook_problems(nb, NAME) == []


def _set(i, src):
    def f(nb):
        nb.cells[i].source = src
    return f


def _params(src):
    return _set(1, src)


def _kernel(nb):
    nb.metadata.kernelspec.name = "ltc-env"


def _outputs(nb):
    nb.cells[4].outputs = [new_output("stream", name="stdout", text="hi\n")]


def _count(nb):
    nb.cells[4].execution_count = 3


def _two_params(nb):
    nb.cells[4].metadata["tags"] = ["parameters"]


def _no_params(nb):
    nb.cells[1].metadata["tags"] = []


def _injected(nb):
    nb.cells.insert(2, new_code_cell("", metadata={"tags": ["injected-parameters"]}))


def _title_code(nb):
    nb.cells[0] = new_code_cell("# Locate heads")


def _markdown_params(nb):
    nb.cells[1] = new_markdown_cell("model = 1  # x", metadata={"tags": ["parameters"]})


EXERCISE = "def f(x):\n    \"\"\"Double x.\"\"\"\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION"


def _exercise(src, declare=True):
    def f(nb):
        nb.cells[4] = new_code_cell(src, metadata={"tags": ["exercise"]})
        if declare:
            nb.cells[1].source += '\nexercises = "solution"  # "solution" or "learner" (stubs)'
    return f


BAD = {
    "title_not_heading": (_set(0, "Locate heads"), "first cell must be markdown starting with '# '"),
    "title_in_code_cell": (_title_code, "first cell must be markdown"),
    "uncommented": (_params('model = "ltc-tiny"  # name\nlayers = [2, 3]\noutput_dir = "o"  # x'),
                    "'layers' has no comment"),
    "not_literal": (_params("n = 2 * 3  # computed\noutput_dir = 'o'  # x"), "'n' is not a literal value"),
    "call_value": (_params("import os\noutput_dir = 'o'  # x"), "line 1: only `name = value  # comment`"),
    "syntax": (_params("n = = 1  # x"), "syntax error on line 1"),
    "twice": (_params("n = 1  # x\nn = 2  # y"), "'n' is assigned twice"),
    "empty": (_params("# nothing"), "declares no parameters"),
    "kernel": (_kernel, "kernelspec name is 'ltc-env'"),
    "outputs": (_outputs, "cell 4: has outputs committed"),
    "exec_count": (_count, "cell 4: has an execution count committed"),
    "two_param_cells": (_two_params, "exactly one cell tagged 'parameters', found 2 (cells [1, 4])"),
    "no_param_cell": (_no_params, "exactly one cell tagged 'parameters', found 0"),
    "markdown_params": (_markdown_params, "cell 1: the 'parameters' cell must be a code cell"),
    "injected": (_injected, "cell 2: a papermill 'injected-parameters' cell is committed"),
    "pip": (_set(2, "%pip install seaborn\nimport ltcutils as ltc"), "cell 2: installs packages"),
    "bang_pip": (_set(2, "import ltcutils as ltc\n!pip install x"), "cell 2: installs packages"),
    "sys_path": (_set(2, "import sys\nsys.path.insert(0, '..')"), "cell 2: touches sys.path"),
    "chdir": (_set(2, "import os\nos.chdir('..')"), "cell 2: changes directory"),
    "cd_magic": (_set(2, "%cd ..\nimport ltcutils as ltc"), "cell 2: changes directory"),
    "gpu_literal": (_set(2, "import ltcutils as ltc\ndev = 'cuda:0'"), "cell 2: hard-codes a GPU device"),
    "no_metrics": (_set(5, "print(layers)"), "cell 5: the last code cell must write the metrics"),
    "wrong_stem": (_set(5, 'ltc.workbook.write_metrics("02_locate_heads", {}, output_dir)'),
                   "write_metrics('02_locate_heads', ...) does not match the notebook's stem '03_locate_heads'"),
    "papermill_unreadable": (_params('mode = "a"  # "a" or "b" (set with MODE=b)\noutput_dir = "o"  # run folder'),
                             "papermill cannot read 'mode'"),
    "def_in_cell": (_set(4, "def helper(x):\n    return 2 * x\n\nassert helper(threshold) < 0"),
                    "cell 4, line 1: defines function 'helper'; logic belongs in ltcutils"),
    "class_in_cell": (_set(4, "class Box:\n    pass"), "cell 4, line 1: defines class 'Box'"),
    "exercise_without_markers": (_exercise("def f(x):\n    return 2 * x"), "tagged 'exercise' but has no"),
    "exercise_unclosed": (_exercise("def f(x):\n    # BEGIN SOLUTION\n    return 2 * x"), "exercise markers: "),
    "exercise_without_parameter": (_exercise(EXERCISE, declare=False), "declares no `exercises`"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_notebook_is_caught(case):
    mutate, expected = BAD[case]
    nb = copy.deepcopy(good_notebook())
    mutate(nb)
    problems = wb.notebook_problems(nb, NAME)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("name", ["3_locate_heads.ipynb", "03_Locate_Heads.ipynb", "03_locate.ipynb",
                                  "03-locate-heads.ipynb", "03_locate_heads_.ipynb"])
def test_bad_file_names(name):
    problems = wb.notebook_problems(good_notebook(), name)
    assert any("does not follow NN_verb_object.ipynb" in p for p in problems), problems


def test_notebook_problems_reads_a_path(tmp_path):
    path = tmp_path / NAME
    nbformat.write(good_notebook(), str(path))
    assert wb.notebook_problems(path) == []
    bad = tmp_path / "3_x.ipynb"
    nbformat.write(good_notebook(), str(bad))
    problems = wb.notebook_problems(bad)
    assert len(problems) == 2 and "file name '3_x.ipynb'" in problems[0] and "does not match" in problems[1]


def test_ci_problems(tmp_path):
    a = tmp_path / "01_make_data.ipynb"
    b = tmp_path / NAME
    nb = good_notebook()
    nbformat.write(nb, str(b))
    nb.cells[1].source = "n_per_group = 10  # images per group\noutput_dir = 'o'  # run folder"
    nbformat.write(nb, str(a))
    good = {"defaults": {"model": "ltc-tiny"},
            "notebooks": {"01_make_data": {"n_per_group": 4}, "03_locate_heads": {}},
            "checks": {"03_locate_heads": {"n": ">= 1"}}}
    assert wb.ci_problems([a, b], good) == []

    def problems_with(**change):
        spec = copy.deepcopy(good)
        for k, v in change.items():
            spec[k] = v
        return wb.ci_problems([a, b], spec)

    p = problems_with(notebooks={"01_make_data": {}})
    assert p == ["03_locate_heads: no entry under `notebooks:` in the CI parameters file; add "
                 "`03_locate_heads: {...}` with small parameters (or `{}`)"]
    p = problems_with(notebooks={"01_make_data": {"n_per_grup": 4}, "03_locate_heads": {}})
    assert len(p) == 1 and "CI parameter 'n_per_grup' is not declared" in p[0] and "n_per_group" in p[0]
    p = problems_with(notebooks={"01_make_data": {"output_dir": "x"}, "03_locate_heads": {}})
    assert len(p) == 1 and "which the runner sets" in p[0]
    p = problems_with(defaults={"modle": "x"})
    assert p == ["defaults: CI parameter 'modle' is declared by no notebook"]
    p = problems_with(checks={"09_gone_stage": {"n": "> 0"}})
    assert len(p) == 1 and "checks: entry '09_gone_stage' names no notebook" in p[0]
    p = problems_with(checks={"03_locate_heads": {"n": "at least 1"}})
    assert len(p) == 1 and "checks: 03_locate_heads" in p[0] and "is not 'OP NUMBER'" in p[0]
    assert wb.ci_problems([a, b], {"notebooks": {"01_make_data": {"n_per_grup": 1}}}, require_entries=False) \
        == ["01_make_data: CI parameter 'n_per_grup' is not declared by the notebook (it declares: n_per_group, "
            "output_dir)"]
    assert wb.ci_problems([a], {"notebooks": 3}) == ["parameters mapping: section 'notebooks' must be a mapping, "
                                                      "got int"]


def test_early_notebooks_set_checked_exercises():
    """Notebooks 01-04 hold at least two exercises each; each is followed by its checker in the
    notebook's mode, and together they use every checker of ltcutils.exercises."""
    from ltcutils import exercises

    used = set()
    early = [p for p in NOTEBOOKS if p.name[:2] in ("01", "02", "03", "04")]
    assert len(early) == 4, [p.name for p in early]
    for path in early:
        cells = nbformat.read(str(path), as_version=4).cells
        at = [i for i, c in enumerate(cells) if "exercise" in c.metadata.get("tags", [])]
        assert len(at) >= 2, f"{path.name}: {len(at)} exercise cell(s), the course needs at least two"
        for i in at:
            check = cells[i + 1].source
            assert "ltc.exercises.check_" in check and "mode=exercises" in check, \
                f"{path.name} cell {i + 1}: an exercise must be followed by its checker, in the notebook's mode"
            used |= {name for name, fn in exercises.CHECKERS.items() if f"ltc.exercises.{fn.__name__}(" in check}
    assert used == set(exercises.CHECKERS), f"checkers no notebook uses: {set(exercises.CHECKERS) - used}"
