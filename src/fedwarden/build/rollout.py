"""Staged rollout's pilot: a new candidate and production evaluated on the same few clients.

A registered candidate is not promoted on the strength of the central test set
alone: at the end of a completed deployment run, ``[rollout] pilot_clients``
clients (drawn with the run's seed) evaluate the candidate and the current
production version on their own test data, through the same runtime that
trained it, so raw data never leaves them. Replies that are not a finite
accuracy in [0, 1] over a positive number of examples are dropped (and
logged), and the two models are compared over the clients that answered for
both. The example-weighted accuracies are recorded in the registry with an
audit entry (:meth:`~fedwarden.governance.registry.ModelRegistry.record_pilot`);
a later ``promote`` compares the two figures (see :mod:`fedwarden.governance.registry`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import ClientEvaluation, EvaluateInstruction
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.governance.registry import ModelRegistry, ModelVersion, PilotEvaluation
from fedwarden.runtime.base import Runtime
from fedwarden.server.traffic import weighted_client_metrics

logger = logging.getLogger(__name__)

PILOT_STREAM = 2
"""Seed stream of the pilot draw, apart from the clients' training streams (0 and 1)."""


def draw_pilot(client_ids: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` of ``client_ids`` drawn without replacement with ``seed``, sorted."""
    if not 0 < count <= len(client_ids):
        raise ConfigError(
            f"rollout.pilot_clients={count} cannot be drawn from the run's {len(client_ids)} "
            "clients; choose between 1 and that number"
        )
    rng = np.random.default_rng([seed, PILOT_STREAM])
    chosen = rng.choice(len(client_ids), size=count, replace=False)
    return sorted(client_ids[index] for index in chosen)


def pilot_replies(
    runtime: Runtime, vector: Vector, clients: Sequence[str], round_index: int
) -> dict[str, ClientEvaluation]:
    """Each pilot client's evaluation of ``vector`` that is usable; the others are logged."""
    instructions = [EvaluateInstruction(round_index, client_id) for client_id in clients]
    usable = {}
    for reply in runtime.evaluate(vector, instructions):
        if not isinstance(reply, ClientEvaluation):
            logger.warning("pilot: client %s did not evaluate: %s", reply.client_id, reply.message)
            continue
        accuracy = reply.metrics.get("accuracy")
        if accuracy is None or not math.isfinite(accuracy) or not 0.0 <= accuracy <= 1.0:
            logger.warning(
                "pilot: client %s reported accuracy %r; dropped", reply.client_id, accuracy
            )
        elif reply.num_examples <= 0:
            logger.warning(
                "pilot: client %s evaluated %d examples; dropped",
                reply.client_id,
                reply.num_examples,
            )
        else:
            usable[reply.client_id] = reply
    return usable


def pilot_accuracy(replies: Mapping[str, ClientEvaluation], clients: Sequence[str]) -> float:
    """Example-weighted accuracy of ``replies`` over ``clients``."""
    return weighted_client_metrics(replies[client_id] for client_id in clients)["accuracy"]


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
    parameter layout); both are then compared over the clients that answered for both.
    None when no client gave the candidate a usable answer.
    """
    answered = pilot_replies(runtime, vector, clients, round_index)
    production = registry.production(candidate.model)
    production_answered: dict[str, ClientEvaluation] = {}
    if production is not None:
        if ParamSpec.from_json(production.spec_json) == ParamSpec.from_json(candidate.spec_json):
            production_vector = registry.weights(production.reference)
            production_answered = pilot_replies(runtime, production_vector, clients, round_index)
        else:
            logger.warning(
                "pilot: production %s has another parameter layout than %s; only the candidate "
                "is evaluated",
                production.reference,
                candidate.reference,
            )
    compared = sorted(set(answered) & set(production_answered)) or sorted(answered)
    if not compared:
        logger.warning("pilot of %s: no client gave a usable evaluation", candidate.reference)
        return None
    production_accuracy = None
    if all(client_id in production_answered for client_id in compared):
        production_accuracy = pilot_accuracy(production_answered, compared)
    return registry.record_pilot(
        candidate.reference,
        by,
        compared,
        pilot_accuracy(answered, compared),
        None if production is None else production.reference,
        production_accuracy,
    )
