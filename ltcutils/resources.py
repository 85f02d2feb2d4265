"""Where the package finds what it ships: prompt banks, text pools, the default checkpoint, notebooks.

One place for every shipped file, so the package works the same from a source checkout (an
editable install reads the repository's ``data/`` and ``notebooks/``) and from a wheel (the build
copies them into the package as ``ltcutils/_data`` and ``ltcutils/_notebooks``).

    >>> from ltcutils import resources
    >>> resources.data_path("prompts", "synthetic.yaml").name
    'synthetic.yaml'
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["data_dir", "data_path", "notebooks_dir", "package_dir"]


def package_dir() -> Path:
    """The installed ``ltcutils`` package folder."""
    return Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def data_dir() -> Path:
    """The shipped data folder (``ltcutils/_data`` in a wheel, else the checkout's ``data/``).

    Raises:
        FileNotFoundError: neither exists (a broken install).
    """
    found = _first_existing(package_dir() / "_data", package_dir().parent / "data")
    if found is None:
        raise FileNotFoundError(
            f"the shipped data of ltcutils is missing: neither {package_dir() / '_data'} (wheel) nor "
            f"{package_dir().parent / 'data'} (source checkout) exists. Reinstall the package.")
    return found


def data_path(*parts: str) -> Path:
    """A shipped file or folder, e.g. ``data_path("prompts", "waterbirds.yaml")`` (not checked to exist)."""
    return data_dir().joinpath(*parts)


def notebooks_dir() -> Path | None:
    """The shipped notebooks (``ltcutils/_notebooks`` in a wheel, else the checkout's ``notebooks/``)."""
    return _first_existing(package_dir() / "_notebooks", package_dir().parent / "notebooks")
