"""The ``ltc`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .base import WorkbookError
from .checks import _iter_checks, parse_check
from .execution import run_workbook
from .lint import ci_problems, notebook_problems
from .notebooks import default_notebooks_dir, list_notebooks, notebook_parameters, select_notebooks
from .parameters import load_params_file
from .report import report_command
from .results import read_metrics


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

    rp = sub.add_parser("report", help="the methods table of run folders (one column group per run)")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--metrics", help="comma-separated metric keys (default wg,avg_sample,gap)")
    rp.add_argument("--format", default="md", choices=["md", "csv", "html", "latex"], help="output format (default md)")
    rp.add_argument("--all", action="store_true", help="the flat table: every parameter and metric of every notebook")
    rp.add_argument("--notebook", default="05_compare_methods", help="notebook whose metrics list the methods")
    rp.add_argument("--width", type=int, default=120, help="md: widest line; CIs are left out to fit (0: no limit)")
    rp.add_argument("--out", help="also write <OUT>.<format> and <OUT>.csv (with --all: <OUT>.csv and <OUT>.md)")

    sw = sub.add_parser("sweep", help="run every point of a parameter grid (resumable), then mean ± sd over seeds")
    sw.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="as for `ltc run` (default: all)")
    sw.add_argument("-f", "--grid-file", required=True, help="YAML with a grid: section (see ltcutils.workbook.sweep)")
    sw.add_argument("--out", help="the sweep folder (default: sweep.out, else runs/sweep-<grid file stem>)")
    sw.add_argument("--metrics", help="comma-separated metric keys for the summary (default wg,avg_sample,gap)")
    sw.add_argument("--notebooks-dir", help="where the notebooks are (default ./notebooks)")
    sw.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    hp = sub.add_parser("html", help="one self-contained HTML page: table, figures, notebooks, parameters, versions")
    hp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    hp.add_argument("--out", help="the HTML file (default <RUN>/report.html; several runs: next to the first)")
    hp.add_argument("--notebook", default="05_compare_methods", help="notebook whose metrics list the methods")
    hp.add_argument("--no-notebooks", action="store_true", help="leave the rendered notebooks out")

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
            return report_command(args)
        if args.command == "sweep":
            from .sweep import run_sweep

            metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
            sweep = run_sweep(args.grid_file, args.notebooks or None, out=args.out, notebooks_dir=nb_dir,
                              kernel=args.kernel, progress=not args.quiet, metrics=metrics)
            return 0 if sweep.ok else 1
        if args.command == "html":
            from .html import html_report

            path = html_report(args.run_dirs, out=args.out, notebook=args.notebook, notebooks=not args.no_notebooks)
            print(f"wrote {path}")
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
    except KeyboardInterrupt:
        print("ltc: interrupted; finished notebooks and cached captures are kept, resume with the same command",
              file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
