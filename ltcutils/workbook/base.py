"""Shared names of the workbook runner: errors and the run-folder layout."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .execution import RunResult

NOTEBOOK_FILE = re.compile(r"^\d\d_.+\.ipynb$")
"""Which files are workbook notebooks: two digits, an underscore, anything, ``.ipynb``."""
NOTEBOOK_NAME = re.compile(r"^\d\d_[a-z][a-z0-9]*(?:_[a-z0-9]+)+\.ipynb$")
"""The naming rule the hygiene check enforces: ``NN_verb_object.ipynb`` in lower case."""
OUTPUT_DIR = "output_dir"
METRICS_DIR = "metrics"
MANIFEST = "ltc_run.json"
RESERVED_KEYS = ("defaults", "notebooks", "checks")
_PYTHON_NAMES = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}


class WorkbookError(RuntimeError):
    """A workbook run could not start or did not finish."""


class ParameterError(WorkbookError, ValueError):
    """A parameter name or value that no selected notebook accepts."""


class NotebookFailed(WorkbookError):
    """A notebook raised; attributes say where (``notebook``, ``cell_index``, ``output``)."""

    def __init__(self, message: str, *, notebook: str, cell_index: int | None = None,
                 source_line: str | None = None, ename: str | None = None,
                 evalue: str | None = None, output: Path | None = None,
                 result: "RunResult | None" = None):
        super().__init__(message)
        self.notebook = notebook
        self.cell_index = cell_index
        self.source_line = source_line
        self.ename = ename
        self.evalue = evalue
        self.output = output
        self.result = result
