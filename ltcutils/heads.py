"""Attention heads by name: the ``(layer, head)`` type, the ``L{l}H{h}`` codec, and validation.

A head is a pair of non-negative ints ``(layer, head)``; its label is TransformerLens's
``L{layer}H{head}``. Every module names heads through this one codec, and every head that comes
from outside (a heads file, a notebook parameter) is checked here against the model it is
applied to, so that a typo or a file from another model fails with a message instead of
editing the wrong head.

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

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, SupportsIndex

import numpy as np

__all__ = ["Head", "head_label", "parse_head", "parse_heads", "check_heads", "model_shape"]

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
