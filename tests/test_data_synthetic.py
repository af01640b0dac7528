"""Synthetic(alpha, beta) generated on demand: same bytes in any order, only the cohort built."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np

from fedwarden.core.config import DataConfig
from fedwarden.core.messages import FitInstruction, TrainConfig
from fedwarden.data import ClientData, ClientRecipe, FederatedDataset, OnDemandClients, load_dataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.runtime import ClientEngine, Workload


def synthetic(num_clients: int, seed: int) -> FederatedDataset:
    return load_dataset(DataConfig(source="synthetic", num_clients=num_clients), seed)


def assert_same_client(first: ClientData, other: ClientData) -> None:
    assert first.client_id == other.client_id
    assert first.attributes == other.attributes
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(other, name))


def test_clients_are_the_same_bytes_generated_in_order_or_on_demand_in_any_order() -> None:
    dataset, again = synthetic(40, seed=7), synthetic(40, seed=7)
    assert isinstance(dataset.clients, OnDemandClients)
    in_order = [dataset.clients[cid] for cid in dataset.client_ids]
    on_demand = {cid: again.clients[cid] for cid in reversed(again.client_ids[::3])}
    for client in in_order[::3]:
        assert_same_client(client, on_demand[client.client_id])


def test_a_resident_copy_holds_the_same_bytes_as_the_on_demand_clients() -> None:
    dataset = synthetic(30, seed=5)
    resident = synthetic(30, seed=5).resident()
    assert not isinstance(resident.clients, OnDemandClients)
    for cid in dataset.client_ids:
        assert_same_client(resident.clients[cid], dataset.clients[cid])
    assert dict(resident.train_sizes) == dict(dataset.train_sizes)


def test_a_worker_share_sent_through_pickle_holds_the_recipe_and_builds_the_same_clients() -> None:
    dataset = synthetic(1000, seed=2)
    share = dataset.subset(dataset.client_ids[1::2])
    travelled = pickle.loads(pickle.dumps(share))
    assert len(pickle.dumps(share)) < 200_000
    assert_same_client(travelled.clients["client_999"], dataset.clients["client_999"])


def test_train_sizes_and_attributes_are_known_without_building_any_client() -> None:
    dataset = synthetic(200, seed=1)
    built = {cid: dataset.clients[cid] for cid in dataset.client_ids}
    assert dict(dataset.train_sizes) == {cid: c.num_train for cid, c in built.items()}
    assert dataset.client_attributes["client_000"] == built["client_000"].attributes


@dataclass(frozen=True)
class CountingRecipe:
    """A synthetic population that records which clients it built."""

    population: ClientRecipe
    built: list[str] = field(default_factory=list)

    def client(self, index: int, client_id: str) -> ClientData:
        self.built.append(client_id)
        return self.population.client(index, client_id)


def test_a_worker_builds_only_the_clients_of_the_cohort_it_trains() -> None:
    dataset = synthetic(500, seed=3)
    assert isinstance(dataset.clients, OnDemandClients)
    recipe = CountingRecipe(dataset.clients.recipe)
    counted = FederatedDataset(
        dataset.name,
        OnDemandClients(
            recipe, dataset.clients.indices, dataset.clients.num_train, dataset.clients.attributes
        ),
        dataset.x_test,
        dataset.y_test,
        dataset.num_features,
        dataset.num_classes,
    )
    trainer = softmax_regression(60, 10)
    engine = ClientEngine(Workload(counted.subset(counted.client_ids[:250]), trainer, (), 0))
    cohort = ["client_007", "client_100", "client_249"]
    for cid in cohort:
        engine.fit(trainer.initial_vector(0), FitInstruction(0, cid, TrainConfig(1, 10, 0.05)))
    assert recipe.built == cohort
