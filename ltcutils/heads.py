"""Attention heads by name: the ``(layer, head)`` type, the ``L{l}H{h}`` codec, validation, heads files.

A head is a pair of non-negative ints ``(layer, head)``; its label is TransformerLens's
``L{layer}H{head}``. Every module names heads through this one codec, and every head that comes
from outside (a heads file, a notebook parameter) is checked here against the model it is
applied to, so that a typo or a file from another model fails with a message instead of
editing the wrong head. :class:`HeadSelection` is the saved selection (``heads.json``) that
:func:`ltcutils.locate.locate` makes: it records the model it was located on, refuses to be
written when invalid, and is checked against the model it edits when read.

Example:

    >>> head_label(10, 3)
    'L10H3'
    >>> parse_head("l10h3"), parse_head([2, 0])
    ((10, 3), (2, 0))
    >>> parse_head("L3H-1")
    Traceback (most recent call last):
    ...
    ValueError: head label 'L3H-1' is not of the form 'L<layer>H<head>' with non-negative integers (e.g. 'L10H3')
    >>> check_heads([(3, 1), (4, 0)], n_layers=4, n_heads=4)
    Traceback (most recent call last):
    ...
    ValueError: head L4H0 is outside the model: layers are 0..3 and heads 0..3 (the model has 4 layers x 4 heads); was the heads file made for another model?
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, SupportsIndex

import numpy as np
import pandas as pd

__all__ = ["Head", "head_label", "parse_head", "parse_heads", "check_heads", "model_shape", "HeadSelection"]

#: An attention head: ``(layer, head)``, both 0-based.
Head = tuple[int, int]

_LABEL = re.compile(r"^L(\d+)H(\d+)$", re.IGNORECASE)


def head_label(layer: SupportsIndex | float, head: SupportsIndex | float) -> str:
    """TransformerLens-style label ``L{layer}H{head}`` of a head.

    Raises:
        ValueError: a negative or non-integer index (the label could not be parsed back).
    """
    return f"L{_index(layer, 'layer', (layer, head))}H{_index(head, 'head', (layer, head))}"


def _index(v: Any, what: str, whole: Any) -> int:
    """``v`` as a non-negative int; bools, fractional floats and negatives are refused."""
    if isinstance(v, bool) or not hasattr(v, "__index__") and not (isinstance(v, float) and v.is_integer()):
        raise ValueError(f"head {whole!r}: the {what} index must be an integer, got {v!r}")
    i = int(v)
    if i < 0:
        raise ValueError(f"head {whole!r}: the {what} index must be >= 0, got {i} (negative indices are not "
                         "allowed: they would silently name a head counted from the end)")
    return i


def parse_head(h: str | Sequence[Any] | np.ndarray) -> Head:
    """``"L10H3"`` (any case) or ``(10, 3)`` -> ``(10, 3)``.

    Raises:
        ValueError: a label not of the form ``L<int>H<int>``, a pair that is not two
            non-negative integers (``L3H-1`` is refused, not read as head 3 from the end).
    """
    if isinstance(h, str):
        m = _LABEL.match(h.strip())
        if not m:
            raise ValueError(f"head label {h!r} is not of the form 'L<layer>H<head>' with non-negative integers "
                             "(e.g. 'L10H3')")
        return int(m.group(1)), int(m.group(2))
    try:
        l, hh = h
    except (TypeError, ValueError):
        raise ValueError(f"a head is a label 'L10H3' or a pair (layer, head), got {h!r}") from None
    return _index(l, "layer", h), _index(hh, "head", h)


def parse_heads(heads: Iterable[Any]) -> list[Head]:
    """:func:`parse_head` over a list; a single label string is refused (it would be read letter by letter)."""
    if isinstance(heads, str):
        raise ValueError(f"expected a list of heads, got the single string {heads!r}; write [{heads!r}]")
    return [parse_head(h) for h in heads]


def check_heads(heads: Iterable[Any], n_layers: int | None, n_heads: int,
                layers: Sequence[int] | None = None, what: str = "head") -> list[Head]:
    """Parse ``heads`` and check each lies in a model of ``n_layers x n_heads`` (and in ``layers``).

    Args:
        heads: labels or ``(layer, head)`` pairs.
        n_layers, n_heads: the model's shape (``n_layers=None``: only ``layers`` is known).
        layers: the layers a store captured per head (None: every layer).
        what: how to name the heads in messages ("spurious head", ...).

    Returns:
        the heads as ``(layer, head)`` tuples, in order.

    Raises:
        ValueError: a malformed head, a head outside the model, or in a layer the store did not
            capture (the message says which and what would fix it).
    """
    out = parse_heads(heads)
    for l, h in out:
        if n_layers is None and h >= n_heads:
            raise ValueError(f"{what} {head_label(l, h)} does not exist: layers have heads 0..{n_heads - 1}; was the "
                             "heads file made for another model?")
        if n_layers is not None and (l >= n_layers or h >= n_heads):
            raise ValueError(
                f"{what} {head_label(l, h)} is outside the model: layers are 0..{n_layers - 1} and heads "
                f"0..{n_heads - 1} (the model has {n_layers} layers x {n_heads} heads); was the heads file made "
                "for another model?")
        if layers is not None and l not in layers:
            raise ValueError(f"{what} {head_label(l, h)} is in layer {l}, which the store did not capture per head "
                             f"(captured layers: {list(layers)}); capture with layers=None or including {l}")
    return out


def model_shape(desc: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(n_layers, n_heads)`` recorded in a model description (``LoadedModel.describe()``), or None."""
    vit = desc.get("vit") if isinstance(desc, Mapping) else None
    src = vit if isinstance(vit, Mapping) else desc
    if not isinstance(src, Mapping):
        return None
    n_l = src.get("n_layers", src.get("layers"))
    n_h = src.get("n_heads", src.get("heads"))
    if isinstance(n_l, int) and isinstance(n_h, int) and not isinstance(n_l, bool):
        return n_l, n_h
    return None


@dataclass
class HeadSelection:
    """A located head selection, reusable across notebooks and datasets (saved as JSON).

    ``table`` holds one row per head: layer, head, label, f_wrong, f_correct, diff, selected.
    ``model`` records the model the heads were located on (``LoadedModel.describe()``: name,
    weights fingerprint, ``vit`` shape); :meth:`load` compares it with the model they are
    applied to.

    ``salient_by_class`` (CounterAnimal's protocol, :func:`ltcutils.classwise.locate_per_class`):
    ``{class index: salient heads}`` located per class; an image is injected into the heads of
    its (pseudo-)class only. ``salient`` is then the union of those lists (every head some image
    is injected into). Empty for a selection with one salient list for every image.
    """

    spurious: list[Head]
    salient: list[Head]
    rule: str
    groups: str
    score: str = "count"
    threshold: float | None = None
    k: int | None = None
    k_cap: int | None = None
    split: str = ""
    counts: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None
    salient_by_class: dict[int, list[Head]] = field(default_factory=dict)

    def labels(self, which: str = "spurious") -> list[str]:
        return [head_label(l, h) for l, h in getattr(self, which)]

    def to_dict(self) -> dict:
        d = asdict(self) if self.table is None else {k: v for k, v in self.__dict__.items() if k != "table"}
        d = dict(d)
        d.pop("table", None)
        d["spurious"] = [list(h) for h in self.spurious]
        d["salient"] = [list(h) for h in self.salient]
        d["spurious_labels"] = self.labels("spurious")
        d["salient_labels"] = self.labels("salient")
        d["salient_by_class"] = {str(c): [head_label(*h) for h in hs] for c, hs in self.salient_by_class.items()}
        if self.table is not None:
            d["table"] = self.table.to_dict(orient="records")
        return d

    def check(self, model=None, layers: Sequence[int] | None = None, *, allow_empty: bool = True,
              where: str = "head selection") -> "HeadSelection":
        """Validate the heads: well-formed, not both spurious and salient, inside the model.

        Args:
            model: the model the heads will edit (a ``LoadedModel`` or its ``describe()``); None
                checks against the model recorded in the selection, if any.
            layers: the layers a store captured per head (heads elsewhere cannot be edited on it).
            allow_empty: accept a selection without spurious heads.
            where: names the selection in messages (e.g. the file path).

        Returns:
            ``self``, with the heads normalised to ``(int, int)`` tuples.

        Raises:
            ValueError: a malformed head (``L3H-1``), a head outside the model or its captured
                layers, a head both spurious and salient, or (unless ``allow_empty``) no spurious head.
        """
        self.spurious = parse_heads(self.spurious)
        self.salient = parse_heads(self.salient)
        self.salient_by_class = {int(c): parse_heads(hs) for c, hs in self.salient_by_class.items()}
        outside = sorted({h for hs in self.salient_by_class.values() for h in hs} - set(self.salient))
        if outside:
            raise ValueError(f"{where}: per-class salient heads {[head_label(*h) for h in outside]} are missing from "
                             "salient (which lists every head some class injects)")
        both = sorted(set(self.spurious) & set(self.salient))
        if both:
            raise ValueError(f"{where}: heads {[head_label(*h) for h in both]} are both spurious and salient; "
                             "a head gets one edit")
        if not allow_empty and not self.spurious:
            raise ValueError(f"{where}: no spurious head was selected, so there is nothing to ablate; look at the "
                             "frequency table (selection.table), locate on a larger split, or pass allow_empty=True "
                             "to keep an empty selection on purpose")
        target = model.describe() if hasattr(model, "describe") else (model or self.model)
        shape = model_shape(target) if target else None
        if shape is not None:
            for which in ("spurious", "salient"):
                check_heads(getattr(self, which), *shape, layers=layers, what=f"{where}: {which} head")
        elif layers is not None:
            for which in ("spurious", "salient"):
                bad = [head_label(l, h) for l, h in getattr(self, which) if l not in layers]
                if bad:
                    raise ValueError(f"{where}: {which} heads {bad} lie in layers the store did not capture per "
                                     f"head (captured: {list(layers)})")
        return self

    def save(self, path: str | Path, allow_empty: bool = False) -> Path:
        """Validate (:meth:`check`), then write the selection to a JSON file (atomically).

        Nothing is written when the check fails, so a later notebook cannot pick up a bad file.

        Raises:
            ValueError: see :meth:`check` (an empty spurious set is refused unless ``allow_empty``).
        """
        from .io import atomic_write

        path = Path(path)
        self.check(allow_empty=allow_empty, where=f"refusing to write {path}")
        atomic_write(path, json.dumps(self.to_dict(), indent=1, default=_json_default))
        return path

    @classmethod
    def load(cls, path: str | Path, model=None, layers: Sequence[int] | None = None) -> "HeadSelection":
        """Read a selection written by :meth:`save`, checked against the model it will edit.

        Args:
            path: the JSON file.
            model: the model the heads will be applied to (``LoadedModel`` or its ``describe()``).
                Heads outside it are refused; a file located on other weights (or recording no
                model) is accepted with a warning that names both models.
            layers: the captured layers of the store the heads will edit.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: unreadable JSON, malformed heads, heads outside ``model`` or ``layers``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no heads file at {path}; it is written by the locate step (notebook 02)")
        try:
            d = json.loads(path.read_text())
            table = pd.DataFrame(d.pop("table")) if "table" in d else None
            d.pop("spurious_labels", None)
            d.pop("salient_labels", None)
            d["spurious"], d["salient"] = parse_heads(d["spurious"]), parse_heads(d["salient"])
            d["salient_by_class"] = {int(c): parse_heads(hs) for c, hs in d.get("salient_by_class", {}).items()}
            sel = cls(**d, table=table)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{path} is not a heads file written by HeadSelection.save ({exc}); "
                             "re-run the locate step (notebook 02)") from None
        sel.check(model, layers, where=str(path))
        if model is not None:
            _warn_other_model(sel.model, model.describe() if hasattr(model, "describe") else model, path)
        return sel


def _warn_other_model(recorded: dict, target: dict, path: Path) -> None:
    """Warn when heads located on one model are applied to another (shapes were already checked)."""
    def name(d: dict) -> str:
        shape = model_shape(d)
        dims = f", {shape[0]} layers x {shape[1]} heads" if shape else ""
        return f"{d.get('model', '?')} (weights {d.get('weights', '?')}{dims})"

    if not recorded:
        warnings.warn(f"{path} records no model, so it cannot be told whether its heads were located on "
                      f"{name(target)}; they fit its shape and are used as they are", stacklevel=3)
    elif (recorded.get("model"), recorded.get("weights"), model_shape(recorded)) != (
            target.get("model"), target.get("weights"), model_shape(target)):
        warnings.warn(f"{path}: these heads were located on {name(recorded)} and are applied to {name(target)}; "
                      "head numbers carry no meaning across models unless you reuse them on purpose", stacklevel=3)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
