"""Train the tiny CLIP of the embedded default on the synthetic benchmark, and evaluate it.

The model is open_clip's own ``CLIP`` built from the ``ltc-tiny`` config (48 px images, patch
8 = 6 x 6 patches, width 128, 6 layers x 8 heads of width 16, MLP ratio 2; text tower 2 layers
x 64 with the real BPE tokenizer and a context of 24 tokens; joint space 64). Training is
contrastive on rendered images and random true captions that name the birds' attributes and
places (:mod:`ltcutils.datasets.synthetic`), and fully determined by the seed and a *fixed*
number of steps: one torch thread, ``torch.manual_seed`` for the initial weights and
seeded numpy generators for the data order and the captions.

Loss (``loss="compat"``, the default): a multi-positive InfoNCE in both directions where every
caption in the batch that truly describes an image counts as a positive for it (e.g. "a
landbird" is a positive for every landbird in the batch, "a photo of water" for every image on
water). Each row's target is uniform over its positives. ``loss="clip"`` is the standard CLIP
loss (only the image's own caption is a positive).

Command line (reproduces the shipped checkpoint; see data/MODEL_CARD.md)::

    python -m ltcutils.train --out data/ltc-tiny-synthetic.safetensors

Python::

    >>> from ltcutils.train import TrainConfig, train              # doctest: +SKIP
    >>> summary = train(TrainConfig(steps=10), out="/tmp/tiny.safetensors")
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .datasets import synthetic as syn
from .datasets.base import GroupDataset
from .io import atomic_write

__all__ = [
    "TrainConfig",
    "train",
    "contrastive_loss",
    "save_checkpoint",
    "read_checkpoint_metadata",
    "evaluate_zero_shot",
    "training_images",
    "main",
]


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint's metadata).

    Attributes:
        seed: torch seed for the initial weights; also seeds data order and captions.
        steps: number of optimiser steps (fixed: no wall-clock budget).
        batch_size: images (and captions) per step.
        n_train: training items; p_aligned: ``P(background == class)`` in training.
        data_seed: which family of item seeds the splits come from (0 = the shipped benchmark).
        loss: "compat" (every true caption in the batch is a positive) or "clip".
        lr, weight_decay, betas, warmup: AdamW with linear warm-up then cosine decay to 0.
        eval_every: steps between zero-shot checks on a small balanced val set (0 = never).
        eval_per_group: items per group of that val set.
        threads: torch threads (1 keeps the run deterministic and fast under contention).
    """

    seed: int = 0
    steps: int = 300
    batch_size: int = 256
    n_train: int = 20000
    p_aligned: float = 0.95
    data_seed: int = 0
    loss: str = "compat"
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup: int = 60
    eval_every: int = 50
    eval_per_group: int = 50
    threads: int = 1
    model: str = "ltc-tiny"

    def validate(self) -> None:
        if self.loss not in ("compat", "clip"):
            raise ValueError(f"loss must be 'compat' or 'clip', got {self.loss!r}")
        for k in ("steps", "batch_size", "n_train", "threads"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size {self.batch_size} exceeds n_train {self.n_train}")
        if not 0.0 <= self.p_aligned <= 1.0:
            raise ValueError(f"p_aligned must be in [0, 1], got {self.p_aligned}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


class _ClipAdapter:
    """The two methods text.zero_shot_classifier needs, on a bare open_clip model."""

    def __init__(self, clip, tokenizer, device):
        self.clip, self.tokenizer, self.device = clip, tokenizer, device
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    @torch.no_grad()
    def encode_text(self, texts, normalize=True):
        e = self.clip.encode_text(self.tokenizer(list(texts)).to(self.device)).float()
        return F.normalize(e, dim=-1) if normalize else e

    @torch.no_grad()
    def encode_image(self, pixels, normalize=True):
        e = self.clip.encode_image(pixels.to(self.device)).float()
        return F.normalize(e, dim=-1) if normalize else e


def _zero_shot(model, images: np.ndarray, y: np.ndarray, b: np.ndarray, bank, batch_size: int = 500,
               p_aligned: float = 0.95) -> dict[str, Any]:
    """Zero-shot metrics through the library's path: prompt-bank classifier, embeddings, predict, summary."""
    from .baselines import predict
    from .text import zero_shot_classifier

    cls = zero_shot_classifier(model, bank).float().cpu()
    sp = zero_shot_classifier(model, bank, spurious=True).float().cpu()
    size = syn.model_image_size(model)
    with torch.no_grad():
        emb = torch.cat([model.encode_image(syn.to_pixels(images[i : i + batch_size], size=size), normalize=True)
                         .float().cpu() for i in range(0, len(images), batch_size)])
    pred = predict(emb, cls).numpy()
    pred_b = predict(emb, sp).numpy()
    group = 2 * np.asarray(y) + np.asarray(b)
    w = [p_aligned / 2, (1 - p_aligned) / 2, (1 - p_aligned) / 2, p_aligned / 2]
    out = metrics.summary(pred, y, group, group_names=syn.GROUP_NAMES, train_proportions=w)
    out["group_acc"] = [out[f"acc_{g}"] for g in syn.GROUP_NAMES]
    out["background_acc"] = 100.0 * float((pred_b == np.asarray(b)).mean())
    return out


def evaluate_zero_shot(model, dataset: GroupDataset | None = None, split: str = "test", n_per_group: int = 500,
                       seed: int = 0, bank: str = "synthetic", batch_size: int = 500,
                       p_aligned: float = 0.95) -> dict[str, Any]:
    """Zero-shot metrics of a model on the synthetic benchmark (balanced split by default).

    Args:
        model: a :class:`~ltcutils.models.LoadedModel` (or anything with ``encode_text`` and
            ``encode_image``); renders are resized to its input size.
        dataset: a synthetic :class:`GroupDataset`; default ``make_split(split, n_per_group=...)``.
        bank: prompt bank name or YAML path (class prompts and spurious prompts).
        p_aligned: training correlation, for the train-weighted average.

    Returns:
        :func:`ltcutils.metrics.summary` (``wg``, ``avg_group``, ``avg_sample``, ``avg_train``,
        ``gap_group``, ``acc_<group>``, ...) plus ``group_acc`` (``[4]`` in GROUP_NAMES order)
        and ``background_acc`` (the background read zero-shot with the spurious prompts), all
        in percent.
    """
    from .text import load_prompt_bank

    if dataset is None:
        dataset = syn.make_split(split, n_per_group=n_per_group, seed=seed)
    seeds = [int(s) for s in dataset.ids]
    images = syn.render_batch(seeds)
    return _zero_shot(model, images, dataset.y, dataset.spurious, load_prompt_bank(bank), batch_size, p_aligned)


# ----------------------------------------------------------------------------- loss
def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                     positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric (multi-positive) InfoNCE.

    Args:
        img, txt: ``[batch, d_embed]`` L2-normalised embeddings (row i of each from item i).
        logit_scale: scalar log temperature (the model's ``logit_scale``; exp is capped at 100).
        positives: ``[batch, batch]`` bool, True where caption j truly describes image i; the
            diagonal must be True. None = the diagonal only (the standard CLIP loss).

    Returns:
        scalar: mean over images of the cross-entropy against the uniform distribution over
        their positive captions, averaged with the same for captions over images.
    """
    n = img.shape[0]
    logits = logit_scale.exp().clamp(max=100.0) * img @ txt.t()
    if positives is None:
        target = torch.arange(n, device=img.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    pos = positives.to(device=img.device, dtype=logits.dtype)
    if pos.shape != (n, n) or not bool(torch.diagonal(pos).all()):
        raise ValueError(f"positives must be [batch, batch] with a True diagonal, got {tuple(pos.shape)}")
    i2t = -(F.log_softmax(logits, 1) * pos).sum(1) / pos.sum(1)
    t2i = -(F.log_softmax(logits.t(), 1) * pos.t()).sum(1) / pos.t().sum(1)
    return 0.5 * (i2t.mean() + t2i.mean())


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(clip: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
                    fp16: bool = True) -> Path:
    """Write the full CLIP ``state_dict`` as safetensors, atomically (temp file, then rename).

    ``metadata`` is stored JSON-encoded under the header key ``"ltc"``; the file loads with
    ``ltcutils.models.load_model("ltc-tiny", pretrained=path)``.
    """
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().cpu().half() if fp16 and v.is_floating_point() else v.detach().cpu()).contiguous()
          for k, v in clip.state_dict().items()}
    meta = {"format": "pt", "ltc": json.dumps(metadata or {}, sort_keys=True, default=str)}
    atomic_write(path, save(sd, metadata=meta))
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``"ltc"`` metadata written by :func:`save_checkpoint` (empty dict if none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("ltc", "{}"))


# ----------------------------------------------------------------------------- data
def training_images(cfg: TrainConfig, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> tuple[GroupDataset, np.ndarray]:
    """The training split and its rendered images ``[n, 64, 64, 3]`` uint8 (cached if asked)."""
    ds = syn.make_split("train", n=cfg.n_train, p_aligned=cfg.p_aligned, seed=cfg.data_seed)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"synthetic-train-{ds.fingerprint()}.npy"
        if cache.is_file():
            arr = np.load(cache, allow_pickle=False)
            if arr.shape == (len(ds), syn.IMAGE_SIZE, syn.IMAGE_SIZE, 3):  # same generator version: fingerprint
                return ds, arr
    images = syn.render_batch([int(s) for s in ds.ids], progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: np.save(f, images, allow_pickle=False))
    return ds, images


def _param_groups(clip: torch.nn.Module, weight_decay: float) -> list[dict]:
    # open_clip's rule: no decay for gains, biases, norms and the temperature
    def exclude(n: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(clip.named_parameters())
    return [
        {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": weight_decay},
    ]


# ----------------------------------------------------------------------------- training
def train(
    cfg: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    final_eval_per_group: int = 500,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train the tiny CLIP from scratch; optionally write the checkpoint and evaluate it.

    Args:
        cfg: the run (default :class:`TrainConfig()`, the shipped model's settings).
        out: checkpoint path (.safetensors, fp16, written atomically); None = do not save.
        cache_dir: where to cache the rendered training images between runs (None = no cache).
        progress: show tqdm bars.
        log: called with one line of text per evaluation (default: print to stderr).
        final_eval_per_group: items per group of the balanced test split evaluated at the end
            (0 = skip); the metrics go into the summary and the checkpoint metadata.
        device: torch device (default CPU; the shipped model was trained on CPU).

    Returns:
        a summary dict: config, steps, wall time, loss history, evaluation history, final test
        metrics and (when saved) the checkpoint path. The trained open_clip model is under
        ``"model"`` (not JSON-able; pop it before dumping).
    """
    from tqdm.auto import tqdm

    from .models import load_model
    from .text import load_prompt_bank

    cfg = cfg or TrainConfig()
    cfg.validate()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.threads))
    t_start = time.time()
    try:
        ds, images = training_images(cfg, cache_dir, progress)
        t_data = time.time() - t_start
        species = ds.extra["species"]
        place = ds.extra["place"]
        b = ds.spurious

        torch.manual_seed(cfg.seed)
        loaded = load_model(cfg.model, pretrained=None, device=device)
        clip, tokenizer = loaded.clip, loaded.tokenizer
        image_size = syn.model_image_size(loaded)  # renders are resized if the config differs
        clip.train()
        opt = torch.optim.AdamW(_param_groups(clip, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-6)
        rng_order = np.random.default_rng([cfg.seed, 101])
        rng_caption = np.random.default_rng([cfg.seed, 102])
        bank = load_prompt_bank("synthetic")
        if cfg.eval_every > 0:
            val = syn.make_split("val", n_per_group=cfg.eval_per_group, seed=cfg.data_seed)
            val_images = syn.render_batch([int(s) for s in val.ids])
        token_cache: dict[str, torch.Tensor] = {}

        def tokens(texts: list[str]) -> torch.Tensor:
            new = sorted({t for t in texts if t not in token_cache})
            if new:
                for t, row in zip(new, tokenizer(new)):
                    token_cache[t] = row
            return torch.stack([token_cache[t] for t in texts]).to(device)

        order = rng_order.permutation(len(ds))
        cursor = 0
        history: list[dict[str, Any]] = []
        losses: list[float] = []
        bar = tqdm(range(cfg.steps), desc="train", disable=not progress, mininterval=5.0)
        t_train = time.time()
        for step in bar:
            if cursor + cfg.batch_size > len(order):
                order = rng_order.permutation(len(ds))
                cursor = 0
            idx = np.sort(order[cursor : cursor + cfg.batch_size])
            cursor += cfg.batch_size
            caps = syn.sample_captions(species[idx], b[idx], rng_caption, place=place[idx])
            pos = None
            if cfg.loss == "compat":
                pos = torch.from_numpy(syn.caption_compatibility(caps, species[idx], b[idx], place[idx]))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            pixels = syn.to_pixels(images[idx], size=image_size).to(device)
            img = F.normalize(clip.encode_image(pixels), dim=-1)
            txt = F.normalize(clip.encode_text(tokens(caps.texts)), dim=-1)
            loss = contrastive_loss(img, txt, clip.logit_scale, pos)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if progress:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
            if cfg.eval_every > 0 and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                clip.eval()
                m = _zero_shot(_ClipAdapter(clip, tokenizer, device), val_images, val.y, val.spurious, bank,
                               p_aligned=cfg.p_aligned)
                clip.train()
                rec = {"step": step + 1, "loss": float(np.mean(losses[-cfg.eval_every:])),
                       "val_wg": m["wg"], "val_avg_group": m["avg_group"],
                       "val_group_acc": [round(v, 1) for v in m["group_acc"]], "val_background_acc": m["background_acc"],
                       "elapsed_s": round(time.time() - t_start, 1)}
                history.append(rec)
                log(f"step {step + 1}: loss {rec['loss']:.3f}  val WG {m['wg']:.1f}  "
                    f"avg {m['avg_group']:.1f}  groups {rec['val_group_acc']}  bg {m['background_acc']:.1f}  "
                    f"({rec['elapsed_s']} s)")
        train_s = time.time() - t_train
        clip.eval()
        summary: dict[str, Any] = {
            "config": asdict(cfg), "steps": cfg.steps, "data_s": round(t_data, 1), "train_s": round(train_s, 1),
            "wall_s": round(time.time() - t_start, 1), "loss_first": float(np.mean(losses[:20])),
            "loss_last": float(np.mean(losses[-20:])), "history": history,
            "train_group_counts": ds.group_counts(), "torch": torch.__version__,
        }
        if out is not None:
            save_checkpoint(clip, out, summary)
            summary["checkpoint"] = str(out)
        if final_eval_per_group:
            if out is not None:  # evaluate what was written (fp16 weights), as users will load it
                model = load_model(cfg.model, pretrained=out, device=device)
            else:
                model = _ClipAdapter(clip, tokenizer, device)
            summary["test"] = evaluate_zero_shot(model, n_per_group=final_eval_per_group, seed=cfg.data_seed,
                                                 p_aligned=cfg.p_aligned)
            summary["test"]["n_per_group_requested"] = final_eval_per_group
            log(f"test: WG {summary['test']['wg']:.1f}  avg {summary['test']['avg_group']:.1f}  "
                f"groups {[round(v, 1) for v in summary['test']['group_acc']]}  "
                f"bg {summary['test']['background_acc']:.1f}")
            if out is not None:
                save_checkpoint(clip, out, summary)
        summary["model"] = clip
        return summary
    finally:
        torch.set_num_threads(old_threads)


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ltcutils.train``: train, save the checkpoint, print the summary as JSON."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m ltcutils.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="checkpoint path (.safetensors); default: do not save")
    p.add_argument("--summary", default=None, help="also write the JSON summary here")
    p.add_argument("--cache-dir", default=None, help="cache the rendered training images here")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--p-aligned", type=float, default=d.p_aligned)
    p.add_argument("--data-seed", type=int, default=d.data_seed)
    p.add_argument("--loss", choices=["compat", "clip"], default=d.loss)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-per-group", type=int, default=d.eval_per_group)
    p.add_argument("--final-eval-per-group", type=int, default=500)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--model", default=d.model, help="model config name (ltcutils/model_configs)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = TrainConfig(seed=a.seed, steps=a.steps, batch_size=a.batch_size, n_train=a.n_train, p_aligned=a.p_aligned,
                      data_seed=a.data_seed, loss=a.loss, lr=a.lr, weight_decay=a.weight_decay, warmup=a.warmup,
                      eval_every=a.eval_every, eval_per_group=a.eval_per_group, threads=a.threads,
                      model=a.model)
    summary = train(cfg, out=a.out, cache_dir=a.cache_dir, progress=not a.no_progress,
                    final_eval_per_group=a.final_eval_per_group)
    summary.pop("model")
    text = json.dumps(summary, indent=2, default=str)
    if a.summary:
        Path(a.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(a.summary).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
