"""The simulated attack a config names: its malicious clients, poisoned data and updates."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, assert_never

from fedwarden.attacks import (
    ALittleIsEnough,
    AttackSimulation,
    GaussianNoise,
    InnerProductManipulation,
    ModelAttack,
    ModelReplacement,
    Scaling,
    SignFlip,
    Trigger,
    add_backdoor,
    backdoor_test_set,
    choose_malicious,
    flip_labels,
)
from fedwarden.core.config import RunConfig
from fedwarden.data.dataset import FederatedDataset
from fedwarden.pipeline.stage import Pipeline
from fedwarden.server.server import CentralTestSet

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


def malicious_clients(config: RunConfig, dataset: FederatedDataset) -> tuple[str, ...]:
    """The clients ``config.attack`` makes malicious (none without an attack), from the seed."""
    attack = config.attack
    if attack.kind == "none":
        return ()
    return choose_malicious(dataset.client_ids, attack.malicious_fraction, config.seed)


def build_model_attack(config: RunConfig) -> ModelAttack | None:
    """The update-poisoning attack of ``config.attack`` (the backdoor's is model replacement)."""
    attack = config.attack
    match attack.kind:
        case "none" | "label_flip":
            return None
        case "sign_flip":
            return SignFlip(attack.scale)
        case "gaussian":
            return GaussianNoise(attack.sigma)
        case "scaling":
            return Scaling(attack.factor)
        case "alie":
            return ALittleIsEnough(attack.z)
        case "ipm":
            return InnerProductManipulation(attack.epsilon)
        case "backdoor":
            return ModelReplacement(attack.boost)
        case _:
            assert_never(attack.kind)


def backdoor_trigger(config: RunConfig) -> Trigger:
    """The trigger of ``config.attack`` (default: the 2x2 corner patch of an 8x8 image)."""
    attack = config.attack
    if attack.trigger_indices is None:
        return Trigger.corner_patch(value=attack.trigger_value)
    return Trigger(tuple(attack.trigger_indices), attack.trigger_value)


def build_backdoor_tests(config: RunConfig, dataset: FederatedDataset) -> dict[str, CentralTestSet]:
    """The server's extra test of the backdoor of ``config.attack``, by name (none without one).

    Triggered central test examples labelled with the backdoor's target: the
    accuracy on them is the round record's ``backdoor_success``.
    """
    if config.attack.kind != "backdoor":
        return {}
    triggered = backdoor_test_set(
        dataset.x_test, dataset.y_test, backdoor_trigger(config), config.attack.target_label
    )
    return {"backdoor_success": CentralTestSet(triggered.x, triggered.target_labels)}


def poisoned(config: RunConfig, dataset: FederatedDataset) -> FederatedDataset:
    """``dataset`` with the malicious clients' training data poisoned, for data attacks."""
    attack = config.attack
    if attack.kind == "label_flip":
        return flip_labels(dataset, malicious_clients(config, dataset), mapping=attack.mapping)
    if attack.kind == "backdoor":
        return add_backdoor(
            dataset,
            malicious_clients(config, dataset),
            backdoor_trigger(config),
            attack.target_label,
            attack.poison_fraction,
            config.seed,
        )
    return dataset


def attack_summary(
    config: RunConfig, dataset: FederatedDataset, pipeline: Pipeline
) -> dict[str, Any] | None:
    """The run summary's ``attack`` entry: who was malicious, what their updates became."""
    malicious = malicious_clients(config, dataset)
    if not malicious:
        return None
    attack: dict[str, Any] = {"kind": config.attack.kind, "malicious_clients": list(malicious)}
    if isinstance(pipeline.aggregator, AttackSimulation):
        counts = pipeline.aggregator.report()["attack"]
        attack["poisoned_updates"] = counts["poisoned_updates"]
        attack["poisoned_rejected"] = counts["poisoned_rejected"]
    return attack
