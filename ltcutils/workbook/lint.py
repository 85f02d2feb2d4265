"""Notebook hygiene: what every workbook notebook and the CI parameters file must satisfy."""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from pathlib import Path
from typing import Any, Mapping, Sequence

from .base import NOTEBOOK_NAME, OUTPUT_DIR, ParameterError
from .checks import _iter_checks, parse_check
from .notebooks import notebook_parameters
from .parameters import load_params_file


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
    problems.extend(_papermill_problems(source, seen))
    return problems


def _papermill_problems(source: str, names: set[str]) -> list[str]:
    """Parameters papermill cannot read (then ``ltc run -p NAME`` refuses them as undeclared)."""
    import contextlib
    import io as _io
    import logging

    try:
        from papermill.translators import PythonTranslator
    except ImportError:  # papermill comes with the workbook tools
        return []
    log = logging.getLogger("papermill")
    level, log.level = log.level, logging.CRITICAL
    try:
        with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
            seen = {p.name for p in PythonTranslator.inspect({"source": source})}
    finally:
        log.level = level
    return [f"parameters cell: papermill cannot read {n!r} (ltc run -p would refuse it); reword its comment "
            "(papermill's parser trips on an '=' in a comment, as in 'k <= 4' or 'MODE=x')"
            for n in sorted(names - seen)]


def _definition_problems(i: int, source: str, exercise: bool) -> list[str]:
    """A top-level ``def``/``class`` outside an ``exercise`` cell; an exercise cell without markers."""
    from ..exercises import BEGIN, stub_source

    if exercise:
        if BEGIN not in source:
            return [f"cell {i}: tagged 'exercise' but has no '{BEGIN}' block (the learner's stub is made from it)"]
        try:
            stub_source(source)
        except ValueError as e:
            return [f"cell {i}: exercise markers: {e}"]
        return []
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)  # magics and shell escapes -> Python
    except ImportError:  # IPython comes with the notebook tools; without it, parse the cell as it is
        pass
    try:
        tree = ast.parse(source)
    except SyntaxError:  # the cell fails when run, which the notebook tests report
        return []
    return [f"cell {i}, line {n.lineno}: defines {'class' if isinstance(n, ast.ClassDef) else 'function'} "
            f"{n.name!r}; logic belongs in ltcutils (call it from the cell), or tag the cell 'exercise' "
            "when writing it is the learner's task"
            for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def notebook_problems(nb: Any, filename: str | os.PathLike | None = None) -> list[str]:
    """Hygiene problems of one notebook (empty list: clean).

    Checks: the file name is ``NN_verb_object.ipynb``; the first cell is markdown starting with
    ``# `` (the title); exactly one cell is tagged ``parameters``, a code cell of commented
    literal assignments; the kernelspec is ``python3``; no outputs, execution counts or
    papermill ``injected-parameters`` cells are committed; no code cell installs packages,
    touches ``sys.path``, changes directory or hard-codes a GPU device; no code cell defines a
    function or class at top level except cells tagged ``exercise`` (which must hold a marked
    solution block, and then the notebook declares an ``exercises`` parameter); the last code cell writes the
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
        problems.extend(_definition_problems(i, src, "exercise" in tags))
    if any("exercise" in c.get("metadata", {}).get("tags", []) for c in cells) and len(tagged) == 1 \
            and not re.search(r"(?m)^exercises\s*=", _cell_source(cells[tagged[0]])):
        problems.append("the notebook has exercise cells but its parameters cell declares no `exercises` "
                        "(add `exercises = \"solution\"  # \"solution\" or \"learner\" (stubs)`)")

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
