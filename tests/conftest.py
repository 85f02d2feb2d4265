"""Shared fixtures. No test may download anything: the hub is forced offline here."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """The tiny open_clip ViT at random weights (seeded)."""
    import ltcutils as ltc

    torch.manual_seed(0)
    return ltc.models.load_model("ltc-tiny", pretrained=None)


def make_fake_dataset(n: int = 24, size: int = 64, seed: int = 0, name: str = "fake", split: str = "test"):
    """A GroupDataset of random-noise images with balanced binary labels."""
    from ltcutils.datasets.base import GroupDataset

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    s = (np.arange(n) // 2) % 2
    return GroupDataset(
        name=name, split=split, class_names=["a", "b"], spurious_names=["u", "v"], y=y, spurious=s,
        group=2 * y + s, group_names=["a/u", "a/v", "b/u", "b/v"],
        load_image=lambda i: Image.fromarray(pixels[i]), ids=[str(i) for i in range(n)],
        info={"seed": seed},
    )


@pytest.fixture
def fake_dataset():
    return make_fake_dataset()
