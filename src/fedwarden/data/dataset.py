"""Federated data sets: each client's train and test arrays, plus a central test set."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

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


class ClientRecipe(Protocol):
    """Builds one client of a population from its index, the same bytes every time."""

    def client(self, index: int, client_id: str) -> ClientData:
        """Client ``index`` of the population, named ``client_id``."""
        ...


@dataclass(frozen=True)
class OnDemandClients(Mapping[str, ClientData]):
    """Clients generated when looked up, from a recipe, instead of held in memory.

    Only what samplers and weighting need stays resident: each client's index
    in the recipe's population, training-set size and attributes. Looking a
    client up builds its data afresh and keeps nothing, so a worker's memory
    follows the client it is training, not the population it hosts.
    """

    recipe: ClientRecipe
    indices: Mapping[str, int]
    num_train: Mapping[str, int]
    attributes: Mapping[str, Mapping[str, str]]

    def __getitem__(self, client_id: str) -> ClientData:
        client = self.recipe.client(self.indices[client_id], client_id)
        return replace(client, attributes=self.attributes[client_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def restricted(self, client_ids: Sequence[str]) -> OnDemandClients:
        """The same recipe, answering only for ``client_ids``."""
        return OnDemandClients(
            self.recipe,
            {cid: self.indices[cid] for cid in client_ids},
            {cid: self.num_train[cid] for cid in client_ids},
            {cid: self.attributes[cid] for cid in client_ids},
        )


@dataclass(frozen=True)
class FederatedDataset:
    """Clients in a fixed order, a central test set, and what the task is.

    ``num_classes`` is ``None`` for regression. ``clients`` may be
    :class:`OnDemandClients`: then each client is built when looked up, and
    :attr:`train_sizes` and :attr:`client_attributes` answer without building
    any.
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
        if isinstance(self.clients, OnDemandClients):
            return
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

    @property
    def train_sizes(self) -> Mapping[str, int]:
        """Each client's number of training examples (its FedAvg weight), in client order."""
        if isinstance(self.clients, OnDemandClients):
            return self.clients.num_train
        return {cid: client.num_train for cid, client in self.clients.items()}

    @property
    def client_attributes(self) -> Mapping[str, Mapping[str, str]]:
        """Each client's public attributes (what a stratified sampler groups by)."""
        if isinstance(self.clients, OnDemandClients):
            return self.clients.attributes
        return {cid: client.attributes for cid, client in self.clients.items()}

    def resident(self) -> FederatedDataset:
        """The same data set with every client built once and held in memory.

        Worth it when the population fits and its clients train many times
        (a benchmark against peers that hold their arrays): workers then
        receive arrays instead of building each client every round.
        """
        if not isinstance(self.clients, OnDemandClients):
            return self
        return replace(self, clients={cid: self.clients[cid] for cid in self.clients})

    def subset(self, client_ids: list[str]) -> FederatedDataset:
        """The same data set restricted to some clients (what one worker holds).

        On-demand clients stay on demand: the subset carries the recipe, not arrays.
        """
        clients: Mapping[str, ClientData]
        if isinstance(self.clients, OnDemandClients):
            clients = self.clients.restricted(client_ids)
        else:
            clients = {cid: self.clients[cid] for cid in client_ids}
        return FederatedDataset(
            name=self.name,
            clients=clients,
            x_test=self.x_test[:0],
            y_test=self.y_test[:0],
            num_features=self.num_features,
            num_classes=self.num_classes,
        )
