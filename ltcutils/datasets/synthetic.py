"""A procedurally rendered Waterbirds-like benchmark: birds on land or water, known ground truth.

Labels (as in Waterbirds):

* ``y`` (class): 0 = landbird, 1 = waterbird. Each class has three sub-species with distinct
  silhouettes (``species`` 0..5): sparrow (round body, short legs), robin (upright, red breast),
  crow (big body, long tail); duck (flat low body, no legs), gull (slim body, raised wings,
  long-ish legs), heron (long neck, long legs, long beak).
* ``spurious`` (background): 0 = land (noisy green/brown fields with dark bushes), 1 = water
  (blue/teal horizontal waves).
* ``group = 2 * y + spurious``: 0 landbird/land, 1 landbird/water, 2 waterbird/land,
  3 waterbird/water.

Every image is a pure function of one integer *item seed*. The seed gives four independent
random streams (``numpy.random.default_rng([seed, k])``): k = 0 the labels (sub-species and the
item's own background), 1 the object (size, position, flip, colours), 2 the background texture,
3 the "photo" (global brightness and pixel noise). Because the streams are independent, the same
object can be rendered on the other background (a counterfactual) with identical object pixels::

    >>> from ltcutils.datasets import synthetic as syn
    >>> on_land = syn.render(7, background=0)
    >>> on_water = syn.render(7, background=1)        # same bird, same pose, other background
    >>> bird_only = syn.render(7, draw_background=False)   # on a neutral grey
    >>> syn.item_labels(7)                            # (y, species, own background): a heron on water
    (1, 5, 1)

Colours come from one shared palette with sub-species-dependent odds, so colour alone is only
weakly predictive of the class: the model has to read the silhouette.

Splits (:func:`make_split`) select item seeds by their labels from disjoint seed ranges, so
train, val and test never share an item. Train is biased (``P(spurious == y) = p_aligned``,
default 0.95, exact group quotas); val and test are balanced (``n_per_group`` per group).

Captions for contrastive training (:func:`caption`, :func:`sample_captions`) mention the class
word or the sub-species name, sometimes the background and sometimes a visual attribute of the
sub-species; 10% describe only the background. Their structure is kept so that a training loss
can tell which captions in a batch truly describe an image (:func:`caption_compatibility`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .base import DatasetError, GroupDataset

__all__ = [
    "IMAGE_SIZE",
    "CLASS_NAMES",
    "SPURIOUS_NAMES",
    "GROUP_NAMES",
    "SPECIES",
    "SPECIES_CLASS",
    "ATTRIBUTES",
    "SPECIES_ATTRIBUTES",
    "item_labels",
    "labels_for_seeds",
    "render",
    "render_array",
    "render_batch",
    "object_mask",
    "make_split",
    "split_seeds",
    "caption",
    "CaptionBatch",
    "sample_captions",
    "caption_compatibility",
    "all_captions",
    "to_pixels",
]

IMAGE_SIZE = 64
CLASS_NAMES = ["landbird", "waterbird"]
SPURIOUS_NAMES = ["land", "water"]
GROUP_NAMES = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
SPECIES = ["sparrow", "robin", "crow", "duck", "gull", "heron"]
SPECIES_CLASS = np.array([0, 0, 0, 1, 1, 1], dtype=np.int64)

#: Visual attributes used in captions; each is true of the sub-species listed in SPECIES_ATTRIBUTES.
ATTRIBUTES = [
    "with a round body",    # 0 sparrow
    "with short legs",      # 1 sparrow, robin, crow
    "with a short beak",    # 2 sparrow, robin
    "with a red breast",    # 3 robin
    "with an upright body",  # 4 robin
    "with a long tail",     # 5 crow
    "with a big body",      # 6 crow
    "with a flat body",     # 7 duck
    "with no legs",         # 8 duck
    "with a flat bill",     # 9 duck
    "with raised wings",    # 10 gull
    "with a slim body",     # 11 gull
    "with long legs",       # 12 gull, heron
    "with a long neck",     # 13 heron
    "with a long beak",     # 14 heron
]
SPECIES_ATTRIBUTES: dict[str, list[int]] = {
    "sparrow": [0, 1, 2],
    "robin": [3, 4, 1, 2],
    "crow": [5, 6, 1],
    "duck": [7, 8, 9],
    "gull": [10, 11, 12],
    "heron": [13, 12, 14],
}
#: [n_attr, n_species] True where the attribute describes the sub-species.
ATTRIBUTE_TRUE = np.zeros((len(ATTRIBUTES), len(SPECIES)), dtype=bool)
for _s, _attrs in enumerate(SPECIES_ATTRIBUTES.values()):
    ATTRIBUTE_TRUE[_attrs, _s] = True

# ----------------------------------------------------------------------------- colours
PALETTE = np.array([
    (120, 82, 48),    # brown
    (38, 38, 44),     # black
    (232, 232, 226),  # white
    (138, 138, 142),  # grey
    (212, 182, 64),   # yellow
    (176, 96, 56),    # rust
    (84, 98, 124),    # slate
], dtype=np.float64)
# Odds of each palette colour per sub-species (rows: SPECIES order). Every colour is possible
# for every bird; the class is only weakly predictable from colour.
COLOUR_ODDS = np.array([
    [0.30, 0.06, 0.10, 0.16, 0.12, 0.16, 0.10],  # sparrow
    [0.18, 0.10, 0.08, 0.20, 0.10, 0.14, 0.20],  # robin
    [0.10, 0.36, 0.06, 0.18, 0.06, 0.08, 0.16],  # crow
    [0.26, 0.10, 0.16, 0.14, 0.14, 0.10, 0.10],  # duck
    [0.08, 0.08, 0.32, 0.26, 0.08, 0.08, 0.10],  # gull
    [0.10, 0.10, 0.20, 0.30, 0.06, 0.06, 0.18],  # heron
])
COLOUR_ODDS = COLOUR_ODDS / COLOUR_ODDS.sum(1, keepdims=True)
LAND_BASES = np.array([(86, 132, 56), (112, 142, 62), (124, 102, 66), (96, 112, 52)], dtype=np.float64)
WATER_BASES = np.array([(52, 96, 166), (42, 122, 142), (72, 122, 182), (32, 82, 122)], dtype=np.float64)
NEUTRAL_GREY = 128.0

_STREAM_LABELS, _STREAM_OBJECT, _STREAM_BACKGROUND, _STREAM_PHOTO = 0, 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"an item seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------- labels
def item_labels(seed: int) -> tuple[int, int, int]:
    """``(y, species, spurious)`` of an item seed: its class, sub-species and own background."""
    rng = _rng(_check_seed(seed), _STREAM_LABELS)
    species = int(rng.integers(len(SPECIES)))
    b = int(rng.integers(2))
    return int(SPECIES_CLASS[species]), species, b


def labels_for_seeds(seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """Labels of many item seeds: ``{"y", "species", "spurious"}``, each ``[n]`` int64."""
    lab = np.array([item_labels(s) for s in seeds], dtype=np.int64).reshape(-1, 3)
    return {"y": lab[:, 0], "species": lab[:, 1], "spurious": lab[:, 2]}


# ----------------------------------------------------------------------------- drawing
def _ellipse(cx: float, cy: float, rx: float, ry: float, angle_deg: float = 0.0,
             n: int = 20) -> list[tuple[float, float]]:
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


# A bird is a list of parts in local units: the ground point is (0, 0), y points down (negative
# = up), the bird faces +x. Each part: (kind, points or line, paint) where paint is "body",
# "head", "accent", "beak", "leg" or "eye".
def _parts(species: str) -> list[tuple]:
    E = _ellipse
    if species == "sparrow":
        return [
            ("line", [(-2, -5), (-2, 0)], "leg", 1.2), ("line", [(2, -5), (2.5, 0)], "leg", 1.2),
            ("poly", [(-7, -12), (-14, -16), (-13, -10)], "body"),
            ("poly", E(0, -11, 8.5, 7, -8), "body"),
            ("poly", E(6.5, -18, 4.6, 4.4), "head"),
            ("poly", [(10.5, -19.5), (14, -17.8), (10.5, -16.5)], "beak"),
            ("poly", E(7.8, -19, 0.9, 0.9, 0, 6), "eye"),
        ]
    if species == "robin":
        return [
            ("line", [(-1, -6), (-1.5, 0)], "leg", 1.2), ("line", [(2, -6), (2.5, 0)], "leg", 1.2),
            ("poly", [(-4, -9), (-9, -2), (-5, -3)], "body"),
            ("poly", E(0, -14, 6, 9.5, -18), "body"),
            ("poly", E(3.2, -13.5, 3.6, 6.2, -18), "accent"),
            ("poly", E(3.5, -24.5, 4.2, 4.0), "head"),
            ("poly", [(7.3, -25.5), (10.8, -24.3), (7.3, -23.2)], "beak"),
            ("poly", E(4.8, -25.5, 0.9, 0.9, 0, 6), "eye"),
        ]
    if species == "crow":
        return [
            ("line", [(-2, -6), (-3, 0)], "leg", 1.6), ("line", [(3, -6), (3.5, 0)], "leg", 1.6),
            ("poly", [(-8, -15), (-23, -11), (-22, -6), (-8, -9)], "body"),
            ("poly", E(0, -13, 11.5, 7.5, -8), "body"),
            ("poly", E(10.5, -19.5, 5.2, 4.8), "head"),
            ("poly", [(14.5, -22), (21, -18.8), (14.5, -16.5)], "beak"),
            ("poly", E(12, -21, 1.0, 1.0, 0, 6), "eye"),
        ]
    if species == "duck":
        return [
            ("poly", [(-11, -7), (-17, -11), (-12, -3)], "body"),
            ("poly", E(0, -5, 13.5, 5.2), "body"),
            ("poly", [(6, -8), (8, -13), (12, -12), (11, -6)], "head"),
            ("poly", E(9.5, -14, 4.4, 3.8), "head"),
            ("poly", [(12.5, -15), (19, -13.8), (19, -12.2), (12.5, -12)], "accent"),
            ("poly", E(10.5, -15.2, 0.9, 0.9, 0, 6), "eye"),
        ]
    if species == "gull":
        return [
            ("line", [(-1, -10), (-1.5, 0)], "leg", 1.2), ("line", [(2, -10), (2.5, 0)], "leg", 1.2),
            ("poly", [(-10, -13), (-15, -15), (-14, -11)], "body"),
            ("poly", E(0, -12.5, 11.5, 4.0, -4), "body"),
            ("poly", [(-4, -14), (-12, -28), (-7, -27), (3, -14.5)], "head"),
            ("poly", [(1, -15), (5, -29), (8, -27), (6, -14.5)], "head"),
            ("poly", E(10.5, -16, 3.6, 3.3), "head"),
            ("poly", [(13.5, -16.8), (18, -15.6), (13.5, -14.6)], "accent"),
            ("poly", E(11.5, -16.8, 0.8, 0.8, 0, 6), "eye"),
        ]
    if species == "heron":
        return [
            ("line", [(-1, -17), (-1.5, 0)], "leg", 1.2), ("line", [(2, -17), (3, 0)], "leg", 1.2),
            ("poly", [(-7, -19), (-12, -14), (-8, -16)], "body"),
            ("poly", E(0, -20.5, 8.5, 5.0, 14), "body"),
            ("line", [(5, -22), (8.5, -34)], "body", 3.2),
            ("poly", E(9.5, -36, 3.2, 2.8), "head"),
            ("poly", [(12, -37), (22.5, -35.6), (12, -34.6)], "accent"),
            ("poly", E(10.3, -36.8, 0.8, 0.8, 0, 6), "eye"),
        ]
    raise ValueError(f"unknown species {species!r}; expected one of {SPECIES}")


_PARTS = {s: _parts(s) for s in SPECIES}
_FIXED_ACCENT = {
    "robin": (206, 78, 40),   # red breast
    "duck": (226, 150, 44),   # orange bill
    "gull": (224, 196, 60),   # yellow beak
    "heron": (214, 176, 70),  # long yellow beak
}


@dataclass(frozen=True)
class _ObjectParams:
    species: int
    scale: float
    cx: float
    gy: float
    flip: int
    body: tuple[int, int, int]
    head: tuple[int, int, int]
    accent: tuple[int, int, int]
    beak: tuple[int, int, int]
    leg: tuple[int, int, int]


def _clip_col(c) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))  # type: ignore[return-value]


def _object_params(seed: int) -> _ObjectParams:
    _, species, _ = item_labels(seed)
    rng = _rng(seed, _STREAM_OBJECT)
    name = SPECIES[species]
    scale = float(rng.uniform(0.7, 1.15))
    cx = float(rng.uniform(24, 40))
    gy = float(rng.uniform(46, 56))
    flip = 1 if rng.random() < 0.5 else -1
    colour = int(rng.choice(len(PALETTE), p=COLOUR_ODDS[species]))
    body = PALETTE[colour] + rng.normal(0, 12, 3)
    head = body * rng.uniform(0.75, 1.1) + rng.normal(0, 8, 3)
    accent_base = np.array(_FIXED_ACCENT.get(name, PALETTE[int(rng.integers(len(PALETTE)))]), dtype=np.float64)
    accent = accent_base + rng.normal(0, 10, 3)
    beak = np.array((60, 52, 44), dtype=np.float64) + rng.normal(0, 8, 3)
    leg = np.array((70, 60, 50), dtype=np.float64) + rng.normal(0, 8, 3)
    return _ObjectParams(species, scale, cx, gy, flip, _clip_col(body), _clip_col(head), _clip_col(accent),
                         _clip_col(beak), _clip_col(leg))


def _draw_object(p: _ObjectParams) -> tuple[np.ndarray, np.ndarray]:
    """Object colours ``[H, W, 3]`` uint8 and mask ``[H, W]`` bool (no anti-aliasing)."""
    S = IMAGE_SIZE
    col = Image.new("RGB", (S, S), (0, 0, 0))
    mask = Image.new("L", (S, S), 0)
    dc, dm = ImageDraw.Draw(col), ImageDraw.Draw(mask)
    paints = {"body": p.body, "head": p.head, "accent": p.accent, "beak": p.beak, "leg": p.leg,
              "eye": (16, 16, 16)}

    def T(pts):
        return [(p.cx + p.flip * p.scale * x, p.gy + p.scale * y) for x, y in pts]

    for part in _PARTS[SPECIES[p.species]]:
        kind, pts, paint = part[0], T(part[1]), paints[part[2]]
        if kind == "poly":
            dc.polygon(pts, fill=paint)
            dm.polygon(pts, fill=255)
        else:
            w = max(1, int(round(part[3] * p.scale)))
            dc.line(pts, fill=paint, width=w)
            dm.line(pts, fill=255, width=w)
    return np.asarray(col), np.asarray(mask) > 0


def _smooth_noise(rng: np.random.Generator, grid: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise ``[H, W, channels]`` in about [-1, 1] (bilinear upsampling of a grid)."""
    S = IMAGE_SIZE
    out = np.empty((S, S, channels), dtype=np.float32)
    for c in range(channels):
        g = rng.uniform(-1, 1, (grid, grid)).astype(np.float32)
        out[..., c] = np.asarray(Image.fromarray(g, mode="F").resize((S, S), Image.BILINEAR))
    return out


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _land(rng: np.random.Generator) -> np.ndarray:
    S = IMAGE_SIZE
    base = LAND_BASES[int(rng.integers(len(LAND_BASES)))] + rng.normal(0, 8, 3)
    lum = _smooth_noise(rng, int(rng.integers(3, 7)), 1) * 26
    tint = _smooth_noise(rng, 4, 3) * 10
    img = base[None, None, :] + lum + tint + rng.normal(0, 7, (S, S, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.uniform(0, S), rng.uniform(8, S)
        rx, ry = rng.uniform(3, 9), rng.uniform(2, 6)
        shade = np.array((34, 62, 28)) + rng.normal(0, 6, 3)
        d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_clip_col(shade))
    return np.asarray(pil).astype(np.float32)


def _water(rng: np.random.Generator) -> np.ndarray:
    S = IMAGE_SIZE
    base = WATER_BASES[int(rng.integers(len(WATER_BASES)))] + rng.normal(0, 8, 3)
    freq = rng.uniform(0.12, 0.32)
    phase = rng.uniform(0, 2 * np.pi)
    warp_amp = rng.uniform(0.5, 2.5)
    warp_len = rng.uniform(10, 30)
    warp_phase = rng.uniform(0, 2 * np.pi)
    arg = 2 * np.pi * freq * _YY + phase + warp_amp * np.sin(2 * np.pi * _XX / warp_len + warp_phase)
    waves = np.sin(arg)[..., None] * rng.uniform(14, 28)
    slow = _smooth_noise(rng, 3, 1) * 12
    img = base[None, None, :] + waves * np.array((0.8, 0.9, 1.0)) + slow + rng.normal(0, 6, (S, S, 3))
    return img.astype(np.float32)


def _background(seed: int, b: int) -> np.ndarray:
    rng = _rng(seed, _STREAM_BACKGROUND)
    return _land(rng) if b == 0 else _water(rng)


def _photo(seed: int, img: np.ndarray) -> np.ndarray:
    rng = _rng(seed, _STREAM_PHOTO)
    gain = rng.uniform(0.85, 1.15)
    noise = rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(np.rint(img * gain + noise), 0, 255).astype(np.uint8)


def _check_background(background) -> int | None:
    if background is None:
        return None
    if background not in (0, 1) or isinstance(background, bool):
        raise ValueError(f"background must be None (the item's own), 0 (land) or 1 (water); got {background!r}")
    return int(background)


def render_array(
    seed: int, background: int | None = None, object: bool = True, draw_background: bool = True
) -> np.ndarray:
    """Like :func:`render` but returns ``[64, 64, 3]`` uint8."""
    seed = _check_seed(seed)
    b = _check_background(background)
    if not object and not draw_background:
        raise ValueError("nothing to draw: object=False and draw_background=False")
    if b is None:
        b = item_labels(seed)[2]
    if draw_background:
        img = _background(seed, b)
    else:
        img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), NEUTRAL_GREY, dtype=np.float32)
    if object:
        col, mask = _draw_object(_object_params(seed))
        img = np.where(mask[..., None], col.astype(np.float32), img)
    return _photo(seed, img)


def render(seed: int, background: int | None = None, object: bool = True, draw_background: bool = True) -> Image.Image:
    """Render one item as a 64x64 RGB PIL image.

    Args:
        seed: the item seed (non-negative int); it fixes the bird, its pose and colours, the
            background texture and the photo noise.
        background: None for the item's own background (``item_labels(seed)[2]``), 0 for land,
            1 for water (a counterfactual: same bird, same pixels where the bird is drawn).
        object: draw the bird (False: background only).
        draw_background: draw the background (False: the bird on a neutral grey).

    Raises:
        TypeError: a seed that is not a non-negative integer.
        ValueError: an invalid background, or nothing to draw.
    """
    return Image.fromarray(render_array(seed, background, object, draw_background))


def object_mask(seed: int) -> np.ndarray:
    """``[64, 64]`` bool: where the bird of item ``seed`` is drawn (identical in every render)."""
    return _draw_object(_object_params(_check_seed(seed)))[1]


def render_batch(
    seeds: Sequence[int], background: int | None = None, object: bool = True, draw_background: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Render many items, ``[n, 64, 64, 3]`` uint8 (about 1-2 ms per image on one core)."""
    seeds = list(seeds)
    out = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    it = range(len(seeds))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="render", unit="img", mininterval=2.0)
    for i in it:
        out[i] = render_array(seeds[i], background, object, draw_background)
    return out


# ----------------------------------------------------------------------------- splits
_SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
_SEED_RANGE = 10_000_000


def split_seeds(split: str, n_per_group: Sequence[int], seed: int = 0) -> np.ndarray:
    """Item seeds of a split with exactly ``n_per_group[g]`` items of group ``g``.

    The seeds are scanned in order from a range reserved for ``(split, seed)``: train, val and
    test (and different ``seed`` values) never share an item. Returns ``[n]`` int64 in scan order.
    """
    if split not in _SPLIT_INDEX:
        raise DatasetError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_INDEX)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
    need = np.asarray(n_per_group, dtype=np.int64)
    if need.shape != (4,) or (need < 0).any():
        raise DatasetError(f"n_per_group must be 4 non-negative counts, got {list(n_per_group)}")
    start = (int(seed) * len(_SPLIT_INDEX) + _SPLIT_INDEX[split]) * _SEED_RANGE
    got = np.zeros(4, dtype=np.int64)
    out: list[int] = []
    s = start
    while (got < need).any():
        if s >= start + _SEED_RANGE:
            raise DatasetError(f"seed range of split {split!r} exhausted; ask for fewer items")
        y, _, b = item_labels(s)
        g = 2 * y + b
        if got[g] < need[g]:
            out.append(s)
            got[g] += 1
        s += 1
    return np.array(out, dtype=np.int64)


def _train_counts(n: int, p_aligned: float) -> list[int]:
    half = [n // 2, n - n // 2]
    aligned = [int(round(h * p_aligned)) for h in half]
    return [aligned[0], half[0] - aligned[0], half[1] - aligned[1], aligned[1]]


def make_split(
    split: str,
    n: int | None = None,
    p_aligned: float | None = None,
    n_per_group: int = 500,
    seed: int = 0,
) -> GroupDataset:
    """One split of the synthetic benchmark, images rendered on demand.

    Args:
        split: "train", "val" or "test".
        n: number of training items (train only; default 20000).
        p_aligned: ``P(spurious == y)``. Train default 0.95 (exact quotas: of the ``n/2`` items
            of each class, ``round(n/2 * p_aligned)`` sit on their "own" background). For val and
            test the default is balanced; passing a value makes them biased too.
        n_per_group: items per group for balanced val/test (default 500).
        seed: selects a disjoint family of seed ranges (0 is the shipped benchmark).

    Returns:
        a :class:`GroupDataset` whose ``ids`` are the item seeds as strings, with
        ``extra = {"species": [n], "item_seed": [n]}`` and ``load_image(i)`` rendering item ``i``.

    Raises:
        DatasetError: unknown split, or invalid sizes/probabilities.
    """
    if split not in _SPLIT_INDEX:
        raise DatasetError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
    if p_aligned is not None and not 0.0 <= float(p_aligned) <= 1.0:
        raise DatasetError(f"p_aligned must be a probability in [0, 1], got {p_aligned!r}")
    if split == "train":
        n = 20000 if n is None else int(n)
        p = 0.95 if p_aligned is None else float(p_aligned)
        if n < 2:
            raise DatasetError(f"n must be at least 2 for the train split, got {n}")
        counts = _train_counts(n, p)
    else:
        if n is not None and p_aligned is None:
            n_per_group = int(n) // 4
        if p_aligned is None:
            counts = [int(n_per_group)] * 4
        else:
            counts = _train_counts(int(n) if n is not None else 4 * int(n_per_group), float(p_aligned))
    seeds = split_seeds(split, counts, seed)
    lab = labels_for_seeds(seeds)
    group = 2 * lab["y"] + lab["spurious"]
    seed_list = [int(s) for s in seeds]

    def load(i: int) -> Image.Image:
        return render(seed_list[i])

    return GroupDataset(
        name="synthetic", split=split, class_names=list(CLASS_NAMES), spurious_names=list(SPURIOUS_NAMES),
        y=lab["y"], spurious=lab["spurious"], group=group, group_names=list(GROUP_NAMES), load_image=load,
        ids=[str(s) for s in seed_list], extra={"species": lab["species"], "item_seed": seeds.copy()},
        info={"generator": "ltcutils.datasets.synthetic", "version": 1, "split": split, "seed": int(seed),
              "group_counts": [int(c) for c in counts]},
        conflicting_groups=[1, 2],  # landbird on water, waterbird on land
    )


# ----------------------------------------------------------------------------- captions
PREFIXES = ["a photo of a", "a", "a picture of a", "an image of a"]
BACKGROUND_ONLY = {
    0: ["a photo of land", "land background", "a picture of land", "a field of grass"],
    1: ["a photo of water", "water background", "a picture of water", "a lake with waves"],
}
P_BACKGROUND_ONLY = 0.10
P_SPECIES_NAME = 0.20
P_ATTRIBUTE = 0.40
P_MENTION_BACKGROUND = 0.50
# object kinds in a CaptionBatch
OBJ_NONE, OBJ_CLASS, OBJ_SPECIES = 0, 1, 2


@dataclass
class CaptionBatch:
    """Captions and their structure (what each one claims), all arrays ``[n]`` int64.

    obj_kind: 0 none (background-only), 1 class word, 2 sub-species name; obj_value: the class
    or the sub-species index (-1 if none); attribute: index into ATTRIBUTES or -1; background:
    0/1 if the caption mentions it, else -1.
    """

    texts: list[str]
    obj_kind: np.ndarray
    obj_value: np.ndarray
    attribute: np.ndarray
    background: np.ndarray


def sample_captions(species: Sequence[int], spurious: Sequence[int], rng: np.random.Generator) -> CaptionBatch:
    """One random true caption per item (see the module docstring for the recipe).

    Args:
        species: ``[n]`` sub-species indices; spurious: ``[n]`` backgrounds (0 land, 1 water).
        rng: a seeded ``numpy.random.Generator``.
    """
    species = np.asarray(species, dtype=np.int64)
    spurious = np.asarray(spurious, dtype=np.int64)
    if species.shape != spurious.shape or species.ndim != 1:
        raise ValueError(f"species and spurious must be [n] arrays of equal length, "
                         f"got {species.shape} and {spurious.shape}")
    n = len(species)
    texts: list[str] = []
    kind = np.zeros(n, np.int64)
    val = np.full(n, -1, np.int64)
    attr = np.full(n, -1, np.int64)
    bg = np.full(n, -1, np.int64)
    for i in range(n):
        s, b = int(species[i]), int(spurious[i])
        if rng.random() < P_BACKGROUND_ONLY:
            opts = BACKGROUND_ONLY[b]
            texts.append(opts[int(rng.integers(len(opts)))])
            bg[i] = b
            continue
        prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
        if rng.random() < P_SPECIES_NAME:
            kind[i], val[i], word = OBJ_SPECIES, s, SPECIES[s]
        else:
            kind[i], val[i], word = OBJ_CLASS, int(SPECIES_CLASS[s]), CLASS_NAMES[int(SPECIES_CLASS[s])]
        text = f"{prefix} {word}"
        if rng.random() < P_ATTRIBUTE:
            attrs = SPECIES_ATTRIBUTES[SPECIES[s]]
            attr[i] = attrs[int(rng.integers(len(attrs)))]
            text += " " + ATTRIBUTES[attr[i]]
        if rng.random() < P_MENTION_BACKGROUND:
            bg[i] = b
            text += f" on {SPURIOUS_NAMES[b]}"
        texts.append(text)
    return CaptionBatch(texts, kind, val, attr, bg)


def caption(seed: int, rng: np.random.Generator) -> str:
    """A random true caption of item ``seed`` (its sub-species and own background)."""
    _, species, b = item_labels(seed)
    return sample_captions([species], [b], rng).texts[0]


def caption_compatibility(captions: CaptionBatch, species: Sequence[int], spurious: Sequence[int]) -> np.ndarray:
    """``[n_images, n_captions]`` bool: True where the caption truly describes the image.

    A caption fits an image when its object (class word or sub-species), its attribute and its
    background, each where present, are all true of the image.
    """
    sp = np.asarray(species, dtype=np.int64)[:, None]
    b = np.asarray(spurious, dtype=np.int64)[:, None]
    kind, val = captions.obj_kind[None, :], captions.obj_value[None, :]
    obj_ok = ((kind == OBJ_NONE) | ((kind == OBJ_CLASS) & (SPECIES_CLASS[sp] == val))
              | ((kind == OBJ_SPECIES) & (sp == val)))
    a = captions.attribute
    attr_ok = np.where(a[None, :] < 0, True, ATTRIBUTE_TRUE[np.maximum(a, 0)][:, sp[:, 0]].T)
    bg_ok = (captions.background[None, :] < 0) | (captions.background[None, :] == b)
    return obj_ok & attr_ok & bg_ok


def all_captions() -> list[str]:
    """Every caption :func:`sample_captions` can produce (for token-length checks)."""
    out = [t for opts in BACKGROUND_ONLY.values() for t in opts]
    for s, name in enumerate(SPECIES):
        for word in (name, CLASS_NAMES[int(SPECIES_CLASS[s])]):
            for prefix in PREFIXES:
                for a in [None] + SPECIES_ATTRIBUTES[name]:
                    for bgw in (None, *SPURIOUS_NAMES):
                        t = f"{prefix} {word}"
                        if a is not None:
                            t += " " + ATTRIBUTES[a]
                        if bgw is not None:
                            t += f" on {bgw}"
                        out.append(t)
    return sorted(set(out))


# ----------------------------------------------------------------------------- pixels
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_pixels(images: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """uint8 ``[n, 64, 64, 3]`` -> float ``[n, 3, 64, 64]`` tensor normalised like open_clip's transform.

    Equal to applying the tiny model's ``preprocess`` to each PIL image (its resize to 64 px is
    the identity on 64 px images), but vectorised.
    """
    import torch

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [n, H, W, 3], got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s
