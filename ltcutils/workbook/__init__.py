"""Run the workbook's notebooks with parameters, check them, and merge the metrics they write.

The workbook is the numbered notebooks in ``notebooks/`` (``NN_verb_object.ipynb``). The runner
executes them top to bottom through papermill, in file-name order, into one *run folder*, so
that each stage can read the files the earlier stages wrote there.

Commands (``ltc`` is installed with the package; ``python -m ltcutils.workbook`` is the same)::

    ltc run                                    # every notebook, default parameters -> runs/run-<time>/
    ltc run 02                                 # one notebook, by number prefix (or stem, or path)
    ltc run 02 03 -p n_per_group 100 --out runs/small     # parameters from the command line
    ltc run -f my_params.yaml --out runs/b16   # parameters from a YAML file
    ltc report runs/small runs/b16                        # methods x (WG, Avg, Gap) per run, with 95% CIs
    ltc report runs/small --format latex --metrics wg,avg_group   # also md (default), csv, html
    ltc report runs/small runs/b16 --all --out runs/compare       # every metric -> runs/compare.csv, .md
    ltc sweep -f grid.yaml                     # every point of a parameter grid; resumable; mean +- sd over seeds
    ltc html runs/small runs/b16               # one self-contained HTML page (table, figures, notebooks)
    ltc check runs/small -f tests/ci_params.yaml          # assert on the metrics (its checks:)
    ltc params                                 # the parameters each notebook declares
    ltc lint                                   # notebook hygiene (what tests/test_notebook_hygiene.py checks)

Parameters
    A notebook declares its parameters in its one cell tagged ``parameters``
    (``name = literal  # what it means``). ``-p NAME VALUE`` values are parsed as YAML
    (``-p n 100`` is an int, ``-p layers "[9, 10, 11]"`` a list, ``-p device cpu`` a string).
    A parameters file is YAML::

        model: ViT-B-16              # top-level keys: given to every notebook that declares them
        defaults: {seed: 0}          # the same, grouped (optional)
        notebooks:                   # per-notebook values (optional), keyed by notebook stem
          02_locate_heads: {k_cap: 4}
        checks:                      # ignored by ``ltc run``; used by ``ltc check`` and CI
          05_compare_methods: {"ltc.wg - zero_shot.wg": ">= 15"}

    Later sources win: file top-level/defaults < file ``notebooks:`` section < ``-p``.
    An unknown name is an error (papermill alone only warns): a ``-p`` name must be declared
    by at least one selected notebook, a top-level file name by at least one notebook of the
    workbook, and a per-notebook name by that notebook. The error lists the valid names.

The run folder (``--out``; default ``runs/run-<date>-<time>``)
    * ``NN_name.ipynb``: the executed notebooks (with their outputs and papermill metadata,
      including the injected parameters under ``metadata.papermill.parameters``);
    * whatever the notebooks write: each runs with the run folder as its working directory, and
      every notebook that declares a parameter ``output_dir`` receives the run folder's absolute
      path there (``output_dir`` is reserved: set it with ``--out``);
    * ``metrics/<notebook stem>.json``: the metrics convention. The last code cell of every
      notebook calls :func:`write_metrics` (``ltc.workbook.write_metrics("02_locate_heads",
      metrics, output_dir)``); the runner deletes a notebook's old metrics file before running
      it, so a metrics file in the folder always comes from the latest run of its notebook;
    * ``ltc_run.json``: what ran, with which parameters, how long, and the outcome. It is the
      only source of the report's ``status`` column: rewritten atomically before each notebook
      (``running``) and after it (``ok`` only when the runner saw it finish; ``failed`` for a
      raised cell or a dead kernel; ``interrupted`` for Ctrl-C). A record still saying
      ``running`` when no run holds the folder reads as ``interrupted`` (a killed runner);
    * ``.ltc_run.lock``: held (``flock``) by the run writing into the folder; a second run into
      the same folder is refused, naming the process that holds it.

A failing notebook stops the run: the error names the notebook, the cell (index in the source
notebook, execution count, first source line), the exception, and the partially executed
notebook to open. Notebooks run in the kernel ``python3``, which jupyter_client maps to the
interpreter that runs ``ltc`` (so ``.venv/bin/ltc`` runs notebooks in ``.venv/bin/python``);
the runner refuses to start when a user-level kernelspec would send them to another interpreter.

Library use::

    >>> from ltcutils import workbook
    >>> result = workbook.run_workbook(["02"], params={"n_per_group": 100}, out="runs/small")  # doctest: +SKIP
    >>> result.ok, result["02_locate_heads"].seconds                                        # doctest: +SKIP
    >>> table = workbook.report(["runs/small", "runs/b16"], out="runs/compare")             # doctest: +SKIP
    >>> print(workbook.paper_report(["runs/small", "runs/b16"]).render("md"))              # doctest: +SKIP
    >>> sweep = workbook.run_sweep("grid.yaml")  # ltcutils.workbook.sweep: the grid format  # doctest: +SKIP
    >>> workbook.html_report(["runs/small"])     # -> runs/small/report.html               # doctest: +SKIP

Metric checks (``checks:`` in a YAML file): ``{EXPRESSION: CONDITION}`` per notebook, where
EXPRESSION is a metric key (nested keys joined by dots) or two keys joined by `` - `` or `` + ``
(spaces required), and CONDITION is ``OP NUMBER`` with OP one of ``>= > <= < == !=``, NUMBER a
number or ``true``/``false``, optionally ``== NUMBER +- TOLERANCE``; or, for a metric that is a
list, a set condition ``{contains: [L10H10, L11H3]}`` (also ``contains_any``, ``subset_of``,
``excludes``, and ``in`` for a single value; see :mod:`ltcutils.workbook.checks`). A list of
conditions is allowed. Nothing is evaluated as code.
"""

from .base import MANIFEST, METRICS_DIR, NOTEBOOK_FILE, NOTEBOOK_NAME, OUTPUT_DIR, NotebookFailed, ParameterError, WorkbookError
from .checks import Check, check_metrics, parse_check
from .cli import main
from .execution import NotebookRun, RunResult, kernel_interpreter, run_workbook
from .lint import ci_problems, notebook_problems
from .notebooks import default_notebooks_dir, list_notebooks, notebook_parameters, select_notebooks
from .parameters import load_params_file, resolve_parameters
from .report import PaperTable, markdown_table, paper_report, paper_table, report
from .results import flatten, metrics_path, read_metrics, write_metrics
from .html import html_report
from .sweep import load_grid, run_sweep

__all__ = [
    "WorkbookError",
    "ParameterError",
    "NotebookFailed",
    "NotebookRun",
    "RunResult",
    "Check",
    "list_notebooks",
    "default_notebooks_dir",
    "select_notebooks",
    "notebook_parameters",
    "load_params_file",
    "resolve_parameters",
    "kernel_interpreter",
    "run_workbook",
    "write_metrics",
    "read_metrics",
    "metrics_path",
    "flatten",
    "report",
    "markdown_table",
    "paper_table",
    "paper_report",
    "PaperTable",
    "run_sweep",
    "load_grid",
    "html_report",
    "parse_check",
    "check_metrics",
    "notebook_problems",
    "ci_problems",
    "main",
]
