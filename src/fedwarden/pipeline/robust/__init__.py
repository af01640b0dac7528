"""Byzantine-robust aggregation, per-client anomaly scores, and client reputation.

A robust aggregator replaces the streaming mean when some clients may send
arbitrary (Byzantine) updates. Each one buffers the round's updates as the
rows of ONE preallocated float32 matrix (rows = the cohort size given to
``start``, grown only if more updates arrive) and computes its rule with
vectorised NumPy/BLAS over that matrix: Python loops run over clients,
iterations or column blocks, never over coordinates. Because the rule must see
every update, :attr:`RobustAggregator.needs_individual_updates` is true and a
pipeline that also holds secure aggregation is refused when it is built.

The rules, each a pure function of the matrix with an aggregator around it:

=====================  =============================================  ==========================
rule                   paper                                          tolerates f Byzantine of n
=====================  =============================================  ==========================
coordinate median      Yin et al. 2018, Definition 1                  f < n / 2
trimmed mean (beta)    Yin et al. 2018, Definition 2                  f <= floor(beta n)
Krum, Multi-Krum       Blanchard et al. 2017, Sections 4 and 5        n >= 2f + 3
Bulyan                 El Mhamdi et al. 2018, Section 4               n >= 4f + 3
geometric median       Pillutla et al. 2022 (RFA), Algorithm 2        f < n / 2
centered clipping      Karimireddy et al. 2021, Section 4 (CC)        small f / n (see class)
norm-bounded mean      Sun et al. 2019, Section 3                     any f; bounds influence
FLTrust                Cao et al. 2021, Algorithm 2                   any f; trusts a root set
=====================  =============================================  ==========================

**Weighting.** Robust rules are unweighted: every update counts once and the
number of examples a client claims is ignored (it is not verifiable, and a
weight is exactly what a Byzantine client would inflate). ``Aggregate.total_weight``
is the number of updates the rule's output is built from (1 for Krum, ``m``
for Multi-Krum, ``n - 2 floor(beta n)`` per coordinate for the trimmed mean,
``n`` otherwise); ``Aggregate.num_updates`` is the number that arrived.

When a rule cannot run with the updates that arrived (Krum with
``n <= 2f + 2``, Bulyan with ``n < 4f + 3``, FLTrust with no trusted update),
``result`` raises :class:`RoundAborted` with the numbers and the server leaves
the model unchanged. ``Krum.check`` and ``Bulyan.check`` make the same test
against the configured cohort size at configuration time (``ConfigError``).

**Anomaly scores** (:func:`anomaly_scores`): after every round each client's
update is measured against the round's robust center (the rule's output):
L2 distance, cosine similarity, and norm over the median norm. A client is
flagged by :class:`AnomalyRule` (robust z-score of the distance, optionally
cosine and norm-ratio thresholds). Each aggregator keeps the last round's
scores in ``last_scores``; :class:`Reputation` accumulates flags across rounds
and names the clients to quarantine, following the advice "if one node's
updates are statistical outliers, investigate before including it".

Distances, norms and dot products accumulate in float64 over column blocks of
the float32 matrix; pairwise distances come from the Gram matrix of the
updates centered on their coordinate-wise median (one float32 GEMM per block,
summed in float64), so Krum's O(n^2 d) work is a single BLAS pass.

The package: :mod:`~fedwarden.pipeline.robust.rules` (the rules as pure
functions of the matrix), :mod:`~fedwarden.pipeline.robust.aggregators` (each
rule as a pipeline :class:`~fedwarden.pipeline.stage.Aggregator`) and
:mod:`~fedwarden.pipeline.robust.reputation` (anomaly scores and reputation).
"""

from __future__ import annotations

from fedwarden.pipeline.robust.aggregators import (
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    FLTrust,
    GeometricMedian,
    Krum,
    MultiKrum,
    NormBoundedMean,
    RobustAggregator,
    ServerUpdate,
    TrimmedMean,
)
from fedwarden.pipeline.robust.reputation import (
    AnomalyRule,
    ClientScore,
    Reputation,
    anomaly_scores,
    robust_z_scores,
)
from fedwarden.pipeline.robust.rules import (
    WeiszfeldResult,
    bulyan,
    bulyan_minimum_updates,
    centered_clipping,
    clipping_factors,
    coordinate_median,
    fltrust,
    geometric_median,
    krum_minimum_updates,
    krum_scores,
    multi_krum,
    norm_bounded_mean,
    pairwise_squared_distances,
    trimmed_count,
    trimmed_mean,
)

__all__ = [
    "AnomalyRule",
    "Bulyan",
    "CenteredClipping",
    "ClientScore",
    "CoordinateMedian",
    "FLTrust",
    "GeometricMedian",
    "Krum",
    "MultiKrum",
    "NormBoundedMean",
    "Reputation",
    "RobustAggregator",
    "ServerUpdate",
    "TrimmedMean",
    "WeiszfeldResult",
    "anomaly_scores",
    "bulyan",
    "bulyan_minimum_updates",
    "centered_clipping",
    "clipping_factors",
    "coordinate_median",
    "fltrust",
    "geometric_median",
    "krum_minimum_updates",
    "krum_scores",
    "multi_krum",
    "norm_bounded_mean",
    "pairwise_squared_distances",
    "robust_z_scores",
    "trimmed_count",
    "trimmed_mean",
]
