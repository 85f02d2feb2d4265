"""Drawing for the synthetic benchmark (:mod:`ltcutils.datasets.synthetic`): birds and places.

Pure numpy/PIL, no labels or splits (those live in ``synthetic``). Everything is drawn at
``IMAGE_SIZE`` = 48 px; the bird is drawn 4x larger and box-filtered down, so its edges are
anti-aliased and its small parts (feet, bills) stay legible.

A bird is a list of parts in local units (about one unit per output pixel at scale 1): the
ground point is (0, 0), y points down (negative = up), the bird faces +x. Each part is
``(kind, points, paint[, width])`` with kind "poly" or "line" and paint one of "body",
"head", "wing", "accent", "beak", "leg", "foot", "eye".

Every species shares its class's defining attributes (the words of the captions):

* landbirds (sparrow, robin, crow): talon feet (thin dark toes), a short neck (head on the
  body), round wings, a short beak;
* waterbirds (duck, swan, gull): webbed feet (orange paddles), a long neck, pointed wings,
  a flat bill (duck, swan) or a long beak (gull).

Places (``PLACES``): forest, bamboo, field (land); ocean, lake, river (water).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 48
SUPERSAMPLE = 4
SPECIES = ["sparrow", "robin", "crow", "duck", "swan", "gull"]
PLACES = ["forest", "bamboo", "field", "ocean", "lake", "river"]
NEUTRAL_GREY = 128.0

PALETTE = np.array([
    (120, 82, 48),    # brown
    (38, 38, 44),     # black
    (232, 232, 226),  # white
    (138, 138, 142),  # grey
    (212, 182, 64),   # yellow
    (176, 96, 56),    # rust
    (84, 98, 124),    # slate
], dtype=np.float64)
# Odds of each body colour per species (rows: SPECIES order): colour is only weakly predictive.
COLOUR_ODDS = np.array([
    [0.30, 0.06, 0.10, 0.16, 0.12, 0.16, 0.10],  # sparrow
    [0.18, 0.10, 0.08, 0.20, 0.10, 0.14, 0.20],  # robin
    [0.10, 0.36, 0.06, 0.18, 0.06, 0.08, 0.16],  # crow
    [0.26, 0.10, 0.16, 0.14, 0.14, 0.10, 0.10],  # duck
    [0.08, 0.08, 0.36, 0.22, 0.08, 0.08, 0.10],  # swan
    [0.08, 0.10, 0.30, 0.26, 0.08, 0.08, 0.10],  # gull
])
COLOUR_ODDS = COLOUR_ODDS / COLOUR_ODDS.sum(1, keepdims=True)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle_deg: float = 0.0,
             n: int = 24) -> list[tuple[float, float]]:
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


def _talons(x: float) -> list[tuple]:
    """A thin leg ending in three dark toes (landbirds)."""
    return [("line", [(x - 1.6, 0.2), (x, 0.0)], "leg", 0.6), ("line", [(x, 0.0), (x + 2.0, 0.3)], "leg", 0.6),
            ("line", [(x, 0.0), (x - 0.4, 0.8)], "leg", 0.6)]


def _webbed(x: float) -> list[tuple]:
    """A flat orange paddle (waterbirds)."""
    return [("poly", [(x - 1.0, -0.6), (x + 3.6, 0.4), (x - 0.6, 0.8)], "foot")]


def _parts(species: str) -> list[tuple]:
    E = _ellipse
    if species == "sparrow":  # small round body, short tail
        return [
            ("line", [(-1.5, -5), (-1.5, 0)], "leg", 0.7), ("line", [(1.5, -5), (1.8, 0)], "leg", 0.7),
            *_talons(-1.5), *_talons(1.8),
            ("poly", [(-6, -10), (-12, -13), (-11, -8)], "body"),
            ("poly", E(0, -9.5, 7.0, 5.2, -8), "body"),
            ("poly", E(-0.8, -10.2, 4.2, 2.8, -8), "wing"),
            ("poly", E(5.6, -15.2, 3.6, 3.4), "head"),
            ("poly", [(8.6, -16.2), (11.4, -15.0), (8.6, -14.0)], "beak"),
            ("poly", E(6.6, -15.8, 0.8, 0.8, 0, 8), "eye"),
        ]
    if species == "robin":  # upright body, red breast
        return [
            ("line", [(-1, -6), (-1.2, 0)], "leg", 0.7), ("line", [(1.6, -6), (2.0, 0)], "leg", 0.7),
            *_talons(-1.2), *_talons(2.0),
            ("poly", [(-3.5, -8), (-8, -2), (-4.5, -3)], "body"),
            ("poly", E(0, -12, 5.2, 8.0, -18), "body"),
            ("poly", E(2.8, -11.5, 3.0, 5.2, -18), "accent"),
            ("poly", E(-1.4, -12.5, 2.8, 4.6, -18), "wing"),
            ("poly", E(3.0, -21.0, 3.5, 3.4), "head"),
            ("poly", [(6.0, -22.0), (8.8, -21.0), (6.0, -20.0)], "beak"),
            ("poly", E(4.0, -21.8, 0.8, 0.8, 0, 8), "eye"),
        ]
    if species == "crow":  # big body, long tail
        return [
            ("line", [(-2, -6), (-2.6, 0)], "leg", 0.9), ("line", [(2.5, -6), (3.0, 0)], "leg", 0.9),
            *_talons(-2.6), *_talons(3.0),
            ("poly", [(-7, -13), (-19, -10), (-18, -6), (-7, -8)], "body"),
            ("poly", E(0, -11, 9.5, 6.2, -8), "body"),
            ("poly", E(-1.0, -11.8, 5.6, 3.4, -8), "wing"),
            ("poly", E(8.6, -16.5, 4.3, 4.0), "head"),
            ("poly", [(12.0, -18.2), (15.6, -16.4), (12.0, -14.6)], "beak"),
            ("poly", E(9.8, -17.6, 0.9, 0.9, 0, 8), "eye"),
        ]
    if species == "duck":  # flat body, medium neck, flat bill
        return [
            ("line", [(-1.5, -4), (-1.5, 0)], "foot", 0.9), ("line", [(2, -4), (2.2, 0)], "foot", 0.9),
            *_webbed(-1.5), *_webbed(2.2),
            ("poly", [(-9, -8), (-14, -11), (-10, -5)], "body"),
            ("poly", E(0, -7.5, 10.5, 4.4), "body"),
            ("poly", [(5, -9.5), (-4, -11.6), (-15, -9.6), (-3, -7.4)], "wing"),
            ("line", [(6.5, -9), (8.0, -17)], "head", 2.6),
            ("poly", E(8.6, -18.5, 3.2, 2.9), "head"),
            ("poly", [(10.8, -19.4), (16.0, -18.8), (16.0, -17.2), (10.8, -17.2)], "beak"),
            ("poly", E(9.4, -19.4, 0.8, 0.8, 0, 8), "eye"),
        ]
    if species == "swan":  # big body, very long curved neck, flat bill
        return [
            ("line", [(-1.5, -4), (-1.5, 0)], "foot", 0.9), ("line", [(2, -4), (2.2, 0)], "foot", 0.9),
            *_webbed(-1.5), *_webbed(2.2),
            ("poly", [(-10, -9), (-15, -12), (-11, -6)], "body"),
            ("poly", E(-1, -8.0, 11.0, 5.0, -4), "body"),
            ("poly", [(4, -10.5), (-5, -12.8), (-16, -11), (-4, -8.2)], "wing"),
            ("line", [(6.5, -10), (9.0, -17), (7.5, -24)], "head", 2.4),
            ("poly", E(9.0, -25.5, 3.0, 2.6), "head"),
            ("poly", [(11.0, -26.4), (15.6, -25.6), (15.6, -24.2), (11.0, -24.4)], "beak"),
            ("poly", E(9.8, -26.2, 0.8, 0.8, 0, 8), "eye"),
        ]
    if species == "gull":  # slim body, long legs, long pointed wings, long thin beak
        return [
            ("line", [(-1, -8), (-1.4, 0)], "foot", 0.8), ("line", [(2, -8), (2.4, 0)], "foot", 0.8),
            *_webbed(-1.4), *_webbed(2.4),
            ("poly", [(-9, -12), (-14, -14), (-13, -10)], "body"),
            ("poly", E(0, -11.5, 10.0, 3.6, -4), "body"),
            ("poly", [(6, -13), (-4, -15.5), (-19, -14.5), (-3, -10.5)], "wing"),
            ("line", [(6.5, -12.5), (8.5, -18.5)], "head", 2.2),
            ("poly", E(9.4, -19.8, 3.0, 2.7), "head"),
            ("poly", [(11.8, -20.6), (18.0, -19.6), (11.8, -19.0)], "beak"),
            ("poly", E(10.2, -20.6, 0.8, 0.8, 0, 8), "eye"),
        ]
    raise ValueError(f"unknown species {species!r}; expected one of {SPECIES}")


_PARTS = {s: _parts(s) for s in SPECIES}
_FIXED = {  # colours that are part of a species' description
    "robin": {"accent": (206, 78, 40)},                       # red breast
    "duck": {"beak": (226, 150, 44)}, "swan": {"beak": (232, 120, 40)},
    "gull": {"beak": (224, 196, 60)},
}


@dataclass(frozen=True)
class ObjectParams:
    """Everything that fixes how a bird is drawn (from its item seed's object stream)."""

    species: int
    scale: float
    cx: float
    gy: float
    flip: int
    paints: tuple


def _clip_col(c) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))  # type: ignore[return-value]


def object_params(species: int, rng: np.random.Generator) -> ObjectParams:
    """Pose and colours of a bird of ``species`` (size, position, flip, palette draws)."""
    name = SPECIES[species]
    scale = float(rng.uniform(0.9, 1.2))
    cx = float(rng.uniform(20, 28))
    gy = float(rng.uniform(36, 42))
    flip = 1 if rng.random() < 0.5 else -1
    colour = int(rng.choice(len(PALETTE), p=COLOUR_ODDS[species]))
    body = PALETTE[colour] + rng.normal(0, 12, 3)
    head = body * rng.uniform(0.8, 1.1) + rng.normal(0, 8, 3)
    wing = body * rng.uniform(0.55, 0.75) + rng.normal(0, 6, 3)
    fixed = _FIXED.get(name, {})
    accent = np.array(fixed.get("accent", PALETTE[int(rng.integers(len(PALETTE)))]), np.float64) + rng.normal(0, 10, 3)
    land = species < 3
    beak = np.array(fixed.get("beak", (58, 50, 42)), np.float64) + rng.normal(0, 8, 3)
    leg = np.array((52, 44, 38) if land else (230, 132, 40), np.float64) + rng.normal(0, 8, 3)
    foot = np.array((230, 132, 40), np.float64) + rng.normal(0, 8, 3)
    paints = tuple((k, _clip_col(v)) for k, v in (("body", body), ("head", head), ("wing", wing), ("accent", accent),
                                                  ("beak", beak), ("leg", leg), ("foot", foot), ("eye", (16, 16, 16))))
    return ObjectParams(species, scale, cx, gy, flip, paints)


def draw_object(p: ObjectParams) -> tuple[np.ndarray, np.ndarray]:
    """Bird colours ``[S, S, 3]`` float32 and coverage ``[S, S]`` float32 in [0, 1] (anti-aliased)."""
    S, K = IMAGE_SIZE, SUPERSAMPLE
    col = Image.new("RGB", (S * K, S * K), (0, 0, 0))
    mask = Image.new("L", (S * K, S * K), 0)
    dc, dm = ImageDraw.Draw(col), ImageDraw.Draw(mask)
    paints = dict(p.paints)

    def T(pts):
        return [(K * (p.cx + p.flip * p.scale * x), K * (p.gy + p.scale * y)) for x, y in pts]

    for part in _PARTS[SPECIES[p.species]]:
        kind, pts, paint = part[0], T(part[1]), paints[part[2]]
        if kind == "poly":
            dc.polygon(pts, fill=paint)
            dm.polygon(pts, fill=255)
        else:
            w = max(1, int(round(K * part[3] * p.scale)))
            dc.line(pts, fill=paint, width=w, joint="curve")
            dm.line(pts, fill=255, width=w, joint="curve")
    a = np.asarray(mask, dtype=np.float32).reshape(S, K, S, K).mean((1, 3)) / 255.0
    c = np.asarray(col, dtype=np.float32).reshape(S, K, S, K, 3).sum((1, 3))
    cover = np.asarray(mask, dtype=np.float32).reshape(S, K, S, K).sum((1, 3))[..., None] / 255.0
    colour = np.where(cover > 0, c / np.maximum(cover, 1e-6), 0.0).astype(np.float32)
    return colour, a


# ----------------------------------------------------------------------------- places
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, grid: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise ``[S, S, channels]`` in about [-1, 1] (bilinear upsampling of a grid)."""
    S = IMAGE_SIZE
    out = np.empty((S, S, channels), dtype=np.float32)
    for c in range(channels):
        g = rng.uniform(-1, 1, (grid, grid)).astype(np.float32)
        out[..., c] = np.asarray(Image.fromarray(g, mode="F").resize((S, S), Image.BILINEAR))
    return out


def _base(rng, rgb, jitter=8.0) -> np.ndarray:
    return np.array(rgb, np.float64) + rng.normal(0, jitter, 3)


def _forest(rng) -> np.ndarray:
    S = IMAGE_SIZE
    img = _base(rng, (46, 82, 40))[None, None] + _smooth_noise(rng, 5, 1) * 18 + rng.normal(0, 6, (S, S, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 6))):  # tree trunks
        x, w = rng.uniform(0, S), rng.uniform(1.5, 3.5)
        d.rectangle([x - w, rng.uniform(4, 16), x + w, S], fill=_clip_col(_base(rng, (82, 58, 36), 10)))
    for _ in range(int(rng.integers(4, 8))):  # canopy
        x, y, r = rng.uniform(0, S), rng.uniform(0, 14), rng.uniform(4, 9)
        d.ellipse([x - r, y - r, x + r, y + r * 0.8], fill=_clip_col(_base(rng, (30, 70, 30), 8)))
    return np.asarray(pil).astype(np.float32)


def _bamboo(rng) -> np.ndarray:
    S = IMAGE_SIZE
    img = _base(rng, (150, 172, 96))[None, None] + _smooth_noise(rng, 4, 1) * 12 + rng.normal(0, 5, (S, S, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(6, 11))):  # stalks with nodes
        x, w = rng.uniform(0, S), rng.uniform(0.8, 1.8)
        col = _base(rng, (88, 132, 50), 10)
        d.rectangle([x - w, 0, x + w, S], fill=_clip_col(col))
        for y in np.arange(rng.uniform(0, 8), S, rng.uniform(7, 11)):
            d.line([(x - w - 0.5, y), (x + w + 0.5, y)], fill=_clip_col(col * 0.6), width=1)
    return np.asarray(pil).astype(np.float32)


def _field(rng) -> np.ndarray:
    S = IMAGE_SIZE
    horizon = rng.uniform(8, 16)
    grass = _base(rng, (150, 150, 62))[None, None] + _smooth_noise(rng, 6, 1) * 16
    streaks = np.sin(2 * np.pi * (_XX * rng.uniform(0.3, 0.6) + _YY * 0.1) + rng.uniform(0, 6.3))[..., None] * 10
    sky = _base(rng, (176, 198, 214))[None, None] + (_YY[..., None] / S) * 20
    img = np.where(_YY[..., None] < horizon, sky, grass + streaks) + rng.normal(0, 6, (S, S, 3))
    return img.astype(np.float32)


def _ocean(rng) -> np.ndarray:
    S = IMAGE_SIZE
    horizon = rng.uniform(6, 12)
    freq, phase = rng.uniform(0.22, 0.4), rng.uniform(0, 2 * np.pi)
    waves = np.sin(2 * np.pi * freq * _YY + phase + 1.2 * np.sin(2 * np.pi * _XX / rng.uniform(10, 24)))
    sea = _base(rng, (34, 72, 142))[None, None] + waves[..., None] * np.array((14, 18, 26)) \
        + (waves > 0.85)[..., None] * 60
    sky = _base(rng, (170, 196, 226))[None, None]
    img = np.where(_YY[..., None] < horizon, sky, sea) + rng.normal(0, 5, (S, S, 3))
    return img.astype(np.float32)


def _lake(rng) -> np.ndarray:
    S = IMAGE_SIZE
    shore = rng.uniform(4, 9)
    ripples = np.sin(2 * np.pi * rng.uniform(0.12, 0.22) * _YY + rng.uniform(0, 6.3))[..., None] * 8
    water = _base(rng, (52, 128, 140))[None, None] + ripples + _smooth_noise(rng, 3, 1) * 10
    bank = _base(rng, (40, 70, 44))[None, None]
    img = np.where(_YY[..., None] < shore, bank, water) + rng.normal(0, 4, (S, S, 3))
    return img.astype(np.float32)


def _river(rng) -> np.ndarray:
    S = IMAGE_SIZE
    slope = rng.uniform(-0.5, 0.5)
    flow = np.sin(2 * np.pi * rng.uniform(0.15, 0.3) * (_YY + slope * _XX) + rng.uniform(0, 6.3))
    img = _base(rng, (70, 104, 150))[None, None] + flow[..., None] * np.array((16, 18, 20)) \
        + _smooth_noise(rng, 4, 1) * 10 + (flow > 0.9)[..., None] * 40 + rng.normal(0, 5, (S, S, 3))
    return img.astype(np.float32)


_PLACE_FN = [_forest, _bamboo, _field, _ocean, _lake, _river]


def draw_place(place: int, rng: np.random.Generator) -> np.ndarray:
    """Background of ``place`` (index into PLACES), ``[S, S, 3]`` float32."""
    return _PLACE_FN[int(place)](rng)


def photo(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global brightness and pixel noise, then uint8."""
    gain = rng.uniform(0.85, 1.15)
    noise = rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(np.rint(img * gain + noise), 0, 255).astype(np.uint8)
