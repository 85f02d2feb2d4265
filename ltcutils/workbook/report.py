"""Tables of run folders: the paper-shaped methods table (default of ``ltc report``) and the flat table of every metric."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .base import OUTPUT_DIR, WorkbookError
from .notebooks import list_notebooks, notebook_parameters
from .probe_rows import PROBE_LABELS, PROBES_NOTEBOOK, probe_caption, with_probe_rows
from .results import _plain, flatten, read_metrics


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


def _executed_info(path: Path | None, run_dir: Path | None = None) -> dict[str, Any]:
    """Status, seconds and effective parameters of an executed notebook (defaults + injected).

    The status comes from the run record of ``run_dir`` (default: the notebook's folder), see
    :func:`recorded_status`; papermill's own metadata is not trusted for it (papermill writes an
    end time even after Ctrl-C or a dead kernel).
    """
    if path is None:
        status = recorded_status(run_dir, None) if run_dir is not None else "no notebook"
        return {"status": status, "seconds": None, "params": {}}
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    pm = nb.metadata.get("papermill", {})
    params = {name: _literal(p["default"]) for name, p in notebook_parameters(path).items()}
    params.update(pm.get("parameters", {}) or {})
    params.pop(OUTPUT_DIR, None)
    return {"status": recorded_status(run_dir or path.parent, path.stem), "seconds": pm.get("duration"),
            "params": params}


def recorded_status(run_dir: Path, stem: str | None) -> str:
    """The ``status`` column of a report: how the runner recorded a notebook's run.

    Args:
        run_dir: the run folder (its ``ltc_run.json`` is read).
        stem: the notebook's stem (None: the folder has its metrics but no executed notebook).
    Returns:
        ``"ok"`` (the runner saw it finish), ``"failed"`` (a cell raised, or the kernel died),
        ``"interrupted"`` (Ctrl-C, or the run stopped while it ran: killed, or out of disk for its
        record), ``"running"`` (a live run holds the folder), ``"not run"``, or ``"no record"``
        (no run record names it: the folder was not written by ``ltc run``).
    """
    from .base import MANIFEST
    from .execution import lock_holder

    try:
        record = json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no record"
    entries = {**(record.get("earlier") or {}),
               **{n.get("name"): n for n in record.get("notebooks") or [] if isinstance(n, dict)}}
    entry = entries.get(stem) if stem is not None else None
    if not isinstance(entry, dict):
        return "no record"
    status = str(entry.get("status"))
    if status == "running":
        return "running" if lock_holder(run_dir) else "interrupted"
    return status


def _run_labels(dirs: Sequence[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def run_folders(run_dirs: Sequence[str | os.PathLike], command: str) -> list[Path]:
    """The run folders given to ``command``, checked: each exists and holds executed notebooks or metrics.

    Raises:
        FileNotFoundError: a run folder does not exist.
        WorkbookError: no folder given, or a folder holds neither executed notebooks nor metrics.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise WorkbookError(f"{command} needs at least one run folder")
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"run folder {str(d)!r} does not exist")
        if not list_notebooks(d) and not read_metrics(d):
            raise WorkbookError(f"{str(d)!r} holds no executed notebooks and no metrics/*.json; "
                                "is it a run folder written by `ltc run`?")
    return dirs


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

    dirs = run_folders(run_dirs, "report")
    rows: list[dict[str, Any]] = []
    param_cols: set[str] = set()
    metric_cols: dict[str, None] = {}
    for label, d in zip(_run_labels(dirs), dirs):
        executed = {p.stem: p for p in list_notebooks(d)}
        metrics = read_metrics(d)
        stems = sorted(set(executed) | set(metrics))
        for stem in stems:
            info = _executed_info(executed.get(stem), d)
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


# ----------------------------------------------------------------------------- the paper-shaped table
METHODS_NOTEBOOK = "05_compare_methods"
"""The notebook whose metrics hold one entry per method (``ltc.evaluate.table_metrics``)."""

METHOD_ORDER: tuple[tuple[str, str], ...] = (
    ("zero_shot", "zero-shot"),
    ("ortho_cali", "Ortho-Cali"),
    ("roboshot", "RoboShot"),
    ("textspan", "TextSpan"),
    ("ablate", "ablate"),
    ("inject", "inject"),
    ("ltc", "LTC"),
    ("ltc_paper_recipe", "LTC (paper recipe)"),
    ("ltc_unit_norm_injection", "LTC (unit-norm)"),
    ("ltc_full", "LTC-full"),
    ("ltc_threshold_rule", "LTC (threshold)"),
    ("random", "random"),
    ("random_paper_recipe", "random (paper)"),
)
"""Known methods (metrics key, row label) in table order. Rows come in the fixed order of their
kind: zero-shot; baselines (Ortho-Cali, RoboShot, TextSpan, and any key not named below); ablate;
inject; LTC variants (``ltc``, ``ltc_*``); random controls (``random*``). Within a kind, known keys
keep this order and unknown ones follow in the order the metrics file lists them."""

METRIC_LABELS = {"wg": "WG", "avg_sample": "Avg(sample)", "avg_group": "Avg(group)", "avg_train": "Avg(train)",
                 "gap": "Gap", "gap_group": "Gap(group)", "gap_train": "Gap(train)"}
"""Column headers; ``Avg(sample)`` is the sample-weighted accuracy, ``Gap`` = Avg(sample) - WG."""
DEFAULT_METRICS = ("wg", "avg_sample", "gap")
_ALIASES = {"avg": "avg_sample", "worst": "wg"}
_PERCENT = {"wg", "avg_sample", "avg_group", "avg_train", "gap", "gap_group", "gap_train"}
_KNOWN = {k: i for i, (k, _) in enumerate(METHOD_ORDER)}
_LABELS = {**dict(METHOD_ORDER), **PROBE_LABELS}


def method_key(name: str) -> str:
    """The metrics key of a method row name: ``"LTC (threshold rule)" -> "ltc_threshold_rule"``."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def method_kind(key: str) -> int:
    """Rank of a method's kind: 0 zero-shot, 1 baselines, 2 ablate, 3 inject, 4 LTC variants, 5 random, 6 probes."""
    if key.startswith("probe_"):
        return 6
    if key == "zero_shot":
        return 0
    if key.startswith("random"):
        return 5
    if key == "ltc" or key.startswith("ltc_"):
        return 4
    if key.startswith("inject"):
        return 3
    if key.startswith("ablate"):
        return 2
    return 1


def method_rows(metrics: Mapping[str, Any]) -> dict[str, dict]:
    """The method entries of a methods notebook's metrics, in the fixed table order.

    Args:
        metrics: e.g. ``metrics/05_compare_methods.json``: ``{method_key: {"wg": ..., ...}, ...}``;
            an entry is a method when it is a mapping with a ``wg`` (FairFace: ``max_skew``) value. A ``gender`` section
            (``{row name: {"overall_bias": ...}}``) is merged into the matching rows.
    Returns:
        ``{method_key: metrics}`` ordered by :data:`METHOD_ORDER`'s kinds.
    """
    found = [(k, dict(v)) for k, v in metrics.items() if isinstance(v, Mapping) and ("wg" in v or "max_skew" in v)]
    pos = {k: i for i, (k, _) in enumerate(found)}
    found.sort(key=lambda kv: (method_kind(kv[0]), _KNOWN.get(kv[0], len(_KNOWN)), pos[kv[0]]))
    rows = dict(found)
    gender = metrics.get("gender")
    if isinstance(gender, Mapping):
        for name, extra in gender.items():
            if method_key(name) in rows and isinstance(extra, Mapping):
                rows[method_key(name)].update(extra)
    return rows


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def format_cell(row: Mapping[str, Any], key: str, ci: bool = True, digits: int = 1) -> str:
    """One table cell: ``"72.3 [68.1,76.0]"`` (95% CI), ``"51.2 ± 4.1"`` (sd), or the value.

    Accuracy-like keys (percent) get ``digits`` decimals, other numbers 3 significant digits;
    a missing value is an empty cell.
    """
    v = row.get(key)
    if v is None:
        return ""
    if not _number(v):
        return str(v)
    pct = key in _PERCENT or key.startswith("acc_")
    text = f"{v:.{digits}f}" if pct else f"{v:.3g}"
    lo, hi, sd = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high"), row.get(f"{key}_sd")
    if ci and _number(lo) and _number(hi):
        text += f" [{lo:.{digits}f},{hi:.{digits}f}]" if pct else f" [{lo:.3g},{hi:.3g}]"
    elif _number(sd):
        text += f" ± {sd:.{digits}f}" if pct else f" ± {sd:.3g}"
    return text


def _esc_html(text: Any) -> str:
    import html

    return html.escape(str(text), quote=True)


def _esc_latex(text: Any) -> str:
    out = str(text).replace("\\", r"\textbackslash{}")
    for ch in "&%$#_{}":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\^{}").replace("±", r"$\pm$")


@dataclass
class PaperTable:
    """Methods as rows, one column group per run: what :func:`paper_report` returns.

    Attributes:
        runs: column-group labels, one per run (empty string: a single unnamed run).
        rows: ``(method_key, row label)`` in table order (the union over runs).
        values: ``{run: {method_key: metrics}}``.
        metrics: the metric keys shown, one column each per run.
        sources: ``{run: folder}`` for the legend.
        spread: what the ``±`` means when the cells summarise several runs (a sweep over seeds);
            None for a run's own bootstrap CIs and random-draw sd.
    """

    runs: list[str]
    rows: list[tuple[str, str]]
    values: dict[str, dict[str, dict]]
    metrics: tuple[str, ...] = DEFAULT_METRICS
    sources: dict[str, str] = field(default_factory=dict)
    spread: str | None = None

    @classmethod
    def from_metrics(cls, per_run: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = DEFAULT_METRICS,
                     sources: Mapping[str, str] | None = None) -> "PaperTable":
        """Build from ``{run label: methods-notebook metrics}`` (see :func:`method_rows`)."""
        values = {run: method_rows(m) for run, m in per_run.items()}
        keys: dict[str, None] = {}
        for rows in values.values():
            keys.update(dict.fromkeys(rows))
        pos = {k: i for i, k in enumerate(keys)}
        order = sorted(keys, key=lambda k: (method_kind(k), _KNOWN.get(k, len(_KNOWN)), pos[k]))
        shown = tuple(_ALIASES.get(m, m) for m in metrics)
        return cls(list(values), [(k, _LABELS.get(k, k)) for k in order], values, shown, dict(sources or {}))

    def _tags(self) -> list[str]:
        if len(self.runs) == 1:
            return [""]
        if all(len(r) <= 3 for r in self.runs):  # short names head their columns; others are numbered
            return list(self.runs)
        return [str(i) for i in range(1, len(self.runs) + 1)]

    def header(self, metric: str) -> str:
        """The column header of a metric (``WG``, ``Avg(sample)``, ``Gap``, or the key)."""
        return METRIC_LABELS.get(metric, metric)

    def frame(self, ci: Sequence[bool] | bool = True):
        """The table as text cells: a DataFrame indexed by row label, one column per (run, metric).

        Args:
            ci: show confidence intervals, for all metrics or per metric.
        Returns:
            a DataFrame; its columns are the metric headers for one run, else ``"<header> <tag>"``.
        """
        import pandas as pd

        flags = [ci] * len(self.metrics) if isinstance(ci, bool) else list(ci)
        data: dict[str, list[str]] = {}
        for run, tag in zip(self.runs, self._tags()):
            for metric, show in zip(self.metrics, flags):
                col = self.header(metric) + (f" {tag}" if tag else "")
                data[col] = [format_cell(self.values[run].get(k, {}), metric, ci=show) for k, _ in self.rows]
        df = pd.DataFrame(data, index=pd.Index([label for _, label in self.rows], name="method"))
        return df

    def caption(self, ci_left_out: Sequence[str] = ()) -> str:
        """What the numbers are: units, which average, the CI, the random rows, the run legend."""
        parts = ["Percent. WG = worst-group accuracy"]
        if "avg_sample" in self.metrics:
            parts.append("Avg(sample) = sample-weighted accuracy")
        if "avg_group" in self.metrics:
            parts.append("Avg(group) = mean of group accuracies")
        if "gap" in self.metrics:
            parts.append("Gap = Avg(sample) - WG")
        if self.spread:
            text = "; ".join(parts) + f". Cells: {self.spread}."
        else:
            text = "; ".join(parts) + ". [a,b] = 95% bootstrap CI (resampled within groups)"
            draws = {int(v["draws"]) for r in self.values.values() for k, v in r.items()
                     if k.startswith("random") and _number(v.get("draws"))}
            if draws:
                text += f"; random: mean ± sd over {'/'.join(map(str, sorted(draws)))} draws of random heads"
            text += "."
        text += probe_caption(self.values)
        if ci_left_out:
            text += f" CIs of {', '.join(self.header(m) for m in ci_left_out)} left out to fit the width."
        tags = self._tags()
        if len(self.runs) > 1:
            text += " Runs: " + ", ".join(f"{t} = {self.sources.get(r, r)}" if t != r else self.sources.get(r, r)
                                          for r, t in zip(self.runs, tags)) + "."
        return text

    def to_markdown(self, max_width: int | None = 120) -> str:
        """Caption line, blank line, a Markdown table at most ``max_width`` characters wide.

        When the full table is wider, the CIs are left out from the last metric backwards (the
        first metric, WG, keeps its CI longest); the caption says which.
        """
        flags = [True] * len(self.metrics)
        dropped: list[str] = []
        while True:
            table = markdown_table(self.frame(flags).reset_index())
            width = max(len(line) for line in table.splitlines())
            if max_width is None or max_width <= 0 or width <= max_width or not any(flags):
                break
            i = max(j for j in range(len(flags)) if flags[j])
            flags[i] = False
            dropped.insert(0, self.metrics[i])
        caption = self.caption(dropped)
        if max_width is not None and max_width > 0:
            import textwrap

            caption = textwrap.fill(caption, width=max_width, break_on_hyphens=False)
        return caption + "\n\n" + table

    def numeric(self):
        """The numbers behind the cells: one row per method; value, CI and sd columns per (run, metric)."""
        import pandas as pd

        data: dict[str, list] = {}
        for run, tag in zip(self.runs, self._tags()):
            for metric in self.metrics:
                for suffix in ("", "_ci_low", "_ci_high", "_sd"):
                    vals = [self.values[run].get(k, {}).get(metric + suffix) for k, _ in self.rows]
                    if suffix and all(v is None for v in vals):
                        continue
                    data[(f"{run}:" if run else "") + metric + suffix] = vals
        return pd.DataFrame(data, index=pd.Index([label for _, label in self.rows], name="method"))

    def to_csv(self) -> str:
        """The numbers (see :meth:`numeric`) as CSV text."""
        return self.numeric().to_csv()

    def to_html(self) -> str:
        """An HTML ``<table class="paper-table">`` with a caption and a header row per run group."""
        df = self.frame()
        head1 = "<th rowspan=\"2\">method</th>" if len(self.runs) > 1 else ""
        groups = "".join(f"<th colspan=\"{len(self.metrics)}\">{_esc_html(self.sources.get(r, r))}</th>"
                         for r in self.runs) if len(self.runs) > 1 else ""
        labels = "".join(f"<th>{_esc_html(self.header(m))}</th>" for _ in self.runs for m in self.metrics)
        rows = "".join("<tr><th>" + _esc_html(label) + "</th>" + "".join(f"<td>{_esc_html(v)}</td>" for v in cells)
                       + "</tr>" for label, cells in zip(df.index, df.itertuples(index=False, name=None)))
        header = (f"<tr>{head1}{groups}</tr><tr>{labels}</tr>" if len(self.runs) > 1
                  else f"<tr><th>method</th>{labels}</tr>")
        return (f"<table class=\"paper-table\"><caption>{_esc_html(self.caption())}</caption>"
                f"<thead>{header}</thead><tbody>{rows}</tbody></table>")

    def to_latex(self) -> str:
        """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), with the caption as a comment."""
        df = self.frame()
        n = len(self.metrics)
        lines = [f"% {self.caption()}", "\\begin{tabular}{l" + "r" * (n * len(self.runs)) + "}", "\\toprule"]
        if len(self.runs) > 1:
            lines.append(" & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{_esc_latex(self.sources.get(r, r))}}}"
                                            for r in self.runs) + " \\\\")
            lines.append(" ".join(f"\\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(self.runs))))
        lines.append("method & " + " & ".join(_esc_latex(self.header(m)) for _ in self.runs for m in self.metrics)
                     + " \\\\")
        lines.append("\\midrule")
        for label, cells in zip(df.index, df.itertuples(index=False, name=None)):
            lines.append(" & ".join(_esc_latex(c) for c in (label, *cells)) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines)

    def render(self, fmt: str = "md", max_width: int | None = 120) -> str:
        """The table as ``md``, ``csv``, ``html`` or ``latex`` text."""
        if fmt == "md":
            return self.to_markdown(max_width)
        if fmt == "csv":
            return self.to_csv()
        if fmt == "html":
            return self.to_html()
        if fmt == "latex":
            return self.to_latex()
        raise ValueError(f"unknown table format {fmt!r}; use one of md, csv, html, latex")


def paper_table(metrics: Mapping[str, Any], metrics_shown: Sequence[str] = DEFAULT_METRICS):
    """The paper-shaped table of one run's methods metrics, as notebook 05 shows it.

    ``ltc report`` prints the same cells (one formatter): call it in a notebook on the dict
    written to ``metrics/05_compare_methods.json``, ``ltc.workbook.paper_table(metrics)``.

    Args:
        metrics: ``{method_key: {"wg", "wg_ci_low", ..., "avg_sample", "gap", ...}}``
            (``ltc.evaluate.table_metrics(table)``).
        metrics_shown: metric keys, one column each (default WG, Avg(sample), Gap).
    Returns:
        a DataFrame of text cells indexed by method, rows in the fixed order of :data:`METHOD_ORDER`.
    """
    return PaperTable.from_metrics({"": metrics}, metrics_shown).frame()


def paper_report(run_dirs: Sequence[str | os.PathLike], metrics: Sequence[str] | None = None,
                 notebook: str = METHODS_NOTEBOOK) -> PaperTable:
    """The paper-shaped table of several runs: methods as rows, one column group per run.

    Args:
        run_dirs: run folders (``ltc run``); each needs ``metrics/<notebook>.json``.
        metrics: metric keys to show (default WG, Avg(sample), Gap; ``avg`` means ``avg_sample``).
        notebook: the notebook whose metrics list the methods.
    Returns:
        a :class:`PaperTable` (``.render("md" | "csv" | "html" | "latex")``).
    Raises:
        FileNotFoundError: a run folder does not exist.
        WorkbookError: a run has no methods metrics (run the notebook, or use ``ltc report --all``).
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise WorkbookError("report needs at least one run folder")
    per_run: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for label, d in zip(_run_labels(dirs), dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"run folder {str(d)!r} does not exist")
        got = read_metrics(d)  # notebook 07's probe rows join the methods when it has run
        m = with_probe_rows(got.get(notebook), got.get(PROBES_NOTEBOOK))
        if not m or not method_rows(m):
            raise WorkbookError(f"{str(d)!r} has no method metrics in metrics/{notebook}.json; run that notebook "
                                f"(ltc run {notebook[:2]} --out {d}) or see every metric with `ltc report --all`")
        per_run[label if len(dirs) > 1 else ""] = m
        sources[label if len(dirs) > 1 else ""] = str(d)
    table = PaperTable.from_metrics(per_run, metrics or DEFAULT_METRICS, sources)
    missing = [m for m in table.metrics if not any(m in v for r in table.values.values() for v in r.values())]
    if missing:
        have = sorted({k for r in table.values.values() for v in r.values() for k in v
                       if not k.endswith(("_ci_low", "_ci_high", "_sd"))})
        raise WorkbookError(f"no method has the metric(s) {missing}; available: {', '.join(have)}")
    return table


def _write_text(path: Path, text: str) -> None:
    from ..io import atomic_write

    atomic_write(path, text if text.endswith("\n") else text + "\n")


def report_command(args) -> int:
    """``ltc report``: print (and with ``--out`` write) the methods table, or the flat one with ``--all``.

    Without ``--all``, runs that hold no methods metrics at all (``--notebook``) fall back to the
    flat table, with a note on stderr; a single sweep folder (``ltc sweep``) prints its mean ± sd
    table. Returns the exit status.
    """
    import sys

    flat = args.all
    if not flat and len(args.run_dirs) == 1 and (Path(args.run_dirs[0]) / "ltc_sweep.json").is_file():
        from .sweep import sweep_summary  # a sweep folder: its mean ± sd table

        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        table = sweep_summary(args.run_dirs[0], metrics)
        if table is None:
            raise WorkbookError(f"no finished point of the sweep {args.run_dirs[0]} has metrics/{args.notebook}.json")
        print(table.render(args.format, max_width=args.width).rstrip("\n"))
        return 0
    if not flat and not any((Path(d) / "metrics" / f"{args.notebook}.json").is_file() for d in args.run_dirs):
        print(f"ltc report: no run has metrics/{args.notebook}.json; showing every metric (--all)", file=sys.stderr)
        flat = True
    stem = None
    if args.out:
        stem = Path(args.out)
        if stem.suffix in {".csv", ".md", ".html", ".tex"}:
            stem = stem.with_suffix("")
    if flat:
        df = report(args.run_dirs, out=stem)
        text = {"md": lambda: markdown_table(df), "csv": lambda: df.to_csv(index=False),
                "html": lambda: df.to_html(index=False, na_rep=""), "latex": lambda: df.to_latex(index=False)}
        print(text[args.format]().rstrip("\n"))
        if stem is not None:
            print(f"\nwrote {stem}.csv and {stem}.md")
        return 0
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    table = paper_report(args.run_dirs, metrics=metrics, notebook=args.notebook)
    text = table.render(args.format, max_width=args.width)
    print(text.rstrip("\n"))
    if stem is not None:
        ext = {"md": "md", "csv": "csv", "html": "html", "latex": "tex"}[args.format]
        _write_text(stem.with_name(f"{stem.name}.{ext}"), text)
        _write_text(stem.with_name(f"{stem.name}.csv"), table.to_csv())
        print(f"\nwrote {stem}.{ext}" + (f" and {stem}.csv" if ext != "csv" else ""))
    return 0
