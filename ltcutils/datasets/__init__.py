"""Datasets: the synthetic benchmark and the real benchmarks, behind one interface."""

from .base import DatasetError, GroupDataset

__all__ = ["GroupDataset", "DatasetError"]
