"""A procedurally rendered Waterbirds-like benchmark: birds on land or water, known ground truth.

Labels (as in Waterbirds):

* ``y`` (class): 0 = landbird, 1 = waterbird, each with three sub-species (``species`` 0..5):
  sparrow, robin, crow; duck, swan, gull. The class is defined by visible attributes that
  the captions name in words (``CLASS_ATTRIBUTES``): landbirds have talon feet, a short neck,
  round wings and a short beak; waterbirds have webbed feet, a long neck, pointed wings and a
  flat bill (duck, swan) or a long beak (gull). Each species adds its own (a red breast, a
  long tail, ...): ``SPECIES_ATTRIBUTES``.
* ``spurious`` (background): 0 = land, 1 = water, and the finer ``place`` (like Waterbirds'
  ``place_filename``): 0 forest, 1 bamboo, 2 field (land); 3 ocean, 4 lake, 5 river (water).
* ``group = 2 * y + spurious``: 0 landbird/land, 1 landbird/water, 2 waterbird/land,
  3 waterbird/water.

Every image (48 x 48 px) is a pure function of one integer *item seed*. The seed gives four
independent random streams (``numpy.random.default_rng([seed, k])``): k = 0 the labels, 1 the
object (size, position, flip, colours), 2 the background texture, 3 the "photo" (brightness,
noise). Because the streams are independent, both oracles of :mod:`ltcutils.groundtruth` have
exact counterfactuals::

    >>> from ltcutils.datasets import synthetic as syn
    >>> syn.item_labels(7)                         # (y, species, own background)
    (1, 5, 1)
    >>> syn.PLACES[syn.item_place(7)]
    'river'
    >>> own = syn.render(7)                        # a gull on a river
    >>> swapped_bg = syn.render(7, background=0)   # the same gull, same pixels, in a field
    >>> swapped_obj = syn.render(7, object_seed=8) # item 8's bird on item 7's river

Splits (:func:`make_split`) select item seeds by their labels from disjoint seed ranges, so
train, val and test never share an item. Train is biased (``P(spurious == y) = p_aligned``,
default 0.95, exact group quotas); val and test are balanced (``n_per_group`` per group).

Captions (:func:`sample_captions`) name the class word, the sub-species or just "bird", up
to two attributes in words ("a bird with webbed feet and a long neck"), and sometimes the
background ("on water") or the place ("on a lake"); 10% describe only the background. Their
structure is kept so that a training loss can tell which captions in a batch truly describe an
image (:func:`caption_compatibility`). Drawing is in :mod:`.synthetic_render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from . import synthetic_render as _draw
from .base import DatasetError, GroupDataset
from .synthetic_render import IMAGE_SIZE, NEUTRAL_GREY, PLACES, SPECIES

__all__ = [
    "IMAGE_SIZE", "CLASS_NAMES", "SPURIOUS_NAMES", "GROUP_NAMES", "SPECIES", "SPECIES_CLASS", "PLACES",
    "PLACE_BACKGROUND", "PLACE_PHRASES", "ATTRIBUTES", "CLASS_ATTRIBUTES", "SPECIES_ATTRIBUTES", "item_labels",
    "item_place", "labels_for_seeds", "render", "render_array", "render_batch", "object_mask", "swap_partners",
    "make_split", "split_seeds", "caption", "CaptionBatch", "sample_captions", "caption_compatibility",
    "all_captions", "to_pixels", "model_image_size",
]

VERSION = 2
CLASS_NAMES = ["landbird", "waterbird"]
SPURIOUS_NAMES = ["land", "water"]
GROUP_NAMES = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
SPECIES_CLASS = np.array([0, 0, 0, 1, 1, 1], dtype=np.int64)
PLACE_BACKGROUND = np.array([0, 0, 0, 1, 1, 1], dtype=np.int64)
#: how captions name each place
PLACE_PHRASES = ["in a forest", "in a bamboo grove", "in a field", "on the ocean", "on a lake", "on a river"]

#: Visual attributes in caption words ("a bird with ..."); ATTRIBUTE_TRUE says of which species.
ATTRIBUTES = [
    "talon feet",      # 0 landbirds
    "a short neck",    # 1 landbirds
    "round wings",     # 2 landbirds
    "a short beak",    # 3 landbirds
    "webbed feet",     # 4 waterbirds
    "a long neck",     # 5 waterbirds
    "pointed wings",   # 6 waterbirds
    "a flat bill",     # 7 duck, swan
    "a long beak",     # 8 gull
    "a round body",    # 9 sparrow
    "a red breast",    # 10 robin
    "a long tail",     # 11 crow
    "a big body",      # 12 crow, swan
    "a flat body",     # 13 duck
    "a curved neck",   # 14 swan
    "long legs",       # 15 gull
    "short legs",      # 16 sparrow, duck, swan
]
#: the attributes every member of a class has
CLASS_ATTRIBUTES = {0: [0, 1, 2, 3], 1: [4, 5, 6]}
SPECIES_ATTRIBUTES: dict[str, list[int]] = {
    "sparrow": [0, 1, 2, 3, 9, 16],
    "robin": [0, 1, 2, 3, 10],
    "crow": [0, 1, 2, 3, 11, 12],
    "duck": [4, 5, 6, 7, 13, 16],
    "swan": [4, 5, 6, 7, 12, 14, 16],
    "gull": [4, 5, 6, 8, 15],
}
#: [n_attr, n_species] True where the attribute describes the sub-species.
ATTRIBUTE_TRUE = np.zeros((len(ATTRIBUTES), len(SPECIES)), dtype=bool)
for _s, _attrs in enumerate(SPECIES_ATTRIBUTES.values()):
    ATTRIBUTE_TRUE[_attrs, _s] = True

_STREAM_LABELS, _STREAM_OBJECT, _STREAM_BACKGROUND, _STREAM_PHOTO = 0, 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"an item seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------- labels
def _labels(seed: int) -> tuple[int, int, int, int]:
    rng = _rng(_check_seed(seed), _STREAM_LABELS)
    species = int(rng.integers(len(SPECIES)))
    b = int(rng.integers(2))
    place = 3 * b + int(rng.integers(3))
    return int(SPECIES_CLASS[species]), species, b, place


def item_labels(seed: int) -> tuple[int, int, int]:
    """``(y, species, spurious)`` of an item seed: its class, sub-species and own background."""
    return _labels(seed)[:3]


def item_place(seed: int) -> int:
    """The item's own place (index into PLACES; ``PLACE_BACKGROUND[place]`` is its background)."""
    return _labels(seed)[3]


def labels_for_seeds(seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """Labels of many item seeds: ``{"y", "species", "spurious", "place"}``, each ``[n]`` int64."""
    lab = np.array([_labels(s) for s in seeds], dtype=np.int64).reshape(-1, 4)
    return {"y": lab[:, 0], "species": lab[:, 1], "spurious": lab[:, 2], "place": lab[:, 3]}


# ----------------------------------------------------------------------------- rendering
def _object(seed: int) -> tuple[np.ndarray, np.ndarray]:
    species = _labels(seed)[1]
    return _draw.draw_object(_draw.object_params(species, _rng(seed, _STREAM_OBJECT)))


def _resolve_place(seed: int, background, place) -> int:
    own = _labels(seed)[3]
    if place is not None:
        if isinstance(place, bool) or place not in range(len(PLACES)):
            raise ValueError(f"place must be None or 0..{len(PLACES) - 1} ({PLACES}), got {place!r}")
        if background is not None and PLACE_BACKGROUND[place] != background:
            raise ValueError(f"place {PLACES[place]!r} is not a {SPURIOUS_NAMES[background]} place")
        return int(place)
    if background is None:
        return own
    if background not in (0, 1) or isinstance(background, bool):
        raise ValueError(f"background must be None (the item's own), 0 (land) or 1 (water); got {background!r}")
    return 3 * int(background) + own % 3  # the same kind of scene on the other background


def render_array(seed: int, background: int | None = None, object: bool = True, draw_background: bool = True,
                 place: int | None = None, object_seed: int | None = None) -> np.ndarray:
    """Like :func:`render` but returns ``[48, 48, 3]`` uint8."""
    seed = _check_seed(seed)
    p = _resolve_place(seed, background, place)
    if not object and not draw_background:
        raise ValueError("nothing to draw: object=False and draw_background=False")
    if draw_background:
        img = _draw.draw_place(p, _rng(seed, _STREAM_BACKGROUND))
    else:
        img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), NEUTRAL_GREY, dtype=np.float32)
    if object:
        col, alpha = _object(seed if object_seed is None else _check_seed(object_seed))
        img = img * (1 - alpha[..., None]) + col * alpha[..., None]
    return _draw.photo(img, _rng(seed, _STREAM_PHOTO))


def render(seed: int, background: int | None = None, object: bool = True, draw_background: bool = True,
           place: int | None = None, object_seed: int | None = None) -> Image.Image:
    """Render one item as a 48x48 RGB PIL image.

    Args:
        seed: the item seed (non-negative int); it fixes the bird, its pose and colours, the
            background texture and the photo noise.
        background: None for the item's own place, 0 land or 1 water (a counterfactual: the
            same bird, same pixels where it is drawn, on the same kind of scene of the other
            background: forest <-> ocean, bamboo <-> lake, field <-> river).
        object: draw the bird (False: background only).
        draw_background: draw the background (False: the bird on a neutral grey).
        place: an explicit place (index into PLACES) instead of ``background``.
        object_seed: draw the bird of this other item (its species, pose, colours) on this
            item's background and photo noise: the object counterfactual.

    Raises:
        TypeError: a seed that is not a non-negative integer.
        ValueError: an invalid background or place, or nothing to draw.
    """
    return Image.fromarray(render_array(seed, background, object, draw_background, place, object_seed))


def object_mask(seed: int) -> np.ndarray:
    """``[48, 48]`` bool: where the bird of item ``seed`` covers at least half a pixel (every render)."""
    return _object(_check_seed(seed))[1] >= 0.5


def render_batch(seeds: Sequence[int], background: int | None = None, object: bool = True,
                 draw_background: bool = True, progress: bool = False, object_seeds: Sequence[int] | None = None,
                 place: int | None = None) -> np.ndarray:
    """Render many items, ``[n, 48, 48, 3]`` uint8 (about 2-3 ms per image on one core).

    Arguments as :func:`render`; ``object_seeds`` (``[n]``, optional) draws item
    ``object_seeds[i]``'s bird on item ``i``'s background.
    """
    seeds = list(seeds)
    if object_seeds is not None and len(object_seeds) != len(seeds):
        raise ValueError(f"object_seeds has {len(object_seeds)} entries for {len(seeds)} seeds")
    out = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    it = range(len(seeds))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="render", unit="img", mininterval=2.0)
    for i in it:
        out[i] = render_array(seeds[i], background, object, draw_background, place,
                              None if object_seeds is None else int(object_seeds[i]))
    return out


def swap_partners(seeds: Sequence[int]) -> np.ndarray:
    """For each item, an item of the *other* class among ``seeds`` (for the object counterfactual).

    Partners are paired in order within each species rank (the i-th landbird with the i-th
    waterbird, cycling through the smaller class), so every bird is used and the pairing is
    deterministic. Returns ``[n]`` int64 item seeds.

    Raises:
        ValueError: if ``seeds`` lacks one of the classes.
    """
    seeds = np.asarray([_check_seed(s) for s in seeds], dtype=np.int64)
    y = labels_for_seeds(seeds)["y"]
    land, water = seeds[y == 0], seeds[y == 1]
    if len(land) == 0 or len(water) == 0:
        raise ValueError("an object swap needs items of both classes (landbird and waterbird)")
    out = np.empty_like(seeds)
    out[y == 0] = water[np.arange(len(land)) % len(water)]
    out[y == 1] = land[np.arange(len(water)) % len(land)]
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


class _Renderer:
    """``i -> render(seeds[i])``: a split's image loader. A class, not a closure, so that a split pickles
    (DataLoader workers started with ``spawn`` receive the dataset pickled)."""

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]

    def __call__(self, i: int) -> Image.Image:
        return render(self.seeds[int(i)])


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
        ``extra = {"species": [n], "place": [n], "item_seed": [n]}`` (``place`` indexes
        ``info["place_names"]``, like Waterbirds' ``place_filename``) and ``load_image(i)``
        rendering item ``i``.

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
    return GroupDataset(
        name="synthetic", split=split, class_names=list(CLASS_NAMES), spurious_names=list(SPURIOUS_NAMES),
        y=lab["y"], spurious=lab["spurious"], group=group, group_names=list(GROUP_NAMES), load_image=_Renderer(seed_list),
        ids=[str(s) for s in seed_list],
        extra={"species": lab["species"], "place": lab["place"], "item_seed": seeds.copy()},
        info={"generator": "ltcutils.datasets.synthetic", "version": VERSION, "split": split, "seed": int(seed),
              "group_counts": [int(c) for c in counts], "place_names": list(PLACES),
              "species_names": list(SPECIES), "image_size": IMAGE_SIZE},
        conflicting_groups=[1, 2],  # landbird on water, waterbird on land
    )


# ----------------------------------------------------------------------------- captions
PREFIXES = ["a photo of a", "a", "a picture of a", "an image of a"]
BACKGROUND_ONLY = {  # coarse background-only captions
    0: ["a photo of land", "land background", "a picture of land"],
    1: ["a photo of water", "water background", "a picture of water"],
}
PLACE_ONLY = ["a photo of a forest", "a photo of a bamboo grove", "a photo of a field",
              "a photo of the ocean", "a photo of a lake", "a photo of a river"]
P_BACKGROUND_ONLY = 0.10
P_OBJECT = {"class": 0.5, "species": 0.2, "bird": 0.3}
P_ATTRIBUTES = (0.3, 0.4, 0.3)  # zero, one or two attributes
P_MENTION_BACKGROUND = 0.5
P_PLACE = 0.5                   # of the background mentions, the share naming the place
# object kinds in a CaptionBatch
OBJ_NONE, OBJ_CLASS, OBJ_SPECIES, OBJ_BIRD = 0, 1, 2, 3


@dataclass
class CaptionBatch:
    """Captions and their structure (what each one claims), all arrays ``[n]`` int64.

    obj_kind: 0 none (background-only), 1 class word, 2 sub-species name, 3 "bird";
    obj_value: the class or sub-species index (-1 if none); attribute, attribute2: indices
    into ATTRIBUTES or -1; background: 0/1 if the caption names it, else -1; place: index into
    PLACES if the caption names the place, else -1.
    """

    texts: list[str]
    obj_kind: np.ndarray
    obj_value: np.ndarray
    attribute: np.ndarray
    background: np.ndarray
    attribute2: np.ndarray | None = None
    place: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        if self.attribute2 is None:
            self.attribute2 = np.full(n, -1, np.int64)
        if self.place is None:
            self.place = np.full(n, -1, np.int64)


def sample_captions(species: Sequence[int], spurious: Sequence[int], rng: np.random.Generator,
                    place: Sequence[int] | None = None) -> CaptionBatch:
    """One random true caption per item (see the module docstring for the recipe).

    Args:
        species: ``[n]`` sub-species indices; spurious: ``[n]`` backgrounds (0 land, 1 water).
        rng: a seeded ``numpy.random.Generator``.
        place: ``[n]`` places (index into PLACES); None = no caption names a place.
    """
    species = np.asarray(species, dtype=np.int64)
    spurious = np.asarray(spurious, dtype=np.int64)
    if species.shape != spurious.shape or species.ndim != 1:
        raise ValueError(f"species and spurious must be [n] arrays of equal length, "
                         f"got {species.shape} and {spurious.shape}")
    places = None if place is None else np.asarray(place, dtype=np.int64)
    if places is not None and (places.shape != species.shape or (PLACE_BACKGROUND[places] != spurious).any()):
        raise ValueError("place must be [n] and agree with spurious (PLACE_BACKGROUND[place] == spurious)")
    n = len(species)
    texts: list[str] = []
    kind, val = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    attr, attr2 = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    bg, pl = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    kinds = list(P_OBJECT)
    probs = np.array(list(P_OBJECT.values()))
    for i in range(n):
        s, b = int(species[i]), int(spurious[i])
        name_place = places is not None and rng.random() < P_PLACE
        if rng.random() < P_BACKGROUND_ONLY:
            if name_place:
                pl[i] = places[i]
                texts.append(PLACE_ONLY[pl[i]])
            else:
                bg[i] = b
                opts = BACKGROUND_ONLY[b]
                texts.append(opts[int(rng.integers(len(opts)))])
            continue
        prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
        k = kinds[int(rng.choice(len(kinds), p=probs))]
        if k == "species":
            kind[i], val[i], word = OBJ_SPECIES, s, SPECIES[s]
        elif k == "class":
            kind[i], val[i], word = OBJ_CLASS, int(SPECIES_CLASS[s]), CLASS_NAMES[int(SPECIES_CLASS[s])]
        else:
            kind[i], word = OBJ_BIRD, "bird"
        text = f"{prefix} {word}"
        n_attr = int(rng.choice(3, p=P_ATTRIBUTES))
        if n_attr:
            pick = rng.choice(SPECIES_ATTRIBUTES[SPECIES[s]], size=n_attr, replace=False)
            attr[i] = int(pick[0])
            text += " with " + ATTRIBUTES[attr[i]]
            if n_attr == 2:
                attr2[i] = int(pick[1])
                text += " and " + ATTRIBUTES[attr2[i]]
        if rng.random() < P_MENTION_BACKGROUND:
            if name_place:
                pl[i] = places[i]
                text += " " + PLACE_PHRASES[pl[i]]
            else:
                bg[i] = b
                text += f" on {SPURIOUS_NAMES[b]}"
        texts.append(text)
    return CaptionBatch(texts, kind, val, attr, bg, attr2, pl)


def caption(seed: int, rng: np.random.Generator) -> str:
    """A random true caption of item ``seed`` (its sub-species, own background and place)."""
    _, species, b, place = _labels(seed)
    return sample_captions([species], [b], rng, place=[place]).texts[0]


def caption_compatibility(captions: CaptionBatch, species: Sequence[int], spurious: Sequence[int],
                          place: Sequence[int] | None = None) -> np.ndarray:
    """``[n_images, n_captions]`` bool: True where the caption truly describes the image.

    A caption fits an image when its object (class word, sub-species or "bird"), its
    attributes, its background and its place, each where present, are all true of the image.
    Without ``place`` a caption naming a place fits every image on that place's background.
    """
    sp = np.asarray(species, dtype=np.int64)[:, None]
    b = np.asarray(spurious, dtype=np.int64)[:, None]
    kind, val = captions.obj_kind[None, :], captions.obj_value[None, :]
    obj_ok = ((kind == OBJ_NONE) | (kind == OBJ_BIRD) | ((kind == OBJ_CLASS) & (SPECIES_CLASS[sp] == val))
              | ((kind == OBJ_SPECIES) & (sp == val)))
    ok = obj_ok
    for a in (captions.attribute, captions.attribute2):
        ok = ok & np.where(a[None, :] < 0, True, ATTRIBUTE_TRUE[np.maximum(a, 0)][:, sp[:, 0]].T)
    ok = ok & ((captions.background[None, :] < 0) | (captions.background[None, :] == b))
    pc = captions.place[None, :]
    if place is None:
        place_ok = (pc < 0) | (PLACE_BACKGROUND[np.maximum(pc, 0)] == b)
    else:
        place_ok = (pc < 0) | (pc == np.asarray(place, dtype=np.int64)[:, None])
    return ok & place_ok


def all_captions() -> list[str]:
    """Every caption :func:`sample_captions` can produce (for token-length checks)."""
    out = [t for opts in BACKGROUND_ONLY.values() for t in opts] + list(PLACE_ONLY)
    tails = [""] + [f" on {w}" for w in SPURIOUS_NAMES] + [" " + p for p in PLACE_PHRASES]
    for s, name in enumerate(SPECIES):
        attrs = SPECIES_ATTRIBUTES[name]
        withs = [""] + [f" with {ATTRIBUTES[a]}" for a in attrs] + [
            f" with {ATTRIBUTES[a]} and {ATTRIBUTES[c]}" for a in attrs for c in attrs if a != c]
        for word in (name, CLASS_NAMES[int(SPECIES_CLASS[s])], "bird"):
            for prefix in PREFIXES:
                out += [f"{prefix} {word}{w}{t}" for w in withs for t in tails]
    return sorted(set(out))


# ----------------------------------------------------------------------------- pixels
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_pixels(images: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
              size: int | None = None):
    """uint8 ``[n, H, W, 3]`` -> float ``[n, 3, size, size]`` tensor normalised like open_clip's transform.

    ``size`` (default: the images' own) resizes each image with PIL's bicubic filter first, as
    open_clip's eval transform does, so renders feed a model of any input size (e.g. 224 px
    for ViT-B-16). At the render size it equals the tiny model's ``preprocess``, vectorised.
    """
    import torch

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [n, H, W, 3], got {arr.dtype} {arr.shape}")
    if size is not None and (arr.shape[1], arr.shape[2]) != (int(size), int(size)):
        arr = np.stack([np.asarray(Image.fromarray(a).resize((int(size), int(size)), Image.BICUBIC)) for a in arr])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def model_image_size(model) -> int:
    """Input size in pixels of a model's image tower (LoadedModel, HookedViT, open_clip CLIP or
    anything with an integer ``image_size``).

    Raises:
        ValueError: when the size cannot be found (pass ``size=`` to :func:`to_pixels` yourself).
    """
    hooked = getattr(model, "hooked", None)
    for cfg in (getattr(hooked, "cfg", None), getattr(model, "cfg", None)):
        if cfg is not None and getattr(cfg, "image_size", None):
            return int(cfg.image_size)
    if isinstance(getattr(model, "image_size", None), (int, np.integer)):
        return int(model.image_size)
    size = getattr(getattr(getattr(model, "clip", model), "visual", None), "image_size", None)
    if size is None:
        raise ValueError(f"cannot tell the input size of {type(model).__name__}; pass size= to to_pixels")
    return int(size[0] if isinstance(size, (tuple, list)) else size)
