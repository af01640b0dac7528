"""Shared fixtures: small federated data sets built from scikit-learn's digits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedwarden.core.config import DataConfig
from fedwarden.data import FederatedDataset, load_dataset


@pytest.fixture(scope="session")
def digits_clients() -> FederatedDataset:
    """Eight clients holding Dirichlet(1.0) slices of digits, with a central test set."""
    return load_dataset(
        DataConfig(source="digits", num_clients=8, partition={"alpha": 1.0}), seed=3
    )


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One PyTorch thread, as in worker processes: bit-for-bit reproducibility needs it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
