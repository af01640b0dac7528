"""One inventory of what leaves a client, and the stage that keeps everything else home.

DESIGN idea 5; issue 15, finding 3. Everything computed from a client's data
that leaves the client is one of three things:

- **inside the secure sum** (the masked vector of SecAgg+, which may carry the
  client's example count as its weight: the server learns only the sum);
- **noised and charged** to the privacy ledger (the DP model update, adaptive
  clipping's count, DP-SGD's steps);
- **public by configuration** and listed as such (example counts when
  ``privacy.public_example_counts`` is set, or under DP-SGD, whose per-silo
  accounting uses them; a client's own epsilon, a function of the mechanism's
  parameters and of how often it took part).

Under any DP mechanism or secure aggregation nothing else travels in clear:
:class:`WithholdClientStatistics` (the pipeline's last client half) drops every
other metric a trainer reports (its training loss, say) and replaces the
example count by one unless it is public or inside the secure sum; the secure
sum's client drops the clear copy after masking
(:meth:`fedwarden.pipeline.secure.SecureSumClient.client_half`). Federated
evaluations (the end-of-run client evaluation, pilots) are off in such runs:
per-client accuracies and test-set sizes would be released uncharged.
:func:`release_inventory` is the privacy report's ``releases``: each kind of
release, how it is protected, and what it cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from fedwarden.core.config import RunConfig
from fedwarden.core.messages import CLIENT_EPSILON, CLIENT_EPSILON_ROUND, ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.stage import Stage
from fedwarden.privacy.ledger import PrivacyLedger

PUBLIC_METRICS = frozenset({CLIENT_EPSILON, CLIENT_EPSILON_ROUND})
"""Metrics that may leave a client in clear: functions of public mechanism parameters."""

UNCOUNTED = 1
"""The example count a client sends when its own is withheld: every client weighs the same."""


@dataclass(frozen=True)
class ReleasePolicy:
    """What a run lets leave its clients in clear, from its configuration."""

    protected: bool
    """Differential privacy or secure aggregation: only the releases listed here leave."""
    secure_sum: bool
    """Updates (and their weights) travel inside a secure sum."""
    public_example_counts: bool
    """Example counts are declared public (by configuration, or for DP-SGD's accounting)."""

    @classmethod
    def of(cls, config: RunConfig) -> ReleasePolicy:
        """The policy of ``config``."""
        return cls(
            protected=config.privacy.mechanism != "none" or config.secure.kind != "none",
            secure_sum=config.secure.kind != "none",
            public_example_counts=config.privacy.public_example_counts
            or config.privacy.mechanism == "dp_sgd",
        )

    @property
    def federated_evaluation(self) -> bool:
        """Whether clients may report evaluation metrics (only in unprotected runs)."""
        return not self.protected

    def why_no_federated_evaluation(self, what: str) -> str:
        """The message that says why ``what`` (a federated evaluation) is off."""
        return (
            f"{what} is off: under differential privacy or secure aggregation each client's "
            "accuracy and test-set size would leave it in clear and uncharged; the run reports "
            "the central test set's figures instead"
        )

    def why_no_train_loss(self) -> str:
        """The message that says why a protected run reports no training loss."""
        return (
            "train_loss is off: under differential privacy or secure aggregation each client's "
            "training loss would leave it in clear and uncharged, so clients keep it; the run "
            "reports the central test set's loss instead"
        )


def withheld(update: ClientUpdate, keep_example_count: bool) -> ClientUpdate:
    """``update`` with only public metrics, and its example count unless ``keep_example_count``."""
    metrics = {name: value for name, value in update.metrics.items() if name in PUBLIC_METRICS}
    count = update.num_examples if keep_example_count else UNCOUNTED
    return replace(update, metrics=metrics, num_examples=count)


def sealed(update: ClientUpdate, payload: bytes, header: Mapping[str, Any]) -> ClientUpdate:
    """``update`` travelling only as a protected ``payload`` (masked or encrypted).

    Its vector is dropped and nothing computed from the client's data stays in clear: the
    example count is inside the payload (as the update's weight) and only public metrics remain.
    """
    clear = withheld(update, keep_example_count=False)
    return replace(
        clear, update=np.empty(0, dtype=VECTOR_DTYPE), payload=payload, payload_header=header
    )


class WithholdClientStatistics(Stage):
    """The last client half of a protected run: nothing but the protected update leaves.

    Trainers' metrics (e.g. ``train_loss``) are dropped; the example count is
    replaced by :data:`UNCOUNTED` unless it is public, or it goes into the
    secure sum as the update's weight (then the secure sum's client drops its
    clear copy once the update is masked).
    """

    name: ClassVar[str] = "withhold_client_statistics"

    def __init__(self, policy: ReleasePolicy) -> None:
        self.keep_example_count = policy.public_example_counts or policy.secure_sum

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        """Drop every non-public statistic of ``update`` before it is sent."""
        return withheld(update, self.keep_example_count)


def release_inventory(
    config: RunConfig, ledger: PrivacyLedger | None, pilot_clients: int
) -> list[dict[str, Any]]:
    """Each kind of release a run makes from client data, how it is protected, what it cost.

    ``epsilon`` is the release kind's own spend by the ledger's accountant (run-level kinds),
    or the largest client's (per-client kinds); None where nothing is charged.
    """
    policy = ReleasePolicy.of(config)
    privacy = config.privacy
    releases: list[dict[str, Any]] = [
        _release("model_update", _update_protection(config), _update_cost(config, ledger))
    ]
    if privacy.mechanism == "user_level" and privacy.adaptive_clipping:
        releases.append(
            _release(
                "clip_count",
                "noisy count of unclipped updates, Gaussian (Andrew et al. 2021), charged",
                _cost(ledger, "clip_count"),
            )
        )
    if not policy.protected:
        releases += [
            _release("example_count", "in clear: no differential privacy or secure sum", None),
            _release("train_loss", "in clear, per client", None),
            _release("client_evaluation", "in clear, per client", None),
        ]
        return releases
    if policy.secure_sum:
        counts = "inside the secure sum as each update's weight; not sent in clear"
    elif privacy.public_example_counts:
        counts = "public by configuration (privacy.public_example_counts)"
    elif privacy.mechanism == "dp_sgd":
        counts = "public: DP-SGD's per-silo accounting samples at batch_size / examples"
    else:
        counts = "withheld: each client sends a count of one, and all weigh the same"
    releases += [
        _release("example_count", counts, None),
        _release("train_loss", "withheld: trainers' metrics do not leave the client", None),
        _release("client_evaluation", "off (see the run's log)", None),
    ]
    if pilot_clients:
        releases.append(_release("pilot_evaluation", "off (see the run's log)", None))
    if privacy.mechanism in ("local", "dp_sgd"):
        releases.append(
            _release(
                "client_epsilon",
                "public: a function of the mechanism's parameters and of how often the client "
                "took part",
                None,
            )
        )
    return releases


def _update_protection(config: RunConfig) -> str:
    mechanism, secure = config.privacy.mechanism, config.secure.kind
    if mechanism == "user_level":
        if secure == "secagg":
            return (
                "inside the secure sum, with distributed discrete Gaussian noise "
                "(Kairouz et al. 2021), charged"
            )
        return "clipped, Gaussian noise on the sum (DP-FedAvg, McMahan et al. 2018), charged"
    if mechanism == "dp_sgd":
        return "DP-SGD at each silo (Abadi et al. 2016), charged to the silo"
    if mechanism == "local":
        prefix = "inside the secure sum, and " if secure != "none" else ""
        return prefix + "Gaussian noise added by each client (local DP), charged to the client"
    if secure != "none":
        return "inside the secure sum: the server learns only the cohort's sum; not noised"
    return "in clear: no differential privacy or secure sum"


def _update_cost(config: RunConfig, ledger: PrivacyLedger | None) -> float | None:
    """The model updates' epsilon: the run's (user-level), or the largest client's own."""
    if ledger is None or config.privacy.mechanism not in ("dp_sgd", "local"):
        return _cost(ledger, "model_update")
    return max((ledger.client_spent(c).epsilon for c in ledger.client_ids), default=0.0)


def _cost(ledger: PrivacyLedger | None, kind: str) -> float | None:
    if ledger is None:
        return None
    return ledger.spent_on(kind)


def _release(kind: str, protection: str, epsilon: float | None) -> dict[str, Any]:
    return {"release": kind, "protection": protection, "epsilon": epsilon}
