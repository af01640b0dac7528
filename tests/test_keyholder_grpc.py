"""The CKKS key holder over mutual TLS: the aggregation server holds no secret key and cannot lie.

The key holder serves in this process on loopback with its own certificate;
the aggregation server is a separate object that holds only a
:class:`RemoteKeyHolder` (the public context and a channel), and the two
clients sign with the identity keys of their deployment certificates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.deploy.pki import init_ca, issue, load_identity
from fedwarden.runtime.grpc.credentials import TlsKit
from fedwarden.runtime.grpc.keyholder import KeyHolderError, KeyHolderServer, RemoteKeyHolder
from fedwarden.secure.he import HomomorphicSum, PublicContext, encrypt_update, sign_contribution
from fedwarden.secure.he_keyholder import (
    CkksKeyHolder,
    DecryptionRefused,
    authorized_clients,
)

LENGTH = 5000  # two ciphertext chunks
CLIENTS = ("alice", "bob")
PRECISION = 1e-5  # two fresh CKKS ciphertexts, divided by weight 3, rounded to float32


@dataclass
class Deployment:
    """The parties' kits and the serving key holder."""

    address: str
    aggregator: TlsKit
    intruder: TlsKit
    identities: dict[str, Ed25519PrivateKey]
    key_holder: KeyHolderServer


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    pki = tmp_path / "pki"
    init_ca(pki, "he-federation")
    issue(pki, "server", "keyholder")
    issue(pki, "client", "aggregator")
    issue(pki, "client", "intruder")
    for client in CLIENTS:
        issue(pki, "client", client)
    certificates = [(pki / "clients" / client / "tls.crt").read_bytes() for client in CLIENTS]
    holder = CkksKeyHolder(
        clients=authorized_clients(certificates, (pki / "ca.crt").read_bytes()),
        decrypted_rounds=tmp_path / "keyholder" / "decrypted.json",
    )
    server = KeyHolderServer(
        holder,
        address="127.0.0.1:0",
        tls=TlsKit.from_dir(pki / "servers" / "keyholder"),
        aggregator="aggregator",
    )
    port = server.serve()
    try:
        yield Deployment(
            address=f"localhost:{port}",
            aggregator=TlsKit.from_dir(pki / "clients" / "aggregator"),
            intruder=TlsKit.from_dir(pki / "clients" / "intruder"),
            identities={client: load_identity(pki / "clients" / client) for client in CLIENTS},
            key_holder=server,
        )
    finally:
        server.stop(None)


def test_a_round_decrypts_remotely_and_the_aggregation_server_never_holds_the_key(
    deployment: Deployment,
) -> None:
    remote = RemoteKeyHolder(deployment.address, deployment.aggregator)
    aggregation = HomomorphicSum(remote.public_context())
    assert not aggregation.public.context.is_private()
    assert not aggregation.public.context.has_secret_key()
    assert remote.min_updates == 2

    public = PublicContext.load(remote.public_context())
    rng = np.random.default_rng(21)
    updates = {client: rng.uniform(-1, 1, LENGTH).astype(np.float32) for client in CLIENTS}
    weights = {"alice": 1.0, "bob": 2.0}
    contributions = {
        client: sign_contribution(
            encrypt_update(public, client, updates[client], weights[client]),
            0,
            deployment.identities[client],
        )
        for client in CLIENTS
    }

    aggregation.start(LENGTH, 0)
    aggregation.add(contributions["alice"])
    alone = aggregation.result()
    with pytest.raises(DecryptionRefused, match="holds 1 client"):
        remote.decrypt(alone)

    aggregation.add(contributions["bob"])
    mean, total_weight, contributors = remote.decrypt(aggregation.result())
    expected = (updates["alice"].astype(np.float64) + 2.0 * updates["bob"]) / 3.0
    assert contributors == 2
    assert abs(total_weight - 3.0) <= PRECISION
    assert mean.shape == (LENGTH,)
    assert np.max(np.abs(mean - expected)) <= PRECISION

    with pytest.raises(DecryptionRefused, match="decrypted already"):
        remote.decrypt(aggregation.result())
    remote.close()


def test_the_key_holder_answers_only_the_named_aggregation_server(deployment: Deployment) -> None:
    with pytest.raises(KeyHolderError, match=r"PERMISSION_DENIED.*only the aggregation server"):
        RemoteKeyHolder(deployment.address, deployment.intruder)


def test_the_aggregation_servers_own_identity_cannot_contribute(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The server signs a second contribution with its own deployment identity key: refused."""
    remote = RemoteKeyHolder(deployment.address, deployment.aggregator)
    public = PublicContext.load(remote.public_context())
    own_key = load_identity(tmp_path / "pki" / "clients" / "aggregator")
    alice = sign_contribution(
        encrypt_update(public, "alice", np.ones(LENGTH, np.float32)),
        1,
        deployment.identities["alice"],
    )
    sybil = sign_contribution(
        encrypt_update(public, "aggregator", np.zeros(LENGTH, np.float32)), 1, own_key
    )
    aggregation = HomomorphicSum(remote.public_context())
    aggregation.start(LENGTH, 1)
    aggregation.add(alice)
    aggregation.add(sybil)
    with pytest.raises(DecryptionRefused, match="'aggregator' is from a client this key holder"):
        remote.decrypt(aggregation.result())
    remote.close()


def test_the_keyholder_command_refuses_the_aggregation_server_as_a_contributor(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    init_ca(pki, "he-federation")
    issue(pki, "server", "keyholder")
    issue(pki, "client", "aggregator")
    result = CliRunner().invoke(
        app,
        [
            "keyholder", "serve",
            "--state", str(tmp_path / "keyholder"),
            "--identity", str(pki / "servers" / "keyholder"),
            "--aggregator", "aggregator",
            "--client", str(pki / "clients" / "aggregator" / "tls.crt"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "names the aggregation server 'aggregator' as a contributor" in result.output
    assert not (tmp_path / "keyholder").exists()


def test_a_request_over_the_message_cap_is_refused_whole_and_decrypts_nothing(
    deployment: Deployment,
) -> None:
    small = RemoteKeyHolder(deployment.address, deployment.aggregator, max_message_bytes=1 << 20)
    public = PublicContext.load(small.public_context())
    aggregation = HomomorphicSum(small.public_context())
    aggregation.start(LENGTH, 0)
    for client in CLIENTS:
        message = encrypt_update(public, client, np.ones(LENGTH, np.float32))
        aggregation.add(sign_contribution(message, 0, deployment.identities[client]))
    request = aggregation.result()
    assert request.payload_bytes > 1 << 20
    with pytest.raises(KeyHolderError, match="RESOURCE_EXHAUSTED"):
        small.decrypt(request)
    assert 0 not in deployment.key_holder.key_holder.decrypted
    _, _, contributors = RemoteKeyHolder(deployment.address, deployment.aggregator).decrypt(request)
    assert contributors == 2
