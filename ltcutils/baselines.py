"""Baselines LTC is compared with, on embeddings and classifiers (no model needed).

* **Zero-shot**: :func:`zero_shot_logits`, :func:`predict` (optionally among per-image
  candidate classes).
* **Ortho-Cali** (Chuang et al. 2023, "Debiasing Vision-Language Models via Biased Prompts"):
  :func:`ortho_projection`, :func:`ortho_cali` debias the *text classifier* in closed form.
* **RoboShot** (Adila et al., ICLR 2024, "Zero-Shot Robustification of Zero-Shot Models"):
  :func:`roboshot` edits the whole *image embedding* along rejected / accepted text directions,
  the same for every image or per image (GenderBias: the directions of the image's own
  occupation pair, :func:`roboshot_directions`).
* **Random-head controls**: :func:`random_head_pool` says which heads a control draws from
  (the paper's last 4 layers, minus the located heads; a documented fallback when too few
  remain) and how many distinct sets exist; :func:`random_head_sets` draws them; the ablation itself
  (and TextSpan head ablation, which is "mean-ablate the given heads") is done by
  :mod:`ltcutils.correct`. :func:`mean_and_sd` summarises the draws.

Shapes: ``emb [n, d_embed]``, ``classifier [d_embed, n_class]`` (columns are class directions,
as built by :func:`ltcutils.text.zero_shot_classifier`), logits ``[n, n_class]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .heads import Head
from .lens import Candidates

__all__ = [
    "zero_shot_logits",
    "predict",
    "ortho_projection",
    "ortho_cali",
    "roboshot",
    "roboshot_directions",
    "random_head_sets",
    "random_head_pool",
    "RANDOM_POOL_LAYERS",
    "mean_and_sd",
]


# ----------------------------------------------------------------------------- zero-shot


def _check_classifier(emb: torch.Tensor, classifier: torch.Tensor) -> None:
    if emb.dim() != 2:
        raise ValueError(f"emb must be [n, d_embed], got shape {tuple(emb.shape)}")
    if classifier.dim() != 2 or classifier.shape[0] != emb.shape[1]:
        raise ValueError(
            f"classifier must be [d_embed={emb.shape[1]}, n_class], got shape {tuple(classifier.shape)}; "
            "if it is [n_class, d_embed], pass classifier.T"
        )


def zero_shot_logits(
    emb: Float[Tensor, "batch d_embed"],
    classifier: Float[Tensor, "_ n_class"],
    candidates: Candidates | None = None,
    device: str | torch.device = "cpu",
) -> Float[Tensor, "batch n_class"]:
    """Zero-shot logits ``emb @ classifier``, optionally restricted to candidate classes.

    Args:
        emb: ``[n, d_embed]`` image embeddings.
        classifier: ``[d_embed, n_class]`` class directions.
        candidates: optional ``[n, k]`` global class indices that compete for each image (e.g.
            GenderBias's [true occupation, paired occupation]); the other classes get ``-inf``.
        device: where to compute.

    Returns:
        ``[n, n_class]`` float32 logits (global class indexing kept).

    Raises:
        ValueError: on mismatched shapes or candidate indices outside ``0..n_class-1``.
    """
    emb = torch.as_tensor(emb).to(device=device, dtype=torch.float32)
    W = torch.as_tensor(classifier).to(device=device, dtype=torch.float32)
    _check_classifier(emb, W)
    from .lens import mask_candidates

    return mask_candidates(emb @ W, candidates)


def predict(
    emb: Float[Tensor, "batch d_embed"],
    classifier: Float[Tensor, "_ n_class"],
    candidates: Candidates | None = None,
    device: str | torch.device = "cpu",
) -> Int[Tensor, " batch"]:
    """Zero-shot prediction ``[n]`` (a *global* class index, also with candidates).

    Args: as :func:`zero_shot_logits`. With ``candidates [n, k]`` the prediction is the
    candidate class with the largest logit (ties: the lowest class index).

    Example::

        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> W = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.9]])   # [d_embed=2, n_class=3]
        >>> predict(emb, W).tolist()
        [0, 1]
        >>> predict(emb, W, candidates=[[1, 2], [0, 2]]).tolist()   # only these classes compete
        [2, 2]
    """
    from .lens import predict_logits

    return predict_logits(zero_shot_logits(emb, classifier, None, device), candidates)


# ----------------------------------------------------------------------------- Ortho-Cali


def _pairs(candidate_pairs, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Zi, Zj)`` each ``[p, d]`` from a tuple of two ``[p, d]`` tensors or a list of ``(z_i, z_j)``."""
    if (isinstance(candidate_pairs, (tuple, list)) and len(candidate_pairs) == 2
            and all(torch.is_tensor(z) and z.dim() == 2 for z in candidate_pairs)):
        zi, zj = candidate_pairs
    else:
        pairs = list(candidate_pairs)
        if not pairs:
            raise ValueError("candidate_pairs is empty; pass None to skip the calibration term")
        try:
            zi = torch.stack([torch.as_tensor(p[0]) for p in pairs])
            zj = torch.stack([torch.as_tensor(p[1]) for p in pairs])
        except (TypeError, IndexError, RuntimeError) as e:
            raise ValueError("candidate_pairs must be (Zi [p, d_embed], Zj [p, d_embed]) or a list of "
                             "(z_i [d_embed], z_j [d_embed]) pairs") from e
    zi, zj = torch.as_tensor(zi).double(), torch.as_tensor(zj).double()
    if zi.shape != zj.shape or zi.dim() != 2 or zi.shape[1] != d or zi.shape[0] == 0:
        raise ValueError(f"candidate pairs must give Zi, Zj of equal shape [p>=1, d_embed={d}], got "
                         f"{tuple(zi.shape)} and {tuple(zj.shape)}")
    return zi, zj


def ortho_projection(
    spurious_emb: torch.Tensor,
    candidate_pairs=None,
    lam: float = 1000.0,
    normalize: bool = True,
    tol: float = 1e-6,
    return_parts: bool = False,
):
    """Ortho-Cali's debiasing matrix ``P = P0 @ inverse(G)`` ``[d_embed, d_embed]`` (float64).

    * ``P0 = I - B (B^T B)^-1 B^T`` projects out the span of the spurious prompt embeddings
      (``B`` their basis). It is computed from an SVD as ``I - U U^T`` with ``U`` an orthonormal
      basis of that span (singular values below ``tol * largest`` dropped), which is the same
      matrix and stays defined when the prompts are linearly dependent.
    * ``M = mean over pairs of (z_i - z_j)(z_i - z_j)^T``; ``G = lam * M + I``.

    Args:
        spurious_emb: ``[m, d_embed]`` text embeddings of the spurious prompts ("a photo of
            water", ...).
        candidate_pairs: prompt pairs that should map to the same point (e.g. "a waterbird on
            land" / "a waterbird on water"): either ``(Zi, Zj)`` two ``[p, d_embed]`` tensors or a
            list of ``(z_i [d_embed], z_j [d_embed])``. None: no calibration (``G = I``).
        lam: weight of the calibration term (1000 in the paper).
        normalize: L2-normalise the spurious and candidate embeddings first (as the paper does).
        tol: relative singular-value cut-off for the spurious basis.
        return_parts: also return ``P0`` and ``G``.

    Returns:
        ``P``, or ``(P, P0, G)`` with ``return_parts``.
    """
    S = torch.as_tensor(spurious_emb).detach().double().cpu()
    if S.dim() != 2 or S.shape[0] == 0:
        raise ValueError(f"spurious_emb must be [m>=1, d_embed], got shape {tuple(S.shape)}")
    d = S.shape[1]
    if normalize:
        S = F.normalize(S, dim=1)
    _, sv, Vh = torch.linalg.svd(S, full_matrices=False)
    if sv[0] <= 0:
        raise ValueError("the spurious prompt embeddings are all zero")
    U = Vh[sv > tol * sv[0]].T  # [d, r] orthonormal basis of the spurious span
    eye = torch.eye(d, dtype=torch.float64)
    P0 = eye - U @ U.T
    G = eye.clone()
    if candidate_pairs is not None and lam != 0:
        zi, zj = _pairs(candidate_pairs, d)
        if normalize:
            zi, zj = F.normalize(zi, dim=1), F.normalize(zj, dim=1)
        diff = zi - zj
        G = lam * (diff.T @ diff) / diff.shape[0] + eye
    P = P0 @ torch.linalg.inv(G)
    return (P, P0, G) if return_parts else P


def ortho_cali(
    classifier: Float[Tensor, "_ n_class"],
    spurious_emb: Float[Tensor, "m d_embed"],
    candidate_pairs=None,
    lam: float = 1000.0,
    normalize: bool = True,
    ltc_repo_order: bool = False,
    device: str | torch.device = "cpu",
) -> Float[Tensor, "d_embed n_class"]:
    """Ortho-Cali debiased classifier: each class vector ``t`` becomes ``normalise(P0 G^-1 t)``.

    Because ``P0`` is applied last, every debiased class vector has *no* component along the
    spurious prompts' span, whatever ``lam``.

    Args:
        classifier: ``[d_embed, n_class]`` zero-shot class directions.
        spurious_emb, candidate_pairs, lam, normalize: see :func:`ortho_projection`.
        ltc_repo_order: reproduce the LTC repository's port, which multiplies in the other order
            (``G^-1 P0 t``); that does *not* remove the spurious span when ``lam > 0``. Only for
            comparing with the reference's numbers.
        device: where to put the result.

    Returns:
        ``[d_embed, n_class]`` float32 classifier with unit-norm columns.
    """
    W = torch.as_tensor(classifier).detach().double().cpu()
    if W.dim() != 2 or W.shape[0] != torch.as_tensor(spurious_emb).shape[-1]:
        raise ValueError(f"classifier must be [d_embed, n_class] with the d_embed of spurious_emb "
                         f"({torch.as_tensor(spurious_emb).shape[-1]}), got {tuple(W.shape)}; if it is "
                         "[n_class, d_embed], pass classifier.T")
    P = ortho_projection(spurious_emb, candidate_pairs, lam, normalize)
    out = (P.T if ltc_repo_order else P) @ W
    return F.normalize(out, dim=0).float().to(device)


# ----------------------------------------------------------------------------- RoboShot


def _basis(dirs: torch.Tensor | None, d: int, what: str) -> torch.Tensor | None:
    if dirs is None:
        return None
    dirs = torch.as_tensor(dirs)
    if dirs.dim() == 1:
        dirs = dirs[None]
    if dirs.dim() != 2 or dirs.shape[1] != d:
        raise ValueError(f"{what} directions must be [k, d_embed={d}], got shape {tuple(dirs.shape)}")
    if dirs.shape[0] == 0:
        return None
    from .correct import orthonormal_basis  # reduced QR; drops linearly dependent directions

    return orthonormal_basis(dirs.detach().double().cpu()).double()


def roboshot(
    emb: Float[Tensor, "batch d_embed"],
    reject_dirs=None,
    accept_dirs=None,
    device: str | torch.device = "cpu",
) -> Float[Tensor, "batch d_embed"]:
    """RoboShot: remove rejected directions from, then amplify accepted directions in, each embedding.

    Each direction set (e.g. text differences ``e(a) - e(b)`` from
    :func:`ltcutils.text.pair_directions`) is orthonormalised by a reduced QR
    (:func:`ltcutils.correct.orthonormal_basis`, in the given order); a direction that is
    numerically in the span of the earlier ones is *dropped* (an all-zero set raises). Then,
    starting from ``x = emb / ||emb||``:

    1. for each reject basis vector ``q``: ``x <- x - cos(x, q) q``, then ``x <- x / ||x||``;
    2. for each accept basis vector ``q``: ``x <- x + cos(x, q) q``, then ``x <- x / ||x||``.

    With ``x`` and ``q`` unit vectors ``cos(x, q) = x . q``, so each reject step removes ``x``'s
    whole component along ``q`` and, the basis being orthonormal, the later reject steps do not
    bring it back: after step 1 ``x`` is orthogonal to the whole reject span. (Step 2 may
    re-introduce such components when the accept directions are not orthogonal to it.) An
    embedding lying entirely in the reject span becomes the zero vector.

    Args:
        emb: ``[n, d_embed]`` image embeddings.
        reject_dirs: ``[r, d_embed]`` spurious directions, per-image directions
            (:class:`~ltcutils.correct.ConceptBases`: image ``i`` uses ``bases[index[i]]``; index
            ``-1`` skips that step for the image), or None.
        accept_dirs: ``[a, d_embed]`` useful directions, per-image directions, or None.
        device: where to put the result.

    Returns:
        ``[n, d_embed]`` float32 unit vectors.

    Raises:
        ValueError: bad shapes, or per-image directions for another number of images.
    """
    x = torch.as_tensor(emb).detach().double().cpu()
    if x.dim() != 2:
        raise ValueError(f"emb must be [n, d_embed], got shape {tuple(x.shape)}")
    x = F.normalize(x, dim=1)
    from .correct import ConceptBases, inject  # LTC paper-mode injection step: x + s cos(x, q) q, renormalised

    for sign, dirs, what in ((-1.0, reject_dirs, "reject"), (1.0, accept_dirs, "accept")):
        if isinstance(dirs, ConceptBases):
            if len(dirs.index) != len(x):
                raise ValueError(f"per-image {what} directions are for {len(dirs.index)} images, got {len(x)} embeddings")
            x = x.clone()
            for b in np.unique(dirs.index[dirs.index >= 0]):
                rows = torch.as_tensor(np.flatnonzero(dirs.index == b))
                Q = _basis(dirs.bases[int(b)], x.shape[1], what)
                if Q is not None:
                    x[rows] = inject(x[rows], Q, strength=sign, renormalize=True)
            continue
        Q = _basis(dirs, x.shape[1], what)
        if Q is not None:
            x = inject(x, Q, strength=sign, renormalize=True)
    return x.float().to(device)


def roboshot_directions(text: dict, class_names: Sequence[str], candidates=None, logits=None) -> tuple:
    """RoboShot's reject and accept directions for every image of a split, from ``text_directions``.

    A bank's pairs are either one list for every image (``text["roboshot_reject"]``, a
    ``[k, d_embed]`` tensor) or keyed by class pair (``text["roboshot_reject_keyed"]``): then
    each image uses its own pair's directions, its two candidate classes (GenderBias: true and
    paired occupation) or, without candidates, its two highest zero-shot classes
    (:func:`ltcutils.correct.concept_bases`). Images whose pair has no entry skip that step
    (a warning gives the count).

    Args:
        text: :func:`ltcutils.text.text_directions`' dict (or ``prepared_text``'s).
        class_names: ``[n_class]`` the global class order.
        candidates: ``[n, 2]`` candidate classes per image, or None.
        logits: ``[n, n_class]`` zero-shot logits, used when ``candidates`` is None.

    Returns:
        ``(reject, accept)``: each a ``[k, d_embed]`` tensor, per-image
        :class:`~ltcutils.correct.ConceptBases`, or None (no such pairs).
    """
    import warnings

    from .correct import concept_bases

    out = []
    for kind in ("reject", "accept"):
        plain, keyed = text.get(f"roboshot_{kind}"), text.get(f"roboshot_{kind}_keyed")
        if plain is not None or not keyed:
            out.append(plain)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bases = concept_bases(keyed, class_names, candidates=candidates, logits=logits)
        if caught:
            missing = int((bases.index < 0).sum())
            warnings.warn(f"RoboShot: {missing} of {len(bases.index)} images have no {kind} pairs for their class "
                          f"pair; they skip the {kind} step", stacklevel=2)
        out.append(bases)
    return tuple(out)


# ----------------------------------------------------------------------------- random heads


#: the paper's pool for random heads: the last 4 attention layers
RANDOM_POOL_LAYERS = 4


def random_head_pool(
    k: int,
    layers: Sequence[int],
    n_heads: int,
    exclude: Sequence[Head] = (),
    pool_layers: int | None = RANDOM_POOL_LAYERS,
    n_ablate: int | None = None,
) -> tuple[list[Head], dict]:
    """The heads random sets of size ``k`` are drawn from, and how many distinct sets exist.

    The pool is the last ``pool_layers`` of ``layers`` (the reference draws random heads from
    the last 4 layers; None = every layer in ``layers``) minus the ``exclude`` heads (the
    located ones). Documented fallback when that leaves fewer than ``k`` heads (never an
    error): first earlier layers are added one at a time, then, if every layer together is
    still too small, the excluded heads are let back in. What happened is recorded.

    Args:
        k: heads per draw (ablated + injected).
        layers: the captured layer numbers, in order.
        n_heads: heads per layer.
        exclude: ``(layer, head)`` pairs kept out of the pool if possible.
        pool_layers: how many of the last layers form the pool (None: all).
        n_ablate: how many of the ``k`` heads are ablated (the rest injected), for counting
            distinct (ablate, inject) assignments; default ``k`` (all ablated).

    Returns:
        ``(pool, info)``: the pool as ``(layer, head)`` tuples, and ``info`` with
        ``pool_layers`` (the layers used), ``pool_size``, ``k``, ``n_possible`` (distinct
        ablate/inject assignments of ``k`` heads from the pool, an int), ``fallback`` (None,
        "widened" or "readmitted") and ``message`` (a sentence, empty when no fallback).

    Raises:
        ValueError: ``k < 1``, ``n_heads < 1``, no layers, or ``k`` more than every head there is.
    """
    layers = [int(l) for l in dict.fromkeys(layers)]
    if k < 1 or n_heads < 1 or not layers:
        raise ValueError(f"need k >= 1, n_heads >= 1 and at least one layer; got k={k}, n_heads={n_heads}, "
                         f"layers={layers}")
    if k > len(layers) * n_heads:
        raise ValueError(f"cannot draw {k} distinct heads from {len(layers)} layers x {n_heads} heads; "
                         "draw fewer heads")
    n_ablate = k if n_ablate is None else int(n_ablate)
    if not 0 <= n_ablate <= k:
        raise ValueError(f"n_ablate must be in [0, k={k}], got {n_ablate}")
    skip = {(int(l), int(h)) for l, h in exclude}
    n_last = len(layers) if pool_layers is None else max(1, min(int(pool_layers), len(layers)))
    start = len(layers) - n_last

    def pool_of(first: int, keep_excluded: bool = False) -> list[Head]:
        return [(l, h) for l in layers[first:] for h in range(n_heads) if keep_excluded or (l, h) not in skip]

    pool, fallback, message = pool_of(start), None, ""
    first = start
    while len(pool) < k and first > 0:
        first -= 1
        pool = pool_of(first)
    if first < start and len(pool) >= k:
        fallback = "widened"
        message = (f"random control: the last {n_last} layers leave {len(pool_of(start))} heads outside the "
                   f"{len(skip)} located ones, fewer than the {k} needed; drawing from layers "
                   f"{layers[first]}..{layers[-1]} instead")
    if len(pool) < k:
        pool = pool_of(0, keep_excluded=True)
        fallback = "readmitted"
        message = (f"random control: only {len(pool_of(0))} heads lie outside the {len(skip)} located ones, fewer "
                   f"than the {k} needed; the draws may include located heads (draw fewer heads, e.g. a smaller "
                   "k_cap, for a clean control)")
    n_possible = math.comb(len(pool), n_ablate) * math.comb(len(pool) - n_ablate, k - n_ablate)
    info = {"pool_layers": sorted({l for l, _ in pool}), "pool_size": len(pool), "k": int(k), "n_ablate": n_ablate,
            "n_possible": int(n_possible), "fallback": fallback, "message": message}
    return pool, info


def random_head_sets(
    n_draws: int,
    k: int,
    layers: Sequence[int],
    n_heads: int,
    exclude: Sequence[Head] = (),
    seed: int = 0,
    pool_layers: int | None = None,
    n_ablate: int | None = None,
    info: dict | None = None,
) -> list[list[Head]]:
    """Draw ``n_draws`` sets of ``k`` distinct heads uniformly from a pool (see :func:`random_head_pool`).

    The heads of a draw come in random order (not sorted), so a caller may split one draw into
    roles (the first ``k1`` heads ablated, the rest injected) without favouring early layers.
    If the pool is too small the documented fallback of :func:`random_head_pool` applies and a
    warning says so (never an error).

    Args:
        n_draws: number of sets.
        k: heads per set.
        layers: layers to draw from (each contributes heads ``0..n_heads-1``).
        n_heads: heads per layer.
        exclude: ``(layer, head)`` pairs not drawn (e.g. the located heads).
        seed: seed of ``np.random.default_rng``; the same arguments give the same sets.
        pool_layers: draw from the last ``pool_layers`` of ``layers`` only (None: all of them;
            the evaluation's random controls pass the paper's 4).
        n_ablate: see :func:`random_head_pool` (only used for ``info["n_possible"]``).
        info: a dict to fill with the pool's description (``n_possible``, ``fallback``, ...).

    Returns:
        ``n_draws`` lists of ``k`` ``(layer, head)`` tuples of Python ints.

    Raises:
        ValueError: on bad arguments, or ``k`` larger than all heads there are.
    """
    if n_draws < 0:
        raise ValueError(f"need n_draws >= 0, got n_draws={n_draws}")
    pool, pinfo = random_head_pool(k, layers, n_heads, exclude, pool_layers, n_ablate)
    if pinfo["message"]:
        import warnings

        warnings.warn(pinfo["message"], stacklevel=2)
    if info is not None:
        info.update(pinfo)
    rng = np.random.default_rng(seed)
    return [[pool[i] for i in rng.choice(len(pool), size=k, replace=False)] for _ in range(n_draws)]


def mean_and_sd(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of a control's values, e.g. WG over draws.

    Returns ``(mean, sd)``; ``sd`` is NaN for a single value. NaN values are not skipped.

    Raises:
        ValueError: if ``values`` is empty.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) == 0:
        raise ValueError("mean_and_sd needs at least one value")
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
