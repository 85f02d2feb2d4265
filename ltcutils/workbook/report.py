"""Merge the metrics of run folders into one table."""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from .base import OUTPUT_DIR, WorkbookError
from .notebooks import list_notebooks, notebook_parameters
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
