"""Run the workbook's notebooks with parameters, check them, and merge the metrics they write.

The workbook is the numbered notebooks in ``notebooks/`` (``NN_verb_object.ipynb``). The runner
executes them top to bottom through papermill, in file-name order, into one *run folder*, so
that each stage can read the files the earlier stages wrote there.

Commands (``ltc`` is installed with the package; ``python -m ltcutils.workbook`` is the same)::

    ltc run                                    # every notebook, default parameters -> runs/run-<time>/
    ltc run 02                                 # one notebook, by number prefix (or stem, or path)
    ltc run 02 03 -p n_per_group 100 --out runs/small     # parameters from the command line
    ltc run -f my_params.yaml --out runs/b16   # parameters from a YAML file
    ltc report runs/small runs/b16 --out runs/compare     # -> runs/compare.csv, runs/compare.md
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
    * ``ltc_run.json``: what ran, with which parameters, how long, and the outcome.

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

Metric checks (``checks:`` in a YAML file): ``{EXPRESSION: CONDITION}`` per notebook, where
EXPRESSION is a metric key (nested keys joined by dots) or two keys joined by `` - `` or `` + ``
(spaces required), and CONDITION is ``OP NUMBER`` with OP one of ``>= > <= < == !=``, NUMBER a
number or ``true``/``false``, optionally ``== NUMBER +- TOLERANCE``. A list of conditions is
allowed. Nothing is evaluated as code.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import math
import os
import re
import shutil
import sys
import time
import tokenize
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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
    "parse_check",
    "check_metrics",
    "notebook_problems",
    "ci_problems",
    "main",
]

NOTEBOOK_FILE = re.compile(r"^\d\d_.+\.ipynb$")
"""Which files are workbook notebooks: two digits, an underscore, anything, ``.ipynb``."""
NOTEBOOK_NAME = re.compile(r"^\d\d_[a-z][a-z0-9]*(?:_[a-z0-9]+)+\.ipynb$")
"""The naming rule the hygiene check enforces: ``NN_verb_object.ipynb`` in lower case."""
OUTPUT_DIR = "output_dir"
METRICS_DIR = "metrics"
MANIFEST = "ltc_run.json"
RESERVED_KEYS = ("defaults", "notebooks", "checks")
_PYTHON_NAMES = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}


class WorkbookError(RuntimeError):
    """A workbook run could not start or did not finish."""


class ParameterError(WorkbookError, ValueError):
    """A parameter name or value that no selected notebook accepts."""


class NotebookFailed(WorkbookError):
    """A notebook raised; attributes say where (``notebook``, ``cell_index``, ``output``)."""

    def __init__(self, message: str, *, notebook: str, cell_index: int | None = None,
                 source_line: str | None = None, ename: str | None = None,
                 evalue: str | None = None, output: Path | None = None,
                 result: "RunResult | None" = None):
        super().__init__(message)
        self.notebook = notebook
        self.cell_index = cell_index
        self.source_line = source_line
        self.ename = ename
        self.evalue = evalue
        self.output = output
        self.result = result


# ---------------------------------------------------------------------------------- notebooks
def default_notebooks_dir() -> Path:
    """``./notebooks`` when it exists, else the ``notebooks/`` folder next to the package."""
    here = Path.cwd() / "notebooks"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "notebooks"


def list_notebooks(directory: str | os.PathLike) -> list[Path]:
    """The workbook notebooks (``NN_*.ipynb``) in ``directory``, sorted by file name.

    Args:
        directory: a folder (``notebooks/``, or a run folder holding executed notebooks).
    Returns:
        paths, sorted by name; other files and checkpoints are ignored.
    Raises:
        FileNotFoundError: ``directory`` is not a folder.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"notebook folder {str(d)!r} does not exist; pass the folder that holds "
                                "the NN_*.ipynb notebooks (--notebooks-dir)")
    return sorted(p for p in d.iterdir() if p.is_file() and NOTEBOOK_FILE.match(p.name))


def select_notebooks(selection: Sequence[str | os.PathLike] | None,
                     notebooks_dir: str | os.PathLike) -> list[Path]:
    """Resolve a selection (paths, stems or number prefixes like ``"02"``) to notebook paths.

    Args:
        selection: ``None`` or empty for every notebook in ``notebooks_dir``; else items that are
            a path to an ``.ipynb`` file, a stem (``02_locate_heads``) or a number prefix (``02``).
        notebooks_dir: where stems and prefixes are looked up.
    Returns:
        the notebooks, deduplicated and sorted by file name (stages run in order).
    Raises:
        WorkbookError: an item matches no notebook, or two chosen notebooks share a stem.
    """
    if not selection:
        found = list_notebooks(notebooks_dir)
        if not found:
            raise WorkbookError(f"no notebooks (NN_*.ipynb) in {str(notebooks_dir)!r}; "
                                "pass --notebooks-dir or name the notebooks to run")
        return found
    chosen: dict[str, Path] = {}
    available: list[Path] | None = None
    for item in selection:
        p = Path(item)
        if p.suffix == ".ipynb" and p.is_file():
            matches = [p]
        else:
            if available is None:
                available = list_notebooks(notebooks_dir) if Path(notebooks_dir).is_dir() else []
            key = str(item)
            matches = [q for q in available if q.stem == key or q.name == key
                       or (re.fullmatch(r"\d\d", key) and q.name.startswith(key + "_"))]
            if len(matches) != 1:
                names = ", ".join(q.stem for q in available) or "(none)"
                what = "matches no notebook" if not matches else "is ambiguous"
                raise WorkbookError(f"notebook {key!r} {what} in {str(notebooks_dir)!r}; expected a path "
                                    f"to an .ipynb file, a stem or a two-digit prefix. Available: {names}")
        q = matches[0].resolve()
        if q.stem in chosen and chosen[q.stem] != q:
            raise WorkbookError(f"two chosen notebooks share the stem {q.stem!r} ({chosen[q.stem]} and {q}); "
                                "their executed copies and metrics would overwrite each other")
        chosen[q.stem] = q
    return [chosen[k] for k in sorted(chosen)]


def notebook_parameters(path: str | os.PathLike) -> dict[str, dict]:
    """The parameters a notebook declares in its cell tagged ``parameters`` (papermill's view).

    Args:
        path: an ``.ipynb`` file.
    Returns:
        ``{name: {"name", "inferred_type_name", "default", "help"}}`` in declaration order;
        ``default`` is the source text of the value and ``help`` the comment.
    Raises:
        FileNotFoundError: no such file.
    """
    import papermill

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"notebook {str(p)!r} does not exist")
    return dict(papermill.inspect_notebook(str(p)))


# --------------------------------------------------------------------------------- parameters
def load_params_file(source: str | os.PathLike | Mapping | None) -> dict[str, dict]:
    """Read and normalise a parameters file into ``{"defaults", "notebooks", "checks"}``.

    Args:
        source: a YAML file path, an already loaded mapping, or ``None`` (all sections empty).
            Top-level keys other than ``defaults``/``notebooks``/``checks`` count as defaults.
    Returns:
        ``{"defaults": {name: value}, "notebooks": {stem: {name: value}}, "checks": {stem: {...}}}``.
    Raises:
        FileNotFoundError: no such file.
        ParameterError: the file is not a mapping of the documented shape.
    """
    if source is None:
        data: Any = {}
        where = "parameters"
    elif isinstance(source, Mapping):
        data = dict(source)
        where = "parameters mapping"
    else:
        import yaml

        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"parameters file {str(p)!r} does not exist")
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        where = str(p)
    if not isinstance(data, Mapping):
        raise ParameterError(f"{where}: expected a YAML mapping (name: value), got {type(data).__name__}")
    out: dict[str, dict] = {"defaults": {}, "notebooks": {}, "checks": {}}
    for key in RESERVED_KEYS:
        section = data.get(key) or {}
        if not isinstance(section, Mapping):
            raise ParameterError(f"{where}: section {key!r} must be a mapping, got {type(section).__name__}")
        out[key] = {str(k): v for k, v in section.items()}
    for stem, section in list(out["notebooks"].items()) + list(out["checks"].items()):
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise ParameterError(f"{where}: the entry for notebook {stem!r} must be a mapping "
                                 f"(name: value), got {type(section).__name__}")
    out["notebooks"] = {k: dict(v or {}) for k, v in out["notebooks"].items()}
    out["checks"] = {k: dict(v or {}) for k, v in out["checks"].items()}
    top = {str(k): v for k, v in data.items() if k not in RESERVED_KEYS}
    clash = sorted(set(top) & set(out["defaults"]))
    if clash:
        raise ParameterError(f"{where}: {clash} given both at top level and under defaults:; keep one")
    out["defaults"].update(top)
    return out


def _check_value(name: str, value: Any, where: str) -> None:
    ok = (str, int, float, bool, type(None))
    if isinstance(value, ok):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_value(name, v, where)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_value(name, k, where)
            _check_value(name, v, where)
        return
    raise ParameterError(f"parameter {name!r} ({where}) has a value of type {type(value).__name__} ({value!r}); "
                         "expected a string, number, bool, null, list or mapping. Quote it to pass a string.")


def _valid_names(declared: Mapping[str, Iterable[str]]) -> str:
    lines = [f"  {stem}: {', '.join(sorted(set(names) - {OUTPUT_DIR})) or '(no parameters)'}"
             for stem, names in declared.items()]
    return "\n".join(lines) or "  (no notebooks)"


def resolve_parameters(
    notebooks: Sequence[str | os.PathLike],
    params: Mapping[str, Any] | None = None,
    params_file: str | os.PathLike | Mapping | None = None,
    all_notebooks: Sequence[str | os.PathLike] | None = None,
) -> dict[str, dict[str, Any]]:
    """The parameters each selected notebook receives (without ``output_dir``), validated.

    Args:
        notebooks: the notebooks that will run.
        params: command-line parameters (name -> value); each must be declared by at least one
            of ``notebooks``.
        params_file: a parameters file or mapping (see :func:`load_params_file`); its top-level
            names must be declared by at least one of ``all_notebooks``, its per-notebook names by
            that notebook.
        all_notebooks: the whole workbook (default: ``notebooks``), so one shared file can serve
            runs of a few notebooks.
    Returns:
        ``{stem: {name: value}}`` for each selected notebook, only names it declares.
    Raises:
        ParameterError: an unknown name (the message lists the valid names per notebook),
            ``output_dir`` set by hand, or a value YAML cannot hand to a notebook.
    """
    params = dict(params or {})
    spec = load_params_file(params_file)
    selected = [Path(p) for p in notebooks]
    every = {Path(p).stem: Path(p) for p in (all_notebooks or [])}
    every.update({p.stem: p for p in selected})
    declared = {stem: list(notebook_parameters(p)) for stem, p in every.items()}
    declared_sel = {p.stem: declared[p.stem] for p in selected}

    for source, names in (("command line", params), ("parameters file", spec["defaults"])):
        if OUTPUT_DIR in names:
            raise ParameterError(f"{OUTPUT_DIR!r} ({source}) is set by the runner to the run folder; "
                                 "choose the run folder with --out (out=...) instead")
    for stem, section in spec["notebooks"].items():
        if OUTPUT_DIR in section:
            raise ParameterError(f"{OUTPUT_DIR!r} (parameters file, notebook {stem}) is set by the runner; "
                                 "use --out instead")

    sel_names = {n for names in declared_sel.values() for n in names}
    unknown = sorted(set(params) - sel_names)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown} on the command line: no selected notebook "
                             f"declares them. Valid names:\n{_valid_names(declared_sel)}")
    all_names = {n for names in declared.values() for n in names}
    unknown = sorted(set(spec["defaults"]) - all_names)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown} in the parameters file: no notebook declares "
                             f"them. Valid names:\n{_valid_names(declared)}")
    for stem, section in spec["notebooks"].items():
        if stem not in declared:
            raise ParameterError(f"the parameters file has a section for notebook {stem!r}, which is not in "
                                 f"the workbook; notebooks: {', '.join(declared) or '(none)'}")
        unknown = sorted(set(section) - set(declared[stem]))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {unknown} for notebook {stem} in the parameters file; "
                                 f"it declares: {', '.join(sorted(set(declared[stem]) - {OUTPUT_DIR})) or 'nothing'}")

    for name, value in params.items():
        _check_value(name, value, "command line")
    for name, value in spec["defaults"].items():
        _check_value(name, value, "parameters file")
    for stem, section in spec["notebooks"].items():
        for name, value in section.items():
            _check_value(name, value, f"parameters file, notebook {stem}")

    resolved: dict[str, dict[str, Any]] = {}
    for p in selected:
        names = set(declared[p.stem])
        merged = {k: v for k, v in spec["defaults"].items() if k in names}
        merged.update(spec["notebooks"].get(p.stem, {}))
        merged.update({k: v for k, v in params.items() if k in names})
        resolved[p.stem] = merged
    return resolved


# ------------------------------------------------------------------------------------ metrics
def metrics_path(output_dir: str | os.PathLike, name_or_path: str | os.PathLike) -> Path:
    """Where a notebook's metrics go: ``<output_dir>/metrics/<stem>.json``."""
    name = Path(str(name_or_path)).name
    stem = name[:-len(".ipynb")] if name.endswith(".ipynb") else name[:-5] if name.endswith(".json") else name
    if not stem or stem in {".", ".."}:
        raise ValueError(f"cannot take a notebook name from {str(name_or_path)!r}; pass the notebook stem "
                         "such as '02_locate_heads'")
    return Path(output_dir) / METRICS_DIR / f"{stem}.json"


def _plain(value: Any, where: str = "metrics") -> Any:
    """Convert numpy/torch scalars and arrays, paths and tuples to JSON types (NaN/inf -> None)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy / torch scalars and arrays
        return _plain(value.tolist(), where)
    if hasattr(value, "item"):
        return _plain(value.item(), where)
    raise TypeError(f"{where}: cannot write a value of type {type(value).__name__} to JSON; metrics must be numbers, "
                    "strings, bools, None, lists or dicts of them (numpy/torch scalars are converted)")


def write_metrics(name_or_path: str | os.PathLike, metrics: Mapping[str, Any],
                  output_dir: str | os.PathLike) -> Path:
    """Write a notebook's metrics to ``<output_dir>/metrics/<stem>.json`` atomically.

    Call it in the last code cell of every notebook:
    ``ltc.workbook.write_metrics("02_locate_heads", metrics, output_dir)``.

    Args:
        name_or_path: the notebook stem (``"02_locate_heads"``) or its file name/path.
        metrics: a mapping of metric name to value; nested mappings are fine (the report joins
            their keys with dots); numpy/torch scalars and small arrays are converted; NaN and
            infinities are written as ``null`` (strict JSON has no NaN).
        output_dir: the run folder (the notebook's ``output_dir`` parameter).
    Returns:
        the path written.
    Raises:
        TypeError: ``metrics`` is not a mapping, or holds a value JSON cannot represent.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name -> value, got {type(metrics).__name__}")
    path = metrics_path(output_dir, name_or_path)
    text = json.dumps(_plain(metrics), indent=2, sort_keys=False, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_metrics(run_dir: str | os.PathLike) -> dict[str, dict]:
    """All metrics files of a run folder: ``{notebook stem: metrics dict}`` (as written).

    Raises:
        WorkbookError: a metrics file is not valid JSON or not a JSON object.
    """
    d = Path(run_dir) / METRICS_DIR
    out: dict[str, dict] = {}
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise WorkbookError(f"metrics file {p} is not valid JSON ({e}); rerun its notebook") from e
        if not isinstance(data, dict):
            raise WorkbookError(f"metrics file {p} holds a {type(data).__name__}, expected a JSON object")
        out[p.stem] = data
    return out


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings, joining keys with dots: ``{"a": {"b": 1}} -> {"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------- run
@dataclass
class NotebookRun:
    """One notebook of a run: where it came from, where it went, how it ended."""

    name: str
    source: Path
    output: Path
    parameters: dict[str, Any]
    status: str = "not run"  # "ok", "failed" or "not run"
    seconds: float | None = None
    metrics_path: Path | None = None
    error: str | None = None

    @property
    def metrics(self) -> dict:
        """The notebook's metrics as written (empty when it wrote none)."""
        if self.metrics_path is None or not self.metrics_path.is_file():
            return {}
        return json.loads(self.metrics_path.read_text(encoding="utf-8"))


@dataclass
class RunResult:
    """The outcome of :func:`run_workbook`: the run folder and one :class:`NotebookRun` each."""

    out: Path
    notebooks: list[NotebookRun]
    python: str
    seconds: float = 0.0
    extra_metrics: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(n.status == "ok" for n in self.notebooks)

    def __getitem__(self, name: str) -> NotebookRun:
        for n in self.notebooks:
            if n.name == name or n.name.startswith(f"{name}_"):
                return n
        raise KeyError(f"{name!r} was not part of this run; ran: {', '.join(n.name for n in self.notebooks)}")

    @property
    def metrics(self) -> dict[str, dict]:
        """``{notebook stem: metrics}`` of the notebooks that wrote them in this run."""
        return {n.name: n.metrics for n in self.notebooks if n.metrics_path is not None}

    def summary(self) -> str:
        """A plain-text table: notebook, status, time, metrics file."""
        width = max([len(n.name) for n in self.notebooks] + [8])
        lines = [f"Run folder: {self.out}", f"Kernel interpreter: {self.python}",
                 f"{'notebook':<{width}}  {'status':<8}  {'time':>8}  metrics"]
        for n in self.notebooks:
            t = f"{n.seconds:.1f} s" if n.seconds is not None else "-"
            if n.metrics_path is not None:
                m = f"{n.metrics_path.relative_to(self.out)} ({len(flatten(n.metrics))} values)"
            elif n.status == "ok":
                m = "none written (expected metrics/<stem>.json, see write_metrics)"
            else:
                m = "-"
            lines.append(f"{n.name:<{width}}  {n.status:<8}  {t:>8}  {m}")
        for p in self.extra_metrics:
            lines.append(f"also in the run folder (not from this run): {p.relative_to(self.out)}")
        state = "all ok" if self.ok else "FAILED"
        lines.append(f"{len(self.notebooks)} notebook(s), {self.seconds:.1f} s in total: {state}")
        return "\n".join(lines)


def kernel_interpreter(kernel: str = "python3") -> str:
    """The interpreter that jupyter_client will start for ``kernel`` (as an absolute path).

    A kernelspec whose command is ``python``/``python3`` (the one ipykernel ships inside every
    environment) is mapped by jupyter_client to the calling interpreter, ``sys.executable``.

    Raises:
        WorkbookError: no kernelspec of that name is installed.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel as e:
        raise WorkbookError(f"no Jupyter kernel named {kernel!r}; the environment's own is 'python3' "
                            "(installed with ipykernel)") from e
    cmd = spec.argv[0] if spec.argv else ""
    if cmd in _PYTHON_NAMES:
        return sys.executable
    return shutil.which(cmd) or cmd


def _is_ipykernel(kernel: str) -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return "ipykernel_launcher" in " ".join(KernelSpecManager().get_kernel_spec(kernel).argv)


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()
    return ""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _raising_line(traceback: Sequence[str] | None) -> str | None:
    """The source line IPython marks with ``---->`` in the cell's frame of a traceback."""
    for block in traceback or []:
        for text in _ANSI.sub("", block).splitlines():
            m = re.match(r"^\s*-+>\s*\d+\s?(.*)$", text)
            if m:
                return m.group(1).strip()
    return None


def _source_index(source_nb, executed_index: int, injected: bool) -> int | None:
    """Map a cell index of the executed notebook back to the source notebook (None: injected cell)."""
    if not injected:
        return executed_index
    tags = [c.get("metadata", {}).get("tags", []) for c in source_nb.cells]
    if any("injected-parameters" in t for t in tags):
        return executed_index  # papermill replaced the committed injected cell in place
    params = [i for i, t in enumerate(tags) if "parameters" in t]
    pos = params[0] + 1 if params else 0
    if executed_index == pos:
        return None
    return executed_index - 1 if executed_index > pos else executed_index


def _write_manifest(result: RunResult, extra: dict) -> None:
    data = {
        **extra,
        "python": result.python,
        "seconds": round(result.seconds, 3),
        "ok": result.ok,
        "notebooks": [
            {"name": n.name, "source": str(n.source), "status": n.status,
             "seconds": None if n.seconds is None else round(n.seconds, 3),
             "parameters": n.parameters,
             "metrics": None if n.metrics_path is None else str(n.metrics_path.relative_to(result.out)),
             "error": n.error}
            for n in result.notebooks
        ],
    }
    path = result.out / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_workbook(
    notebooks: Sequence[str | os.PathLike] | None = None,
    params: Mapping[str, Any] | None = None,
    params_file: str | os.PathLike | Mapping | None = None,
    out: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    kernel: str = "python3",
    progress: bool = True,
    raise_on_error: bool = True,
) -> RunResult:
    """Execute workbook notebooks in order through papermill into one run folder.

    Args:
        notebooks: ``None`` for every ``NN_*.ipynb`` in ``notebooks_dir``, or paths, stems or
            two-digit prefixes (see :func:`select_notebooks`). They run sorted by file name.
        params: parameter overrides (name -> value), like ``-p``.
        params_file: a YAML parameters file or mapping (see :func:`load_params_file`).
        out: the run folder (created; existing files are kept, a rerun notebook's executed copy
            and metrics are replaced). Default ``runs/run-<date>-<time>``.
        notebooks_dir: where the workbook lives (default :func:`default_notebooks_dir`).
        kernel: the Jupyter kernel name.
        progress: print which notebook runs, its time, and the summary.
        raise_on_error: raise :class:`NotebookFailed` when a notebook fails (the run stops
            either way; with False the failure is recorded in the result).
    Returns:
        a :class:`RunResult`.
    Raises:
        ParameterError: an unknown parameter (before anything runs).
        WorkbookError: no notebooks, or the kernel would not use this environment's interpreter.
        NotebookFailed: a notebook raised (with ``raise_on_error``).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    selected = select_notebooks(notebooks, nb_dir)
    workbook = list_notebooks(nb_dir) if nb_dir.is_dir() else []
    resolved = resolve_parameters(selected, params, params_file, all_notebooks=workbook)

    python = kernel_interpreter(kernel)
    if os.path.abspath(python) != os.path.abspath(sys.executable):
        msg = (f"the Jupyter kernel {kernel!r} would run {python}, not this environment's interpreter "
               f"{sys.executable}; a user-level kernelspec probably shadows the environment's. Remove it "
               f"(jupyter kernelspec remove {kernel}) or set JUPYTER_PREFER_ENV_PATH=1")
        if kernel == "python3":
            raise WorkbookError(msg)
        print(f"warning: {msg}", file=sys.stderr)

    # ipykernel logs "KeyboardInterrupt caught in kernel" when jupyter_client interrupts it before
    # every shutdown; keep the kernel's own log to critical messages (cell errors still come back).
    kernel_kwargs = {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"]} if _is_ipykernel(kernel) else {}

    run_dir = Path(out) if out is not None else Path("runs") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    runs = []
    for path in selected:
        p = dict(resolved[path.stem])
        if OUTPUT_DIR in notebook_parameters(path):
            p[OUTPUT_DIR] = str(run_dir)
        runs.append(NotebookRun(name=path.stem, source=path, output=run_dir / path.name, parameters=p))
    result = RunResult(out=run_dir, notebooks=runs, python=python)
    manifest = {"started": datetime.now().isoformat(timespec="seconds"), "kernel": kernel,
                "params": dict(params or {}),
                "params_file": None if params_file is None or isinstance(params_file, Mapping)
                else str(Path(params_file).resolve())}
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    say(f"ltc run: {len(runs)} notebook(s) -> {run_dir}  (kernel {kernel}: {python})")

    t_run = time.perf_counter()
    failure: NotebookFailed | None = None
    for i, nb_run in enumerate(runs, 1):
        shown = {k: v for k, v in nb_run.parameters.items() if k != OUTPUT_DIR}
        say(f"[{i}/{len(runs)}] {nb_run.name}" + (f"  {shown}" if shown else ""))
        mpath = metrics_path(run_dir, nb_run.name)
        if mpath.exists():
            mpath.unlink()  # a metrics file in the run folder always comes from the latest run
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(nb_run.source), str(nb_run.output), parameters=nb_run.parameters, kernel_name=kernel,
                language="python", cwd=str(run_dir), progress_bar=progress and sys.stderr.isatty(),
                **kernel_kwargs,
            )
            nb_run.status = "ok"
        except PapermillExecutionError as e:
            nb_run.status = "failed"
            import nbformat

            src_nb = nbformat.read(str(nb_run.source), as_version=4)
            idx = _source_index(src_nb, e.cell_index, injected=bool(nb_run.parameters))
            line = _first_line(e.source)
            where = ("the injected parameters cell" if idx is None
                     else f"cell index {idx} (In [{e.exec_count}]): {line}")
            raised = _raising_line(e.traceback)
            nb_run.error = (f"notebook {nb_run.source.name} failed at {where}\n"
                            + (f"  raised at: {raised}\n" if raised and raised != line else "")
                            + f"  {e.ename}: {e.evalue}\n"
                            f"  partially executed notebook: {nb_run.output}")
            failure = NotebookFailed(nb_run.error, notebook=nb_run.name, cell_index=idx, source_line=line,
                                     ename=e.ename, evalue=e.evalue, output=nb_run.output)
        except KeyboardInterrupt:
            nb_run.status = "failed"
            nb_run.error = "interrupted"
            nb_run.seconds = time.perf_counter() - t0
            result.seconds = time.perf_counter() - t_run
            _write_manifest(result, manifest)
            raise
        except Exception as e:  # kernel died, timeout, unreadable notebook: still name the notebook
            nb_run.status = "failed"
            nb_run.error = (f"notebook {nb_run.source.name} failed outside its cells: {type(e).__name__}: {e}\n"
                            f"  partially executed notebook (if any): {nb_run.output}")
            failure = NotebookFailed(nb_run.error, notebook=nb_run.name, ename=type(e).__name__,
                                     evalue=str(e), output=nb_run.output)
        nb_run.seconds = time.perf_counter() - t0
        if mpath.is_file():
            nb_run.metrics_path = mpath
        say(f"      {nb_run.status} in {nb_run.seconds:.1f} s (elapsed {time.perf_counter() - t_run:.1f} s)")
        result.seconds = time.perf_counter() - t_run
        _write_manifest(result, manifest)
        if failure is not None:
            break

    result.seconds = time.perf_counter() - t_run
    ran = {n.name for n in runs}
    result.extra_metrics = [p for p in sorted((run_dir / METRICS_DIR).glob("*.json")) if p.stem not in ran] \
        if (run_dir / METRICS_DIR).is_dir() else []
    _write_manifest(result, manifest)
    if progress:
        say("")
        say(result.summary())
        if failure is not None:
            say("")
            say(f"error: {failure}")
    if failure is not None:
        failure.result = result
        if raise_on_error:
            raise failure
    return result


# ------------------------------------------------------------------------------------- report
def _literal(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _cell_value(v: Any) -> Any:
    """Lists and dicts become JSON text so that a table cell holds one scalar."""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(_plain(v))
    return v


def _executed_info(path: Path | None) -> dict[str, Any]:
    """Status, seconds and effective parameters of an executed notebook (defaults + injected)."""
    if path is None:
        return {"status": "no notebook", "seconds": None, "params": {}}
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    pm = nb.metadata.get("papermill", {})
    params = {name: _literal(p["default"]) for name, p in notebook_parameters(path).items()}
    params.update(pm.get("parameters", {}) or {})
    params.pop(OUTPUT_DIR, None)
    if pm.get("exception"):
        status = "failed"
    elif pm.get("end_time") is None:
        status = "incomplete"
    else:
        status = "ok"
    return {"status": status, "seconds": pm.get("duration"), "params": params}


def _run_labels(dirs: Sequence[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None):
    """Merge the metrics of several run folders into one table (and optionally CSV + Markdown).

    Args:
        run_dirs: run folders written by :func:`run_workbook` (``ltc run``).
        out: optional path stem; writes ``<out>.csv`` and ``<out>.md`` (a ``.csv``/``.md``
            suffix is dropped first).
    Returns:
        a pandas DataFrame, one row per (run, notebook): columns ``run``, ``notebook``,
        ``status``, ``seconds``, then ``param.<name>`` (the notebook's effective parameters:
        its defaults with the injected values over them, from the executed notebook), then the
        metrics (nested keys joined by dots). Lists become JSON text.
    Raises:
        FileNotFoundError: a run folder does not exist.
        WorkbookError: a folder holds neither executed notebooks nor metrics.
    """
    import pandas as pd

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise WorkbookError("report needs at least one run folder")
    rows: list[dict[str, Any]] = []
    param_cols: set[str] = set()
    metric_cols: dict[str, None] = {}
    for label, d in zip(_run_labels(dirs), dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"run folder {str(d)!r} does not exist")
        executed = {p.stem: p for p in list_notebooks(d)}
        metrics = read_metrics(d)
        stems = sorted(set(executed) | set(metrics))
        if not stems:
            raise WorkbookError(f"{str(d)!r} holds no executed notebooks and no metrics/*.json; "
                                "is it a run folder written by `ltc run`?")
        for stem in stems:
            info = _executed_info(executed.get(stem))
            row: dict[str, Any] = {"run": label, "notebook": stem, "status": info["status"],
                                   "seconds": info["seconds"]}
            for k, v in info["params"].items():
                row[f"param.{k}"] = _cell_value(v)
                param_cols.add(f"param.{k}")
            for k, v in flatten(metrics.get(stem, {})).items():
                row[k] = _cell_value(v)
                metric_cols.setdefault(k, None)
            rows.append(row)
    columns = ["run", "notebook", "status", "seconds", *sorted(param_cols),
               *[c for c in metric_cols if c not in param_cols]]
    df = pd.DataFrame(rows, columns=columns)
    for col in df.columns:  # keep integer columns integer where other rows leave gaps
        vals = [v for v in (r.get(col) for r in rows) if v is not None]
        if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[col] = df[col].astype("Int64")
    if out is not None:
        stem = Path(out)
        if stem.suffix in {".csv", ".md"}:
            stem = stem.with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(stem.with_name(stem.name + ".csv"), index=False)
        stem.with_name(stem.name + ".md").write_text(markdown_table(df) + "\n", encoding="utf-8")
    return df


def markdown_table(df, floatfmt: str = ".4g") -> str:
    """Format a DataFrame as a GitHub Markdown table (no ``tabulate`` needed).

    Args:
        df: the table; its index is not written.
        floatfmt: format spec for floats; missing values are left blank.
    Returns:
        the table text: header, alignment row (numbers right-aligned), one line per row.
    """
    import pandas as pd

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, float):
            return format(v, floatfmt)
        if hasattr(v, "dtype") and hasattr(v, "item"):
            return fmt(v.item())
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c).replace("|", "\\|") for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    body = [[fmt(v) for v in row] for row in df.itertuples(index=False, name=None)]
    widths = [max([len(c), 3] + [len(r[j]) for r in body]) for j, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(cols), sep, *[line(r) for r in body]])


# ------------------------------------------------------------------------------------- checks
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.\-\[\]/:@]*"
_EXPR = re.compile(rf"^\s*(?P<a>{_KEY})\s*(?:\s(?P<op>[-+])\s+(?P<b>{_KEY}))?\s*$")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COND = re.compile(rf"^\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<v>{_NUM}|true|false|True|False)"
                   rf"(?:\s*\+-\s*(?P<tol>{_NUM}))?\s*$")


@dataclass(frozen=True)
class Check:
    """One parsed metric check: ``a [- b | + b] OP value [+- tol]``."""

    expression: str
    condition: str
    a: str
    op: str
    value: float | bool
    b: str | None = None
    sign: str | None = None
    tol: float | None = None

    def evaluate(self, metrics: Mapping[str, Any]) -> tuple[bool, Any, str]:
        """Evaluate against (flattened or nested) metrics; returns ``(passed, value, message)``."""
        flat = flatten(metrics)
        vals = []
        for key in (self.a, self.b) if self.b else (self.a,):
            if key not in flat:
                near = ", ".join(sorted(flat)[:30]) or "(no metrics)"
                return False, None, f"{self.expression} {self.condition}: metric {key!r} is missing; have: {near}"
            v = flat[key]
            if v is None:
                return False, None, (f"{self.expression} {self.condition}: metric {key!r} is null "
                                     "(NaN or inf when written)")
            if isinstance(self.value, bool) and not self.b:
                if not isinstance(v, bool):
                    return False, v, f"{self.expression} {self.condition}: metric {key!r} = {v!r} is not a bool"
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                return False, v, f"{self.expression} {self.condition}: metric {key!r} = {v!r} is not a number"
            vals.append(v)
        x = vals[0] if not self.b else (vals[0] - vals[1] if self.sign == "-" else vals[0] + vals[1])
        if self.tol is not None:
            close = abs(x - self.value) <= self.tol
            passed = close if self.op == "==" else not close
        else:
            passed = bool(_OPS[self.op](x, self.value))
        shown = f"{x:.6g}" if isinstance(x, float) else repr(x)
        return passed, x, f"{self.expression} = {shown}, expected {self.condition}"


def parse_check(expression: str, condition: str) -> Check:
    """Parse one check (see the module docstring); nothing is evaluated as code.

    Args:
        expression: ``"key"``, ``"key_a - key_b"`` or ``"key_a + key_b"`` (spaces around the sign).
        condition: ``"OP NUMBER"``, ``"== true"``, or ``"== NUMBER +- TOL"``; OP in >= > <= < == !=.
    Returns:
        a :class:`Check`.
    Raises:
        ValueError: either part does not follow the format.
    """
    if not isinstance(condition, str):
        raise ValueError(f"check {expression!r}: the condition must be a string such as '>= 0.5', "
                         f"got {condition!r}")
    m = _EXPR.match(str(expression))
    if not m:
        raise ValueError(f"check expression {expression!r} is not a metric key or 'key_a - key_b' "
                         "(keys use letters, digits and _ . - [ ] / : @; put spaces around the sign)")
    c = _COND.match(condition)
    if not c:
        raise ValueError(f"check {expression!r}: condition {condition!r} is not 'OP NUMBER' "
                         "(OP one of >= > <= < == !=; NUMBER a number or true/false; optional '+- TOL' with ==/!=)")
    raw = c.group("v")
    value: float | bool = raw.lower() == "true" if raw.lower() in {"true", "false"} else float(raw)
    tol = float(c.group("tol")) if c.group("tol") else None
    if tol is not None and c.group("op") not in {"==", "!="}:
        raise ValueError(f"check {expression!r}: a tolerance (+- {tol}) only goes with == or !=")
    if isinstance(value, bool) and (m.group("b") or c.group("op") not in {"==", "!="} or tol is not None):
        raise ValueError(f"check {expression!r}: true/false compares a single metric with == or !=")
    return Check(expression=str(expression), condition=condition, a=m.group("a"), op=c.group("op"),
                 value=value, b=m.group("b"), sign=m.group("op"), tol=tol)


def _iter_checks(checks: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for expr, cond in checks.items():
        for c in cond if isinstance(cond, (list, tuple)) else [cond]:
            yield expr, c


def check_metrics(metrics: Mapping[str, Any], checks: Mapping[str, Any]) -> list[str]:
    """Run a notebook's checks on its metrics.

    Args:
        metrics: the notebook's metrics (nested or flattened).
        checks: ``{expression: condition or [conditions]}`` (see :func:`parse_check`).
    Returns:
        one message per failed check (empty when all pass).
    Raises:
        ValueError: a malformed check.
    """
    failures = []
    for expr, cond in _iter_checks(checks):
        passed, _, msg = parse_check(expr, cond).evaluate(metrics)
        if not passed:
            failures.append(msg)
    return failures


# ------------------------------------------------------------------------------------ hygiene
_FORBIDDEN = [
    (re.compile(r"(?m)^\s*[%!]\s*(pip|conda|mamba)\b"), "installs packages (%pip/!pip/%conda): "
     "dependencies belong in pyproject.toml"),
    (re.compile(r"\bsys\.path\b"), "touches sys.path: import the installed ltcutils package instead"),
    (re.compile(r"(?m)\bos\.chdir\b|^\s*%cd\b"), "changes directory: write files under output_dir instead"),
    (re.compile(r"""['"](cuda|mps)(:\d+)?['"]"""), "hard-codes a GPU device: take it from the `device` parameter"),
]
_METRICS_CALL = re.compile(r"write_metrics\(\s*(?P<q>['\"])(?P<name>[^'\"]*)(?P=q)")


def _cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _strip_comments(source: str) -> str:
    """The source without ``#`` comments (a comment may mention what code must not do)."""
    lines = source.splitlines(keepends=True)
    try:
        for tok in reversed(list(tokenize.generate_tokens(io.StringIO(source).readline))):
            if tok.type == tokenize.COMMENT:
                row, col = tok.start
                line = lines[row - 1]
                lines[row - 1] = line[:col] + ("\n" if line.endswith("\n") else "")
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source
    return "".join(lines)


def _parameter_cell_problems(source: str) -> list[str]:
    """Every statement must be ``name = literal  # comment``."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"parameters cell: syntax error on line {e.lineno}: {e.msg}"]
    try:
        comment_lines = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(source).readline)
                         if t.type == tokenize.COMMENT}
    except (tokenize.TokenError, IndentationError) as e:
        return [f"parameters cell: cannot be tokenized ({e})"]
    problems, seen = [], set()
    if not tree.body:
        problems.append("parameters cell: declares no parameters (a notebook with nothing to set "
                        "still declares output_dir)")
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name, value = stmt.target.id, stmt.value
        else:
            problems.append(f"parameters cell, line {stmt.lineno}: only `name = value  # comment` "
                            "assignments belong here (move other code to the next cell)")
            continue
        if name in seen:
            problems.append(f"parameters cell: {name!r} is assigned twice")
        seen.add(name)
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError):
            problems.append(f"parameters cell: {name!r} is not a literal value "
                            f"({ast.get_source_segment(source, value)!r}); papermill replaces parameters "
                            "with literals, so compute derived values in a later cell")
        if not any(ln in comment_lines for ln in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)):
            problems.append(f"parameters cell: {name!r} has no comment; write `{name} = ...  # what it means`")
    return problems


def notebook_problems(nb: Any, filename: str | os.PathLike | None = None) -> list[str]:
    """Hygiene problems of one notebook (empty list: clean).

    Checks: the file name is ``NN_verb_object.ipynb``; the first cell is markdown starting with
    ``# `` (the title); exactly one cell is tagged ``parameters``, a code cell of commented
    literal assignments; the kernelspec is ``python3``; no outputs, execution counts or
    papermill ``injected-parameters`` cells are committed; no code cell installs packages,
    touches ``sys.path``, changes directory or hard-codes a GPU device; the last code cell writes the
    metrics (``write_metrics(`` or ``metrics/``), and a literal name given to
    ``write_metrics`` is the notebook's own stem.

    Args:
        nb: an nbformat notebook, or a path to one.
        filename: the notebook's file name (default: the path, when ``nb`` is one); ``None``
            skips the name checks.
    Returns:
        human-readable problems, each naming the cell.
    """
    import nbformat

    if isinstance(nb, (str, os.PathLike)):
        filename = filename if filename is not None else nb
        nb = nbformat.read(str(nb), as_version=4)
    problems: list[str] = []
    stem = None
    if filename is not None:
        name = Path(filename).name
        stem = Path(name).stem
        if not NOTEBOOK_NAME.match(name):
            problems.append(f"file name {name!r} does not follow NN_verb_object.ipynb (two digits, then "
                            "lower-case words joined by underscores, at least two words)")
    cells = nb.get("cells", [])
    if not cells or cells[0].get("cell_type") != "markdown" or not _cell_source(cells[0]).lstrip().startswith("# "):
        problems.append("the first cell must be markdown starting with '# ' (the notebook's title and what it does)")
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"kernelspec name is {kernel!r}; expected 'python3' (the environment's own kernel)")

    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
                        + (f" (cells {tagged})" if tagged else ""))
    for i in tagged:
        if cells[i].get("cell_type") != "code":
            problems.append(f"cell {i}: the 'parameters' cell must be a code cell")
    if len(tagged) == 1 and cells[tagged[0]].get("cell_type") == "code":
        problems.extend(_parameter_cell_problems(_cell_source(cells[tagged[0]])))

    for i, c in enumerate(cells):
        tags = c.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags:
            problems.append(f"cell {i}: a papermill 'injected-parameters' cell is committed; commit the "
                            "source notebook, not an executed one")
        if c.get("cell_type") != "code":
            continue
        if c.get("outputs"):
            problems.append(f"cell {i}: has outputs committed; clear them (outputs belong in run folders)")
        if c.get("execution_count") is not None:
            problems.append(f"cell {i}: has an execution count committed ({c.get('execution_count')}); "
                            "clear outputs before committing")
        src = _cell_source(c)
        code_only = _strip_comments(src)
        for pattern, why in _FORBIDDEN:
            if pattern.search(code_only):
                problems.append(f"cell {i}: {why}")

    code = [(i, c) for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    if not code:
        problems.append("the notebook has no code cell")
    else:
        i, last = code[-1]
        src = _cell_source(last)
        if "write_metrics(" not in src and "metrics/" not in src:
            problems.append(f"cell {i}: the last code cell must write the metrics "
                            "(ltc.workbook.write_metrics(<stem>, metrics, output_dir))")
        for m in _METRICS_CALL.finditer(src):
            if stem is not None and m.group("name") != stem:
                problems.append(f"cell {i}: write_metrics({m.group('name')!r}, ...) does not match the "
                                f"notebook's stem {stem!r}; the report and CI checks look up metrics/{stem}.json")
    return problems


def ci_problems(notebook_paths: Sequence[str | os.PathLike], ci: str | os.PathLike | Mapping,
                require_entries: bool = True) -> list[str]:
    """Problems between the notebooks on disk and the CI parameters file.

    Every notebook needs an entry under ``notebooks:`` (``{}`` if the defaults suffice; only
    with ``require_entries``, as for ``tests/ci_params.yaml``); every
    CI parameter must be declared by its notebook (``defaults`` by at least one notebook); no
    entry may name a notebook that does not exist; every check must parse.

    Args:
        notebook_paths: the workbook notebooks.
        ci: the CI parameters file (``tests/ci_params.yaml``) or its loaded mapping.
        require_entries: insist on a ``notebooks:`` entry per notebook (False for a parameters
            file that sets only a few, such as ``.github/gpu-params.yaml``).
    Returns:
        human-readable problems (empty: consistent).
    """
    try:
        spec = load_params_file(ci)
    except ParameterError as e:
        return [str(e)]
    paths = {Path(p).stem: Path(p) for p in notebook_paths}
    declared = {stem: set(notebook_parameters(p)) for stem, p in paths.items()}
    problems = []
    for stem in paths:
        if stem not in spec["notebooks"]:
            if not require_entries:
                continue
            problems.append(f"{stem}: no entry under `notebooks:` in the CI parameters file; add "
                            f"`{stem}: {{...}}` with small parameters (or `{{}}`)")
            continue
        for name in spec["notebooks"][stem]:
            if name == OUTPUT_DIR:
                problems.append(f"{stem}: CI sets {OUTPUT_DIR!r}, which the runner sets")
            elif name not in declared[stem]:
                problems.append(f"{stem}: CI parameter {name!r} is not declared by the notebook "
                                f"(it declares: {', '.join(sorted(declared[stem])) or 'nothing'})")
    everything = set().union(*declared.values()) if declared else set()
    for name in spec["defaults"]:
        if name not in everything:
            problems.append(f"defaults: CI parameter {name!r} is declared by no notebook")
    for section in ("notebooks", "checks"):
        for stem in spec[section]:
            if stem not in paths:
                problems.append(f"{section}: entry {stem!r} names no notebook on disk "
                                f"(notebooks: {', '.join(paths) or 'none'})")
    for stem, checks in spec["checks"].items():
        for expr, cond in _iter_checks(checks):
            try:
                parse_check(expr, cond)
            except ValueError as e:
                problems.append(f"checks: {stem}: {e}")
    return problems


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ltc", description="Run the LTC workbook notebooks and merge their metrics.",
                                 epilog="See `ltc COMMAND -h`; the module docstring of ltcutils.workbook has details.")
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute notebooks in order into one run folder")
    r.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                   help="paths, stems or two-digit prefixes (default: all NN_*.ipynb in --notebooks-dir)")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a parameter; VALUE is parsed as YAML (repeatable)")
    r.add_argument("-f", "--params-file", help="YAML parameters file (top-level keys, defaults:, notebooks:)")
    r.add_argument("--out", help="run folder (default runs/run-<date>-<time>)")
    r.add_argument("--notebooks-dir", help="where the notebooks are (default ./notebooks)")
    r.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")

    rp = sub.add_parser("report", help="merge the metrics of run folders into one table")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--out", help="write <OUT>.csv and <OUT>.md (else print Markdown only)")

    c = sub.add_parser("check", help="evaluate the checks: section of a YAML file on a run's metrics")
    c.add_argument("run_dir", metavar="RUN_DIR")
    c.add_argument("-f", "--params-file", required=True, help="YAML file with a checks: section")

    pa = sub.add_parser("params", help="list the parameters each notebook declares")
    pa.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    pa.add_argument("--notebooks-dir")

    li = sub.add_parser("lint", help="notebook hygiene checks (and CI-file consistency with --ci)")
    li.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    li.add_argument("--notebooks-dir")
    li.add_argument("--ci", help="CI parameters file to check against (e.g. tests/ci_params.yaml)")
    return ap


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ltc`` command; returns the exit status (0 ok, 1 a notebook or check failed, 2 usage)."""
    args = _parser().parse_args(argv)
    nb_dir = Path(args.notebooks_dir) if getattr(args, "notebooks_dir", None) else default_notebooks_dir()
    try:
        if args.command == "run":
            params: dict[str, Any] = {}
            for name, value in args.param:
                params[name] = _yaml_value(value)
            result = run_workbook(args.notebooks or None, params=params, params_file=args.params_file,
                                  out=args.out, notebooks_dir=nb_dir, kernel=args.kernel,
                                  progress=not args.quiet, raise_on_error=False)
            if not result.ok and args.quiet:
                print(f"ltc: error: {next(n.error for n in result.notebooks if n.error)}", file=sys.stderr)
            return 0 if result.ok else 1
        if args.command == "report":
            df = report(args.run_dirs, out=args.out)
            print(markdown_table(df))
            if args.out:
                stem = Path(args.out).with_suffix("") if Path(args.out).suffix in {".csv", ".md"} else Path(args.out)
                print(f"\nwrote {stem}.csv and {stem}.md")
            return 0
        if args.command == "check":
            spec = load_params_file(args.params_file)
            metrics = read_metrics(args.run_dir)
            failed = 0
            for stem, checks in spec["checks"].items():
                if stem not in metrics:
                    print(f"FAIL {stem}: no metrics/{stem}.json in {args.run_dir}")
                    failed += 1
                    continue
                for expr, cond in _iter_checks(checks):
                    passed, _, msg = parse_check(expr, cond).evaluate(metrics[stem])
                    print(f"{'ok  ' if passed else 'FAIL'} {stem}: {msg}")
                    failed += not passed
            print(f"{failed} check(s) failed" if failed else "all checks passed")
            return 1 if failed else 0
        if args.command == "params":
            for path in select_notebooks(args.notebooks or None, nb_dir):
                print(path.stem)
                for name, p in notebook_parameters(path).items():
                    help_ = f"  # {p['help']}" if p.get("help") else ""
                    print(f"    {name} = {p['default']}{help_}")
            return 0
        if args.command == "lint":
            some = args.notebooks or list_notebooks(nb_dir)
            paths = select_notebooks(args.notebooks or None, nb_dir) if some else []
            problems = [f"{p.name}: {msg}" for p in paths for msg in notebook_problems(p)]
            if args.ci:
                problems += [f"{args.ci}: {msg}" for msg in ci_problems(paths, args.ci)]
            for msg in problems:
                print(msg)
            print(f"{len(paths)} notebook(s), {len(problems)} problem(s)")
            return 1 if problems else 0
    except (WorkbookError, FileNotFoundError, ValueError) as e:
        print(f"ltc: error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
