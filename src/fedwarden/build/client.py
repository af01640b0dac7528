"""A deployed client's half of a run: its trainer and the stages whose client halves it runs."""

from __future__ import annotations

from fedwarden.build.models import build_trainer
from fedwarden.build.pipeline import build_stages
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.data.dataset import FederatedDataset
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline.secure import SecureSumClient
from fedwarden.pipeline.stage import Stage
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.runtime.grpc.client import Site
from fedwarden.strategies.scaffold import ScaffoldTrainer


def build_client(
    config: RunConfig, dataset: FederatedDataset, site: Site
) -> tuple[Trainer, list[Stage]]:
    """A deployed client's trainer and the stages whose client halves it runs.

    The stages of :func:`~fedwarden.build.pipeline.build_stages`, then, under
    secure aggregation, the client half of SecAgg+ acting with ``site``'s
    identity and policy; under homomorphic aggregation, the encryption under
    the key holder's public context ``site`` holds, signed with its identity.
    ``fedwarden client`` hands this function to
    :class:`~fedwarden.runtime.grpc.client.FederationClient`.
    """
    trainer = build_trainer(config, dataset)
    if config.strategy.name == "scaffold":
        trainer = ScaffoldTrainer(trainer)
    stages = build_stages(config, trainer.spec, None)
    if config.secure.kind == "secagg":
        noise = NoiseSource.secure_or_testing(config.privacy.reproducible_noise, config.seed)
        stages.append(
            SecureSumClient(
                site.client_id,
                site.identity,
                noise,
                ca_certificate=site.ca_certificate,
                policy=site.secagg_policy,
            )
        )
    if config.secure.kind == "he":
        if site.he_public_context is None:
            raise ConfigError(
                "the run uses homomorphic aggregation (secure.kind 'he'), but this client has no "
                "key holder public context: start it with --he-public-context FILE, the "
                "public_context.bin the key holder made (never a file the server sends)"
            )
        # Deferred: TenSEAL is the optional ``he`` extra.
        from fedwarden.pipeline.he_mean import EncryptContribution

        stages.append(
            EncryptContribution(site.he_public_context, site.identity, config.pipeline.weighting)
        )
    return trainer, stages
