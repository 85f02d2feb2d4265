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
    assert a.dtype == np.uint8 and a.shape == (48, 48, 3) == (syn.IMAGE_SIZE, syn.IMAGE_SIZE, 3)
    assert a.tobytes() == b.tobytes()
    assert syn.render(123).tobytes() == a.tobytes()
    assert syn.render_array(124).tobytes() != a.tobytes()
    batch = syn.render_batch([123, 124])
    assert batch[0].tobytes() == a.tobytes()


def test_render_modes_and_errors():
    img = syn.render(5)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (48, 48)
    with pytest.raises(ValueError, match="background"):
        syn.render(5, background=2)
    with pytest.raises(ValueError, match="place"):
        syn.render(5, place=6)
    with pytest.raises(ValueError, match="not a water place"):
        syn.render(5, background=1, place=0)
    with pytest.raises(ValueError, match="nothing to draw"):
        syn.render(5, object=False, draw_background=False)
    with pytest.raises(TypeError, match="non-negative integer"):
        syn.render(-1)
    with pytest.raises(TypeError, match="non-negative integer"):
        syn.render(1.5)
    with pytest.raises(ValueError, match="object_seeds"):
        syn.render_batch([1, 2], object_seeds=[3])


def _touched(seed):
    """Pixels the bird covers at all (even a sliver of its anti-aliased edge)."""
    return syn._object(seed)[1] > 0


def _full_cover(seed):
    """Pixels the bird covers completely (its anti-aliased edge blends with the background)."""
    return syn._object(seed)[1] >= 1.0


def test_background_counterfactual_keeps_object_pixels():
    for seed in range(6):
        mask, full = syn.object_mask(seed), _full_cover(seed)
        assert mask.sum() > 60 and full.sum() > 30, "the bird should cover a visible area"
        land = syn.render_array(seed, background=0)
        water = syn.render_array(seed, background=1)
        grey = syn.render_array(seed, draw_background=False)
        # identical where the bird is drawn, different elsewhere
        assert np.array_equal(land[full], water[full])
        assert np.array_equal(land[full], grey[full])
        assert np.abs(land[~mask].astype(int) - water[~mask].astype(int)).mean() > 20
        touched = _touched(seed)
        # the item's own render equals the counterfactual with its own background
        own = syn.item_labels(seed)[2]
        assert np.array_equal(syn.render_array(seed), (land, water)[own])
        # the swapped background is the same kind of scene on the other side
        p = syn.item_place(seed)
        other = syn.render_array(seed, background=1 - own)
        assert np.array_equal(other, syn.render_array(seed, place=3 * (1 - own) + p % 3))
        # background-only differs from the full render only where the bird is
        bg_only = syn.render_array(seed, object=False)
        render = syn.render_array(seed)
        assert np.array_equal(bg_only[~touched], render[~touched])
        assert not np.array_equal(bg_only[mask], render[mask])


def test_object_counterfactual_keeps_the_background():
    seeds = list(range(40))
    partners = syn.swap_partners(seeds)
    lab = syn.labels_for_seeds(seeds)
    assert (syn.labels_for_seeds(partners)["y"] == 1 - lab["y"]).all(), "the partner is of the other class"
    for s, q in zip(seeds[:6], partners[:6]):
        swapped = syn.render_array(s, object_seed=int(q))
        both = _touched(s) | _touched(int(q))
        own = syn.render_array(s)
        assert np.array_equal(swapped[~both], own[~both]), "same background and photo noise outside both birds"
        # only the partner's bird changes the picture: it differs from the bare background just there
        bare = syn.render_array(s, object=False)
        assert not (swapped != bare).any(-1)[~_touched(int(q))].any()
        # where the partner's bird covers a pixel fully, the pixel no longer depends on the background
        bird = _full_cover(int(q))
        grey = syn.render_array(s, draw_background=False, object_seed=int(q))
        assert bird.sum() > 30 and np.array_equal(swapped[bird], grey[bird])
    assert np.array_equal(syn.render_batch(seeds[:3], object_seeds=partners[:3])[1],
                          syn.render_array(seeds[1], object_seed=int(partners[1])))
    with pytest.raises(ValueError, match="both classes"):
        syn.swap_partners([s for s in seeds if lab["y"][s] == 0])


def test_places_have_their_colours():
    # water places are bluer than land places on average (the spurious cue)
    seeds = list(range(60))
    land = syn.render_batch(seeds, background=0, object=False).astype(float)
    water = syn.render_batch(seeds, background=1, object=False).astype(float)
    blueness = lambda x: (x[..., 2] - x[..., 0]).mean((1, 2))  # noqa: E731
    assert (blueness(water) > blueness(land) + 20).all()
    # the six places differ from one another (mean colour per place)
    by_place = np.stack([syn.render_batch(seeds[:20], place=p, object=False).astype(float).mean((0, 1, 2))
                         for p in range(len(syn.PLACES))])
    dist = np.abs(by_place[:, None] - by_place[None]).sum(-1)
    assert (dist + 1e9 * np.eye(6) > 15).all(), dist


def test_species_silhouettes_and_attributes():
    # swans have long necks (tall), ducks are flat; waterbird feet are orange, landbird feet dark
    def height_width(seed):
        ys, xs = np.nonzero(syn.object_mask(seed))
        return (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1)

    swans = [height_width(s) for s in seeds_of(syn.SPECIES.index("swan"), 10)]
    ducks = [height_width(s) for s in seeds_of(syn.SPECIES.index("duck"), 10)]
    assert min(swans) > max(ducks)

    def feet_orange(seed):  # the bottom rows of the bird, on grey
        img = syn.render_array(seed, draw_background=False).astype(int)
        ys, xs = np.nonzero(syn.object_mask(seed))
        rows = img[ys.max() - 1 : ys.max() + 1]
        m = syn.object_mask(seed)[ys.max() - 1 : ys.max() + 1]
        px = rows[m]
        return float((px[:, 0] - px[:, 2]).mean())

    for sp in range(6):
        vals = [feet_orange(s) for s in seeds_of(sp, 5)]
        if syn.SPECIES_CLASS[sp] == 1:
            assert min(vals) > 80, (syn.SPECIES[sp], vals)
        else:
            assert max(vals) < 40, (syn.SPECIES[sp], vals)
    # every species has its class's attributes, and none of the other class's
    for sp, name in enumerate(syn.SPECIES):
        y = int(syn.SPECIES_CLASS[sp])
        assert set(syn.CLASS_ATTRIBUTES[y]) <= set(syn.SPECIES_ATTRIBUTES[name])
        assert not set(syn.CLASS_ATTRIBUTES[1 - y]) & set(syn.SPECIES_ATTRIBUTES[name])


def test_labels_are_consistent():
    for s in range(50):
        y, species, b = syn.item_labels(s)
        assert y == syn.SPECIES_CLASS[species] and b in (0, 1)
        assert syn.PLACE_BACKGROUND[syn.item_place(s)] == b
    lab = syn.labels_for_seeds(range(3000))
    # species roughly uniform, backgrounds roughly balanced, every place used
    counts = np.bincount(lab["species"], minlength=6)
    assert counts.min() > 400
    assert 0.45 < lab["spurious"].mean() < 0.55
    assert np.bincount(lab["place"], minlength=6).min() > 400
    assert np.array_equal(syn.PLACE_BACKGROUND[lab["place"]], lab["spurious"])


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
        assert ds.info["place_names"] == syn.PLACES and ds.info["version"] == 2
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
        assert np.array_equal(ds.extra["place"], lab["place"])
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


def test_to_pixels_matches_model_preprocess(tiny_model):
    imgs = syn.render_batch([1, 2, 3])
    ours = syn.to_pixels(imgs)
    theirs = torch.stack([tiny_model.preprocess(Image.fromarray(a)) for a in imgs])
    assert ours.shape == (3, 3, 48, 48)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert syn.model_image_size(tiny_model) == 48 == syn.model_image_size(tiny_model.hooked)


def test_to_pixels_resizes_like_open_clip_for_a_bigger_model():
    """A 224 px ViT gets the renders resized as its own preprocess would resize them."""
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    imgs = syn.render_batch([1, 2])
    ours = syn.to_pixels(imgs, size=224)
    theirs = torch.stack([preprocess(Image.fromarray(a)) for a in imgs])
    assert ours.shape == (2, 3, 224, 224)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_captions_agree_with_labels():
    rng = np.random.default_rng(0)
    seeds = list(range(600))
    lab = syn.labels_for_seeds(seeds)
    caps = syn.sample_captions(lab["species"], lab["spurious"], rng, place=lab["place"])
    assert len(caps.texts) == 600
    for i, t in enumerate(caps.texts):
        s, b, p = lab["species"][i], lab["spurious"][i], lab["place"][i]
        kind, val = caps.obj_kind[i], caps.obj_value[i]
        y = syn.SPECIES_CLASS[s]
        assert syn.CLASS_NAMES[1 - y] not in t, t
        assert not any(name in t for j, name in enumerate(syn.SPECIES) if j != s), t
        assert f"on {syn.SPURIOUS_NAMES[1 - b]}" not in t and syn.SPURIOUS_NAMES[1 - b] + " background" not in t, t
        assert not any(ph in t for j, ph in enumerate(syn.PLACE_PHRASES) if j != p), t
        if kind == syn.OBJ_NONE:
            assert syn.SPURIOUS_NAMES[b] in t or syn.PLACE_ONLY[p] == t
        elif kind == syn.OBJ_BIRD:
            assert " bird" in t and val == -1
        else:
            word = syn.SPECIES[s] if kind == syn.OBJ_SPECIES else syn.CLASS_NAMES[y]
            assert word in t and val == (s if kind == syn.OBJ_SPECIES else y)
        for a in (caps.attribute[i], caps.attribute2[i]):
            if a >= 0:
                assert syn.ATTRIBUTES[a] in t and a in syn.SPECIES_ATTRIBUTES[syn.SPECIES[s]]
        if caps.background[i] >= 0:
            assert caps.background[i] == b
        if caps.place[i] >= 0:
            assert caps.place[i] == p
    # the mix of caption kinds is as documented
    obj = caps.obj_kind > 0
    assert 0.05 < np.mean(~obj) < 0.16
    assert 0.12 < np.mean(caps.obj_kind[obj] == syn.OBJ_SPECIES) < 0.3
    assert 0.2 < np.mean(caps.obj_kind[obj] == syn.OBJ_BIRD) < 0.4
    assert 0.6 < np.mean(caps.attribute[obj] >= 0) < 0.8
    assert 0.2 < np.mean(caps.attribute2[obj] >= 0) < 0.4
    assert (caps.place >= 0).any() and (caps.background >= 0).any()
    one = syn.caption(7, np.random.default_rng(1))
    assert isinstance(one, str) and one == syn.caption(7, np.random.default_rng(1))
    with pytest.raises(ValueError, match="agree with spurious"):
        syn.sample_captions([0], [0], rng, place=[3])


def test_caption_compatibility_by_hand():
    caps = syn.CaptionBatch(
        texts=["a landbird", "a swan with webbed feet", "a photo of water", "a waterbird on land",
               "a bird with webbed feet and a long beak", "a photo of a lake"],
        obj_kind=np.array([1, 2, 0, 1, 3, 0]), obj_value=np.array([0, 4, -1, 1, -1, -1]),
        attribute=np.array([-1, 4, -1, -1, 4, -1]), background=np.array([-1, -1, 1, 0, -1, -1]),
        attribute2=np.array([-1, -1, -1, -1, 8, -1]), place=np.array([-1, -1, -1, -1, -1, 4]),
    )
    species = [0, 4, 5, 3]  # sparrow, swan, gull, duck
    spurious = [1, 0, 1, 0]
    place = [4, 1, 3, 2]    # lake, bamboo, ocean, field
    got = syn.caption_compatibility(caps, species, spurious, place)
    want = np.array([
        [1, 0, 1, 0, 0, 1],  # sparrow on a lake
        [0, 1, 0, 1, 0, 0],  # swan in bamboo
        [0, 0, 1, 0, 1, 0],  # gull on the ocean
        [0, 0, 0, 1, 0, 0],  # duck in a field
    ], dtype=bool)
    assert np.array_equal(got, want)
    # without places, a place caption fits every image on its background
    assert syn.caption_compatibility(caps, species, spurious)[:, 5].tolist() == [True, False, True, False]


def test_captions_fit_the_context(tiny_model):
    texts = syn.all_captions()
    assert len(texts) > 1000
    tok = tiny_model.tokenizer(texts)
    assert tok.shape[1] == 24
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
    # every injection pair names caption attributes, waterbird-like (a) vs landbird-like (b), and the
    # "a" side is true of most waterbird species and no landbird (the class-defining attributes)
    attr_of = {a: i for i, a in enumerate(syn.ATTRIBUTES)}
    captions = set(syn.all_captions())
    for a, b in bank.injection:
        assert a in captions and b in captions, (a, b)
        ia, ib = (attr_of[s.removeprefix("a bird with ")] for s in (a, b))
        cls_a = syn.SPECIES_CLASS[syn.ATTRIBUTE_TRUE[ia]]
        cls_b = syn.SPECIES_CLASS[syn.ATTRIBUTE_TRUE[ib]]
        assert (cls_a == 1).all() and (cls_b == 0).all() and len(cls_a) >= 2 and len(cls_b) >= 2, (a, b)
