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

Everything the methods take from the text tower (the zero-shot classifiers, the Ortho-Cali
classifier, RoboShot's directions, the injection bases) comes from :func:`text_directions`;
:func:`prepared_text` adds the spurious classifier and caches the lot on disk, keyed by the
model's weights fingerprint and the bank's content hash (:func:`bank_hash`), so a workbook
encodes each prompt bank once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import yaml

from .resources import data_path

__all__ = ["PromptBank", "load_prompt_bank", "PROMPT_DIR", "zero_shot_classifier", "embed_prompts",
           "pair_directions", "text_directions", "KEYED_KINDS", "bank_hash", "prepared_text", "text_cache_path",
           "TEXT_CACHE_VERSION"]

log = logging.getLogger(__name__)

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


#: text_directions' per-class-pair entries -> the bank attribute they come from
KEYED_KINDS = {"injection_keyed": "injection", "roboshot_reject_keyed": "roboshot_reject",
               "roboshot_accept_keyed": "roboshot_accept"}


def text_directions(model, bank: PromptBank, classifier: torch.Tensor, lam: float = 1000.0) -> dict:
    """Everything the text-based methods need, from a prompt bank.

    Args:
        model: anything with ``encode_text(texts, normalize=...)`` (a ``LoadedModel``).
        bank: the prompt bank.
        classifier: ``[d_embed, n_class]`` zero-shot classifier (:func:`zero_shot_classifier`),
            debiased by Ortho-Cali.
        lam: Ortho-Cali's calibration weight.

    Returns:
        a dict with ``ortho_classifier [d_embed, n_class]`` (None without Ortho-Cali prompts),
        ``roboshot_reject`` / ``roboshot_accept [k, d_embed]`` (None when the bank has no
        pairs, or when they are keyed by class pair), ``injection_basis [r, d_embed]``
        (orthonormal; None without a plain list of injection pairs) and, for pairs keyed by class
        pair, ``injection_keyed`` / ``roboshot_reject_keyed`` / ``roboshot_accept_keyed``
        (``{"classA|classB": orthonormal basis}``, else None; per-image bases:
        :func:`ltcutils.correct.concept_bases`, :func:`ltcutils.baselines.roboshot_directions`).
        Tensors are on the CPU.
    """
    from itertools import combinations

    from .baselines import ortho_cali
    from .correct import orthonormal_basis

    out: dict = {"ortho_classifier": None, "roboshot_reject": None, "roboshot_accept": None, "injection_basis": None}
    classifier = classifier.cpu()
    for name, kind in KEYED_KINDS.items():  # pairs keyed by class pair: one orthonormal basis per pair
        raw = getattr(bank, kind)
        out[name] = ({key: orthonormal_basis(pair_directions(model, pairs).cpu()) for key, pairs in raw.items() if pairs}
                     if isinstance(raw, dict) and raw else None)
    if bank.ortho_spurious and bank.ortho_candidates:
        spur = model.encode_text(bank.ortho_spurious)
        zi, zj = [], []
        for prompts in bank.ortho_candidates.values():
            emb = model.encode_text(prompts)
            for a, b in combinations(range(len(prompts)), 2):
                zi.append(emb[a])
                zj.append(emb[b])
        if zi:
            out["ortho_classifier"] = ortho_cali(classifier, spur.cpu(), (torch.stack(zi).cpu(), torch.stack(zj).cpu()),
                                                 lam=lam)
    if isinstance(bank.roboshot_reject, list) and bank.roboshot_reject:
        out["roboshot_reject"] = pair_directions(model, bank.roboshot_reject).cpu()
    if isinstance(bank.roboshot_accept, list) and bank.roboshot_accept:
        out["roboshot_accept"] = pair_directions(model, bank.roboshot_accept).cpu()
    if isinstance(bank.injection, list) and bank.injection:
        out["injection_basis"] = orthonormal_basis(pair_directions(model, bank.injection).cpu())
    return out


# ----------------------------------------------------------------------------- on-disk cache

#: bump when what :func:`prepared_text` computes changes (old cache files are then recomputed)
TEXT_CACHE_VERSION = 2
_PLAIN = ("classifier", "spurious_classifier", "ortho_classifier", "roboshot_reject", "roboshot_accept",
          "injection_basis")


def bank_hash(bank: PromptBank) -> str:
    """SHA-256 (16 hex digits) of a bank's content: every prompt and pair, not its file path or layout.

    Example::

        >>> a = PromptBank.from_dict({"dataset": "d", "class_names": ["x", "y"]}, source="a.yaml")
        >>> b = PromptBank.from_dict({"dataset": "d", "class_names": ["x", "y"]}, source="b.yaml")
        >>> bank_hash(a) == bank_hash(b), bank_hash(a) == bank_hash(PromptBank.from_dict({"dataset": "d", "class_names": ["y", "x"]}))
        (True, False)
    """
    content = {k: v for k, v in asdict(bank).items() if k != "source"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def text_cache_path(cache_dir: str | Path, model, bank: PromptBank, lam: float = 1000.0) -> Path | None:
    """Where :func:`prepared_text` keeps a model's tensors for a bank; None for unidentified weights.

    The name holds the model name, its weights fingerprint (the whole of it, hashed), the bank's
    content hash and ``lam``. Models whose fingerprint is the bare ``"random"`` (weights that
    are not identified) get no cache file: two of them could not be told apart.
    """
    fp = str(getattr(model, "fingerprint", "") or "")
    if not fp or fp == "random":
        return None
    weights = hashlib.sha256(fp.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model.name)).strip("_") or "model"
    return Path(cache_dir) / "text" / name / f"{weights}-{bank_hash(bank)}-lam{lam:g}.safetensors"


def _cache_meta(model, bank: PromptBank, lam: float) -> dict[str, str]:
    return {"format": "ltc-text-cache", "version": str(TEXT_CACHE_VERSION), "model": str(model.name),
            "weights": str(model.fingerprint), "bank": bank_hash(bank), "lam": repr(float(lam))}


def _compute_text(model, bank: PromptBank, lam: float) -> dict:
    classifier = zero_shot_classifier(model, bank).float().cpu()
    out = {"classifier": classifier,
           "spurious_classifier": (zero_shot_classifier(model, bank, spurious=True).float().cpu()
                                   if bank.spurious_names else None)}
    out.update(text_directions(model, bank, classifier, lam=lam))
    return out


def _write_text_cache(path: Path, text: dict, meta: dict[str, str]) -> None:
    from safetensors.torch import save

    from .io import atomic_write

    tensors = {k: text[k].detach().float().cpu().contiguous() for k in _PLAIN if text.get(k) is not None}
    keyed = {name: list(text[name]) for name in KEYED_KINDS if text.get(name) is not None}
    for name, keys in keyed.items():
        tensors.update({f"{name}/{k}": text[name][k].detach().float().cpu().contiguous() for k in keys})
    atomic_write(path, save(tensors, metadata=dict(meta, keyed=json.dumps(keyed))))


def _read_text_cache(path: Path, meta: dict[str, str], bank: PromptBank) -> dict:
    """The cached dict, or ValueError saying what is wrong with the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            got = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # torn, truncated or foreign files
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    wrong = {k: (got.get(k), v) for k, v in meta.items() if got.get(k) != v}
    if wrong:
        raise ValueError(f"made for other inputs: {wrong}")
    keyed = json.loads(got.get("keyed", "{}"))
    if not isinstance(keyed, dict) or set(keyed) - set(KEYED_KINDS):
        raise ValueError(f"lists unknown keyed entries {keyed!r}")
    plain = {k for k in tensors if "/" not in k}
    expected = plain | {f"{name}/{k}" for name, keys in keyed.items() for k in keys}
    if "classifier" not in tensors or set(tensors) != expected or plain - set(_PLAIN):
        raise ValueError(f"incomplete: holds {sorted(tensors)}")
    W = tensors["classifier"]
    if W.dim() != 2 or W.shape[1] != len(bank.class_names):
        raise ValueError(f"classifier has shape {tuple(W.shape)}, expected [d_embed, {len(bank.class_names)}]")
    if any(t.shape[-1 if k.startswith(("roboshot", "injection")) else 0] != W.shape[0] for k, t in tensors.items()):
        raise ValueError("tensors disagree on d_embed")
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise ValueError("holds non-finite values")
    out: dict = {k: tensors.get(k) for k in _PLAIN}
    out.update({name: ({k: tensors[f"{name}/{k}"] for k in keyed[name]} if name in keyed else None)
                for name in KEYED_KINDS})
    return out


def prepared_text(model, bank: PromptBank, cache_dir: str | Path | None = None, lam: float = 1000.0) -> dict:
    """The classifiers and text directions of ``bank`` for ``model``, cached on disk.

    Args:
        model: a ``LoadedModel`` (its ``fingerprint`` identifies the weights).
        bank: the prompt bank.
        cache_dir: folder of the cache (files under ``<cache_dir>/text/``); None: no cache.
        lam: Ortho-Cali's calibration weight.

    Returns:
        :func:`text_directions`' dict plus ``classifier [d_embed, n_class]`` and
        ``spurious_classifier [d_embed, n_spurious]`` (None when the bank names no spurious
        values); CPU float32 tensors, equal to computing them afresh.

    A cache file is read only if its metadata names the same model, weights, bank content, lam
    and cache version and its tensors have the bank's shapes; otherwise (or when unreadable) it
    is recomputed and replaced atomically, with a log message saying why.
    """
    path = None if cache_dir is None else text_cache_path(cache_dir, model, bank, lam)
    if path is None:
        return _compute_text(model, bank, lam)
    meta = _cache_meta(model, bank, lam)
    if path.is_file():
        try:
            return _read_text_cache(path, meta, bank)
        except ValueError as exc:
            log.warning("text cache %s is %s; recomputing it", path, exc)
    text = _compute_text(model, bank, lam)
    _write_text_cache(path, text, meta)
    return text
