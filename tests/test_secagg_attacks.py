"""Attacks on SecAgg+: a lying server, forged identities, and clients that cheat.

Each test mounts one attack of issue 16 against the protocol and asserts that
it is refused or survived, with the reason.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import RoundAborted, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.deploy.pki import init_ca, issue, load_identity
from fedwarden.pipeline.secure import RoundEncoding, SecureSum, SecureSumClient
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian
from fedwarden.secure.encoding import RingEncoder
from fedwarden.secure.secagg import (
    ConsistencyAck,
    ConsistencyCheck,
    InProcessSecureSum,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    SecAggAborted,
    SecAggClient,
    SecAggParameters,
    SecAggPolicy,
    SecAggRefused,
    SecAggServer,
    UnmaskingRequest,
    UnmaskingResponse,
)
from fedwarden.secure.secagg import client as secagg_client
from fedwarden.secure.secagg.messages import consistency_payload, survivor_list_digest
from fedwarden.secure.secagg.wire import StartRound, server_step_bytes
from fedwarden.secure.shamir import PRIME, Share, split_secret
from secagg_rounds import ROUND_SEED, cohort_of, enrolled, mask_all, set_up_round

# --- a malicious server -----------------------------------------------------------------------


def test_equivocating_survivor_lists_do_not_reveal_both_secrets_of_a_client() -> None:
    """The server tells half of the victim's holders it survived, the rest that it dropped.

    n = 20 with default parameters (k = 19, t = 12, c = 2); the server also controls
    two clients, which sign both lists. Before issue 16 (t = 5, unsigned lists) this
    recovered the victim's input exactly.
    """
    cohort = cohort_of(20)
    server, clients, identities = set_up_round(cohort, 4, SecAggParameters())
    assert (server.setup.num_neighbours, server.setup.threshold) == (19, 12)
    mask_all(server, clients, 4)
    victim, corrupted = "client-00", ["client-18", "client-19"]
    told_survived = [victim, *cohort[1:10]]
    told_dropped = cohort[10:18]
    with_victim = tuple(cohort)
    without_victim = tuple(client for client in cohort if client != victim)

    def signatures(survivors: tuple[str, ...], honest: list[str]) -> list[ConsistencyAck]:
        check = ConsistencyCheck(ROUND_SEED, survivors)
        signed = [clients[client].check_consistency(check) for client in honest]
        for client in corrupted:
            listed = survivor_list_digest(survivors)
            payload = consistency_payload(server.graph_seed, client, listed)
            signed.append(ConsistencyAck(ROUND_SEED, client, identities[client].sign(payload)))
        return signed

    survived = signatures(with_victim, told_survived)
    dropped = signatures(without_victim, told_dropped)
    assert (len(survived), len(dropped)) == (12, 10)
    seed_request = UnmaskingRequest(ROUND_SEED, with_victim, (), tuple(survived))
    for client in told_survived:
        response = clients[client].unmask(seed_request)
        assert victim in {item.owner for item in response.self_mask_shares}
    # Every signature the server holds, on either list, is offered to the second group.
    key_request = UnmaskingRequest(ROUND_SEED, without_victim, (victim,), (*dropped, *survived))
    for client in told_dropped:
        with pytest.raises(SecAggRefused, match=f"only 10 of {victim!r}'s share holders") as no:
            clients[client].unmask(key_request)
        assert no.value.reason == "unsigned_survivors"
    # The server holds only the corrupted clients' shares of the victim's masking key.
    assert len(corrupted) < server.setup.threshold


def test_a_server_chosen_tiny_round_or_low_threshold_is_refused_before_anything_is_sent() -> None:
    victim, fake = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = {"victim": victim.public_key(), "fake": fake.public_key()}
    tiny = RoundSetup(ROUND_SEED, ("fake", "victim"), 4, 32, 1, 2)
    with pytest.raises(SecAggRefused, match="a cohort of 2 < min_cohort_size=3") as refused:
        SecAggClient("victim", tiny, identity=victim, peer_identities=keys)
    assert refused.value.reason == "policy"

    cohort = cohort_of(20)
    identities = enrolled(cohort)
    public = {client: key.public_key() for client, key in identities.items()}
    low = RoundSetup(ROUND_SEED, tuple(cohort), 4, 32, 19, 5)  # the old default for n = 20
    with pytest.raises(SecAggRefused, match=r"t=5 outside 11\.\.20") as refused:
        SecAggClient("client-00", low, identity=identities["client-00"], peer_identities=public)
    assert refused.value.reason == "policy"
    careful = SecAggPolicy(min_cohort_size=25, corrupted_clients=4)
    default = RoundSetup(ROUND_SEED, tuple(cohort), 4, 32, 19, 12)
    with pytest.raises(SecAggRefused, match=r"cohort of 20 < min_cohort_size=25.*t=12 outside"):
        SecAggClient(
            "client-00",
            default,
            identity=identities["client-00"],
            peer_identities=public,
            policy=careful,
        )


# --- peer identities come from certificates the client checks itself ---------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A CA with five client kits, and an attacker's CA with its own kit named client-01."""
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca", "federation")
    for client in cohort_of(5):
        issue(root / "ca", "client", client)
    init_ca(root / "rogue", "rogue")
    issue(root / "rogue", "client", "client-01")
    return root / "ca", root / "rogue"


def certificates(ca: Path) -> dict[str, bytes]:
    return {client: (ca / "clients" / client / "tls.crt").read_bytes() for client in cohort_of(5)}


def start_round(relayed: dict[str, bytes], encoding: RoundEncoding | None = None) -> bytes:
    """Round 0 as a server sends it: k = 4, t = 3 over five clients, ring 2^32."""
    setup = RoundSetup(ROUND_SEED, tuple(cohort_of(5)), 4, 32, 4, 3)
    ring = RoundEncoding(ring=RingEncoder.finest(1.0, 5, 32, "uniform", 1))
    return server_step_bytes(StartRound(setup, (encoding or ring).to_json(), relayed))


def deployed_client(
    ca: Path, noise: NoiseSource | None = None, policy: SecAggPolicy | None = None
) -> SecureSumClient:
    return SecureSumClient(
        "client-00",
        load_identity(ca / "clients" / "client-00"),
        noise or NoiseSource.secure(),
        ca_certificate=(ca / "ca.crt").read_bytes(),
        policy=policy,
    )


def test_missing_or_substituted_peer_identities_are_refused(deployment: tuple[Path, Path]) -> None:
    ca, rogue = deployment
    honest = certificates(ca)
    assert deployed_client(ca).answer(start_round(honest))  # an honest round is answered
    missing_one = {client: pem for client, pem in honest.items() if client != "client-03"}
    rogue_certificate = (rogue / "clients" / "client-01" / "tls.crt").read_bytes()
    cases = [
        ({}, "unknown_identity", "trusts no identity key"),
        (missing_one, "unknown_identity", "client-03"),
        ({**honest, "client-01": rogue_certificate}, "untrusted_certificate", "not issued by"),
        (
            {**honest, "client-02": honest["client-01"]},
            "untrusted_certificate",
            "names 'client-01'",
        ),
    ]
    for relayed, reason, message in cases:
        with pytest.raises(SecAggRefused, match=message) as refused:
            deployed_client(ca).answer(start_round(relayed))
        assert refused.value.reason == reason


def test_a_substituted_advertisement_or_own_identity_is_refused() -> None:
    cohort = cohort_of(5)
    identities = enrolled(cohort)
    public = {client: key.public_key() for client, key in identities.items()}
    setup = RoundSetup(ROUND_SEED, tuple(cohort), 4, 32, 4, 3)
    with pytest.raises(SecAggRefused) as refused:
        SecAggClient(
            "client-00",
            setup,
            identity=identities["client-00"],
            peer_identities={**public, "client-00": public["client-01"]},
        )
    assert refused.value.reason == "substituted_identity"

    honest = {
        client: SecAggClient(client, setup, identity=identities[client], peer_identities=public)
        for client in cohort
    }
    advertisements = [client.advertise_keys() for client in honest.values()]
    mallory_key = Ed25519PrivateKey.generate()
    mallory = SecAggClient(
        "client-01",
        setup,
        identity=mallory_key,
        peer_identities={**public, "client-01": mallory_key.public_key()},
    )
    swapped = tuple(
        mallory.advertise_keys() if item.client_id == "client-01" else item
        for item in advertisements
    )
    with pytest.raises(SecAggRefused, match="'client-01' is not signed by its identity") as refused:
        honest["client-00"].share_keys(NeighbourKeys(ROUND_SEED, swapped))
    assert refused.value.reason == "bad_signature"


def test_test_mode_noise_and_other_dp_settings_are_refused(deployment: tuple[Path, Path]) -> None:
    ca, _ = deployment
    relayed = certificates(ca)
    with pytest.raises(SecAggRefused, match="test-mode") as refused:
        deployed_client(ca, noise=NoiseSource.for_testing(0)).answer(start_round(relayed))
    assert refused.value.reason == "policy"

    def mechanism(noise_multiplier: float) -> DistributedDiscreteGaussian:
        return DistributedDiscreteGaussian.calibrated(
            clip_norm=1.0,
            noise_multiplier=noise_multiplier,
            dimension=8,
            cohort_size=5,
            min_survivors=3,
        )

    policy = SecAggPolicy(distributed_dp=mechanism(1.0))
    weaker = RoundEncoding(distributed_dp=mechanism(0.1), rotation_seed=bytes(32))
    for encoding, message in (
        (weaker, "settings \\['granularity'\\]"),
        (None, "no distributed-DP"),
    ):
        with pytest.raises(SecAggRefused, match=message) as refused:
            deployed_client(ca, policy=policy).answer(start_round(relayed, encoding))
        assert refused.value.reason == "policy"
    agreed = RoundEncoding(distributed_dp=mechanism(1.0), rotation_seed=bytes(32))
    assert deployed_client(ca, policy=policy).answer(start_round(relayed, agreed))


# --- malicious clients --------------------------------------------------------------------------


def updates(cohort: list[str], size: int) -> list[ClientUpdate]:
    """Small honest updates (test data, not noise: np.random is fine here)."""
    rng = np.random.default_rng(7)
    return [
        ClientUpdate(0, client, rng.normal(0, 0.1, size).astype(np.float32), num_examples=10)
        for client in cohort
    ]


def cheating_round(
    monkeypatch: pytest.MonkeyPatch,
    tamper: int,
    slot: slice,
    distributed_dp: DistributedDiscreteGaussian | None = None,
) -> SecureSum:
    """A simulated SecureSum round in which client c0 adds ``tamper`` to ``slot`` after masking."""
    cohort = [f"c{index}" for index in range(5)]
    modulus_bits = 32
    secure = SecureSum(
        SecAggParameters(modulus_bits),
        clip_norm=1.0,
        noise=NoiseSource.secure(),
        max_weight=50,
        distributed_dp=distributed_dp,
        client_threads=1,
    )
    secure.start(16, cohort)
    assert secure.last_round is not None
    honest_mask = secure.last_round.mask

    def mask(client_id: str, encoded: npt.NDArray[np.unsignedinteger]) -> MaskedInput:
        masked = honest_mask(client_id, encoded)
        if client_id == "c0":
            values = masked.masked.astype(np.uint64)
            values[slot] = (values[slot] + tamper) % (1 << modulus_bits)
            masked = replace(masked, masked=values.astype(masked.masked.dtype))
        return masked

    monkeypatch.setattr(secure.last_round, "mask", mask)
    for update in updates(cohort, 16):
        secure.add(update)
    return secure


def test_a_weight_slot_overflow_aborts_the_round_instead_of_ending_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secure = cheating_round(monkeypatch, 1 << 31, slice(-1, None))
    with pytest.raises(RoundAborted, match="decoded total weight is -") as aborted:
        secure.result()
    assert "the model unchanged" in str(aborted.value)
    secure = cheating_round(monkeypatch, 1 << 20, slice(-1, None))
    with pytest.raises(RoundAborted, match="exceeds 5 survivors x max_weight 50"):
        secure.result()


def test_an_out_of_range_masked_input_aborts_or_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secure = cheating_round(monkeypatch, 1 << 29, slice(0, 16))
    with pytest.raises(RoundAborted, match=r"above the clip norm 1\.0"):
        secure.result()
    noisy = DistributedDiscreteGaussian.calibrated(
        clip_norm=1.0, noise_multiplier=1.0, dimension=16, cohort_size=5, min_survivors=3
    )
    secure = cheating_round(monkeypatch, 1 << 29, slice(0, 16), distributed_dp=noisy)
    with pytest.raises(RoundAborted, match="beyond the"):
        secure.result()

    cohort = cohort_of(5)
    server, clients, _ = set_up_round(cohort, 4, SecAggParameters(16, 4, 3, 0))
    outside = clients["client-00"].mask_input(np.ones(4, dtype=np.uint64))
    outside.masked[0] = 1 << 16  # a word the 2^16 ring cannot hold
    with pytest.raises(UpdateRejected) as rejected:
        server.receive_masked_input(outside)
    assert rejected.value.reason == "range"
    for client in cohort[1:]:
        server.receive_masked_input(clients[client].mask_input(np.ones(4, dtype=np.uint64)))
    check = server.close_masked_inputs()
    for client in check.survivors:
        server.receive_consistency_ack(clients[client].check_consistency(check))
    request = server.close_consistency()
    for client in check.survivors:
        server.receive_unmasking_response(clients[client].unmask(request))
    assert server.unmask().tolist() == [4, 4, 4, 4]


def forged(response: UnmaskingResponse) -> UnmaskingResponse:
    """``response`` with every revealed self-mask share's value changed (its x kept)."""
    shares = []
    for item in response.self_mask_shares:
        share = Share.from_bytes(item.share)
        shares.append(replace(item, share=Share(share.x, (share.y + 1) % PRIME).to_bytes()))
    return replace(response, self_mask_shares=tuple(shares))


def unmasking(
    size: int, threshold: int
) -> tuple[SecAggServer, dict[str, SecAggClient], UnmaskingRequest]:
    cohort = cohort_of(size)
    server, clients, _ = set_up_round(cohort, 4, SecAggParameters(32, size - 1, threshold, 0))
    mask_all(server, clients, 4)
    check = server.close_masked_inputs()
    for client in cohort:
        server.receive_consistency_ack(clients[client].check_consistency(check))
    return server, clients, server.close_consistency()


def test_a_forged_share_is_identified_excluded_and_the_round_still_sums_exactly() -> None:
    server, clients, request = unmasking(7, 4)
    for client_id, client in clients.items():
        response = client.unmask(request)
        server.receive_unmasking_response(
            forged(response) if client_id == "client-00" else response
        )
    assert server.unmask().tolist() == [7, 7, 7, 7]
    assert server.misbehaving == {"client-00": "forged_share"}

    server, clients, request = unmasking(5, 3)
    for client_id in ("client-00", "client-01", "client-02"):  # exactly t answer; one forges
        response = clients[client_id].unmask(request)
        server.receive_unmasking_response(
            forged(response) if client_id == "client-00" else response
        )
    with pytest.raises(SecAggAborted, match="only 2 holders") as aborted:
        server.unmask()
    assert aborted.value.reason == "too_few_shares"
    assert server.misbehaving == {"client-00": "forged_share"}


def test_a_dealer_whose_signed_shares_disagree_aborts_the_round_and_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every dealer adds x^t to its shares: a degree-t polynomial no t-of-n sharing allows."""

    def inconsistent(secret: bytes, threshold: int, holders: list[int]) -> tuple[Share, ...]:
        shares = split_secret(secret, threshold, holders)
        return tuple(Share(s.x, (s.y + s.x**threshold) % PRIME) for s in shares)

    monkeypatch.setattr(secagg_client, "split_secret", inconsistent)
    server, clients, request = unmasking(5, 3)
    for client in clients.values():
        server.receive_unmasking_response(client.unmask(request))
    with pytest.raises(SecAggAborted, match=r"'client-00'.* dealt inconsistent shares") as aborted:
        server.unmask()
    assert aborted.value.reason == "dealer_cheated"
    assert server.misbehaving == {}  # no holder is blamed for shares its dealer signed


def test_a_cheating_client_costs_its_round_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first masked input of the run overflows the weight slot; later rounds are honest."""
    honest_mask = InProcessSecureSum.mask
    cheated: list[str] = []

    def mask(
        self: InProcessSecureSum, client_id: str, encoded: npt.NDArray[np.unsignedinteger]
    ) -> MaskedInput:
        masked = honest_mask(self, client_id, encoded)
        if cheated:
            return masked
        cheated.append(client_id)
        values = masked.masked.astype(np.uint64)
        values[-1] = (values[-1] + (1 << 31)) % (1 << 32)
        return replace(masked, masked=values.astype(np.uint32))

    monkeypatch.setattr(InProcessSecureSum, "mask", mask)
    config = RunConfig.from_mapping(
        {
            "seed": 4,
            "rounds": 3,
            "data": {"source": "digits", "num_clients": 6},
            "train": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1},
            "sampling": {"cohort_size": 6},
            "runtime": {"workers": 1},
            "secure": {"kind": "secagg"},
        }
    )
    result = run(config, write_run_dir=False)
    assert len(cheated) == 1
    assert [record.applied for record in result.history] == [False, True, True]
    assert "decoded total weight is -" in result.history[0].note
    assert "the model is unchanged" in result.history[0].note
