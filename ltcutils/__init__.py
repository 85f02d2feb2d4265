"""Support package for the Locate-Then-Correct (LTC) workbook.

Submodules are imported lazily (``import ltcutils as ltc; ltc.decompose``) so that importing the
package is cheap and has no side effects.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "models", "hooked", "activations", "decompose", "store", "datasets", "text", "heads", "locate", "correct",
    "baselines", "metrics", "interpret", "plots", "workbook", "train", "groundtruth", "bench", "lens", "evaluate",
    "experiment", "capture", "store_writer", "io", "probes", "exercises", "classwise", "fairness",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ltcutils' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
