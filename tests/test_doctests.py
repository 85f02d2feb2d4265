"""Docstring examples are tests: every ``>>>`` example of these modules runs and prints what it shows.

Collected here (not with ``--doctest-modules``) so that they run in the normal suite, under the
shape checks that tests/conftest.py installs. Add a module once its examples are runnable.
"""

import doctest
import importlib

import pytest

DOCTESTED = ["ltcutils.hooked", "ltcutils.decompose", "ltcutils.activations", "ltcutils.heads", "ltcutils.lens",
             "ltcutils.locate", "ltcutils.correct", "ltcutils.baselines", "ltcutils.text", "ltcutils.datasets.registry", "ltcutils.fairness",
             "ltcutils.classwise", "ltcutils.workbook.probe_rows"]


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{name} has no docstring examples to run"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    for t in tests:
        runner.run(t, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(out)
