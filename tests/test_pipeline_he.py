"""Homomorphic aggregation as deployed: clients encrypt and sign, the aggregator reads payloads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.build.client import build_client
from fedwarden.build.run import run
from fedwarden.core.config import DataConfig, RunConfig
from fedwarden.core.errors import ConfigError, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.data import load_dataset
from fedwarden.pipeline.he_mean import EncryptContribution, HomomorphicMean
from fedwarden.runtime.grpc.client import Site
from fedwarden.secure.he_keyholder import CkksKeyHolder, DecryptionRefused

SIZE = 300
PRECISION = 1e-5


def _updates(round_index: int) -> list[ClientUpdate]:
    rng = np.random.default_rng(round_index)
    return [
        ClientUpdate(
            round_index,
            f"site-{index}",
            rng.normal(0, 0.3, SIZE).astype(np.float32),
            num_examples=10 * (index + 1),
            metrics={"train_loss": 0.5},
        )
        for index in range(3)
    ]


@pytest.fixture
def identities() -> dict[str, Ed25519PrivateKey]:
    return {f"site-{index}": Ed25519PrivateKey.generate() for index in range(3)}


@pytest.fixture
def key_holder(identities: dict[str, Ed25519PrivateKey]) -> CkksKeyHolder:
    """The key holder: another party, knowing the sites' identity keys from their certificates."""
    return CkksKeyHolder(clients={name: key.public_key() for name, key in identities.items()})


def test_encrypted_contributions_average_to_the_weighted_mean_and_nothing_travels_in_clear(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    sites = {
        name: EncryptContribution(key_holder.public_context(), key, "examples")
        for name, key in identities.items()
    }
    aggregator = HomomorphicMean(key_holder=key_holder)
    assert not aggregator.server.public.context.is_private()
    updates = _updates(round_index=4)
    aggregator.start(SIZE, list(sites))
    for update in updates:
        sent = sites[update.client_id].encrypted(update)
        assert sent.update.size == 0 and sent.payload is not None
        assert sent.num_examples != update.num_examples  # the weight is inside the ciphertext
        assert "train_loss" not in sent.metrics
        aggregator.add(sent)

    result = aggregator.result()

    weights = np.array([update.num_examples for update in updates], dtype=np.float64)
    expected = sum(w * u.update.astype(np.float64) for w, u in zip(weights, updates, strict=True))
    assert result.num_updates == 3
    assert abs(result.total_weight - weights.sum()) <= PRECISION * weights.sum()
    assert np.max(np.abs(result.mean_update - expected / weights.sum())) <= PRECISION


def test_a_deployed_aggregator_refuses_clear_updates_and_borrowed_names(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    aggregator = HomomorphicMean(key_holder=key_holder)
    first, second, _ = _updates(round_index=0)
    aggregator.start(SIZE, [first.client_id, second.client_id])
    with pytest.raises(UpdateRejected, match="sent its update in clear") as refused:
        aggregator.add(first)
    assert refused.value.reason == "payload"
    # site-1 encrypts honestly; its payload then arrives under site-0's name.
    honest = EncryptContribution(key_holder.public_context(), identities["site-1"], "examples")
    aggregator.add(dataclasses.replace(honest.encrypted(second), client_id=first.client_id))
    aggregator.add(honest.encrypted(second))
    with pytest.raises(DecryptionRefused, match="not signed by that client's identity key"):
        aggregator.result()


def test_a_truncated_payload_is_refused_before_it_touches_the_sum(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    site = EncryptContribution(key_holder.public_context(), identities["site-0"], "uniform")
    sent = site.encrypted(_updates(round_index=0)[0])
    assert sent.payload is not None
    aggregator = HomomorphicMean(key_holder=key_holder)
    aggregator.start(SIZE, ["site-0"])
    with pytest.raises(UpdateRejected, match="carries") as refused:
        aggregator.add(dataclasses.replace(sent, payload=sent.payload[:-1]))
    assert refused.value.reason == "payload"


def test_a_deployed_client_encrypts_only_under_the_key_it_was_given_itself(
    key_holder: CkksKeyHolder,
) -> None:
    """The server sends the run config, never the key: a client without its own file refuses."""
    config = RunConfig.from_mapping(
        {
            "runtime": {"kind": "grpc"},
            "secure": {
                "kind": "he",
                "key_holder": "keyholder.example:8471",
                "key_holder_identity": "pki/clients/aggregator",
            },
        }
    )
    dataset = load_dataset(DataConfig(source="digits", num_clients=2), seed=0)
    identity = Ed25519PrivateKey.generate()
    without = Site("site-0", identity, b"")
    with pytest.raises(ConfigError, match="--he-public-context"):
        build_client(config, dataset, without)
    _, stages = build_client(
        config, dataset, dataclasses.replace(without, he_public_context=key_holder.public_context())
    )
    last = stages[-1]
    assert isinstance(last, EncryptContribution)
    assert last.public.key_id == key_holder.key_id


def test_fedwarden_run_refuses_he_over_grpc_with_client_processes_of_its_own(
    tmp_path: Path,
) -> None:
    """Its local clients could take the key only from the server: the run says how to deploy."""
    config = RunConfig.from_mapping(
        {
            "runs_dir": str(tmp_path / "runs"),
            "runtime": {"kind": "grpc"},
            "secure": {
                "kind": "he",
                "key_holder": "keyholder.example:8471",
                "key_holder_identity": "pki/clients/aggregator",
            },
        }
    )
    with pytest.raises(ConfigError, match="fedwarden client --he-public-context"):
        run(config)
    assert not (tmp_path / "runs").exists()
