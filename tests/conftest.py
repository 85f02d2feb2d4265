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

# Shape annotations (jaxtyping) are enforced at test time only: the import hook wraps every
# function and dataclass of these modules with beartype when they are first imported, which is
# after this file runs. Add a module here once its public tensor functions are annotated.
TYPECHECKED_MODULES = ["ltcutils.hooked", "ltcutils.decompose", "ltcutils.activations", "ltcutils.heads", "ltcutils.lens",
                       "ltcutils.locate", "ltcutils.correct", "ltcutils.baselines"]
from jaxtyping import install_import_hook  # noqa: E402

install_import_hook(TYPECHECKED_MODULES, "beartype.beartype")


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


def _chrome_driver(download_dir=None):
    """A headless Debian Chromium driven by selenium (flags that suit a machine with no network)."""
    import shutil
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        msg = "Debian chromium + chromium-driver are not installed (scripts/browser.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='ltc-chrome-')}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture
def chrome():
    """A fresh headless Chromium (selenium WebDriver); closed after the test.

    Fails in CI (``CI`` set) when the browser is missing; skips elsewhere, naming the install script.
    """
    drv = _chrome_driver()
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture
def artifacts_dir(tmp_path):
    """Where a test keeps files worth looking at (screenshots): ``$LTC_ARTIFACTS`` or its tmp dir."""
    from pathlib import Path

    d = Path(os.environ.get("LTC_ARTIFACTS") or tmp_path / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d
