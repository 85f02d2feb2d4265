"""Execute notebooks through papermill into one run folder, with a run record.

The run record ``ltc_run.json`` is the only source of a notebook's status: it is rewritten
(atomically) before each notebook starts, saying ``running``, and says ``ok`` only after the
runner saw the notebook finish. A dead kernel, Ctrl-C (``interrupted``) or a killed runner
therefore never reads as ``ok``, whatever papermill left in the executed notebook. A lock file
keeps a second run out of a folder while one is writing there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..io import atomic_write
from .base import _PYTHON_NAMES, MANIFEST, METRICS_DIR, OUTPUT_DIR, NotebookFailed, WorkbookError
from .notebooks import default_notebooks_dir, list_notebooks, notebook_parameters, select_notebooks
from .parameters import resolve_parameters
from .results import _plain, flatten, metrics_path


@dataclass
class NotebookRun:
    """One notebook of a run: where it came from, where it went, how it ended."""

    name: str
    source: Path
    output: Path
    parameters: dict[str, Any]
    status: str = "not run"  # "ok", "failed", "interrupted", "running" or "not run"
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


LOCK = ".ltc_run.lock"


class RunLock:
    """An exclusive lock on a run folder (``.ltc_run.lock``, an advisory ``flock``).

    Held for the whole of a run; the system drops it when the process ends, however it ends,
    so a killed run leaves no stale lock. The file holds who took it (pid, host, start, command).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._f = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise WorkbookError naming the run that holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _holder_text(f.read())
            f.close()
            raise WorkbookError(f"another ltc run ({holder}) is using {self.path.parent}; wait for it to finish or "
                                "pass another --out") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.now().isoformat(timespec="seconds"), "command": sys.argv[:8]}))
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            self._f.close()  # closing drops the flock
            self._f = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_text(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']}, started {h['started']} on {h['host']}"
    except (ValueError, KeyError, TypeError):
        return "unknown process"


def lock_holder(run_dir: str | os.PathLike) -> str | None:
    """Who holds the run folder's lock right now (``"pid N, started T on HOST"``), or None."""
    import fcntl

    path = Path(run_dir) / LOCK
    if not path.is_file():
        return None
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return _holder_text(f.read())
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _earlier_records(run_dir: Path, names: set[str]) -> dict[str, dict]:
    """Records of notebooks run into this folder by earlier runs and not part of this one."""
    try:
        old = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keep = dict(old.get("earlier") or {})
    for n in old.get("notebooks") or []:
        if isinstance(n, dict) and "name" in n:
            keep[n["name"]] = dict(n, run_started=old.get("started"))
    return {k: v for k, v in keep.items() if k not in names}


def _write_manifest(result: RunResult, extra: dict) -> bool:
    """Rewrite the run record atomically; on failure (a full disk) warn and return False.

    The record on disk then still says what the previous write said (a notebook ``running``),
    which the report reads as interrupted: never as a stale ``ok``.
    """
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
    try:
        atomic_write(path, json.dumps(_plain(data), indent=2) + "\n")
    except OSError as e:
        print(f"warning: could not write the run record {path}: {e}", file=sys.stderr)
        return False
    return True


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
        WorkbookError: no notebooks, the kernel would not use this environment's interpreter, or
            another run holds the run folder (its lock names the process).
        NotebookFailed: a notebook raised (with ``raise_on_error``).
        KeyboardInterrupt: Ctrl-C; the record says ``interrupted`` for the notebook that ran.
    """
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
    with RunLock(run_dir):
        return _run_locked(selected, resolved, run_dir, params, params_file, kernel, python, kernel_kwargs,
                           progress, raise_on_error)


def _run_locked(selected, resolved, run_dir: Path, params, params_file, kernel: str, python: str,
                kernel_kwargs: dict, progress: bool, raise_on_error: bool) -> RunResult:
    import papermill
    from papermill.exceptions import PapermillExecutionError

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
    manifest["earlier"] = _earlier_records(run_dir, {n.name for n in runs})
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
        nb_run.status = "running"
        _write_manifest(result, manifest)
        try:
            source = nb_run.source
            if nb_run.parameters.get("exercises") == "learner":  # the class's copy: exercise stubs (ltcutils.exercises)
                import nbformat

                from ..exercises import learner_notebook

                source = run_dir / ".learner" / nb_run.source.name
                source.parent.mkdir(exist_ok=True)
                nbformat.write(learner_notebook(nbformat.read(str(nb_run.source), as_version=4)), str(source))
            papermill.execute_notebook(
                str(source), str(nb_run.output), parameters=nb_run.parameters, kernel_name=kernel,
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
            nb_run.status = "interrupted"
            nb_run.error = "interrupted (Ctrl-C); resume with the same command"
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
