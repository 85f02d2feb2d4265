"""The probe rows of the results table: notebook 07's trained probes beside the label-free methods.

Notebook 07 (``metrics/07_train_probes.json``) scores five probes on the same evaluation split as
notebook 05, with the same bootstrap CIs (:func:`ltcutils.evaluate.score`). They use what LTC
does not: class labels of a train split and training. :func:`with_probe_rows` adds them to a
methods-notebook metrics dict under ``probe_*`` keys, which the table puts last, each labelled
``[labels, training]``; :func:`probe_caption` is the sentence the table's caption adds.

Example::

    >>> rows = with_probe_rows({"ltc": {"wg": 60.0}}, {"erm_probe": {"wg": 55.0, "wg_ci_low": 50.0}})
    >>> list(rows), rows["probe_erm"]["wg"]
    (['ltc', 'probe_erm'], 55.0)
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["PROBES_NOTEBOOK", "PROBE_ROWS", "PROBE_LABELS", "with_probe_rows", "probe_caption"]

PROBES_NOTEBOOK = "07_train_probes"
"""The notebook whose metrics hold the probe rows."""

PROBE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("erm_probe", "probe_erm", "ERM probe [labels, training]"),
    ("jtt_probe_reference", "probe_jtt_reference", "JTT probe (reference) [labels, training]"),
    ("jtt_probe_two_stage", "probe_jtt_two_stage", "JTT probe (two-stage) [labels, training]"),
    ("jtt_ltc", "probe_jtt_ltc", "JTT probe + LTC [labels, training]"),
    ("jtt_ablate", "probe_jtt_ablate", "JTT probe + ablate [labels, training]"),
)
"""(key in the probes metrics, row key in the table, row label), in table order."""

PROBE_LABELS = {row: label for _, row, label in PROBE_ROWS}


def with_probe_rows(methods: Mapping[str, Any] | None, probes: Mapping[str, Any] | None) -> dict | None:
    """``methods`` (a methods-notebook metrics dict) with notebook 07's probe rows appended.

    Args:
        methods: e.g. ``metrics/05_compare_methods.json``; None stays None (no methods table).
        probes: ``metrics/07_train_probes.json`` or None (then ``methods`` is returned as it is).

    Returns:
        a new dict: ``methods`` plus ``probe_erm``, ``probe_jtt_reference``, ``probe_jtt_two_stage``,
        ``probe_jtt_ltc``, ``probe_jtt_ablate`` for those probes present (each a copy of its
        metrics: ``wg`` with ``wg_ci_low``/``wg_ci_high``, averages, ``val_wg``, ``epoch``, ...).
    """
    if methods is None:
        return None
    out = dict(methods)
    for key, row, _ in PROBE_ROWS:
        got = (probes or {}).get(key)
        if isinstance(got, Mapping) and "wg" in got:
            out[row] = dict(got)
    return out


def probe_caption(values: Mapping[str, Mapping[str, Any]]) -> str:
    """The caption's sentence on probe rows (empty when no run of the table has one).

    Args:
        values: ``{run: {row key: metrics}}`` (``PaperTable.values``).
    """
    if not any(k in PROBE_LABELS for rows in values.values() for k in rows):
        return ""
    return (" Rows marked [labels, training] are notebook 07's probes: a 2-layer MLP on the unit image embedding "
            "trained with the train split's class labels, its epoch chosen by validation WG with true groups; the "
            "reference JTT upsamples the train images whose zero-shot pseudo-group is bias-conflicting, the "
            "two-stage JTT (Liu et al. 2021) a first ERM probe's errors; + LTC and + ablate apply the reference "
            "JTT probe unchanged to the edited test embeddings. Every other row uses no label and no training.")
