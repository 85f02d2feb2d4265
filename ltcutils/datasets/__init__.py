"""Datasets: the synthetic benchmark and the real benchmarks, behind one interface."""

from .base import DatasetError, GroupDataset

__all__ = ["GroupDataset", "DatasetError"]
from .registry import DATA_ENV, DATASETS, FOLDERS, describe, load_dataset

__all__ += ["load_dataset", "DATASETS", "FOLDERS", "DATA_ENV", "describe"]
