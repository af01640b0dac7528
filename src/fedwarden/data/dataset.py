"""Federated data sets: each client's train and test arrays, plus a central test set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import DataError

Array = npt.NDArray[np.generic]


@dataclass(frozen=True)
class ClientData:
    """One client's local data: a train split, a held-out test split and attributes.

    ``attributes`` are public facts about the client (``{"region": "rural"}``)
    that a stratified sampler may group by; they never hold private data.
    """

    client_id: str
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if len(x) != len(y):
                raise DataError(
                    f"client {self.client_id!r}: x_{split} has {len(x)} rows but y_{split} has "
                    f"{len(y)}; each example needs exactly one label"
                )

    @property
    def num_train(self) -> int:
        """Number of training examples (the client's FedAvg weight)."""
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        """Number of held-out test examples."""
        return len(self.y_test)


@dataclass(frozen=True)
class FederatedDataset:
    """Clients in a fixed order, a central test set, and what the task is.

    ``num_classes`` is ``None`` for regression.
    """

    name: str
    clients: Mapping[str, ClientData]
    x_test: Array
    y_test: Array
    num_features: int
    num_classes: int | None

    def __post_init__(self) -> None:
        if not self.clients:
            raise DataError(f"data set {self.name!r} has no clients; check the partition settings")
        for client in self.clients.values():
            if client.x_train.ndim < 2 or client.x_train.shape[1] != self.num_features:
                raise DataError(
                    f"client {client.client_id!r} has x_train of shape {client.x_train.shape}, "
                    f"the data set has {self.num_features} features per example"
                )

    @property
    def client_ids(self) -> list[str]:
        """Client ids in the data set's fixed order."""
        return list(self.clients)

    def subset(self, client_ids: list[str]) -> FederatedDataset:
        """The same data set restricted to some clients (what one worker holds)."""
        return FederatedDataset(
            name=self.name,
            clients={cid: self.clients[cid] for cid in client_ids},
            x_test=self.x_test[:0],
            y_test=self.y_test[:0],
            num_features=self.num_features,
            num_classes=self.num_classes,
        )
