"""Parameter sweeps: the cartesian product of parameter lists, one run folder per point.

A grid file is a parameters file (see :func:`~ltcutils.workbook.load_params_file`) with two more
sections::

    grid:                     # lists of values; every combination is one point
      seed: [0, 1, 2, 3, 4]
      model: [ltc-tiny]
    sweep:                    # optional
      out: runs/seeds         # the sweep folder (default runs/sweep-<grid file stem>)
      cache: per_point        # per_point (default) or shared
      over: seed              # the summary averages over this grid key (default seed)
    n_per_group: 100          # anything else: as in a parameters file, given to every point
    notebooks: {02_locate_heads: {k_cap: 3}}

Points go to ``<out>/<key>-<value>__<key>-<value>/`` (keys of the grid in file order). A sweep
is resumable: a point whose folder holds a successful run record (``ltc_run.json``) of the same
notebooks with the same parameters is skipped; a failed, interrupted or stale point runs again.
"The same" means the parameters only: after changing the code, or the weights behind a model
name (the shipped default checkpoint, say), sweep into a new ``--out``.
``<out>/ltc_sweep.json`` records every point's status; ``<out>/summary.md`` and ``summary.csv``
hold the methods table with mean ± sd over the ``over`` key for every other combination.

Caches: with ``cache: per_point`` each point decomposes into ``<out>/cache/<point>/``, so points
share no file and none depends on another having run. ``shared`` uses one ``<out>/cache``;
decompositions there are keyed by model weights and data fingerprint, so only points whose data
are identical reuse a store (cheaper for real models; a point whose ``layers`` differ then fails
on the store's settings check instead of mixing).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .base import MANIFEST, OUTPUT_DIR, ParameterError
from .notebooks import default_notebooks_dir, list_notebooks, notebook_parameters, select_notebooks
from .parameters import load_params_file, resolve_parameters
from .report import METHODS_NOTEBOOK, PaperTable, _write_text, method_rows
from .results import _plain, read_metrics

SWEEP_RECORD = "ltc_sweep.json"
CACHE_PARAM = "cache_dir"


@dataclass
class Point:
    """One point of a sweep: its grid values, folder and outcome."""

    name: str
    values: dict[str, Any]
    out: Path
    status: str = "pending"  # "ok", "skipped" (finished earlier), "failed", "pending"
    seconds: float | None = None
    error: str | None = None


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`."""

    out: Path
    points: list[Point]
    over: str
    summary: PaperTable | None = None
    seconds: float = 0.0
    failed: list[Point] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.status in {"ok", "skipped"} for p in self.points)


def load_grid(source: str | os.PathLike | Mapping) -> tuple[dict[str, list], dict, dict]:
    """Split a grid file into its grid, its sweep options and the parameters every point gets.

    Args:
        source: a YAML path or a mapping (see the module docstring).
    Returns:
        ``(grid, options, params_file)``: ``{name: [values]}`` in file order; ``{"out", "cache",
        "over"}``; the rest as a parameters mapping for :func:`run_workbook`.
    Raises:
        FileNotFoundError: no such file.
        ParameterError: no ``grid`` section, a grid entry that is not a non-empty list, an
            unknown sweep option.
    """
    if isinstance(source, Mapping):
        data, where = dict(source), "grid mapping"
    else:
        import yaml

        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"grid file {str(p)!r} does not exist")
        data, where = yaml.safe_load(p.read_text(encoding="utf-8")) or {}, str(p)
        if not isinstance(data, Mapping):
            raise ParameterError(f"{where}: expected a YAML mapping with a grid: section")
    grid = data.pop("grid", None)
    if not isinstance(grid, Mapping) or not grid:
        raise ParameterError(f"{where}: needs a grid: section mapping parameter names to lists of values, "
                             "e.g. grid: {seed: [0, 1, 2]}")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ParameterError(f"{where}: grid entry {name!r} must be a non-empty list, got {values!r} "
                                 "(a single value goes outside grid:)")
        if name == OUTPUT_DIR:
            raise ParameterError(f"{where}: {OUTPUT_DIR!r} is set per point by the sweep")
    options = dict(data.pop("sweep", None) or {})
    unknown = sorted(set(options) - {"out", "cache", "over"})
    if unknown:
        raise ParameterError(f"{where}: unknown sweep option(s) {unknown}; valid: out, cache, over")
    options.setdefault("cache", "per_point")
    options.setdefault("over", "seed")
    if options["cache"] not in {"per_point", "shared"}:
        raise ParameterError(f"{where}: sweep.cache must be per_point or shared, got {options['cache']!r}")
    fixed = load_params_file(data)  # validates the shape; keeps checks: for `ltc check`
    clash = sorted(set(grid) & set(fixed["defaults"]))
    if clash:
        raise ParameterError(f"{where}: {clash} are both in grid: and fixed; keep one")
    return {str(k): list(v) for k, v in grid.items()}, options, data


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-") or "none"


def grid_points(grid: Mapping[str, Sequence]) -> list[tuple[str, dict]]:
    """Every combination of the grid, as ``(folder name, {name: value})`` in row-major order.

    Raises:
        ParameterError: two points would get the same folder name.
    """
    names = list(grid)
    out, seen = [], {}
    for combo in itertools.product(*(grid[n] for n in names)):
        values = dict(zip(names, combo))
        name = "__".join(f"{_slug(n)}-{_slug(v)}" for n, v in values.items())
        if name in seen:
            raise ParameterError(f"grid points {seen[name]} and {values} would share the folder {name!r}; "
                                 "make the values differ in letters or digits")
        seen[name] = values
        out.append((name, values))
    return out


def point_finished(out: Path, expected: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether ``out`` holds a successful run of exactly these notebooks with these parameters.

    Args:
        out: the point's run folder.
        expected: ``{notebook stem: parameters}`` without ``output_dir`` (as resolved).
    """
    path = out / MANIFEST
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    nbs = record.get("notebooks") or []
    if not record.get("ok") or [n.get("name") for n in nbs] != list(expected):
        return False
    for n in nbs:
        got = {k: v for k, v in (n.get("parameters") or {}).items() if k != OUTPUT_DIR}
        if n.get("status") != "ok" or got != _plain(dict(expected[n["name"]])):
            return False
    return True


def _write_record(result: SweepResult, grid: Mapping, options: Mapping) -> None:
    data = {"grid": grid, "options": options, "seconds": round(result.seconds, 3),
            "points": [{"name": p.name, "values": p.values, "status": p.status,
                        "seconds": None if p.seconds is None else round(p.seconds, 3), "error": p.error}
                       for p in result.points]}
    _write_text(result.out / SWEEP_RECORD, json.dumps(_plain(data), indent=2) + "\n")


def summarize(points: Sequence[Point], over: str = "seed", notebook: str = METHODS_NOTEBOOK,
              metrics: Sequence[str] | None = None) -> PaperTable | None:
    """Mean ± sd over ``over`` of every method, one column group per other combination.

    Args:
        points: finished points (status ``ok`` or ``skipped``; others are left out).
        over: the grid key averaged over (points that differ only in it form a group).
        notebook: the notebook whose metrics list the methods.
        metrics: metric keys (default WG, Avg(sample), Gap).
    Returns:
        a :class:`PaperTable` whose cells are ``mean ± sd`` (sample sd, n - 1; no sd for a single
        point), or None when no finished point has methods metrics.
    """
    from ..baselines import mean_and_sd

    groups: dict[str, list[dict]] = {}
    for p in points:
        if p.status not in {"ok", "skipped"}:
            continue
        m = read_metrics(p.out).get(notebook)
        if not m or not method_rows(m):
            continue
        label = ", ".join(f"{k}={v}" for k, v in p.values.items() if k != over) or "all"
        groups.setdefault(label, []).append(method_rows(m))
    if not groups:
        return None
    per_group: dict[str, dict] = {}
    counts = {}
    for label, runs in groups.items():
        rows: dict[str, dict] = {}
        keys = dict.fromkeys(k for r in runs for k in r)
        for key in keys:
            cells: dict[str, Any] = {}
            names = dict.fromkeys(n for r in runs if key in r for n in r[key])
            for name in names:
                vals = [r[key][name] for r in runs if key in r and isinstance(r[key].get(name), (int, float))
                        and not isinstance(r[key].get(name), bool) and r[key][name] is not None]
                if name.endswith(("_ci_low", "_ci_high", "_sd")) or not vals:
                    continue
                mean, sd = mean_and_sd([float(x) for x in vals])
                cells[name] = mean
                if sd == sd:  # not NaN
                    cells[f"{name}_sd"] = sd
            rows[key] = cells
        per_group[label] = rows
        counts[label] = len(runs)
    table = PaperTable.from_metrics(per_group, metrics or ("wg", "avg_sample", "gap"),
                                    sources={k: k for k in per_group})
    ns = sorted(set(counts.values()))
    table.spread = (f"mean ± sd over {'/'.join(map(str, ns))} values of {over} (sample sd, n - 1)"
                    + ("" if len(ns) == 1 else "; n per group: " + ", ".join(f"{k}: {v}" for k, v in counts.items())))
    return table


def sweep_summary(sweep_dir: str | os.PathLike, metrics: Sequence[str] | None = None) -> PaperTable | None:
    """The mean ± sd table of a sweep folder, from its record (what ``ltc report SWEEP_DIR`` prints).

    Args:
        sweep_dir: a folder written by :func:`run_sweep` (holds ``ltc_sweep.json``).
        metrics: metric keys (default WG, Avg(sample), Gap).
    Returns:
        the table, or None when no finished point has methods metrics.
    Raises:
        FileNotFoundError: the folder has no sweep record.
    """
    d = Path(sweep_dir)
    path = d / SWEEP_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{str(d)!r} has no {SWEEP_RECORD}; is it a folder written by `ltc sweep`?")
    record = json.loads(path.read_text(encoding="utf-8"))
    points = [Point(p["name"], dict(p["values"]), d / p["name"], status=p["status"]) for p in record["points"]]
    return summarize(points, over=str(record.get("options", {}).get("over", "seed")), metrics=metrics)


def run_sweep(
    grid_file: str | os.PathLike | Mapping,
    notebooks: Sequence[str | os.PathLike] | None = None,
    out: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    kernel: str = "python3",
    progress: bool = True,
    metrics: Sequence[str] | None = None,
) -> SweepResult:
    """Run every point of a grid that has not finished yet, then summarise over seeds.

    Args:
        grid_file: the grid YAML (or mapping); see the module docstring.
        notebooks: the notebooks each point runs (default all), as for ``ltc run``.
        out: the sweep folder (overrides ``sweep.out``; default ``runs/sweep-<grid file stem>``).
        notebooks_dir: where the notebooks are.
        kernel: the Jupyter kernel name.
        progress: a progress bar over points on stderr and the summary on stdout.
        metrics: metric keys for the summary (default WG, Avg(sample), Gap).
    Returns:
        a :class:`SweepResult` (``ok`` is False when a point failed; it runs again next time).
    Raises:
        ParameterError: a malformed grid or an unknown parameter (before anything runs).
        KeyboardInterrupt: passed on after the sweep record is written; rerun to finish.
    """
    from .execution import run_workbook

    grid, options, fixed = load_grid(grid_file)
    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    selected = select_notebooks(notebooks, nb_dir)
    workbook = list_notebooks(nb_dir) if nb_dir.is_dir() else []
    default_out = (Path("runs") / f"sweep-{Path(grid_file).stem}") if not isinstance(grid_file, Mapping) \
        else Path("runs") / "sweep"
    sweep_dir = Path(out or options.get("out") or default_out).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    declares_cache = any(CACHE_PARAM in notebook_parameters(p) for p in selected)
    fixed_spec = load_params_file(fixed)
    user_cache = CACHE_PARAM in grid or CACHE_PARAM in fixed_spec["defaults"]

    planned: list[tuple[Point, dict, dict]] = []
    for name, values in grid_points(grid):
        params = dict(values)
        if declares_cache and not user_cache:
            cache = sweep_dir / "cache" / name if options["cache"] == "per_point" else sweep_dir / "cache"
            params[CACHE_PARAM] = str(cache)
        resolved = resolve_parameters(selected, params, fixed, all_notebooks=workbook)  # fails early
        planned.append((Point(name, dict(values), sweep_dir / name), params, resolved))

    result = SweepResult(out=sweep_dir, points=[p for p, _, _ in planned], over=str(options["over"]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(planned), desc="ltc sweep", unit="point", file=sys.stderr, dynamic_ncols=True)
    say = ((lambda msg: bar.write(msg, file=sys.stderr)) if bar is not None else (lambda msg: None))
    say(f"ltc sweep: {len(planned)} point(s) x {len(selected)} notebook(s) -> {sweep_dir}")
    t0 = time.perf_counter()
    try:
        for i, (point, params, resolved) in enumerate(planned, 1):
            if point_finished(point.out, resolved):
                point.status = "skipped"
                say(f"[{i}/{len(planned)}] {point.name}: finished earlier, skipped")
            else:
                if bar is not None:
                    bar.set_postfix_str(point.name)
                t = time.perf_counter()
                try:
                    run = run_workbook(selected, params=params, params_file=fixed, out=point.out,
                                       notebooks_dir=nb_dir, kernel=kernel, progress=False, raise_on_error=False)
                except KeyboardInterrupt:
                    point.status, point.error = "failed", "interrupted"
                    point.seconds = time.perf_counter() - t
                    raise
                point.seconds = time.perf_counter() - t
                point.status = "ok" if run.ok else "failed"
                if not run.ok:
                    point.error = next((n.error for n in run.notebooks if n.error), "a notebook did not finish")
                say(f"[{i}/{len(planned)}] {point.name}: {point.status} in {point.seconds:.1f} s"
                    + (f"\n    {point.error.splitlines()[0]}" if point.error else ""))
            if bar is not None:
                bar.update(1)
            result.seconds = time.perf_counter() - t0
            _write_record(result, grid, options)
    except KeyboardInterrupt:
        result.seconds = time.perf_counter() - t0
        _write_record(result, grid, options)
        if bar is not None:
            bar.close()
        print(f"\nltc sweep: interrupted; rerun the same command to run the unfinished points "
              f"(finished ones are skipped)", file=sys.stderr)
        raise
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    result.failed = [p for p in result.points if p.status == "failed"]
    _write_record(result, grid, options)
    result.summary = summarize(result.points, over=result.over, metrics=metrics)
    if result.summary is not None:
        text = result.summary.to_markdown(120)
        _write_text(sweep_dir / "summary.md", text)
        _write_text(sweep_dir / "summary.csv", result.summary.to_csv())
    if progress:
        done = sum(p.status in {"ok", "skipped"} for p in result.points)
        print(f"{done}/{len(result.points)} point(s) finished ({sum(p.status == 'skipped' for p in result.points)} "
              f"skipped as finished earlier), {result.seconds:.1f} s")
        for p in result.failed:
            print(f"FAILED {p.name} (runs again on the next call): {(p.error or '').splitlines()[0]}")
        if result.summary is None:
            print(f"no finished point has metrics/{METHODS_NOTEBOOK}.json: no mean ± sd table")
        else:
            print("\n" + text)
            print(f"\nwrote {sweep_dir / 'summary.md'} and {sweep_dir / 'summary.csv'}")
    return result
