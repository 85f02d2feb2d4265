"""The synthetic benchmark: determinism, splits, counterfactual renders, captions, prompt bank."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import ltcutils as ltc  # noqa: E402
from ltcutils.datasets import synthetic as syn  # noqa: E402
from ltcutils.datasets.base import DatasetError, GroupDataset  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny open_clip ViT at random weights (seeded)."""
    torch.manual_seed(0)
    return ltc.models.load_model("ltc-tiny", pretrained=None)


def seeds_of(species: int, n: int, start: int = 0) -> list[int]:
    out, s = [], start
    while len(out) < n:
        if syn.item_labels(s)[1] == species:
            out.append(s)
        s += 1
    return out


def test_render_is_deterministic_and_seed_dependent():
    a = syn.render_array(123)
    b = syn.render_array(123)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert a.tobytes() == b.tobytes()
    assert syn.render(123).tobytes() == a.tobytes()
    assert syn.render_array(124).tobytes() != a.tobytes()
    batch = syn.render_batch([123, 124])
    assert batch[0].tobytes() == a.tobytes()


def test_render_modes_and_errors():
    img = syn.render(5)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
    with pytest.raises(ValueError, match="background"):
        syn.render(5, background=2)
    with pytest.raises(ValueError, match="nothing to draw"):
        syn.render(5, object=False, draw_background=False)
    with pytest.raises(TypeError, match="non-negative integer"):
        syn.render(-1)
    with pytest.raises(TypeError, match="non-negative integer"):
        syn.render(1.5)


def test_background_counterfactual_keeps_object_pixels():
    for seed in range(6):
        mask = syn.object_mask(seed)
        assert mask.sum() > 40, "the bird should cover a visible area"
        land = syn.render_array(seed, background=0)
        water = syn.render_array(seed, background=1)
        grey = syn.render_array(seed, draw_background=False)
        # identical where the bird is drawn, different elsewhere
        assert np.array_equal(land[mask], water[mask])
        assert np.array_equal(land[mask], grey[mask])
        assert np.abs(land[~mask].astype(int) - water[~mask].astype(int)).mean() > 20
        # the item's own render equals the counterfactual with its own background
        own = syn.item_labels(seed)[2]
        assert np.array_equal(syn.render_array(seed), (land, water)[own])
        # background-only differs from the full render only where the bird is
        bg_only = syn.render_array(seed, object=False)
        full = syn.render_array(seed)
        assert np.array_equal(bg_only[~mask], full[~mask])
        assert not np.array_equal(bg_only[mask], full[mask])


def test_backgrounds_have_their_colours():
    # water is bluer than land on average (the spurious cue), same birds
    seeds = list(range(40))
    land = syn.render_batch(seeds, background=0, object=False).astype(float)
    water = syn.render_batch(seeds, background=1, object=False).astype(float)
    blueness = lambda x: (x[..., 2] - x[..., 0]).mean((1, 2))  # noqa: E731
    assert (blueness(water) > blueness(land) + 30).all()


def test_species_silhouettes_differ():
    # heron is tall, duck is flat: compare the bounding boxes of the bird masks
    def height_width(seed):
        ys, xs = np.nonzero(syn.object_mask(seed))
        return (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1)

    herons = [height_width(s) for s in seeds_of(syn.SPECIES.index("heron"), 10)]
    ducks = [height_width(s) for s in seeds_of(syn.SPECIES.index("duck"), 10)]
    assert min(herons) > 1.0 > 0.6 > max(ducks)


def test_labels_are_consistent():
    for s in range(50):
        y, species, b = syn.item_labels(s)
        assert y == syn.SPECIES_CLASS[species] and b in (0, 1)
    lab = syn.labels_for_seeds(range(3000))
    # species roughly uniform, backgrounds roughly balanced
    counts = np.bincount(lab["species"], minlength=6)
    assert counts.min() > 400
    assert 0.45 < lab["spurious"].mean() < 0.55


def test_split_group_proportions_and_disjointness():
    train = syn.make_split("train", n=2000)
    assert isinstance(train, GroupDataset) and len(train) == 2000
    assert train.group_counts() == {"landbird/land": 950, "landbird/water": 50,
                                    "waterbird/land": 50, "waterbird/water": 950}
    assert np.mean(train.spurious == train.y) == pytest.approx(0.95)
    biased = syn.make_split("train", n=1000, p_aligned=0.8)
    assert biased.group_counts() == {"landbird/land": 400, "landbird/water": 100,
                                     "waterbird/land": 100, "waterbird/water": 400}
    val = syn.make_split("val", n_per_group=30)
    test = syn.make_split("test", n_per_group=30)
    for ds in (val, test):
        assert list(ds.group_counts().values()) == [30, 30, 30, 30]
        assert ds.group_names == syn.GROUP_NAMES
    ids = [set(ds.ids) for ds in (train, val, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # another seed family is disjoint too
    assert not set(syn.make_split("test", n_per_group=30, seed=1).ids) & ids[2]
    # labels agree with the seeds, group = 2y + b, and the loader renders the item
    for ds in (train, test):
        lab = syn.labels_for_seeds([int(s) for s in ds.ids])
        assert np.array_equal(lab["y"], ds.y) and np.array_equal(lab["spurious"], ds.spurious)
        assert np.array_equal(ds.group, 2 * ds.y + ds.spurious)
        assert np.array_equal(ds.extra["species"], lab["species"])
        assert np.array_equal(np.asarray(ds.image(3)), syn.render_array(int(ds.ids[3])))
    # smaller balanced splits are prefixes (per group) of larger ones
    small = syn.make_split("test", n_per_group=10)
    assert set(small.ids) <= set(test.ids)
    assert small.fingerprint() != test.fingerprint()
    assert syn.make_split("test", n_per_group=10).fingerprint() == small.fingerprint()


def test_split_errors():
    with pytest.raises(DatasetError, match="unknown split"):
        syn.make_split("dev")
    with pytest.raises(DatasetError, match="p_aligned"):
        syn.make_split("train", n=10, p_aligned=1.5)


def test_render_speed():
    import time

    t = time.perf_counter()
    syn.render_batch(range(200))
    per_image = (time.perf_counter() - t) / 200
    # 4k evaluation images must take well under a minute (typically ~1-2 ms each)
    assert per_image < 0.010, f"{per_image * 1e3:.1f} ms per image"


def test_to_pixels_matches_model_preprocess(tiny_model):
    imgs = syn.render_batch([1, 2, 3])
    ours = syn.to_pixels(imgs)
    theirs = torch.stack([tiny_model.preprocess(Image.fromarray(a)) for a in imgs])
    assert ours.shape == (3, 3, 64, 64)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_captions_agree_with_labels():
    rng = np.random.default_rng(0)
    seeds = list(range(400))
    lab = syn.labels_for_seeds(seeds)
    caps = syn.sample_captions(lab["species"], lab["spurious"], rng)
    assert len(caps.texts) == 400
    for t, s, b, kind, val, attr, bg in zip(caps.texts, lab["species"], lab["spurious"], caps.obj_kind,
                                            caps.obj_value, caps.attribute, caps.background):
        y = syn.SPECIES_CLASS[s]
        other_bg = syn.SPURIOUS_NAMES[1 - b]
        other_cls = syn.CLASS_NAMES[1 - y]
        assert other_cls not in t, t
        assert not any(name in t for i, name in enumerate(syn.SPECIES) if i != s), t
        assert f"on {other_bg}" not in t and other_bg + " background" not in t, t
        if kind == syn.OBJ_NONE:
            assert syn.SPURIOUS_NAMES[b] in t or ("grass" in t) == (b == 0)
        else:
            word = syn.SPECIES[s] if kind == syn.OBJ_SPECIES else syn.CLASS_NAMES[y]
            assert word in t and val == (s if kind == syn.OBJ_SPECIES else y)
        if attr >= 0:
            assert syn.ATTRIBUTES[attr] in t and attr in syn.SPECIES_ATTRIBUTES[syn.SPECIES[s]]
        if bg >= 0:
            assert bg == b
    # the mix of caption kinds is as documented (10% background only, 20% of the rest species)
    frac_bg_only = np.mean(caps.obj_kind == syn.OBJ_NONE)
    assert 0.05 < frac_bg_only < 0.16
    assert 0.12 < np.mean(caps.obj_kind[caps.obj_kind > 0] == syn.OBJ_SPECIES) < 0.3
    assert 0.3 < np.mean(caps.attribute[caps.obj_kind > 0] >= 0) < 0.5
    one = syn.caption(7, np.random.default_rng(1))
    assert isinstance(one, str) and one == syn.caption(7, np.random.default_rng(1))


def test_caption_compatibility_by_hand():
    caps = syn.CaptionBatch(
        texts=["a landbird", "a heron with long legs", "a photo of water", "a waterbird on land",
               "a gull with long legs"],
        obj_kind=np.array([1, 2, 0, 1, 2]), obj_value=np.array([0, 5, -1, 1, 4]),
        attribute=np.array([-1, 12, -1, -1, 12]), background=np.array([-1, -1, 1, 0, -1]),
    )
    species = [0, 5, 4, 3]  # sparrow, heron, gull, duck
    spurious = [1, 0, 1, 0]
    got = syn.caption_compatibility(caps, species, spurious)
    want = np.array([
        [1, 0, 1, 0, 0],  # sparrow on water
        [0, 1, 0, 1, 0],  # heron on land
        [0, 0, 1, 0, 1],  # gull on water
        [0, 0, 0, 1, 0],  # duck on land
    ], dtype=bool)
    assert np.array_equal(got, want)


def test_captions_fit_the_context(tiny_model):
    texts = syn.all_captions()
    assert len(texts) > 200
    tok = tiny_model.tokenizer(texts)
    assert tok.shape[1] == 16
    # the end-of-text token (the largest id) must be inside the context for every caption
    assert (tok == 49407).any(1).all(), [t for t, row in zip(texts, tok) if not (row == 49407).any()]
    from ltcutils.text import load_prompt_bank

    bank = load_prompt_bank("synthetic")
    prompts = [p for ps in bank.class_prompts.values() for p in ps] + \
              [p for ps in bank.spurious_prompts.values() for p in ps] + \
              [s for pair in bank.injection + bank.roboshot_reject + bank.roboshot_accept for s in pair] + \
              bank.ortho_spurious + [p for ps in bank.ortho_candidates.values() for p in ps]
    assert (tiny_model.tokenizer(prompts) == 49407).any(1).all()


def test_prompt_bank_matches_the_generator():
    from ltcutils.text import load_prompt_bank

    bank = load_prompt_bank("synthetic")
    assert bank.class_names == syn.CLASS_NAMES and bank.spurious_names == syn.SPURIOUS_NAMES
    assert bank.class_prompts == {"landbird": ["a photo of a landbird"], "waterbird": ["a photo of a waterbird"]}
    assert len(bank.injection) >= 3 and bank.roboshot_reject and bank.roboshot_accept
    assert set(bank.ortho_candidates) == set(syn.CLASS_NAMES)
    # every injection pair uses caption attributes and points waterbird-like (a) vs landbird-like (b)
    attr_of = {a.removeprefix("with "): i for i, a in enumerate(syn.ATTRIBUTES)}
    for a, b in bank.injection:
        ia, ib = (attr_of[s.removeprefix("a bird with ")] for s in (a, b))
        true_a = syn.SPECIES_CLASS[syn.ATTRIBUTE_TRUE[ia]]
        true_b = syn.SPECIES_CLASS[syn.ATTRIBUTE_TRUE[ib]]
        assert (true_a == 1).all() and (true_b == 0).all(), (a, b)
