"""Notebook regression tests: run the whole workbook once with the small CI parameters of
tests/ci_params.yaml (stages share one run folder, in order), then one test per notebook asserts
that it ran and that its metrics pass its checks.

Set LTC_CI_OUT=runs/ci to keep the run folder for inspection (default: a pytest temp folder)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ltcutils import workbook as wb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
CI_PARAMS = ROOT / "tests" / "ci_params.yaml"
NOTEBOOKS = wb.list_notebooks(NOTEBOOK_DIR) if NOTEBOOK_DIR.is_dir() else []


def wb_read(path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """The whole workbook, run once with the CI parameters (a failure stops it, recorded)."""
    out = Path(os.environ["LTC_CI_OUT"]) if os.environ.get("LTC_CI_OUT") else tmp_path_factory.mktemp("ci") / "run"
    return wb.run_workbook(params_file=CI_PARAMS, out=out, notebooks_dir=NOTEBOOK_DIR, raise_on_error=False)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(ci_run, path):
    run = ci_run[path.stem]
    if run.status == "not run":
        failed = next(n for n in ci_run.notebooks if n.status == "failed")
        pytest.fail(f"{path.stem} did not run because {failed.name} failed earlier:\n{failed.error}")
    assert run.status == "ok", run.error
    assert run.metrics_path is not None, (
        f"{path.stem} wrote no metrics/{path.stem}.json; its last cell must call "
        f"ltc.workbook.write_metrics({path.stem!r}, metrics, output_dir)")
    checks = wb.load_params_file(CI_PARAMS)["checks"].get(path.stem, {})
    failures = wb.check_metrics(run.metrics, checks)
    assert not failures, f"{path.stem} (run folder {ci_run.out}):\n  " + "\n  ".join(failures)


EXERCISE_NOTEBOOKS = [p for p in NOTEBOOKS
                      if any("exercise" in c.get("metadata", {}).get("tags", []) for c in wb_read(p).cells)] \
    if NOTEBOOKS else []


@pytest.fixture(scope="session")
def learner_run(tmp_path_factory):
    """Notebooks 01-04 as a class gets them (``-p exercises learner``: the runner stubs every exercise)."""
    out = tmp_path_factory.mktemp("learner") / "run"
    return wb.run_workbook(EXERCISE_NOTEBOOKS, params={"exercises": "learner", "n_per_group": 20},
                           params_file=CI_PARAMS, out=out, notebooks_dir=NOTEBOOK_DIR, raise_on_error=False)


@pytest.mark.notebook
@pytest.mark.parametrize("path", EXERCISE_NOTEBOOKS, ids=[p.stem for p in EXERCISE_NOTEBOOKS])
def test_learner_mode_shows_the_checker_message_not_a_traceback(learner_run, path):
    """With the stubs in place every exercise's check says 'not written yet' and the notebook runs on."""
    import nbformat

    run = learner_run[path.stem]
    assert run.status == "ok", run.error
    executed = nbformat.read(str(run.output), as_version=4)
    stubs = [c for c in executed.cells if "exercise" in c.metadata.get("tags", [])]
    assert stubs and all("NotImplementedError" in c.source and "# BEGIN SOLUTION" not in c.source for c in stubs)
    text = "\n".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    messages = [line for line in text.splitlines() if line.startswith("NOT YET ")]
    assert len(messages) == len(stubs), messages
    assert all("not written yet" in m for m in messages), messages
    assert not any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
