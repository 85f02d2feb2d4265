"""Patch maps: each image patch's contribution to a class margin through a head set."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def patch_margin_map(
    spatial: torch.Tensor,
    class_dirs: torch.Tensor,
    grid: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch contribution of a head set to a class margin.

    ``spatial`` are per-source-token terms already summed over the head set, e.g.
    ``decompose.spatial_terms(model.hooked, pixels, heads).sum(1)``. Their sum over positions is
    the head set's term, so ``map.sum((1, 2)) + cls == (head set term) @ class_dir`` exactly.

    Args:
        spatial: ``[batch, pos, d_embed]``; position 0 is the class token, then ``grid * grid``
            patches in row-major order.
        class_dirs: ``[d_embed]`` or ``[batch, d_embed]`` direction to read, typically the
            classifier column of the target class minus that of the competitor.
        grid: patches per side (default: inferred from ``pos``).

    Returns:
        ``(map [batch, grid, grid], cls [batch])``: each patch's contribution and the class
        token's own.

    Raises:
        ValueError: shapes disagree or ``pos`` is not ``grid * grid + 1``.
    """
    if spatial.dim() != 3:
        raise ValueError(f"spatial must be [batch, pos, d_embed] (sum spatial_terms over heads first), "
                         f"got shape {tuple(spatial.shape)}")
    B, P, D = spatial.shape
    if grid is None:
        grid = math.isqrt(P - 1)
    if grid * grid + 1 != P:
        raise ValueError(f"spatial has pos={P}; expected grid * grid + 1 = {grid * grid + 1} (class token + patches)")
    dirs = torch.as_tensor(class_dirs, dtype=spatial.dtype, device=spatial.device)
    if dirs.dim() == 1:
        dirs = dirs.expand(B, -1)
    if dirs.shape != (B, D):
        raise ValueError(f"class_dirs must be [d_embed]=[{D}] or [batch, d_embed]=[{B}, {D}], got {tuple(dirs.shape)}")
    contrib = torch.einsum("bpd,bd->bp", spatial, dirs)  # [batch, pos]
    return contrib[:, 1:].reshape(B, grid, grid), contrib[:, 0]


def model_view(image, size: int):
    """The square crop the model sees: resize the short side to ``size``, centre-crop (PIL).

    Matches open_clip's default eval transform, so a patch map of ``image`` lines up with it.
    """
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def plot_patch_map(
    image,
    pmap: torch.Tensor | np.ndarray,
    ax=None,
    alpha: float = 0.6,
    cmap: str = "RdBu_r",
    title: str | None = None,
    vmax: float | None = None,
):
    """Overlay a *signed* patch map on an image (bilinear upsampling, colours centred on zero).

    The map keeps its units and its sign: with a diverging colour map, red patches push the
    margin up (towards the class the margin favours), blue ones push it down, white ones do
    nothing. A min-max normalised map would lose exactly that. Add a colour bar with
    ``fig.colorbar(ax.get_images()[1], ax=ax)`` (as :func:`ltcutils.plots.patch_maps` does).

    Args:
        image: PIL image or ``[H, W, 3]`` array (uint8, or float in [0, 1]) of what the model saw
            (see :func:`model_view` for images that were resized and cropped).
        pmap: ``[grid, grid]`` map from :func:`patch_margin_map` (one image).
        ax: matplotlib axes (default: a new figure).
        alpha, cmap: overlay opacity and (diverging) colour map.
        title: axes title.
        vmax: the colour scale runs from ``-vmax`` to ``vmax`` (default: the map's largest
            absolute value; pass a shared value to compare several images).

    Returns:
        the axes (the overlay is ``ax.get_images()[1]``).

    Raises:
        ValueError: the image or the map has the wrong shape.
    """
    import matplotlib.pyplot as plt

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be a PIL image or an [H, W, 3] array, got shape {arr.shape}")
    m = torch.as_tensor(np.asarray(pmap, dtype=np.float64) if not isinstance(pmap, torch.Tensor) else pmap)
    if m.dim() != 2:
        raise ValueError(f"pmap must be [grid, grid] for one image, got shape {tuple(m.shape)}")
    H, W = arr.shape[:2]
    up = F.interpolate(m.double()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    scale = float(m.abs().max()) if vmax is None else float(vmax)
    scale = scale if scale > 0 else 1e-12  # an all-zero map shows as white, not as an error
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(arr)
    ax.imshow(up.numpy(), cmap=cmap, alpha=alpha, vmin=-scale, vmax=scale)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def pick_examples(mask: np.ndarray, wrong: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` indices among ``mask``: half misclassified (``wrong``), half correct, in order.

    When one kind has too few images the other fills the rest, so a figure shows both kinds
    whenever both exist.

    Args:
        mask: ``[n_images]`` bool, the images to choose from (e.g. the bias-conflicting ones).
        wrong: ``[n_images]`` bool, misclassified images.
        n: how many to pick.
    """
    mask, wrong = np.asarray(mask, bool), np.asarray(wrong, bool)
    bad, good = np.flatnonzero(mask & wrong), np.flatnonzero(mask & ~wrong)
    k = min(len(bad), max(n - len(good), (n + 1) // 2))
    return np.concatenate([bad[:k], good[: n - k]]).astype(np.int64)
