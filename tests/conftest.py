"""Shared fixtures: small federated data sets built from scikit-learn's digits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedwarden.core.config import DataConfig
from fedwarden.data import FederatedDataset, load_dataset
from grpc_federation import Federation


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


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Callable[..., Federation]]:
    """Make server-and-client-process federations under ``tmp_path``; all stopped after."""
    created: list[Federation] = []

    def make(**settings: object) -> Federation:
        made = Federation.create(tmp_path, **settings)
        created.append(made)
        return made

    yield make
    for made in created:
        made.stop()
