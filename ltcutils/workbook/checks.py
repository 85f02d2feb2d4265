"""Metric checks: ``{EXPRESSION: CONDITION}`` evaluated on a run's metrics, never as code.

A CONDITION is a string (``">= 0.5"``, ``"== 88.9 +- 1.5"``, ``"== true"``; see :func:`parse_check`)
or a one-key mapping for sets, the metric being a list of strings or numbers (or one value)::

    02_locate_heads:
      paper_rule.spurious: {contains: [L10H10, L11H3]}   # the list holds every one of these
      paper_rule.salient: {contains_any: [L11H5, L10H2]} # ... at least one of these
      selection.spurious: {subset_of: [L10H10, L11H3, L11H6, L11H0]}  # nothing outside these
      selection.rule: {in: [topk, threshold]}            # a single value among these
      selection.salient: {excludes: [L10H10]}            # none of these

A list of conditions (strings or mappings) checks each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .results import flatten


_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.\-\[\]/:@]*"
_EXPR = re.compile(rf"^\s*(?P<a>{_KEY})\s*(?:\s(?P<op>[-+])\s+(?P<b>{_KEY}))?\s*$")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COND = re.compile(rf"^\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<v>{_NUM}|true|false|True|False)"
                   rf"(?:\s*\+-\s*(?P<tol>{_NUM}))?\s*$")


@dataclass(frozen=True)
class Check:
    """One parsed metric check: ``a [- b | + b] OP value [+- tol]``."""

    expression: str
    condition: str
    a: str
    op: str
    value: float | bool
    b: str | None = None
    sign: str | None = None
    tol: float | None = None

    def evaluate(self, metrics: Mapping[str, Any]) -> tuple[bool, Any, str]:
        """Evaluate against (flattened or nested) metrics; returns ``(passed, value, message)``."""
        flat = flatten(metrics)
        vals = []
        for key in (self.a, self.b) if self.b else (self.a,):
            if key not in flat:
                near = ", ".join(sorted(flat)[:30]) or "(no metrics)"
                return False, None, f"{self.expression} {self.condition}: metric {key!r} is missing; have: {near}"
            v = flat[key]
            if v is None:
                return False, None, (f"{self.expression} {self.condition}: metric {key!r} is null "
                                     "(NaN or inf when written)")
            if isinstance(self.value, bool) and not self.b:
                if not isinstance(v, bool):
                    return False, v, f"{self.expression} {self.condition}: metric {key!r} = {v!r} is not a bool"
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                return False, v, f"{self.expression} {self.condition}: metric {key!r} = {v!r} is not a number"
            vals.append(v)
        x = vals[0] if not self.b else (vals[0] - vals[1] if self.sign == "-" else vals[0] + vals[1])
        if self.tol is not None:
            close = abs(x - self.value) <= self.tol
            passed = close if self.op == "==" else not close
        else:
            passed = bool(_OPS[self.op](x, self.value))
        shown = f"{x:.6g}" if isinstance(x, float) else repr(x)
        return passed, x, f"{self.expression} = {shown}, expected {self.condition}"


_SET_OPS = {
    "contains": ("holds every one of", lambda have, want: want <= have),
    "contains_any": ("holds at least one of", lambda have, want: bool(want & have)),
    "subset_of": ("holds nothing outside", lambda have, want: have <= want),
    "excludes": ("holds none of", lambda have, want: not (want & have)),
    "in": ("is one of", None),
}


@dataclass(frozen=True)
class SetCheck:
    """A set-membership check: ``{op: [values]}`` with op one of contains, contains_any, subset_of, excludes, in."""

    expression: str
    op: str
    values: tuple

    @property
    def condition(self) -> str:
        return f"{self.op} {list(self.values)}"

    def evaluate(self, metrics: Mapping[str, Any]) -> tuple[bool, Any, str]:
        """Evaluate against (flattened or nested) metrics; returns ``(passed, value, message)``."""
        flat = flatten(metrics)
        key = self.expression
        if key not in flat:
            near = ", ".join(sorted(flat)[:30]) or "(no metrics)"
            return False, None, f"{key} {self.condition}: metric {key!r} is missing; have: {near}"
        v = flat[key]
        want = set(self.values)
        words, test = _SET_OPS[self.op]
        if self.op == "in":
            if isinstance(v, (list, dict)):
                return False, v, f"{key} {self.condition}: metric {key!r} = {v!r} is a list; use contains/subset_of"
            passed = v in want
        else:
            if v is None or isinstance(v, dict):
                return False, v, f"{key} {self.condition}: metric {key!r} = {v!r} is not a list of values"
            have = set(v) if isinstance(v, list) else {v}
            passed = test(have, want)
        missing = sorted(map(str, want - set(v if isinstance(v, list) else [v]))) if self.op == "contains" else []
        extra = (f" (missing {missing})" if missing and not passed else "")
        return passed, v, f"{key} = {v!r}, expected it {words} {sorted(map(str, want))}{extra}"


def parse_set_check(expression: str, condition: Mapping[str, Any]) -> SetCheck:
    """Parse a set-membership check such as ``{"contains": ["L10H10", "L11H3"]}``.

    Args:
        expression: a metric key (nested keys joined by dots).
        condition: a mapping with one key among contains, contains_any, subset_of, excludes, in,
            whose value is a non-empty list of strings or numbers (a single value is one item).
    Returns:
        a :class:`SetCheck`.
    Raises:
        ValueError: the key, the operation or the values do not follow the format.
    """
    if not re.match(rf"^{_KEY}$", str(expression).strip()):
        raise ValueError(f"set check {expression!r}: the expression must be a single metric key")
    if len(condition) != 1:
        raise ValueError(f"set check {expression!r}: give one operation per mapping, got {sorted(condition)}; "
                         "use a list of mappings for several")
    (op, values), = condition.items()
    if op not in _SET_OPS:
        raise ValueError(f"set check {expression!r}: unknown operation {op!r}; use one of {', '.join(_SET_OPS)}")
    values = values if isinstance(values, list) else [values]
    if not values or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in values):
        raise ValueError(f"set check {expression!r}: {op} needs a non-empty list of strings or numbers, got {values!r}")
    return SetCheck(str(expression).strip(), op, tuple(values))


def parse_check(expression: str, condition: str | Mapping[str, Any]) -> Check | SetCheck:
    """Parse one check (see the module docstring); nothing is evaluated as code.

    Args:
        expression: ``"key"``, ``"key_a - key_b"`` or ``"key_a + key_b"`` (spaces around the sign).
        condition: ``"OP NUMBER"``, ``"== true"``, or ``"== NUMBER +- TOL"``; OP in >= > <= < == !=;
            or a set mapping (see :func:`parse_set_check`).
    Returns:
        a :class:`Check` (or a :class:`SetCheck` for a mapping).
    Raises:
        ValueError: either part does not follow the format.
    """
    if isinstance(condition, Mapping):
        return parse_set_check(expression, condition)
    if not isinstance(condition, str):
        raise ValueError(f"check {expression!r}: the condition must be a string such as '>= 0.5' or a set "
                         f"mapping such as {{contains: [a, b]}}, got {condition!r}")
    m = _EXPR.match(str(expression))
    if not m:
        raise ValueError(f"check expression {expression!r} is not a metric key or 'key_a - key_b' "
                         "(keys use letters, digits and _ . - [ ] / : @; put spaces around the sign)")
    c = _COND.match(condition)
    if not c:
        raise ValueError(f"check {expression!r}: condition {condition!r} is not 'OP NUMBER' "
                         "(OP one of >= > <= < == !=; NUMBER a number or true/false; optional '+- TOL' with ==/!=)")
    raw = c.group("v")
    value: float | bool = raw.lower() == "true" if raw.lower() in {"true", "false"} else float(raw)
    tol = float(c.group("tol")) if c.group("tol") else None
    if tol is not None and c.group("op") not in {"==", "!="}:
        raise ValueError(f"check {expression!r}: a tolerance (+- {tol}) only goes with == or !=")
    if isinstance(value, bool) and (m.group("b") or c.group("op") not in {"==", "!="} or tol is not None):
        raise ValueError(f"check {expression!r}: true/false compares a single metric with == or !=")
    return Check(expression=str(expression), condition=condition, a=m.group("a"), op=c.group("op"),
                 value=value, b=m.group("b"), sign=m.group("op"), tol=tol)


def _iter_checks(checks: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for expr, cond in checks.items():
        for c in cond if isinstance(cond, (list, tuple)) else [cond]:
            yield expr, c


def check_metrics(metrics: Mapping[str, Any], checks: Mapping[str, Any]) -> list[str]:
    """Run a notebook's checks on its metrics.

    Args:
        metrics: the notebook's metrics (nested or flattened).
        checks: ``{expression: condition or [conditions]}`` (see :func:`parse_check`).
    Returns:
        one message per failed check (empty when all pass).
    Raises:
        ValueError: a malformed check.
    """
    failures = []
    for expr, cond in _iter_checks(checks):
        passed, _, msg = parse_check(expr, cond).evaluate(metrics)
        if not passed:
            failures.append(msg)
    return failures
