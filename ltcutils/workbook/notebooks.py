"""Find, select and read the workbook notebooks (``NN_verb_object.ipynb``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from .base import NOTEBOOK_FILE, WorkbookError


def default_notebooks_dir() -> Path:
    """``./notebooks`` when it exists, else the notebooks shipped with the package."""
    from ..resources import notebooks_dir

    here = Path.cwd() / "notebooks"
    if here.is_dir():
        return here
    shipped = notebooks_dir()
    if shipped is None:
        raise WorkbookError("no notebooks/ folder here and none shipped with the package; pass --notebooks-dir")
    return shipped


def list_notebooks(directory: str | os.PathLike) -> list[Path]:
    """The workbook notebooks (``NN_*.ipynb``) in ``directory``, sorted by file name.

    Args:
        directory: a folder (``notebooks/``, or a run folder holding executed notebooks).
    Returns:
        paths, sorted by name; other files and checkpoints are ignored.
    Raises:
        FileNotFoundError: ``directory`` is not a folder.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"notebook folder {str(d)!r} does not exist; pass the folder that holds "
                                "the NN_*.ipynb notebooks (--notebooks-dir)")
    return sorted(p for p in d.iterdir() if p.is_file() and NOTEBOOK_FILE.match(p.name))


def select_notebooks(selection: Sequence[str | os.PathLike] | None,
                     notebooks_dir: str | os.PathLike) -> list[Path]:
    """Resolve a selection (paths, stems or number prefixes like ``"02"``) to notebook paths.

    Args:
        selection: ``None`` or empty for every notebook in ``notebooks_dir``; else items that are
            a path to an ``.ipynb`` file, a stem (``02_locate_heads``) or a number prefix (``02``).
        notebooks_dir: where stems and prefixes are looked up.
    Returns:
        the notebooks, deduplicated and sorted by file name (stages run in order).
    Raises:
        WorkbookError: an item matches no notebook, or two chosen notebooks share a stem.
    """
    if not selection:
        found = list_notebooks(notebooks_dir)
        if not found:
            raise WorkbookError(f"no notebooks (NN_*.ipynb) in {str(notebooks_dir)!r}; "
                                "pass --notebooks-dir or name the notebooks to run")
        return found
    chosen: dict[str, Path] = {}
    available: list[Path] | None = None
    for item in selection:
        p = Path(item)
        if p.suffix == ".ipynb" and p.is_file():
            matches = [p]
        else:
            if available is None:
                available = list_notebooks(notebooks_dir) if Path(notebooks_dir).is_dir() else []
            key = str(item)
            matches = [q for q in available if q.stem == key or q.name == key
                       or (re.fullmatch(r"\d\d", key) and q.name.startswith(key + "_"))]
            if len(matches) != 1:
                names = ", ".join(q.stem for q in available) or "(none)"
                what = "matches no notebook" if not matches else "is ambiguous"
                raise WorkbookError(f"notebook {key!r} {what} in {str(notebooks_dir)!r}; expected a path "
                                    f"to an .ipynb file, a stem or a two-digit prefix. Available: {names}")
        q = matches[0].resolve()
        if q.stem in chosen and chosen[q.stem] != q:
            raise WorkbookError(f"two chosen notebooks share the stem {q.stem!r} ({chosen[q.stem]} and {q}); "
                                "their executed copies and metrics would overwrite each other")
        chosen[q.stem] = q
    return [chosen[k] for k in sorted(chosen)]


def notebook_parameters(path: str | os.PathLike) -> dict[str, dict]:
    """The parameters a notebook declares in its cell tagged ``parameters`` (papermill's view).

    Args:
        path: an ``.ipynb`` file.
    Returns:
        ``{name: {"name", "inferred_type_name", "default", "help"}}`` in declaration order;
        ``default`` is the source text of the value and ``help`` the comment.
    Raises:
        FileNotFoundError: no such file.
    """
    import papermill

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"notebook {str(p)!r} does not exist")
    return dict(papermill.inspect_notebook(str(p)))
