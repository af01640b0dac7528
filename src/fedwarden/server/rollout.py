"""Staged rollout's pilot: a new candidate and production evaluated on the same few clients.

A registered candidate is not promoted on the strength of the central test set
alone: at the end of a completed deployment run, ``[rollout] pilot_clients``
clients (drawn with the run's seed) evaluate the candidate and the current
production version on their own test data, through the same runtime that
trained it, so raw data never leaves them. The example-weighted accuracies are
recorded in the registry with an audit entry
(:meth:`~fedwarden.governance.registry.ModelRegistry.record_pilot`); a later
``promote`` compares the two figures (see :mod:`fedwarden.governance.registry`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedwarden.core.messages import ClientEvaluation, EvaluateInstruction
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.governance.registry import ModelRegistry, ModelVersion, PilotEvaluation
from fedwarden.runtime.base import Runtime
from fedwarden.server.server import weighted_client_metrics

logger = logging.getLogger(__name__)

PILOT_STREAM = 2
"""Seed stream of the pilot draw, apart from the clients' training streams (0 and 1)."""


def draw_pilot(client_ids: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` of ``client_ids`` drawn without replacement with ``seed``, sorted."""
    if not 0 < count <= len(client_ids):
        raise ValueError(f"a pilot of {count} clients cannot be drawn from {len(client_ids)}")
    rng = np.random.default_rng([seed, PILOT_STREAM])
    chosen = rng.choice(len(client_ids), size=count, replace=False)
    return sorted(client_ids[index] for index in chosen)


def pilot_accuracy(
    runtime: Runtime, vector: Vector, clients: Sequence[str], round_index: int
) -> float | None:
    """Example-weighted accuracy of ``vector`` on ``clients``' test data (None: none answered)."""
    instructions = [EvaluateInstruction(round_index, client_id) for client_id in clients]
    replies = [
        reply
        for reply in runtime.evaluate(vector, instructions)
        if isinstance(reply, ClientEvaluation)
    ]
    if len(replies) < len(clients):
        logger.warning(
            "pilot: %d of %d clients answered the evaluation", len(replies), len(clients)
        )
    return weighted_client_metrics(replies).get("accuracy")


def run_pilot(
    runtime: Runtime,
    registry: ModelRegistry,
    candidate: ModelVersion,
    vector: Vector,
    clients: Sequence[str],
    round_index: int,
    by: str,
) -> PilotEvaluation | None:
    """Evaluate ``candidate`` (its parameters ``vector``) and production on ``clients``; record it.

    Production is evaluated only when its parameters fit the candidate's model (the same
    parameter layout); None when no pilot client answered.
    """
    accuracy = pilot_accuracy(runtime, vector, clients, round_index)
    if accuracy is None:
        logger.warning("pilot of %s: no client reported an accuracy", candidate.reference)
        return None
    production = registry.production(candidate.model)
    production_accuracy = None
    if production is not None:
        if ParamSpec.from_json(production.spec_json) == ParamSpec.from_json(candidate.spec_json):
            production_accuracy = pilot_accuracy(
                runtime, registry.weights(production.reference), clients, round_index
            )
        else:
            logger.warning(
                "pilot: production %s has another parameter layout than %s; only the candidate "
                "is evaluated",
                production.reference,
                candidate.reference,
            )
    return registry.record_pilot(
        candidate.reference,
        by,
        list(clients),
        accuracy,
        None if production is None else production.reference,
        production_accuracy,
    )
