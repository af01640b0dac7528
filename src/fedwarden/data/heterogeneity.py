"""How far clients' label distributions are from one another, as one chi-square test.

Under the hypothesis that every client draws labels from the same
distribution (an IID partition), the clients x classes table of training
label counts has independent rows and columns; Pearson's chi-square statistic
measures the departure from that, so a larger statistic means more label skew
at the same table shape (Hsu et al. 2019 use this axis of heterogeneity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedwarden.core.errors import DataError
from fedwarden.data.dataset import FederatedDataset


@dataclass(frozen=True)
class LabelHeterogeneity:
    """Pearson's chi-square test of independence between client and training label.

    ``chi2`` is the statistic, ``p_value`` the probability of a statistic at
    least as large if all clients shared one label distribution, and
    ``degrees_of_freedom`` is ``(clients - 1) * (classes - 1)`` over the
    clients and classes that hold any training example.
    """

    chi2: float
    p_value: float
    degrees_of_freedom: int


def label_heterogeneity(dataset: FederatedDataset) -> LabelHeterogeneity:
    """Chi-square test on the clients x classes table of training label counts.

    Classes no client trains on and clients with no training examples are
    dropped (they carry no information and would make expected counts zero).
    No continuity correction is applied, so the statistic means the same for
    every table shape.
    """
    if dataset.num_classes is None:
        raise DataError(
            f"data set {dataset.name!r} is a regression task; label heterogeneity is defined "
            "for class labels only"
        )
    counts = np.stack(
        [
            np.bincount(client.y_train.astype(np.int64), minlength=dataset.num_classes)
            for client in dataset.clients.values()
        ]
    )
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    from scipy.stats import chi2_contingency  # scipy.stats costs ~1 s to import

    result = chi2_contingency(counts, correction=False)
    return LabelHeterogeneity(
        chi2=float(result.statistic),
        p_value=float(result.pvalue),
        degrees_of_freedom=int(result.dof),
    )
