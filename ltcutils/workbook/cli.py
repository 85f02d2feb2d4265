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

    cp = sub.add_parser("capture", allow_abbrev=False,
                        help="capture one store with N processes (torchrun); other options: python -m ltcutils.capture -h",
                        description="Capture one activation store, on N processes through torchrun "
                        "(torch.distributed.run) when --nproc-per-node or --nnodes asks for more than one. Every "
                        "option not listed here goes to python -m ltcutils.capture (see its -h), e.g. "
                        "`ltc capture --nproc-per-node 2 --model ltc-tiny --dataset waterbirds --cache cache`.")
    cp.add_argument("--nproc-per-node", default="1", help="processes on this node: a number, gpu or auto (default 1)")
    cp.add_argument("--nnodes", help="nodes, or MIN:MAX for an elastic job (default 1)")
    cp.add_argument("--node-rank", help="this node's rank (static rendezvous only)")
    cp.add_argument("--rdzv-backend", help="rendezvous backend, e.g. c10d (torchrun's default: static)")
    cp.add_argument("--rdzv-endpoint", help="HOST:PORT of the rendezvous, the same on every node")
    cp.add_argument("--rdzv-id", help="job id, the same on every node")
    cp.add_argument("--max-restarts", help="times torchrun restarts failed ranks (each resumes its missing shards)")
    cp.add_argument("--dry-run", action="store_true", help="print the command instead of running it")

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


def capture_command(args: argparse.Namespace, capture_args: Sequence[str]) -> list[str] | None:
    """The torchrun command for ``ltc capture``, or None for one process (run here, no launcher).

    ``capture_args`` are checked by ``python -m ltcutils.capture``'s own parser first, so a typo
    fails once, here, instead of on every rank.
    """
    from ..capture import TORCHRUN_OPTIONS, parser, torchrun_command

    parser("ltc capture").parse_args(list(capture_args))  # exits 2 with the capture's usage on a bad option
    opts = {o[2:].replace("-", "_"): getattr(args, o[2:].replace("-", "_")) for o in TORCHRUN_OPTIONS}
    if str(args.nproc_per_node) == "1" and opts["nnodes"] in (None, "1") and opts["rdzv_endpoint"] is None:
        return None
    return torchrun_command(capture_args, args.nproc_per_node, **opts)


def _capture(args: argparse.Namespace, capture_args: Sequence[str]) -> int:
    import shlex
    import subprocess

    cmd = capture_command(args, capture_args)
    if args.dry_run:
        print(shlex.join(cmd or [sys.executable, "-m", "ltcutils.capture", *capture_args]))
        return 0
    if cmd is None:
        from ..capture import main as capture_main

        capture_main(list(capture_args))
        return 0
    return subprocess.run(cmd).returncode  # torchrun's status: 0, or 1 when a rank failed (its log says why)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ltc`` command; returns the exit status (0 ok, 1 a notebook or check failed, 2 usage)."""
    ap = _parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.command != "capture":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
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
        if args.command == "capture":
            return _capture(args, extra)
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
