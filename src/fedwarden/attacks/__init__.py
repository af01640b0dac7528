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
    "MembershipResult": "fedwarden.attacks.membership",
    "attack_global_model": "fedwarden.attacks.membership",
    "lira_attack": "fedwarden.attacks.membership",
    "loss_threshold_attack": "fedwarden.attacks.membership",
    "InversionResult": "fedwarden.attacks.inversion",
    "invert": "fedwarden.attacks.inversion",
    "reconstruct": "fedwarden.attacks.inversion",
    "AuditResult": "fedwarden.attacks.dp_audit",
    "CanaryTrainer": "fedwarden.attacks.dp_audit",
    "audit_privacy": "fedwarden.attacks.dp_audit",
    "canary_client_audit": "fedwarden.attacks.dp_audit",
    "gaussian_fit_epsilon": "fedwarden.attacks.dp_audit",
    "clopper_pearson": "fedwarden.attacks.dp_audit",
    "one_run_epsilon_lower_bound": "fedwarden.attacks.dp_audit",
    "multi_run_epsilon_lower_bound": "fedwarden.attacks.dp_audit",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
