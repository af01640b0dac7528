"""SecAgg+ rounds driven by hand for the tests: enrolled clients, one server, every message seen."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.secure.secagg import SecAggClient, SecAggParameters, SecAggPolicy, SecAggServer

ROUND_SEED = bytes(range(32))


def cohort_of(size: int) -> list[str]:
    return [f"client-{index:02d}" for index in range(size)]


def enrolled(cohort: Sequence[str]) -> dict[str, Ed25519PrivateKey]:
    """A fresh Ed25519 identity key per client (what each client's certificate binds)."""
    return {client: Ed25519PrivateKey.generate() for client in cohort}


def set_up_round(
    cohort: Sequence[str],
    length: int,
    params: SecAggParameters,
    drop: Sequence[str] = (),
    policy: SecAggPolicy | None = None,
) -> tuple[SecAggServer, dict[str, SecAggClient], dict[str, Ed25519PrivateKey]]:
    """Rounds 0 and 1 by hand; clients in ``drop`` vanish after advertising keys."""
    identities = enrolled(cohort)
    public = {client: key.public_key() for client, key in identities.items()}
    server = SecAggServer(cohort, length, params, round_seed=ROUND_SEED, identities=public)
    clients = {
        client: SecAggClient(
            client,
            server.setup,
            identity=identities[client],
            peer_identities=public,
            policy=policy or SecAggPolicy(modulus_bits=params.modulus_bits),
        )
        for client in cohort
    }
    for client in clients.values():
        server.receive_advertisement(client.advertise_keys())
    neighbour_keys = server.close_advertisements()
    for client_id, client in clients.items():
        if client_id not in drop:
            server.receive_shares(client.share_keys(neighbour_keys[client_id]))
    for client_id, delivery in server.close_sharing().items():
        clients[client_id].receive_shares(delivery)
    return server, clients, identities


def mask_all(server: SecAggServer, clients: dict[str, SecAggClient], length: int) -> None:
    """Round 2 for every client, with all-ones inputs."""
    for client in clients.values():
        server.receive_masked_input(client.mask_input(np.ones(length, dtype=np.uint64)))
