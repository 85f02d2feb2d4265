"""CelebA's prompt bank follows the chosen attribute pair (so another target is one loader option away)."""

import pytest

import ltcutils as ltc
from ltcutils.datasets import celeba
from ltcutils.datasets.base import DatasetError
from ltcutils.datasets.registry import default_prompt_bank


def test_default_pair_gets_the_shipped_bank():
    bank = default_prompt_bank("celeba")
    assert bank.source.endswith("celeba.yaml") and bank.class_names == ["not blond", "blond"]
    assert default_prompt_bank("celeba", target="Blond_Hair", skip_bad=True).source == bank.source


def test_another_pair_gets_a_bank_naming_the_loaders_classes(tmp_path):
    import fixtures_real as F

    root = F.make_celeba(tmp_path / "celeba")
    ds = ltc.datasets.registry.load_dataset("celeba", "test", root=root, target="Eyeglasses", spurious="Male")
    bank = default_prompt_bank("celeba", target="Eyeglasses", spurious="Male")
    assert bank.class_names == list(ds.class_names) == ["not eyeglasses", "eyeglasses"]
    assert bank.spurious_names == list(ds.spurious_names) == ["female", "male"]
    assert bank.class_prompts["eyeglasses"] == ["a photo of a person, eyeglasses."]
    assert [tuple(p) for p in bank.injection] == [("a photo of a person, eyeglasses.",
                                                   "a photo of a person, not eyeglasses.")]
    assert set(bank.ortho_candidates) == {"not eyeglasses", "eyeglasses"}
    named = celeba.prompt_bank("Smiling", "Young", class_names=["serious", "smiling"])
    assert named.class_names == ["serious", "smiling"] and named.spurious_names == ["not young", "young"]


def test_bad_pairs_are_refused():
    with pytest.raises(DatasetError, match="valid attributes"):
        celeba.prompt_bank("Blonde_Hair")
    with pytest.raises(DatasetError, match="same attribute"):
        celeba.prompt_bank("Male", "Male")


def test_other_datasets_keep_their_shipped_banks():
    assert default_prompt_bank("waterbirds").class_names == ["landbird", "waterbird"]
    assert default_prompt_bank("synthetic", n_per_group=3).dataset == "synthetic"
