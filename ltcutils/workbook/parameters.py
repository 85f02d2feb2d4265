"""Notebook parameters: YAML files, ``-p`` overrides, and their validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .base import OUTPUT_DIR, RESERVED_KEYS, ParameterError
from .notebooks import notebook_parameters


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
