"""Config sections of what protects the clients: differential privacy and secure aggregation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from fedwarden.core.config.section import Section


class PrivacyConfig(Section):
    """Differential privacy: the mechanism, the budget, and how noise is calibrated.

    ``mechanism = "user_level"`` is DP-FedAvg (McMahan et al. 2018): the privacy
    unit is a client, each update is clipped to ``clip_norm`` and the sum gets
    Gaussian noise ``noise_multiplier * clip_norm``. Without a
    ``noise_multiplier`` the noise is calibrated so that ``rounds`` rounds spend
    exactly the budget ``epsilon`` at ``delta``. ``mechanism = "local"`` is local
    DP: each client clips to ``clip_norm`` and adds noise
    ``noise_multiplier * 2 * clip_norm`` itself; ``epsilon`` is each client's
    budget, and a client whose next release would exceed it is no longer sampled.
    ``mechanism = "dp_sgd"`` is sample-level DP-SGD at each silo (Abadi et al.
    2016, with Opacus; PyTorch models): per-example gradients clipped to
    ``max_grad_norm``, noise ``noise_multiplier * max_grad_norm``; ``epsilon`` is
    each silo's budget, and a silo that would exceed it is no longer sampled.
    Without a ``noise_multiplier`` it is calibrated so that the smallest silo's
    ``rounds`` rounds spend exactly ``epsilon``.
    """

    mechanism: Literal["none", "user_level", "local", "dp_sgd"] = "none"
    epsilon: Annotated[float, Field(gt=0)] | None = None
    """Run budget; a round that would exceed it is refused before sampling."""
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    noise_multiplier: Annotated[float, Field(gt=0)] | None = None
    clip_norm: Annotated[float, Field(gt=0)] = 1.0
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    """DP-SGD's per-example gradient clip norm."""
    clip_on: Literal["client", "server"] = "client"
    per_layer_clipping: bool = False
    adaptive_clipping: bool = False
    target_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.5
    clip_learning_rate: Annotated[float, Field(gt=0)] = 0.2
    count_noise_multiplier: Annotated[float, Field(gt=0)] = 10.0
    reproducible_noise: bool = False
    """Test mode only: noise from a seeded stream, logged loudly. Never for a real release."""
    public_example_counts: bool = False
    """Declare each client's example count public: sent in clear and stored beside its update.

    Under differential privacy or secure aggregation counts are otherwise withheld (inside the
    secure sum, or every client weighs the same); DP-SGD's per-silo accounting always uses them.
    """

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyConfig:
        if self.mechanism == "user_level" and self.epsilon is None:
            raise ValueError("privacy.mechanism 'user_level' needs a budget: set privacy.epsilon")
        if self.mechanism == "dp_sgd" and self.epsilon is None:
            raise ValueError(
                "privacy.mechanism 'dp_sgd' needs privacy.epsilon (each silo's budget)"
            )
        if self.mechanism == "local" and self.noise_multiplier is None:
            raise ValueError(
                "privacy.mechanism 'local' needs privacy.noise_multiplier (noise std is "
                "noise_multiplier * 2 * clip_norm)"
            )
        if self.mechanism == "local" and self.epsilon is None:
            raise ValueError(
                "privacy.mechanism 'local' needs privacy.epsilon (each client's budget: a client "
                "whose next release would exceed it is no longer sampled)"
            )
        if self.adaptive_clipping and self.per_layer_clipping:
            raise ValueError(
                "adaptive clipping tracks one flat clip norm; turn off per_layer_clipping"
            )
        return self


class SecureConfig(Section):
    """Secure aggregation: the server learns only the cohort's sum, never one update.

    ``kind = "secagg"`` is SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020):
    each update is clipped to ``clip_norm``, stochastically quantized to
    integers mod ``2^modulus_bits`` and masked; ``num_neighbours`` (k),
    ``threshold`` (t) and ``corrupted_clients`` (c, clients that may collude
    with a lying server; t must exceed (k + 1 + c) / 2) default to values sized
    for the cohort (see :mod:`fedwarden.secure.secagg.parameters`). With
    ``privacy.mechanism = "user_level"`` the clients add the noise themselves
    (the distributed discrete Gaussian, Kairouz et al. 2021), clip to
    ``privacy.clip_norm``, and the ledger charges the noise of ``t`` survivors.
    ``kind = "he"`` sums CKKS ciphertexts (TenSEAL) that only a separate key
    holder can decrypt: in process for the simulated runtimes, and over the
    grpc runtime ``fedwarden keyholder serve`` at ``key_holder``, called with
    the aggregation server's client kit ``key_holder_identity``.
    """

    kind: Literal["none", "secagg", "he"] = "none"
    modulus_bits: Annotated[int, Field(ge=8, le=62)] = 32
    num_neighbours: Annotated[int, Field(ge=1)] | None = None
    threshold: Annotated[int, Field(ge=2)] | None = None
    corrupted_clients: Annotated[int, Field(ge=0)] | None = None
    clip_norm: Annotated[float, Field(gt=0)] = 10.0
    """L2 bound of each update inside the ring (without user-level DP)."""
    key_holder: str | None = None
    """HOST:PORT of the CKKS key holder (``fedwarden keyholder serve``); grpc runtime only."""
    key_holder_identity: Path | None = None
    """Client startup kit with which the aggregation server calls the key holder."""
