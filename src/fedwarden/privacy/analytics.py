"""Federated analytics with differential privacy: count, sum, mean, histogram and quantile.

A query is answered the way DP-FedAvg answers a round (McMahan et al. 2018):
each client computes a *bounded* contribution on its own training data, the
server sums the contributions and adds noise *once* to the aggregate, and the
release is charged to the run's one :class:`~fedwarden.privacy.ledger.PrivacyLedger`.
The ledger is asked first: a query that would overspend the budget is refused
before any client's data is read.

What is released
----------------
Every release is an integer vector plus exact discrete Laplace noise, drawn
with the sampler of Canonne, Kamath & Steinke (2020), "The Discrete Gaussian
for Differential Privacy", Algorithm 2, from a cryptographically secure
:class:`~fedwarden.privacy.randomness.NoiseSource`. Integers and an exact
sampler leave no floating-point bits to attack (Mironov 2012). The release is
charged as ``dp_event.DiscreteLaplaceDpEvent(a, Δ)``: noise parameter
``a = 1 / scale`` and Δ the L1 bound on one privacy unit's integer
contribution, which dp-accounting's PLD accountant treats exactly. The
discrete Laplace (the geometric mechanism of Ghosh, Roughgarden &
Sundararajan 2009) is ε-DP for ``a Δ = ε``; each query is calibrated so that
the ledger's accountant reports at most the ε asked for at the δ given
(:func:`~fedwarden.privacy.analytics_mechanisms.plan_releases`).
The discrete Gaussian is not offered here: dp-accounting's PLD accountant has
no event for it (only ``ZCDpEvent``, which it cannot compose), and charging it
as the continuous Gaussian would not be exact.

* **count**: each client contributes its number of examples.
* **sum**: each example's value is clipped to ``[lower, upper]`` and put on the
  grid of step ``(upper - lower) / SUM_GRID_STEPS`` by unbiased randomized
  rounding (as in Kairouz, Liu & Steinke 2021, "The Distributed Discrete
  Gaussian Mechanism for Federated Learning with Secure Aggregation"); the
  release is the integer sum times the step. Rounding adds no bias and at most
  one step per example; the noise is in grid units, so its scale in value
  units (``max_contribution * max(|lower|, |upper|) / ε``) does not depend on
  the grid. A finer grid would only make the sensitivity, and with it the PLD
  accounting, larger.
* **mean**: noisy sum / noisy count, two releases with half of ε each,
  clamped to ``[lower, upper]``; or, given a public ``public_count``, the
  noisy sum divided by it (one release, all of ε).
* **histogram**: counts of examples per bin; values outside the edges are
  clamped into the first or last bin, so the bins count every example.
* **quantile**: from a DP histogram of ``bins`` equal bins over ``[lower, upper]``
  (negative noisy counts set to 0), the quantile is read off the cumulative
  counts and interpolated linearly within its bin. The resolution is
  ``(upper - lower) / bins`` plus the noise's effect on the CDF. Several ``q``
  are answered from the one histogram at the cost of one. The exponential
  mechanism (McSherry & Talwar 2007; Smith 2011 for quantiles) is not used
  because dp-accounting has no event for it; the histogram is accounted
  exactly.

Privacy unit and bounded contributions
--------------------------------------
The unit is the ledger's. For ``"client"`` (user-level DP) each client
contributes at most ``max_contribution`` examples (a uniformly random subset
when it holds more), so one client moves a count or histogram by at most
``max_contribution`` in L1 and a sum by at most ``max_contribution`` clipped
values. For ``"example"`` every example is its own unit and contributes once.
Clients compute on their training split only; an example whose value of the
queried feature is NaN (missing) is skipped by every query but ``count``.

Where it lives
--------------
The queries and their strings are in :mod:`fedwarden.privacy.analytics_queries`,
the mechanism (calibrated releases, the client half, the estimate) in
:mod:`fedwarden.privacy.analytics_mechanisms`; this module answers a query over
a federation and charges the ledger (:func:`run_query`, :func:`query_command`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedwarden.data.dataset import FederatedDataset
from fedwarden.privacy.accounting import Neighboring, compute_spend
from fedwarden.privacy.analytics_mechanisms import (
    Release,
    client_contribution,
    estimate,
    plan_releases,
    query_event,
)
from fedwarden.privacy.analytics_queries import Mean, Quantile, Query, QueryError, parse_query
from fedwarden.privacy.discrete import discrete_laplace_vector
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger, PrivacyUnit
from fedwarden.privacy.randomness import NoiseSource

__all__ = ["QueryResult", "query_command", "run_query"]

ANALYTICS_KIND = "analytics"
"""The ``kind`` of every ledger entry this module charges."""


@dataclass(frozen=True)
class QueryResult:
    """A DP answer and what it cost.

    ``epsilon`` and ``delta`` are what this query spent (the accountant's ε at
    δ for its event); ``noise_scale`` is the standard deviation of the noise on
    the first release (the sum, for a mean; each bin, for histograms), in the
    feature's units; ``releases`` lists every release with its sensitivity and
    scale; ``ledger_epsilon_total`` is the ledger's ε after this query.
    """

    query: Query
    value: float | list[float]
    epsilon: float
    delta: float
    mechanism: str
    privacy_unit: PrivacyUnit
    noise_scale: float
    ledger_epsilon_total: float
    max_contribution: int | None
    releases: tuple[Release, ...] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values (the query as its string)."""
        return {
            "query": str(self.query),
            "value": self.value,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mechanism": self.mechanism,
            "privacy_unit": self.privacy_unit,
            "noise_scale": self.noise_scale,
            "ledger_epsilon_total": self.ledger_epsilon_total,
            "max_contribution": self.max_contribution,
            "releases": [
                {
                    "name": release.name,
                    "sensitivity": release.sensitivity,
                    "noise_parameter": release.noise_parameter,
                    "noise_std": release.noise_std,
                }
                for release in self.releases
            ],
        }


def _mechanism(query: Query) -> str:
    """A sentence naming the mechanism and paper behind ``query``'s answer."""
    laplace = "discrete Laplace, exact sampler (Canonne, Kamath & Steinke 2020)"
    match query:
        case Mean() if query.public_count is None:
            return f"{laplace} on the sum and the count, epsilon split evenly"
        case Quantile():
            width = (query.upper - query.lower) / query.bins
            return f"{laplace} on a {query.bins}-bin histogram CDF, resolution {width:g}"
        case _:
            return laplace


def _check_query_fits(query: Query, dataset: FederatedDataset) -> None:
    feature = getattr(query, "feature", "label")
    if isinstance(feature, int) and feature >= dataset.num_features:
        raise QueryError(
            f"feature={feature}: data set {dataset.name!r} has features 0 to "
            f"{dataset.num_features - 1}; use one of them or 'label'"
        )


def run_query(
    dataset: FederatedDataset,
    query: Query,
    *,
    ledger: PrivacyLedger,
    epsilon: float,
    delta: float,
    source: NoiseSource,
) -> QueryResult:
    """Answer ``query`` over every client with ε-DP, charged to ``ledger``.

    The ledger is asked first; a query that would overspend is refused with
    :class:`~fedwarden.privacy.ledger.BudgetExceeded` before any client's data
    is read. Then each client's bounded contribution is summed, noise is added
    once (see the module docstring), and the event is charged.
    """
    _check_query_fits(query, dataset)
    unit = ledger.privacy_unit
    releases = plan_releases(
        query, privacy_unit=unit, epsilon=epsilon, delta=delta, neighboring=ledger.neighboring
    )
    event = query_event(releases)
    ledger.check([event], f"analytics query {query}")
    totals = [np.zeros(release.size, dtype=np.int64) for release in releases]
    for client in dataset.clients.values():
        parts = client_contribution(query, client, privacy_unit=unit, source=source)
        for total, part in zip(totals, parts, strict=True):
            total += part
    noisy = [
        total + discrete_laplace_vector(release.scale, release.size, source)
        for total, release in zip(totals, releases, strict=True)
    ]
    # the index of the last round charged (-1 before any): a query never advances the rounds
    total_spend = ledger.charge(ledger.next_round_index - 1, ANALYTICS_KIND, event, str(query))
    return QueryResult(
        query=query,
        value=estimate(query, noisy, releases),
        epsilon=compute_spend([event], delta, ledger.neighboring).epsilon,
        delta=delta,
        mechanism=_mechanism(query),
        privacy_unit=unit,
        noise_scale=releases[0].noise_std,
        ledger_epsilon_total=total_spend.epsilon,
        max_contribution=query.max_contribution if unit == "client" else None,
        releases=releases,
    )


def query_command(
    config_path: Path,
    query: str,
    *,
    epsilon: float,
    delta: float,
    ledger_path: Path,
    privacy_unit: PrivacyUnit = "client",
    neighboring: Neighboring = "add_remove",
    budget_changed_by: str | None = None,
) -> QueryResult:
    """What ``fedwarden query CONFIG QUERY`` does: load the config's data and answer one query.

    The ledger at ``ledger_path`` is opened, or created when new, with the
    config's ``privacy.epsilon`` / ``privacy.delta`` as its budget, so queries
    keep drawing on one budget across invocations (a run's own
    ``privacy_ledger.json`` works too, with the run's unit and neighbouring
    relation). The noise is secure unless the config sets
    ``privacy.reproducible_noise`` (test mode: seeded with the config's seed
    plus the number of ledger entries, so each query gets its own noise). A config whose
    budget differs from the ledger's is refused unless ``budget_changed_by`` names who
    changes it.
    """
    from fedwarden.core.config import load_config
    from fedwarden.data.sources import load_dataset

    parsed = parse_query(query)
    config = load_config(config_path)
    if config.privacy.epsilon is None:
        raise QueryError(
            f"{config_path}: queries draw on the privacy budget, and the config sets none: "
            f"set privacy.epsilon (and privacy.delta) in its [privacy] section"
        )
    ledger = PrivacyLedger(
        PrivacyBudget(config.privacy.epsilon, config.privacy.delta),
        privacy_unit=privacy_unit,
        neighboring=neighboring,
        path=ledger_path,
        budget_changed_by=budget_changed_by,
    )
    source = NoiseSource.secure_or_testing(
        config.privacy.reproducible_noise, config.seed + len(ledger.entries)
    )
    dataset = load_dataset(config.data, config.seed)
    return run_query(dataset, parsed, ledger=ledger, epsilon=epsilon, delta=delta, source=source)
