"""Federated data: data sets, the partitions that simulate clients, and their heterogeneity."""

from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.data.heterogeneity import LabelHeterogeneity, label_heterogeneity
from fedwarden.data.partition import dirichlet, iid, partition, power_law, shards
from fedwarden.data.sources import load_dataset

__all__ = [
    "ClientData",
    "FederatedDataset",
    "LabelHeterogeneity",
    "dirichlet",
    "iid",
    "label_heterogeneity",
    "load_dataset",
    "partition",
    "power_law",
    "shards",
]
