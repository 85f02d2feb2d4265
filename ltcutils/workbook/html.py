"""One self-contained HTML page for one run or a comparison of runs (``ltc html``).

The page holds, in this order: the methods table (:class:`~ltcutils.workbook.report.PaperTable`,
when the runs hold methods metrics), every figure of every run (image files under the run
folder, embedded as base64 ``data:`` URIs), each run's parameters per notebook, the software
versions, every metrics file, and the executed notebooks rendered by nbconvert (their own
figures are inline images already). Nothing is loaded from elsewhere: the file can be mailed,
uploaded as a CI artefact or opened offline.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

from .base import MANIFEST, WorkbookError
from .notebooks import list_notebooks
from .report import METHODS_NOTEBOOK, _executed_info, _run_labels, _write_text, paper_report, run_folders
from .results import read_metrics

FIGURE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                ".svg": "image/svg+xml", ".webp": "image/webp"}
"""Image files embedded as figures, by suffix."""
_SKIP_DIRS = {"cache", ".ipynb_checkpoints", "__pycache__"}
PACKAGES = ("ltcutils", "torch", "open_clip_torch", "numpy", "pandas", "scikit-learn", "matplotlib",
            "papermill", "nbconvert", "nbformat")
"""Packages whose versions the page lists (those installed)."""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
table.kv td { text-align: left; white-space: normal; word-break: break-all; max-width: 70em; }
table.kv th { text-align: left; }
caption { caption-side: top; text-align: left; font-size: .9em; color: #555; padding-bottom: .4em; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; }
details { margin: .4em 0; } summary { cursor: pointer; font-weight: 600; }
.nb { border: 1px solid #ddd; padding: .5em 1em; margin: .5em 0 1.5em; overflow-x: auto; }
.nb .jp-InputPrompt, .nb .jp-OutputPrompt { display: none; }
.nb .jp-CodeCell .jp-InputArea { background: #f6f8fa; }
.nb img { max-width: 100%; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def figure_files(run_dir: str | os.PathLike) -> list[Path]:
    """The image files of a run folder (any depth, caches and checkpoints left out), sorted.

    Args:
        run_dir: a run folder.
    Returns:
        paths whose suffix is in :data:`FIGURE_TYPES`.
    """
    root = Path(run_dir)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if Path(f).suffix.lower() in FIGURE_TYPES and not f.startswith("."):
                out.append(Path(dirpath) / f)
    return out


def data_uri(path: str | os.PathLike) -> str:
    """A file as a ``data:<mime>;base64,...`` URI (the mime type from the suffix)."""
    p = Path(path)
    mime = FIGURE_TYPES.get(p.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode('ascii')}"


def software_versions() -> dict[str, str]:
    """Python, platform, the git commit of the working directory and the :data:`PACKAGES` installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip()
        if commit:
            out["git commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _kv_table(pairs, cls: str = "kv") -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f"<table class=\"{cls}\">{rows}</table>"


def render_notebook(path: str | os.PathLike) -> str:
    """An executed notebook as an HTML fragment (nbconvert's ``basic`` template; images inline)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic")
    body, _ = exporter.from_notebook_node(nbformat.read(str(path), as_version=4))
    return body


def _pygments_css() -> str:
    try:
        from pygments.formatters import HtmlFormatter

        return HtmlFormatter().get_style_defs(".highlight")
    except ImportError:
        return ""


def html_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                notebook: str = METHODS_NOTEBOOK, notebooks: bool = True) -> Path:
    """Write one self-contained HTML page for one or several run folders.

    Args:
        run_dirs: run folders (``ltc run``).
        out: the HTML file (default ``<run>/report.html`` for one run, else
            ``report-<run names>.html`` next to the first run).
        notebook: the notebook whose metrics list the methods (the table).
        notebooks: include the executed notebooks rendered by nbconvert.
    Returns:
        the path written.
    Raises:
        FileNotFoundError: a run folder does not exist.
        WorkbookError: a folder holds neither executed notebooks nor metrics.
    """
    dirs = run_folders(run_dirs, "ltc html")
    labels = _run_labels(dirs)
    if out is None:
        out = dirs[0] / "report.html" if len(dirs) == 1 else \
            dirs[0].parent / ("report-" + "-".join(d.name for d in dirs) + ".html")
    out = Path(out)
    title = "LTC workbook: " + ", ".join(labels)
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p>Written {datetime.now().isoformat(timespec='seconds')} from "
             + ", ".join(f"<code>{_e(d.resolve())}</code>" for d in dirs) + ".</p>"]

    parts.append("<h2 id=\"results\">Results</h2>")
    have = [d for d in dirs if notebook in read_metrics(d)]
    if have:
        try:
            parts.append(paper_report(have, notebook=notebook).to_html())
            if len(have) < len(dirs):
                parts.append(f"<p>No metrics/{_e(notebook)}.json in: "
                             + ", ".join(_e(d) for d in dirs if d not in have) + ".</p>")
        except WorkbookError as e:
            parts.append(f"<p>{_e(e)}</p>")
    else:
        parts.append(f"<p>No run holds metrics/{_e(notebook)}.json (the methods table); see the metrics below.</p>")

    parts.append("<h2 id=\"figures\">Figures</h2>")
    n_fig = 0
    for label, d in zip(labels, dirs):
        figs = figure_files(d)
        parts.append(f"<h3>{_e(label)}</h3>" if len(dirs) > 1 else "")
        if not figs:
            parts.append("<p>No image files in the run folder.</p>")
        for f in figs:
            rel = f.relative_to(d)
            parts.append(f"<figure class=\"run-figure\"><img alt=\"{_e(rel)}\" src=\"{data_uri(f)}\">"
                         f"<figcaption>{_e(rel)}</figcaption></figure>")
            n_fig += 1

    parts.append("<h2 id=\"parameters\">Parameters</h2>")
    for label, d in zip(labels, dirs):
        parts.append(f"<h3>{_e(label)}</h3>" if len(dirs) > 1 else "")
        for path in list_notebooks(d):
            info = _executed_info(path)
            pairs = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in info["params"].items()]
            secs = f", {info['seconds']:.1f} s" if isinstance(info["seconds"], (int, float)) else ""
            parts.append(f"<details class=\"params\" data-notebook=\"{_e(path.stem)}\"><summary>{_e(path.stem)} "
                         f"({_e(info['status'])}{secs})</summary>{_kv_table(pairs)}</details>")

    parts.append("<h2 id=\"software\">Software</h2>")
    parts.append("<p>Versions in the environment that wrote this page:</p>" + _kv_table(software_versions().items()))
    for label, d in zip(labels, dirs):
        m = d / MANIFEST
        if m.is_file():
            record = json.loads(m.read_text(encoding="utf-8"))
            keep = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in record.items() if k != "notebooks"]
            parts.append(f"<details><summary>run record {_e(label)}/{MANIFEST}</summary>{_kv_table(keep)}</details>")

    parts.append("<h2 id=\"metrics\">Metrics files</h2>")
    for label, d in zip(labels, dirs):
        for stem, m in read_metrics(d).items():
            parts.append(f"<details><summary>{_e(label)}: metrics/{_e(stem)}.json</summary>"
                         f"<pre>{_e(json.dumps(m, indent=2))}</pre></details>")

    if notebooks:
        parts.append("<h2 id=\"notebooks\">Executed notebooks</h2>")
        for label, d in zip(labels, dirs):
            for path in list_notebooks(d):
                anchor = f"nb-{label}-{path.stem}" if len(dirs) > 1 else f"nb-{path.stem}"
                parts.append(f"<details id=\"{_e(anchor)}\" class=\"notebook\"><summary>{_e(label)}: {_e(path.name)}"
                             f"</summary><div class=\"nb\">{render_notebook(path)}</div></details>")

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"generator\" content=\"ltc html\"><title>{_e(title)}</title>"
            f"<style>{_CSS}{_pygments_css()}</style></head><body data-figures=\"{n_fig}\">"
            + "\n".join(p for p in parts if p) + "</body></html>\n")
    _write_text(out, page)
    return out
