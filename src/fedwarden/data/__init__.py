"""Federated data: data sets, the partitions that simulate clients, and their heterogeneity."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "ClientData": "fedwarden.data.dataset",
    "ClientRecipe": "fedwarden.data.dataset",
    "OnDemandClients": "fedwarden.data.dataset",
    "SyntheticPopulation": "fedwarden.data.synthetic",
    "FederatedDataset": "fedwarden.data.dataset",
    "LabelHeterogeneity": "fedwarden.data.heterogeneity",
    "label_heterogeneity": "fedwarden.data.heterogeneity",
    "dirichlet": "fedwarden.data.partitioners",
    "iid": "fedwarden.data.partitioners",
    "partition": "fedwarden.data.partitioners",
    "power_law": "fedwarden.data.partitioners",
    "shards": "fedwarden.data.partitioners",
    "load_dataset": "fedwarden.data.sources",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
