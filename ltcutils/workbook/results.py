"""The metrics convention: ``metrics/<notebook>.json`` written by notebooks, read by reports."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .base import METRICS_DIR, WorkbookError


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
    from ..io import atomic_write

    return atomic_write(path, text)


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
