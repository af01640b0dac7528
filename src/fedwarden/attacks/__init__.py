"""Attack simulation: model poisoning by malicious clients and poisoning of their data."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "BackdoorTestSet": "fedwarden.attacks.data_poisoning",
    "Trigger": "fedwarden.attacks.data_poisoning",
    "add_backdoor": "fedwarden.attacks.data_poisoning",
    "backdoor_success_rate": "fedwarden.attacks.data_poisoning",
    "backdoor_test_set": "fedwarden.attacks.data_poisoning",
    "choose_malicious": "fedwarden.attacks.data_poisoning",
    "flip_labels": "fedwarden.attacks.data_poisoning",
    "MODEL_ATTACKS": "fedwarden.attacks.model_poisoning",
    "ALittleIsEnough": "fedwarden.attacks.model_poisoning",
    "AttackSimulation": "fedwarden.attacks.model_poisoning",
    "GaussianNoise": "fedwarden.attacks.model_poisoning",
    "InnerProductManipulation": "fedwarden.attacks.model_poisoning",
    "ModelAttack": "fedwarden.attacks.model_poisoning",
    "ModelReplacement": "fedwarden.attacks.model_poisoning",
    "RoundKnowledge": "fedwarden.attacks.model_poisoning",
    "RunningMoments": "fedwarden.attacks.model_poisoning",
    "Scaling": "fedwarden.attacks.model_poisoning",
    "SignFlip": "fedwarden.attacks.model_poisoning",
    "alie_z": "fedwarden.attacks.model_poisoning",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
