"""Exercises of the workbook: checkers that compare a learner's function with the library.

In notebooks 01-04 a cell tagged ``exercise`` holds the core step of the method as a function,
its body written between two marker lines::

    def head_term(cache, model, layer, head):
        \"\"\"One head's joint-space term [batch, d_embed] from a run_with_cache cache.\"\"\"
        # BEGIN SOLUTION
        ...the worked solution...
        # END SOLUTION

The committed notebook carries the solution, so ``make workbook`` and CI run it. The learner's
copy is derived, never kept: :func:`stub_source` replaces each marked block by a stub that
raises :class:`NotImplementedError`, and :func:`learner_notebook` does that to every exercise
cell and sets the notebook's ``exercises`` parameter to ``"learner"``
(``python -m ltcutils.exercises --out runs/class`` writes a class set; ``make lab MODE=learner``
opens it).

The cell after each exercise calls its checker, e.g. ``ltc.exercises.check_head_term(head_term,
model, pixels, mode=exercises)``. A checker runs the learner's function on fixed inputs, compares
it with the library (``torch.testing.assert_close``) and, when it differs, compares it with the
likely mistakes (each a wrong variant of the computation) to print a targeted hint. In
``"learner"`` mode a failure prints its hint and returns; in ``"solution"`` mode it raises
:class:`ExerciseFailed`, so a broken worked solution fails the run.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BEGIN", "END", "MODES", "ExerciseFailed", "ExerciseResult", "stub_source", "learner_notebook",
           "write_learner_notebooks", "check_head_term", "check_mlp_term", "check_head_margins",
           "check_top_head_frequencies", "check_mean_ablation", "check_worst_group", "check_orthonormalise",
           "check_inject", "CHECKERS"]

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
MODES = ("solution", "learner")
STUB = 'raise NotImplementedError("exercise: write this step, then run the check below")'


class ExerciseFailed(AssertionError):
    """A worked solution (``mode="solution"``) disagrees with the library."""


@dataclass
class ExerciseResult:
    """The outcome of one check: ``passed``, and the message shown to the learner."""

    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed


# --------------------------------------------------------------------------- stubs from markers
def stub_source(source: str) -> str:
    """The learner's version of an exercise cell: every marked solution block becomes a stub.

    The lines from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` (inclusive) are replaced by one
    ``raise NotImplementedError(...)`` line at the indentation of the ``BEGIN`` marker, preceded
    by ``# YOUR CODE HERE``. Code outside the markers (the signature, the docstring) is kept.

    Raises:
        ValueError: unbalanced or nested markers (the message names the line).
    """
    out, inside, indent = [], False, ""
    for n, line in enumerate(source.splitlines(), 1):
        mark = line.strip()
        if mark == BEGIN:
            if inside:
                raise ValueError(f"line {n}: {BEGIN!r} inside another solution block; close it with {END!r} first")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}{STUB}"]
        elif mark == END:
            if not inside:
                raise ValueError(f"line {n}: {END!r} without a {BEGIN!r} above it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a {BEGIN!r} block is never closed with {END!r}")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _set_parameter(source: str, name: str, value: str, comment: str | None = None) -> str:
    """``source`` (a parameters cell) with ``name = ...`` given the literal ``value`` (and ``comment``, or the old one)."""
    pattern = re.compile(rf"(?m)^({re.escape(name)}\s*=\s*)([^#\n]*?)(\s*#.*)?$")
    if not pattern.search(source):
        raise ValueError(f"the parameters cell declares no {name!r}")
    return pattern.sub(lambda m: f"{m.group(1)}{value}" + (f"  # {comment}" if comment else (m.group(3) or "")),
                       source, count=1)


def learner_notebook(nb, output_dir: str | None = None, cache_dir: str | None = None):
    """A copy of notebook ``nb`` as a class gets it: stubs in every ``exercise`` cell, ``exercises="learner"``.

    Args:
        nb: an nbformat notebook (not modified).
        output_dir: a value for the ``output_dir`` parameter (e.g. a path relative to where the
            copy is written), or None to keep the notebook's own.
        cache_dir: likewise for ``cache_dir`` (e.g. the cache ``make workbook`` already filled).

    Raises:
        ValueError: the notebook has exercise cells but no ``exercises`` parameter, or bad markers.
    """
    import copy

    nb = copy.deepcopy(nb)
    has_exercise = False
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        if "exercise" in tags:
            has_exercise = True
            cell.source = stub_source(src)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
            if has_exercise or re.search(r"(?m)^exercises\s*=", src):
                src = _set_parameter(src, "exercises", '"learner"')
            if output_dir is not None:
                src = _set_parameter(src, "output_dir", repr(str(output_dir)),
                                     "stage outputs of this copy: figures/, metrics/, heads.json (ltc run sets it)")
            if cache_dir is not None and re.search(r"(?m)^cache_dir\s*=", src):
                src = _set_parameter(src, "cache_dir", repr(str(cache_dir)),
                                     "decomposition cache, shared with the workbook's runs")
            cell.source = src
    return nb


def write_learner_notebooks(out: str | Path, notebooks_dir: str | Path | None = None,
                            output_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> list[Path]:
    """Write the learner's copy of every workbook notebook to ``out`` (what a class opens).

    Args:
        out: folder for the copies (created).
        notebooks_dir: the workbook (default: the project's ``notebooks/``).
        output_dir: where the copies' runs write (default ``out/outputs``); stored relative to ``out``.
        cache_dir: the decomposition cache the copies use (default ``out/../cache``, the one
            ``make workbook`` fills when ``out`` is ``runs/class``); stored relative to ``out``.

    Returns:
        the paths written.
    """
    import nbformat

    from .io import atomic_write
    from .workbook import list_notebooks
    from .workbook.notebooks import default_notebooks_dir

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = Path(output_dir) if output_dir is not None else out / "outputs"
    cache = Path(cache_dir) if cache_dir is not None else out.resolve().parent / "cache"
    rel_out, rel_cache = (os.path.relpath(Path(p).resolve(), out.resolve()) for p in (target, cache))
    written = []
    for path in list_notebooks(Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()):
        nb = learner_notebook(nbformat.read(str(path), as_version=4), output_dir=rel_out, cache_dir=rel_cache)
        dest = out / path.name
        atomic_write(dest, nbformat.writes(nb))
        written.append(dest)
    return written


# --------------------------------------------------------------------------- the check machinery
Mistake = tuple[str, Callable[[], object], str]  # (name, wrong output, hint)


def _close(got, want, rtol: float, atol: float) -> str | None:
    """None when ``got`` matches ``want`` (assert_close), else assert_close's message."""
    try:
        torch.testing.assert_close(torch.as_tensor(got).double(), torch.as_tensor(want).double(),
                                   rtol=rtol, atol=atol, check_device=False)
        return None
    except AssertionError as e:
        return str(e)


def _report(name: str, passed: bool, message: str, mode: str) -> ExerciseResult:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r} (the notebook's `exercises` parameter)")
    result = ExerciseResult(name, passed, message)
    print(("PASSED " if passed else "NOT YET ") + f"{name}: {message}")
    if not passed and mode == "solution":
        raise ExerciseFailed(f"the worked solution of {name} disagrees with the library: {message}")
    return result


def _check(name: str, call: Callable[[], object], want, mistakes: Sequence[Mistake], mode: str,
           generic: str, rtol: float = 1e-4, atol: float = 1e-5, success: str = "matches the library") -> ExerciseResult:
    """Run the learner's ``call()``, compare with ``want``, diagnose with ``mistakes``."""
    try:
        got = call()
    except NotImplementedError:
        return _report(name, False, "not written yet: fill in the function body (the stub raises "
                       "NotImplementedError), then rerun this cell. " + generic, mode)
    except Exception as e:  # the learner's code raised: show the error as a hint, not a traceback
        return _report(name, False, f"your function raised {type(e).__name__}: {e}. {generic}", mode)
    if got is None:
        return _report(name, False, "your function returned None: return the result. " + generic, mode)
    got_t, want_t = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got), torch.as_tensor(want)
    same_shape = tuple(got_t.shape) == tuple(want_t.shape)
    diff = _close(got_t, want_t, rtol, atol) if same_shape else "shape"
    if diff is None:
        return _report(name, True, success, mode)
    for _, wrong, hint in mistakes:
        w = wrong()
        if tuple(torch.as_tensor(w).shape) == tuple(got_t.shape) and _close(got_t, w, rtol, atol) is None:
            return _report(name, False, hint, mode)
    if not same_shape:
        return _report(name, False, f"the result has shape {tuple(got_t.shape)}, expected {tuple(want_t.shape)}. "
                       + generic, mode)
    first = diff.strip().splitlines()
    return _report(name, False, f"the values differ from the library ({' '.join(first[:3])}). {generic}", mode)


# --------------------------------------------------------------------------- 01: terms from a cache
def _cfg(model) -> tuple[int, int]:
    """(number of layers, heads per layer) of the hooked model."""
    return model.cfg.n_layers, model.cfg.n_heads


def _joint(model, r, share, mu, sigma, mean_share=True, centre=True, beta_share=True):
    """Linearised ln_post + proj of a residual-space term ``r [batch, d_model]`` (variants for hints)."""
    ln = model.ln_post
    c = r - (share * mu if mean_share else mu) if centre else r
    return (ln.weight * c / sigma + (share if beta_share else 1.0) * ln.bias) @ model.proj


def _head_variant(cache, model, layer, head, share="head", mean_share=True, centre=True, bias="share",
                  beta_share=True, normalize=True):
    L, H = _cfg(model)
    block = model.blocks[layer]
    z = cache[f"blocks.{layer}.attn.hook_z"][:, 0, head]  # [batch, d_head]
    r = z @ model.W_O[layer, head] + {"share": model.b_O[layer] / H, "none": 0.0, "full": model.b_O[layer]}[bias]
    if block.ls_1 is not None:
        r = r * block.ls_1
    K = 2 * L + 1
    s = 1.0 / (K * H) if share == "head" else 1.0 / K
    t = _joint(model, r, s, cache["ln_post.hook_mean"], cache["ln_post.hook_scale"], mean_share, centre, beta_share)
    return t / cache["hook_image_embed"].norm(dim=-1, keepdim=True) if normalize else t


@torch.inference_mode()
def check_head_term(fn: Callable, model, pixels: torch.Tensor, mode: str = "solution",
                    heads: Sequence[tuple[int, int]] | None = None) -> ExerciseResult:
    """Check ``fn(cache, model, layer, head) -> [batch, d_embed]``, one head's normalised term.

    Args:
        fn: the learner's function; ``cache`` is ``model.run_with_cache(pixels)[1]``.
        model: the hooked image tower (``ltc.hooked.HookedViT``).
        pixels: ``[batch, 3, H, W]`` preprocessed images.
        mode: ``"solution"`` (raise on a mismatch) or ``"learner"`` (print the hint).
        heads: ``(layer, head)`` pairs tried (default: the first and the last head).
    """
    from .decompose import decompose

    L, H = _cfg(model)
    heads = list(heads or [(0, 0), (L - 1, H - 1)])
    _, cache = model.run_with_cache(pixels)
    d = decompose(model, pixels)
    want = torch.stack([d.heads[:, l, h] for l, h in heads])

    def run(**kw):
        return lambda: torch.stack([_head_variant(cache, model, l, h, **kw) for l, h in heads])

    mistakes = [
        ("full_mean", run(mean_share=False), "you centred the head by the whole ln_post mean μ; each term takes "
         "only its share s·μ with s = 1/(K·H) (K = 2·n_layers + 1), so that the shares add up to one μ."),
        ("no_centring", run(centre=False), "you did not subtract the head's share of the mean: "
         "ln_post computes (x - μ)/σ, and the head's part of that is (r - s·μ)/σ with s = 1/(K·H)."),
        ("no_bias", run(bias="none"), "the out_proj bias b_O is missing: it is shared out evenly, b_O / H per head."),
        ("full_bias", run(bias="full"), "you added the whole out_proj bias b_O to one head; each of the H heads gets b_O / H."),
        ("full_beta", run(beta_share=False), "you added the whole ln_post bias β; the head gets its share s·β."),
        ("mlp_share", run(share="mlp"), "you used the share 1/K of an MLP or the embedding; a head's share is "
         "1/(K·H) because the attention layer's share is split over its H heads."),
        ("not_normalized", run(normalize=False), "the term is not divided by the norm ||e|| of the unedited "
         "embedding (cache['hook_image_embed']), so it is not a part of the unit-norm embedding."),
    ]
    return _check("head_term", lambda: torch.stack([fn(cache, model, l, h) for l, h in heads]), want, mistakes, mode,
                  "Steps: z at the class token (position 0) @ W_O[head] + b_O/H (times LayerScale if any); "
                  "then γ·(r - s·μ)/σ + s·β with s = 1/(K·H); then @ proj; then / ||e||.")


def _mlp_variant(cache, model, layer, share="mlp", mean_share=True, normalize=True, source="mlp"):
    L, H = _cfg(model)
    K = 2 * L + 1
    key = f"blocks.{layer}.hook_mlp_out" if source == "mlp" else f"blocks.{layer}.hook_resid_post"
    r = cache[key][:, 0]
    s = 1.0 / K if share == "mlp" else 1.0 / (K * H)
    t = _joint(model, r, s, cache["ln_post.hook_mean"], cache["ln_post.hook_scale"], mean_share)
    return t / cache["hook_image_embed"].norm(dim=-1, keepdim=True) if normalize else t


@torch.inference_mode()
def check_mlp_term(fn: Callable, model, pixels: torch.Tensor, mode: str = "solution") -> ExerciseResult:
    """Check ``fn(cache, model, layer) -> [batch, d_embed]``, one MLP's normalised term."""
    from .decompose import decompose

    L, _ = _cfg(model)
    layers = sorted({0, L - 1})
    _, cache = model.run_with_cache(pixels)
    d = decompose(model, pixels)
    want = torch.stack([d.mlps[:, l] for l in layers])

    def run(**kw):
        return lambda: torch.stack([_mlp_variant(cache, model, l, **kw) for l in layers])

    mistakes = [
        ("head_share", run(share="head"), "you used a head's share 1/(K·H); an MLP is one of the K = 2·n_layers + 1 "
         "intermediate terms, so its share of μ and β is 1/K."),
        ("full_mean", run(mean_share=False), "you centred by the whole mean μ; the MLP takes its share μ/K."),
        ("resid", run(source="resid"), "you read the residual stream after the block (hook_resid_post), which holds "
         "every earlier term too; the MLP's own write is blocks.{l}.hook_mlp_out."),
        ("not_normalized", run(normalize=False), "divide by the norm of the unedited embedding, "
         "cache['hook_image_embed'].norm(dim=-1, keepdim=True)."),
    ]
    return _check("mlp_term", lambda: torch.stack([fn(cache, model, l) for l in layers]), want, mistakes, mode,
                  "Steps: the class-token row of blocks.{layer}.hook_mlp_out; γ·(r - μ/K)/σ + β/K; @ proj; / ||e||.")


# --------------------------------------------------------------------------- 02: margins and frequencies
def _lens_inputs(seed: int = 0, n: int = 40, L: int = 3, H: int = 4, C: int = 4):
    """Random per-head logits ``[n, L, H, C]`` and labels, with wrong and correct predictions."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(n, L, H, C, generator=g, dtype=torch.float64)
    static = torch.randn(n, C, generator=g, dtype=torch.float64)
    logits = static + head.sum((1, 2))
    y = logits.argmax(1).numpy().copy()
    flip = np.arange(n) % 3 == 0  # a third of the images get a wrong label: the prediction is wrong there
    y[flip] = (y[flip] + 1 + np.arange(flip.sum()) % (C - 1)) % C
    return head, logits, y


def _margin_variant(head, logits, y, competitor="rule", sign=1, pred_from="image"):
    yt = torch.as_tensor(y)
    pred = logits.argmax(1)
    masked = logits.clone()
    masked.scatter_(1, pred[:, None], -torch.inf)
    runner = masked.argmax(1)
    comp = {"rule": torch.where(pred == yt, runner, yt), "true": yt, "runner": runner}[competitor]
    if pred_from == "head":
        p = head.argmax(-1)
        hp = head.gather(-1, p[..., None])[..., 0]
    else:
        hp = head.gather(-1, pred[:, None, None, None].expand(*head.shape[:3], 1))[..., 0]
    hc = head.gather(-1, comp[:, None, None, None].expand(*head.shape[:3], 1))[..., 0]
    return sign * (hp - hc)


def check_head_margins(fn: Callable, mode: str = "solution") -> ExerciseResult:
    """Check ``fn(head_logits [n, layer, head, n_class], logits [n, n_class], y [n]) -> [n, layer, head]``.

    The margin of a head is its logit for the image's predicted class minus its logit for the
    competitor: the true class when the prediction is wrong, the runner-up when it is right.
    Compared with :func:`ltcutils.locate.margins` on random 4-class logits.
    """
    from .lens import LogitLens
    from .locate import margins

    head, logits, y = _lens_inputs()
    n, L, H, C = head.shape
    lens = LogitLens(head.float(), (logits - head.sum((1, 2))).float(), torch.zeros(n, 1), torch.zeros(1, C),
                     tuple(range(L)))
    want = margins(lens, y)[0].double()
    run = lambda **kw: (lambda: _margin_variant(head, logits, y, **kw))  # noqa: E731
    mistakes = [
        ("always_true", run(competitor="true"), "you always compared with the true class; for a correct prediction "
         "that is the predicted class itself (margin 0): use the runner-up there."),
        ("always_runner_up", run(competitor="runner"), "you always compared with the runner-up; when the prediction "
         "is wrong the competitor is the true class (the class the model should have chosen)."),
        ("sign", run(sign=-1), "the sign is flipped: margin = head logit of the predicted class minus head logit of "
         "the competitor (positive = the head pushes for the prediction)."),
        ("per_head_pred", run(pred_from="head"), "you took each head's own favourite class; the predicted class is "
         "the image's (argmax of the full logits), the same for every head."),
    ]
    return _check("head_margins", lambda: fn(head.clone(), logits.clone(), y.copy()), want, mistakes, mode,
                  "Steps: pred = logits.argmax(1); runner-up = argmax with pred masked out; competitor = true class "
                  "where pred != y, else the runner-up; margin = head[..., pred] - head[..., competitor].", rtol=1e-5)


def check_top_head_frequencies(fn: Callable, mode: str = "solution") -> ExerciseResult:
    """Check ``fn(margin [n, layer, head], mask [n] bool) -> [layer, head]`` top-head shares.

    Compared with :func:`ltcutils.locate.top_head_frequencies` on random margins.
    """
    from .locate import top_head_frequencies

    g = torch.Generator().manual_seed(1)
    margin = torch.randn(60, 3, 4, generator=g, dtype=torch.float64)
    mask = (np.arange(60) % 4 != 0)
    want, _ = top_head_frequencies(margin, mask)
    n, L, H = margin.shape
    sel = margin[torch.as_tensor(mask)]

    def hist(top, denom):
        return torch.bincount(top, minlength=L * H).double().reshape(L, H) / denom

    mistakes = [
        ("counts", lambda: hist(sel.reshape(-1, L * H).argmax(1), 1.0), "these are counts; divide by the number of "
         "images in the mask so that the shares sum to one."),
        ("all_images", lambda: hist(sel.reshape(-1, L * H).argmax(1), float(n)), "you divided by every image; the "
         "share is over the images in the mask only (mask.sum())."),
        ("unmasked", lambda: hist(margin.reshape(-1, L * H).argmax(1), float(n)), "the mask is ignored: count only "
         "the images where mask is True (e.g. the wrong predictions of the conflicting groups)."),
        ("per_layer", lambda: torch.nn.functional.one_hot(sel.argmax(2), H).double().sum(0) / len(sel),
         "you took the top head within each layer; the top head is the largest margin over all layer x head "
         "pairs of the image (flatten [layer, head] first)."),
        ("argmin", lambda: hist(sel.reshape(-1, L * H).argmin(1), float(len(sel))), "you took the smallest margin; "
         "the top head has the largest margin."),
    ]
    return _check("top_head_frequencies", lambda: fn(margin.clone(), mask.copy()), want, mistakes, mode,
                  "Steps: keep the masked images; flatten [layer, head]; argmax per image; bincount; divide by the "
                  "number of masked images; reshape to [layer, head].")


# --------------------------------------------------------------------------- 03: ablation and WG
def _ablation_inputs(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    heads = torch.randn(30, 2, 3, 8, generator=g, dtype=torch.float64) * 0.2 + 0.1
    ref = torch.randn(50, 2, 3, 8, generator=g, dtype=torch.float64) * 0.2 - 0.1
    total = heads.sum((1, 2)) + torch.randn(30, 8, generator=g, dtype=torch.float64)
    return heads, total, ref


def check_mean_ablation(fn: Callable, mode: str = "solution") -> ExerciseResult:
    """Check ``fn(heads [n, layer, head, d], total [n, d], ref_heads [m, layer, head, d], layer, head) -> [n, d]``.

    The edited sum: the head's term of each image replaced by its mean over the *reference*
    split (``ref_heads``), everything else unchanged, no renormalisation (a direct-path edit).
    Compared with :func:`ltcutils.correct.head_delta` of a mean-ablation :class:`Correction`.
    """
    from .correct import Correction, head_delta

    heads, total, ref = _ablation_inputs()
    l, h = 1, 2
    corr = Correction.mean_ablation([(l, h)], ref.mean(0).float(), [0, 1], reference="reference")
    want = total + head_delta(heads.float(), [0, 1], corr).double()
    own = total - heads[:, l, h] + heads[:, l, h].mean(0)
    mistakes = [
        ("eval_means", lambda: own, "you took the mean over the images being edited (the evaluation split); the "
         "mean comes from the reference split (ref_heads), or the edit leaks the evaluation labels' statistics."),
        ("zero_ablation", lambda: total - heads[:, l, h], "that is zero ablation (the term removed); mean ablation "
         "puts the reference mean back in its place."),
        ("renormalized", lambda: F.normalize(total - heads[:, l, h] + ref[:, l, h].mean(0), dim=-1),
         "you divided by the edited norm; LTC is a direct-path edit: the terms stay divided by the unedited norm and "
         "the sum is classified as it is."),
        ("mean_not_subtracted", lambda: total + ref[:, l, h].mean(0), "the head's own term is still in the sum: "
         "subtract heads[:, layer, head] before adding the mean."),
        ("all_heads_mean", lambda: total - heads[:, l, h] + ref.mean((0, 1, 2)),
         "you averaged over every head; use the mean of this one head over the reference images, ref_heads[:, layer, head].mean(0)."),
    ]
    return _check("mean_ablation", lambda: fn(heads.clone(), total.clone(), ref.clone(), l, h), want, mistakes, mode,
                  "Steps: mean = ref_heads[:, layer, head].mean(0); return total - heads[:, layer, head] + mean.")


def check_worst_group(fn: Callable, mode: str = "solution") -> ExerciseResult:
    """Check ``fn(pred [n], y [n], group [n]) -> float``, the worst-group accuracy in percent.

    Compared with :func:`ltcutils.metrics.worst_group_accuracy`.
    """
    from .metrics import worst_group_accuracy

    rng = np.random.default_rng(3)
    y = np.repeat([0, 0, 1, 1], [40, 10, 12, 38])
    s = np.repeat([0, 1, 0, 1], [40, 10, 12, 38])
    group = 2 * y + s
    correct = rng.random(len(y)) < np.array([0.95, 0.3, 0.5, 0.9])[group]
    pred = np.where(correct, y, 1 - y)
    want = worst_group_accuracy(pred, y, group)

    def per(key):
        return [100.0 * (pred[key == k] == y[key == k]).mean() for k in np.unique(key)]

    mistakes = [
        ("fraction", lambda: want / 100.0, "that is a fraction; the workbook reports accuracies in percent."),
        ("average", lambda: 100.0 * (pred == y).mean(), "that is the average accuracy over all images; WG is the "
         "accuracy of the worst group (the minimum over groups)."),
        ("per_class", lambda: min(per(y)), "you took the minimum over classes; groups are (class, background) "
         "pairs: use group, not y."),
        ("best_group", lambda: max(per(group)), "that is the best group; WG is the minimum."),
    ]
    return _check("worst_group", lambda: fn(pred.copy(), y.copy(), group.copy()), torch.tensor(want), mistakes,
                  mode, "Steps: for each group g, accuracy = 100 * mean(pred == y) over its images; return the minimum.",
                  rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- 04: concept basis, injection
def _directions(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(3, 10, generator=g, dtype=torch.float64)
    d[1] += 2 * d[0]  # correlated pairs, as text differences are
    return d * torch.tensor([[0.3], [0.7], [1.5]], dtype=torch.float64)


def check_orthonormalise(fn: Callable, mode: str = "solution") -> ExerciseResult:
    """Check ``fn(directions [m, d_embed]) -> [r, d_embed]``, an orthonormal basis in Gram-Schmidt order.

    Compared with :func:`ltcutils.correct.orthonormal_basis`.
    """
    from .correct import orthonormal_basis

    d = _directions()
    want = orthonormal_basis(d).double()
    q, _ = torch.linalg.qr(d.T)
    mistakes = [
        ("normalised_only", lambda: F.normalize(d, dim=-1), "each direction is unit length but they are not "
         "orthogonal (the pairs are correlated): subtract the projections on the previous basis vectors first "
         "(Gram-Schmidt), then normalise."),
        ("not_normalised", lambda: (want * (d * want).sum(-1, keepdim=True)),
         "the vectors are orthogonal but not unit length: divide each by its norm."),
        ("transposed", lambda: want.T, "the basis is [d_embed, r]; return one basis vector per row, [r, d_embed]."),
        ("qr_signs", lambda: q.T, "right span, but some vectors point against their direction (torch.linalg.qr "
         "leaves signs free): flip each q so that q · direction > 0, as Gram-Schmidt does."),
    ]
    return _check("orthonormalise", lambda: fn(d.clone()), want, mistakes, mode,
                  "Steps: for each direction, subtract its projection on every basis vector so far, normalise, keep it.",
                  rtol=1e-5, atol=1e-6)


def check_inject(fn: Callable, mode: str = "solution") -> ExerciseResult:
    """Check ``fn(x [n, d_embed], basis [r, d_embed], strength, renormalize) -> [n, d_embed]``.

    Both modes are tried (strength 1.5): ``renormalize=True`` (the paper: ``x <- x + s cos(x, q) q``
    then ``x / ||x||`` for each ``q`` in order) and ``False`` (``x <- x + s (x . q) q``, scale kept).
    Compared with :func:`ltcutils.correct.inject`.
    """
    from .correct import inject, orthonormal_basis

    basis = orthonormal_basis(_directions()).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 10, generator=g, dtype=torch.float64) * 0.2
    s = 1.5
    want = torch.stack([inject(x, basis, s, True).double(), inject(x, basis, s, False).double()])

    def paper(step_cos=True, renorm="each"):
        out = x.clone()
        for q in basis:
            c = (F.normalize(out, dim=-1) @ q) if step_cos else out @ q
            out = out + s * c[:, None] * q
            if renorm == "each":
                out = F.normalize(out, dim=-1)
        return F.normalize(out, dim=-1) if renorm == "end" else out

    kept = x + s * (x @ basis.T) @ basis
    mistakes = [
        ("dot_not_cos", lambda: torch.stack([paper(step_cos=False), kept]), "in the paper's mode the step is "
         "cos(x, q) · q, the cosine (x normalised first), not the dot product x · q."),
        ("no_renorm", lambda: torch.stack([paper(renorm="none"), kept]), "renormalize=True means each step ends with "
         "x / ||x|| (the injected head becomes a unit vector)."),
        ("renorm_at_end", lambda: torch.stack([paper(renorm="end"), kept]), "the paper renormalises after every "
         "direction, not once at the end; the next cosine is taken of the renormalised x."),
        ("reject", lambda: torch.stack([paper(), x - s * (x @ basis.T) @ basis]), "you removed the concept "
         "component (RoboShot's reject step); injection adds strength · (x · q) q."),
        ("projection_only", lambda: torch.stack([paper(), (x @ basis.T) @ basis]), "you returned only the "
         "projection on the concept span; keep x and add strength times the projection."),
    ]
    return _check("inject", lambda: torch.stack([fn(x.clone(), basis.clone(), s, True),
                                                 fn(x.clone(), basis.clone(), s, False)]), want, mistakes, mode,
                  "Steps: renormalize=False: x + strength * (x @ basis.T) @ basis. renormalize=True: for each q, "
                  "x = normalise(x + strength * cos(x, q) * q).", rtol=1e-5, atol=1e-6)


#: every checker by exercise name (what the tests and the notebooks use)
CHECKERS = {"head_term": check_head_term, "mlp_term": check_mlp_term, "head_margins": check_head_margins,
            "top_head_frequencies": check_top_head_frequencies, "mean_ablation": check_mean_ablation,
            "worst_group": check_worst_group, "orthonormalise": check_orthonormalise, "inject": check_inject}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ltcutils.exercises --out DIR``: write the learner's notebooks for a class."""
    p = argparse.ArgumentParser(prog="python -m ltcutils.exercises", description=main.__doc__)
    p.add_argument("--out", required=True, help="folder for the learner notebooks (e.g. runs/class)")
    p.add_argument("--notebooks", default=None, help="the workbook folder (default: the project's notebooks/)")
    p.add_argument("--output-dir", default=None, help="where the copies write when run (default: OUT/outputs)")
    p.add_argument("--cache-dir", default=None, help="the decomposition cache they use (default: OUT/../cache)")
    a = p.parse_args(argv)
    for path in write_learner_notebooks(a.out, a.notebooks, a.output_dir, a.cache_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
