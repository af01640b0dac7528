"""The label party's run: align by PSI, train split learning with remote parties, test, report."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedwarden.core.errors import ConfigError, DataError
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.vertical.alignment import align_as_leader
from fedwarden.vertical.architecture import ArchitectureKind, ArchitectureSpec
from fedwarden.vertical.label_dp import (
    DEFAULT_LABEL_EPSILON,
    REPORT_DELTA,
    LabelRandomizedResponse,
)
from fedwarden.vertical.remote.client import RemoteFeatureParty
from fedwarden.vertical.remote.tables import PartyTable
from fedwarden.vertical.split import (
    BottomParty,
    FeatureParty,
    LabelParty,
    SplitLearning,
    TrainingPlan,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerticalResult:
    """What the label party reports after training: sizes, losses, accuracy and privacy spent."""

    aligned_rows: int
    losses: tuple[float, ...]
    accuracy: float
    epsilon: Mapping[str, float]
    """Epsilon charged to each feature party that released under DP (empty without DP)."""
    delta: float | None
    """The delta of every epsilon: the driver's budget's (None without any DP)."""
    label_epsilon: float | None = None
    """Label DP epsilon charged to the label party (the accountant's figure at ``delta``);
    None: label DP was turned off, and every feature party could read the training labels."""


def train_label_party(
    name: str,
    table: PartyTable,
    parties: Sequence[RemoteFeatureParty],
    *,
    kind: ArchitectureKind,
    plan: TrainingPlan,
    test_share: float = 0.3,
    split_seed: int = 7,
    architecture_seed: int = 0,
    budget: PrivacyBudget | None = None,
    label_epsilon: float | None = DEFAULT_LABEL_EPSILON,
    noise: NoiseSource | None = None,
) -> VerticalResult:
    """Align by PSI, train split learning with the remote parties, and test on held-out rows.

    The label party's own columns are the first bottom, the remote parties'
    follow in the given order. The aligned rows are split by a public seeded
    draw: ``test_share`` of them test. Declared releases are charged to a
    ledger in which each releasing party may spend ``budget`` (required when
    a party releases); training that would exceed it is refused before it
    starts. The charges are returned.

    The labels are protected by label DP at ``label_epsilon``
    (:mod:`fedwarden.vertical.label_dp`, randomized labels drawn from
    ``noise``, secure by default), charged to the label party's entries of the
    same ledger (against ``budget`` too, when given). ``label_epsilon`` None
    turns it off: a warning is logged and the result says so.
    """
    if table.labels is None:
        raise DataError(f"the label party {name!r} needs labels in its table")
    if not 0 < test_share < 1:
        raise DataError(f"test_share must lie strictly between 0 and 1, got {test_share!r}")
    releasing = [party for party in parties if party.release is not None]
    if releasing and budget is None:
        raise ConfigError(
            f"parties {[party.name for party in releasing]} release under DP but the label "
            f"party {name!r} has no budget to check their releases against; give budget "
            "(--epsilon and --delta)"
        )
    aligned = align_as_leader(name, table.identifiers, parties)
    own_rows = aligned.rows[name]
    cut = int((1 - test_share) * len(own_rows))
    if cut == 0 or cut == len(own_rows):
        raise DataError(
            f"the parties share {len(own_rows)} aligned entities, which a test share of "
            f"{test_share} splits into {cut} to train and {len(own_rows) - cut} to test; both "
            "need at least one: align larger tables, or change the test share"
        )
    labels = table.labels[own_rows]
    spec = ArchitectureSpec(
        kind,
        (table.features.shape[1], *(party.columns for party in parties)),
        classes=max(int(labels.max()) + 1, 2),
        seed=architecture_seed,
    )
    label_dp = None
    if label_epsilon is None:
        logger.warning(
            "label DP is OFF (opted out): every feature party can read the training labels "
            "from the cut-layer gradients the label party %r sends",
            name,
        )
    else:
        label_dp = LabelRandomizedResponse(label_epsilon, spec.classes)
    for position, party in enumerate(parties, start=1):
        party.prepare(spec, position)
    architecture = spec.build()
    own = FeatureParty(name, table.features[own_rows], architecture.bottoms[0])
    ledger = None
    if budget is not None and (releasing or label_dp is not None):
        ledger = PrivacyLedger(
            budget,
            privacy_unit="example",
            neighboring="replace_one",
            client_budget=budget.epsilon,
        )
    elif label_dp is not None:
        ledger = PrivacyLedger(
            PrivacyBudget(label_dp.epsilon, REPORT_DELTA),
            privacy_unit="example",
            neighboring="replace_one",
        )
    bottoms: list[BottomParty] = [own, *parties]
    label_party = LabelParty(name, labels, architecture.top, label_dp=label_dp, noise=noise)
    split = SplitLearning(bottoms, label_party, ledger=ledger)
    order = np.random.default_rng(split_seed).permutation(len(own_rows))
    losses = split.fit(order[:cut], plan)
    accuracy = split.accuracy(order[cut:])
    if ledger is None:
        return VerticalResult(len(own_rows), tuple(losses), accuracy, {}, None)
    epsilon = {party.name: ledger.client_spent(party.name).epsilon for party in releasing}
    return VerticalResult(
        len(own_rows),
        tuple(losses),
        accuracy,
        epsilon,
        ledger.budget.delta,
        None if label_dp is None else ledger.client_spent(name).epsilon,
    )
