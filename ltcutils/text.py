"""Prompt banks (class prompts, spurious prompts, concept pairs) and text embeddings.

A prompt bank is a YAML file written by us under ``data/prompts/<dataset>.yaml``::

    dataset: waterbirds
    class_names: [landbird, waterbird]            # global class index order
    class_templates: ["a photo of a {}."]         # each class: mean of its normalised prompts
    spurious_names: [land, water]
    spurious_templates: ["a photo of a bird on {} background."]
    injection:                                    # knowledge injection (true class differences)
      - ["a bird with webbed feet", "a bird with talon feet"]
    roboshot:
      reject: [[a, b], ...]                       # spurious differences, removed
      accept: [[a, b], ...]                       # true differences, amplified
    ortho_cali:
      spurious_prompts: ["a photo of land.", ...]
      candidate_prompts:                          # prompts within one class that should coincide
        landbird: ["a photo of a landbird on land.", "a photo of a landbird on water."]
        waterbird: [...]

``class_prompts`` (a mapping class name -> list of prompts) may replace ``class_templates``;
likewise ``spurious_prompts`` for ``spurious_templates``. Pairs may also be keyed by class
pair (``injection: {"landbird|waterbird": [[a, b], ...]}``) for many-class datasets.

Users can point at their own file (``load_prompt_bank("/path/bank.yaml")``) or build a
:class:`PromptBank` in code, e.g. from their own generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import yaml

from .resources import data_path

__all__ = ["PromptBank", "load_prompt_bank", "PROMPT_DIR", "zero_shot_classifier", "embed_prompts",
           "pair_directions"]

PROMPT_DIR = data_path("prompts")

Pair = tuple[str, str]


def _pairs(raw: Any, where: str) -> list[Pair] | dict[str, list[Pair]]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return {str(k): _pairs(v, f"{where}.{k}") for k, v in raw.items()}  # type: ignore[misc]
    out = []
    for i, p in enumerate(raw):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise ValueError(f"{where}[{i}] must be a pair of two strings [a, b], got {p!r}")
        out.append((p[0], p[1]))
    return out


@dataclass
class PromptBank:
    """Prompts and concept pairs for one dataset (see the module docstring for the YAML)."""

    dataset: str
    class_names: list[str]
    class_prompts: dict[str, list[str]]
    spurious_names: list[str]
    spurious_prompts: dict[str, list[str]]
    injection: list[Pair] | dict[str, list[Pair]] = field(default_factory=list)
    roboshot_reject: list[Pair] | dict[str, list[Pair]] = field(default_factory=list)
    roboshot_accept: list[Pair] | dict[str, list[Pair]] = field(default_factory=list)
    ortho_spurious: list[str] = field(default_factory=list)
    ortho_candidates: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> "PromptBank":
        where = source or "prompt bank"
        for key in ("dataset", "class_names"):
            if key not in d:
                raise ValueError(f"{where}: missing required key {key!r}")
        names = [str(c) for c in d["class_names"]]

        def expand(prompts_key: str, templates_key: str, labels: list[str]) -> dict[str, list[str]]:
            if prompts_key in d:
                got = {str(k): list(v) for k, v in d[prompts_key].items()}
                missing = [c for c in labels if c not in got]
                if missing:
                    raise ValueError(f"{where}: {prompts_key} lacks prompts for {missing}")
                return got
            templates = d.get(templates_key, ["a photo of a {}."])
            return {c: [t.format(c) for t in templates] for c in labels}

        spurious_names = [str(s) for s in d.get("spurious_names", [])]
        rs = d.get("roboshot", {}) or {}
        oc = d.get("ortho_cali", {}) or {}
        return cls(
            dataset=str(d["dataset"]),
            class_names=names,
            class_prompts=expand("class_prompts", "class_templates", names),
            spurious_names=spurious_names,
            spurious_prompts=expand("spurious_prompts", "spurious_templates", spurious_names),
            injection=_pairs(d.get("injection"), f"{where}: injection"),
            roboshot_reject=_pairs(rs.get("reject"), f"{where}: roboshot.reject"),
            roboshot_accept=_pairs(rs.get("accept"), f"{where}: roboshot.accept"),
            ortho_spurious=list(oc.get("spurious_prompts", [])),
            ortho_candidates={str(k): list(v) for k, v in (oc.get("candidate_prompts") or {}).items()},
            source=source,
        )

    def pairs_for(self, kind: str, classes: tuple[str, str] | None = None) -> list[Pair]:
        """Concept pairs of ``kind`` ("injection", "roboshot_reject", "roboshot_accept").

        For keyed banks, ``classes`` picks the entry ``"a|b"`` (either order).
        """
        raw = getattr(self, kind)
        if isinstance(raw, list):
            return raw
        if classes is None:
            raise ValueError(f"{self.dataset}: {kind} pairs are keyed by class pair; pass classes=(a, b)")
        a, b = classes
        for key in (f"{a}|{b}", f"{b}|{a}"):
            if key in raw:
                return raw[key]
        raise KeyError(f"{self.dataset}: no {kind} pairs for classes {a!r}/{b!r}; keys: {sorted(raw)[:10]}")


def load_prompt_bank(name_or_path: str | Path) -> PromptBank:
    """Load ``data/prompts/<name>.yaml`` or a YAML file path."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = PROMPT_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in PROMPT_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no prompt bank at {p}; shipped banks: {known}, or pass a YAML path")
    with open(p) as f:
        d = yaml.safe_load(f)
    return PromptBank.from_dict(d, source=str(p))


def embed_prompts(model, prompts: Mapping[str, Sequence[str]], names: Sequence[str]) -> torch.Tensor:
    """Classifier ``[d_embed, n]``: per name, the normalised mean of its normalised prompt embeddings."""
    cols = []
    for n in names:
        emb = model.encode_text(list(prompts[n]), normalize=True)
        cols.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(cols, 1)


def zero_shot_classifier(model, bank: PromptBank, spurious: bool = False) -> torch.Tensor:
    """Zero-shot text classifier ``[d_embed, n_class]`` (or ``[d_embed, n_spurious]``)."""
    if spurious:
        if not bank.spurious_names:
            raise ValueError(f"{bank.dataset}: the prompt bank defines no spurious_names")
        return embed_prompts(model, bank.spurious_prompts, bank.spurious_names)
    return embed_prompts(model, bank.class_prompts, bank.class_names)


def pair_directions(model, pairs: Sequence[Pair]) -> torch.Tensor:
    """Unnormalised difference vectors ``e(a) - e(b)``, ``[n_pairs, d_embed]``.

    As in the reference, the text embeddings are *not* L2-normalised before differencing.
    """
    if not pairs:
        raise ValueError("no concept pairs given")
    a = model.encode_text([p[0] for p in pairs], normalize=False)
    b = model.encode_text([p[1] for p in pairs], normalize=False)
    return a - b
