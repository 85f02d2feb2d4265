"""The glue a notebook needs: model, splits, cached decompositions and classifiers in one call.

Every notebook starts from the same parameters (model, pretrained, dataset, data_root, split
sizes, batch size, device, seed, output_dir, cache_dir) and calls :func:`setup`. Stages share
files through ``output_dir`` (heads file, metrics, figures) and ``cache_dir`` (decompositions),
so any notebook can be rerun alone.

Example::

    >>> ex = ltc.experiment.setup(model="ltc-tiny", pretrained="default", dataset="synthetic")  # doctest: +SKIP
    >>> val = ex.store("val")                     # captured once, then reused from cache_dir  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .models import DEFAULT_CHECKPOINT, TINY_MODEL, LoadedModel, load_default, load_model
from .text import PromptBank, load_prompt_bank, prepared_text

__all__ = ["Experiment", "setup", "stratified_subset"]


def stratified_subset(group, n: int, seed: int = 0):
    """Sorted indices of about ``n`` items, every group kept in proportion (at least one each)."""
    import numpy as np

    group = np.asarray(group)
    rng = np.random.default_rng(seed)
    out = []
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        k = max(1, int(round(n * len(idx) / len(group))))
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


@dataclass
class Experiment:
    """A model, a dataset name with its prompt bank, and where files go."""

    model: LoadedModel
    dataset: str
    bank: PromptBank
    data_root: str | None
    output_dir: Path
    cache_dir: Path
    batch_size: int = 64
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    layers: list[int] | None = None
    max_images: int | None = None
    seed: int = 0
    rebuild: bool = False
    _splits: dict = field(default_factory=dict)
    _stores: dict = field(default_factory=dict)
    _text: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ files
    @property
    def figures(self) -> Path:
        p = self.output_dir / "figures"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def heads_file(self) -> Path:
        return self.output_dir / "heads.json"

    # ------------------------------------------------------------------ data
    def split(self, name: str):
        """The dataset split ``name`` (a :class:`~ltcutils.datasets.base.GroupDataset`)."""
        if name not in self._splits:
            import numpy as np

            from .datasets.registry import load_dataset

            ds = load_dataset(self.dataset, name, root=self.data_root, **self.dataset_kwargs)
            if list(ds.class_names) != list(self.bank.class_names):
                raise ValueError(
                    f"the prompt bank {self.bank.source} names classes {self.bank.class_names[:5]}... but the "
                    f"dataset's classes are {list(ds.class_names)[:5]}...; the classifier would be silently wrong. "
                    "Pass a prompt bank whose class_names match the dataset (prompt_bank=...)")
            if self.max_images is not None and len(ds) > self.max_images:
                ds = ds.subset(stratified_subset(ds.group, self.max_images, self.seed))
            classes = np.unique(ds.y)
            if len(classes) < 2 and ds.info.get("has_class_label") is not False:
                raise ValueError(
                    f"{ds.name}/{ds.split} has images of one class only ({ds.class_names[int(classes[0])]!r}, "
                    f"{len(ds)} images): zero-shot classification and LTC need at least two classes. Check the "
                    "split's metadata, or raise max_images / n_per_group")
            self._splits[name] = ds
        return self._splits[name]

    def store(self, name: str, progress: bool = True):
        """The cached decomposition of split ``name`` (captured on first use)."""
        if name not in self._stores:
            from .capture import capture

            self._stores[name] = capture(self.model, self.split(name), self.cache_dir, batch_size=self.batch_size,
                                         layers=self.layers, progress=progress, rebuild=self.rebuild)
        return self._stores[name]

    def has_class_label(self, split: str) -> bool:
        """False for a dataset with no class to predict (FairFace: faces ranked by concept prompts)."""
        return self.split(split).info.get("has_class_label") is not False

    def require_class_label(self, split: str, notebook: str, why: str) -> None:
        """Stop a notebook that needs a class label on a dataset without one, saying what to run instead.

        Args:
            split: a split the notebook reads (its dataset is checked).
            notebook: the notebook's name, for the message.
            why: what in that notebook needs the class label.

        Raises:
            ValueError: the dataset has no class label (:meth:`has_class_label`).
        """
        if self.has_class_label(split):
            return
        raise ValueError(
            f"{self.dataset} has no class label (its images are ranked by concept prompts, not classified), so "
            f"notebook {notebook} cannot run on it: {why}. On {self.dataset}, run notebooks 00, 01 and 05 and reuse "
            "heads located on a gender benchmark that has a class (GenderBias, as the paper does): "
            f"`ltc run 00 01 05 -p dataset {self.dataset} -p locate_split val -p eval_split val "
            "-p heads_from <genderbias run>/heads.json` (locate_split train takes the head means from other faces "
            "than those evaluated); notebook 05 reports MaxSkew@k of the concept rankings before and after "
            "ablating those heads.")

    def selections(self, heads_from: str | os.PathLike | None = None) -> tuple:
        """The three saved selections ``(selection, full, paper)`` notebook 05 compares, checked against this model.

        Args:
            heads_from: a heads file from another run to use for all three (None: the ``heads.json``,
                ``heads_full.json`` and ``heads_paper.json`` notebook 02 wrote to ``output_dir``).
        """
        from .locate import HeadSelection

        if heads_from:
            sel = HeadSelection.load(heads_from, model=self.model, layers=self.layers)
            saved = self.output_dir / "heads.json"  # notebook 02 may have located per-class salient heads on it
            if saved.is_file() and (here := HeadSelection.load(saved, layers=self.layers)).salient_by_class \
                    and here.spurious == sel.spurious:
                return self.selections(None)
            return sel, sel, sel
        return tuple(HeadSelection.load(self.output_dir / name, model=self.model, layers=self.layers)
                     for name in ("heads.json", "heads_full.json", "heads_paper.json"))

    # ------------------------------------------------------------------ text
    def text(self) -> dict:
        """The bank's classifiers and text directions (:func:`ltcutils.text.prepared_text`), encoded
        once per model and bank and cached under ``cache_dir/text``."""
        if not self._text:
            self._text.update(prepared_text(self.model, self.bank, self.cache_dir))
        return self._text

    def classifier(self) -> torch.Tensor:
        """Zero-shot class classifier ``[d_embed, n_class]`` from the prompt bank (on CPU, like the caches)."""
        return self.text()["classifier"].clone()

    def spurious_classifier(self) -> torch.Tensor:
        """Zero-shot classifier of the spurious attribute ``[d_embed, n_spurious]`` (on CPU).

        Raises:
            ValueError: the prompt bank names no spurious values.
        """
        W = self.text()["spurious_classifier"]
        if W is None:
            raise ValueError(f"{self.bank.dataset}: the prompt bank defines no spurious_names")
        return W.clone()

    def heads(self, path: str | os.PathLike | None = None):
        """The saved head selection (default ``heads_file``), checked against this model and its captured layers.

        Raises:
            FileNotFoundError, ValueError: see :meth:`ltcutils.locate.HeadSelection.load`.
        """
        from .locate import HeadSelection

        return HeadSelection.load(path or self.heads_file, model=self.model, layers=self.layers)

    def describe(self) -> dict:
        return {"model": self.model.describe(), "dataset": self.dataset, "data_root": self.data_root,
                "dataset_kwargs": self.dataset_kwargs, "prompt_bank": self.bank.source}


def setup(
    model: str = TINY_MODEL,
    pretrained: str | None = "default",
    dataset: str = "synthetic",
    data_root: str | None = None,
    output_dir: str | os.PathLike = "outputs",
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    seed: int = 0,
    prompt_bank: str | None = None,
    layers: list[int] | None = None,
    n_per_group: int | None = None,
    max_images: int | None = None,
    rebuild: bool = False,
    **dataset_kwargs: Any,
) -> Experiment:
    """Load the model and prompt bank and prepare the output and cache folders.

    Args:
        model: open_clip model name (``"ltc-tiny"`` for the embedded default).
        pretrained: ``"default"`` (the shipped tiny checkpoint, only with ``ltc-tiny``), a tag, a
            checkpoint path, or None (random weights).
        dataset: ``"synthetic"`` or a real benchmark name (see ``ltcutils.datasets.registry``).
        data_root: dataset root (default ``$LTC_DATA_DIR/<dataset>``).
        output_dir: where figures, metrics and the heads file go.
        cache_dir: where decompositions are cached (default ``<output_dir>/../cache``).
        device: "cpu" or an accelerator name understood by torch.
        seed: seeds torch (and is passed to the synthetic generator).
        prompt_bank: a YAML path to use instead of ``data/prompts/<dataset>.yaml``.
        layers: attention layers kept per head in the cache (default all).
        n_per_group: synthetic benchmark only: images per group in val and test.
        max_images: use at most this many images per split (a seeded, group-stratified subset;
            None: all). Handy for quick runs on real datasets.
        rebuild: replace a cached decomposition made from other inputs, or a damaged one, instead
            of refusing it (the notebooks' ``rebuild`` parameter).
        dataset_kwargs: passed to the dataset loader.

    Raises:
        ValueError: a size that is not a positive whole number, or ``pretrained='default'`` with
            another model.
        ModelLoadError: an unknown or non-ViT model name (checked first), or a device this
            machine does not have.
    """
    from .models import check_device, check_model_name

    batch_size = _positive_int("batch_size", batch_size)
    n_per_group = _positive_int("n_per_group", n_per_group, none_ok=True)
    max_images = _positive_int("max_images", max_images, none_ok=True)
    seed = int(seed)
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("none", "null", "~", ""):
        pretrained = None  # -p pretrained None arrives as the string "None"
    check_model_name(model)
    check_device(device)
    torch.manual_seed(seed)
    if pretrained == "default":
        if model != TINY_MODEL:
            raise ValueError(f"pretrained='default' means the shipped tiny checkpoint {DEFAULT_CHECKPOINT.name}; "
                             f"for {model} pass a pretrained tag or a checkpoint path")
        m = load_default(device=device)
    else:
        m = load_model(model, pretrained, device=device)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).resolve() if cache_dir else out.parent / "cache"
    if prompt_bank:
        bank = load_prompt_bank(prompt_bank)
    else:  # the dataset's own bank for these loader options (CelebA: the chosen attributes)
        from .datasets.registry import default_prompt_bank

        bank = default_prompt_bank(dataset, **dataset_kwargs)
    if dataset == "synthetic":
        dataset_kwargs.setdefault("seed", seed)
        if n_per_group is not None:
            dataset_kwargs["n_per_group"] = n_per_group
    elif n_per_group is not None:
        import warnings

        warnings.warn(f"n_per_group={n_per_group} sizes the synthetic benchmark only and is ignored for {dataset}; "
                      "use max_images to subsample a real dataset", stacklevel=2)
    return Experiment(m, dataset, bank, data_root, out, cache, batch_size, dataset_kwargs, layers,
                      max_images=max_images, seed=seed, rebuild=bool(rebuild))


def _positive_int(name: str, value: Any, none_ok: bool = False) -> int | None:
    """``value`` as an int >= 1; raises ValueError naming the parameter otherwise."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not ok and isinstance(value, float) and value.is_integer() and value >= 1:
        return int(value)
    if not ok:
        raise ValueError(f"{name} must be a positive whole number{' or None' if none_ok else ''}, got {value!r} "
                         f"(pass e.g. -p {name} 64)")
    return value
