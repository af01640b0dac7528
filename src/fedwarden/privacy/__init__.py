"""Differential privacy: accountants and the one ledger, clipping, secure noise, mechanisms."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "PrivacySpend": "fedwarden.privacy.accounting",
    "calibrate_noise_multiplier": "fedwarden.privacy.accounting",
    "compute_spend": "fedwarden.privacy.accounting",
    "fixed_size_gaussian": "fedwarden.privacy.accounting",
    "poisson_gaussian": "fedwarden.privacy.accounting",
    "BudgetExceeded": "fedwarden.privacy.ledger",
    "PrivacyBudget": "fedwarden.privacy.ledger",
    "PrivacyLedger": "fedwarden.privacy.ledger",
    "NoiseSource": "fedwarden.privacy.randomness",
    "PrivacyNoiseError": "fedwarden.privacy.randomness",
    "bernoulli_exp": "fedwarden.privacy.discrete",
    "discrete_gaussian": "fedwarden.privacy.discrete",
    "discrete_gaussian_vector": "fedwarden.privacy.discrete",
    "discrete_laplace": "fedwarden.privacy.discrete",
    "discrete_laplace_vector": "fedwarden.privacy.discrete",
    "AdaptiveClipping": "fedwarden.privacy.clipping",
    "ClipNorm": "fedwarden.privacy.clipping",
    "clip_per_layer": "fedwarden.privacy.clipping",
    "clip_to_norm": "fedwarden.privacy.clipping",
    "ClientAddedNoise": "fedwarden.privacy.user_level",
    "CohortSampling": "fedwarden.privacy.user_level",
    "UserLevelPrivacy": "fedwarden.privacy.user_level",
    "ClientBudgets": "fedwarden.privacy.silo",
    "LocalPrivacy": "fedwarden.privacy.silo",
    "SiloPrivacy": "fedwarden.privacy.silo",
    "PoissonSampling": "fedwarden.privacy.poisson",
    "sampling_secrecy": "fedwarden.privacy.secrecy",
    "clopper_pearson": "fedwarden.privacy.auditing",
    "gaussian_fit_epsilon": "fedwarden.privacy.auditing",
    "multi_run_epsilon_lower_bound": "fedwarden.privacy.auditing",
    "one_run_epsilon_lower_bound": "fedwarden.privacy.auditing",
    "Count": "fedwarden.privacy.analytics_queries",
    "Histogram": "fedwarden.privacy.analytics_queries",
    "Mean": "fedwarden.privacy.analytics_queries",
    "Quantile": "fedwarden.privacy.analytics_queries",
    "QueryError": "fedwarden.privacy.analytics_queries",
    "QueryResult": "fedwarden.privacy.analytics",
    "Sum": "fedwarden.privacy.analytics_queries",
    "parse_query": "fedwarden.privacy.analytics_queries",
    "query_command": "fedwarden.privacy.analytics",
    "run_query": "fedwarden.privacy.analytics",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
