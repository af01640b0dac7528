"""The staged rollout's pilot: which replies count, and over which clients the two models meet."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import pytest

from fedwarden.build.rollout import draw_pilot, run_pilot
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import ClientEvaluation, ClientFailure, EvaluateInstruction
from fedwarden.core.params import Vector
from fedwarden.governance import ModelRegistry
from fedwarden.runtime.base import Runtime
from test_governance_registry import register, registry, store  # noqa: F401  (fixtures)
from test_governance_store import postgres_server, store_url  # noqa: F401  (fixtures)

Reply = tuple[float, int] | None
"""A pilot client's (accuracy, examples), or None for a client that fails."""


class ScriptedRuntime:
    """Answers evaluations from a script: per model (its first parameter) and client."""

    def __init__(self, script: Mapping[float, Mapping[str, Reply]]) -> None:
        self.script = script

    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        answers = self.script[float(vector[0])]
        for instruction in instructions:
            reply = answers[instruction.client_id]
            if reply is None:
                yield ClientFailure(instruction.round_index, instruction.client_id, "error", "x")
            else:
                accuracy, examples = reply
                yield ClientEvaluation(instruction.client_id, examples, {"accuracy": accuracy})


def pilot(
    registry: ModelRegistry,  # noqa: F811
    script: Mapping[float, Mapping[str, Reply]],
) -> tuple[list[str], float, float | None]:
    """Run the pilot of candidate 1.1.0 (first parameter 1.0) against production 1.0.0 (0.0)."""
    candidate = registry.show("1.1.0")
    runtime = cast(Runtime, ScriptedRuntime(script))
    vector = registry.weights("1.1.0")
    recorded = run_pilot(runtime, registry, candidate, vector, ["a", "b", "c", "d"], 3, "server")
    assert recorded is not None
    return list(recorded.clients), recorded.candidate_accuracy, recorded.production_accuracy


@pytest.fixture
def versions(registry: ModelRegistry) -> ModelRegistry:  # noqa: F811
    """Production 1.0.0 (first parameter 0.0) and candidate 1.1.0 (first parameter 1.0)."""
    register(registry, offset=0.0)
    register(registry, offset=1.0)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.9)
    return registry


def test_unusable_replies_are_dropped_and_both_models_meet_on_the_same_clients(
    versions: ModelRegistry,
) -> None:
    clients, accuracy, production = pilot(
        versions,
        {
            1.0: {"a": (0.8, 10), "b": (float("nan"), 10), "c": (0.6, 30), "d": (1.0, 0)},
            0.0: {"a": (0.5, 10), "b": (0.5, 10), "c": None, "d": (0.9, 10)},
        },
    )
    # b's NaN and d's empty evaluation are dropped; c failed for production: only a remains.
    assert clients == ["a"]
    assert (accuracy, production) == (0.8, 0.5)


def test_the_pilot_weights_clients_by_their_examples(versions: ModelRegistry) -> None:
    both = {"a": (0.9, 10), "b": (0.6, 30), "c": (0.0, 0), "d": (1.5, 10)}
    clients, accuracy, production = pilot(versions, {1.0: both, 0.0: both})
    assert clients == ["a", "b"]
    assert accuracy == production == pytest.approx((0.9 * 10 + 0.6 * 30) / 40)


def test_a_pilot_no_client_answers_records_nothing(versions: ModelRegistry) -> None:
    nobody: dict[str, Reply] = dict.fromkeys("abcd")
    runtime = cast(Runtime, ScriptedRuntime({1.0: nobody, 0.0: nobody}))
    candidate = versions.show("1.1.0")
    vector = versions.weights("1.1.0")
    assert run_pilot(runtime, versions, candidate, vector, list("abcd"), 3, "server") is None
    assert versions.pilot("1.1.0") is None


def test_the_draw_is_fixed_by_the_seed_and_refuses_impossible_sizes() -> None:
    population = [f"site-{number}" for number in range(10)]
    assert draw_pilot(population, 3, seed=7) == draw_pilot(population, 3, seed=7)
    assert len(set(draw_pilot(population, 3, seed=7))) == 3
    assert {tuple(draw_pilot(population, 3, seed)) for seed in range(20)} != {
        tuple(draw_pilot(population, 3, 0))
    }
    for impossible in (0, 11):
        with pytest.raises(ConfigError, match="pilot_clients"):
            draw_pilot(population, impossible, seed=7)
