"""Specifications of SecAgg+: exact sums under every dropout pattern, and what is never revealed."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy import stats

from fedwarden.core.errors import ConfigError, UpdateRejected
from fedwarden.secure.secagg import (
    DESIGN_ABORT_PROBABILITY,
    DESIGN_DROPOUT,
    ConsistencyCheck,
    InProcessSecureSum,
    KeyAdvertisement,
    MaskedInput,
    SecAggAborted,
    SecAggClient,
    SecAggError,
    SecAggParameters,
    SecAggPolicy,
    SecAggRefused,
    SecAggServer,
    UnmaskingRequest,
    neighbour_graph,
    secure_threshold,
)
from fedwarden.secure.secagg.wire import (
    client_step_bytes,
    read_client_step,
    read_server_step,
    server_step_bytes,
)
from secagg_rounds import ROUND_SEED, cohort_of, enrolled, mask_all, set_up_round


def inputs_for(cohort: Sequence[str], length: int, modulus_bits: int) -> dict[str, np.ndarray]:
    """Arbitrary ring elements per client (test data, not masks: np.random is fine here)."""
    rng = np.random.default_rng(len(cohort) * 1000 + modulus_bits)
    return {
        client: rng.integers(0, 1 << modulus_bits, size=length, dtype=np.uint64)
        for client in cohort
    }


def exact_sum(values: Sequence[np.ndarray], modulus_bits: int) -> list[int]:
    """The sum mod 2^b in Python integers, independent of NumPy wrap-around."""
    return [sum(int(v[i]) for v in values) % (1 << modulus_bits) for i in range(len(values[0]))]


def valid_neighbour_counts(size: int) -> list[int]:
    return [k for k in range(2, size) if (k * size) % 2 == 0]


# --- exact sums under dropouts ---------------------------------------------------------------


def recoverable(
    graph: dict[str, frozenset[str]],
    threshold: int,
    sharers: set[str],
    survivors: set[str],
    responders: set[str],
) -> bool:
    """Whether every secret unmasking needs has ``t`` responding holders (the protocol's rule)."""
    if len(sharers) < threshold or len(survivors) < threshold:
        return False
    for client in survivors:
        holders = (graph[client] & sharers) | {client}
        if len(holders & responders) < threshold:
            return False
    for client in sharers - survivors:
        if graph[client] & survivors and len(graph[client] & sharers & responders) < threshold:
            return False
    return True


@settings(max_examples=80, deadline=None)
@given(data=st.data(), size=st.integers(3, 12))
def test_sum_is_exact_or_the_round_aborts_for_every_dropout_pattern(
    data: st.DataObject, size: int
) -> None:
    cohort = cohort_of(size)
    num_neighbours = data.draw(st.sampled_from(valid_neighbour_counts(size)), label="k")
    threshold = data.draw(
        st.integers(secure_threshold(num_neighbours, 0), num_neighbours + 1), label="t"
    )
    modulus_bits = data.draw(st.sampled_from([1, 8, 32, 33, 62]), label="b")
    subsets = st.lists(st.sampled_from(cohort), unique=True, max_size=size // 3)
    drop_setup = set(data.draw(subsets, label="dropped during setup"))
    never_submit = set(data.draw(subsets, label="dropped before masked input"))
    drop_unmask = set(data.draw(subsets, label="dropped during unmasking"))
    params = SecAggParameters(modulus_bits, num_neighbours, threshold, corrupted_clients=0)
    length = 50
    inputs = inputs_for(cohort, length, modulus_bits)

    sharers = set(cohort) - drop_setup
    survivors = sharers - never_submit
    responders = survivors - drop_unmask
    secure_sum = InProcessSecureSum(
        cohort,
        length,
        params,
        round_seed=ROUND_SEED,
        policy=SecAggPolicy(modulus_bits=modulus_bits),
    )
    if len(sharers) < threshold:
        event("aborts")
        with pytest.raises(SecAggAborted):
            secure_sum.setup(drop_setup)
        return
    secure_sum.setup(drop_setup)
    graph = secure_sum.server.graph
    expect_sum = recoverable(graph, threshold, sharers, survivors, responders)
    event("aborts" if not expect_sum else "sums")
    if not expect_sum:
        with pytest.raises(SecAggAborted):
            for client in sorted(survivors):
                secure_sum.submit(client, inputs[client])
            secure_sum.finish(drop_unmask)
        return
    for client in sorted(survivors):
        secure_sum.submit(client, inputs[client])
    total = secure_sum.finish(drop_unmask)
    assert total.dtype == np.uint64
    assert secure_sum.survivors == tuple(sorted(survivors))
    assert total.tolist() == exact_sum([inputs[client] for client in survivors], modulus_bits)


@pytest.mark.parametrize("num_neighbours", [7, 4], ids=["classic SecAgg", "SecAgg+ sparse"])
def test_classic_and_sparse_graphs_both_sum_exactly(num_neighbours: int) -> None:
    cohort = cohort_of(8)
    inputs = inputs_for(cohort, 40, 32)
    params = SecAggParameters(32, num_neighbours, secure_threshold(num_neighbours, 0), 0)
    secure_sum = InProcessSecureSum(cohort, 40, params)
    secure_sum.setup()
    for client in cohort[1:]:
        secure_sum.submit(client, inputs[client])
    total = secure_sum.finish()
    assert total.tolist() == exact_sum([inputs[client] for client in cohort[1:]], 32)


def test_with_fewer_than_t_survivors_the_round_aborts_and_reveals_no_sum() -> None:
    cohort = cohort_of(5)
    secure_sum = InProcessSecureSum(cohort, 10, SecAggParameters(32, 4, 4))
    secure_sum.setup()
    for client in cohort[:3]:
        secure_sum.submit(client, np.ones(10, dtype=np.uint64))
    with pytest.raises(SecAggAborted, match="fewer than the threshold t=4") as aborted:
        secure_sum.finish()
    assert aborted.value.reason == "too_few_clients"


def test_dropouts_during_unmasking_leaving_fewer_than_t_shares_abort_for_good() -> None:
    cohort = cohort_of(6)
    params = SecAggParameters(32, 5, 4, 0)
    server, clients, _ = set_up_round(cohort, 8, params)
    mask_all(server, clients, 8)
    check = server.close_masked_inputs()
    for client_id in cohort[:3]:  # three answer; t = 4 shares are needed for every secret
        server.receive_consistency_ack(clients[client_id].check_consistency(check))
    with pytest.raises(SecAggAborted, match="fewer than the threshold") as aborted:
        server.close_consistency()
    assert aborted.value.reason == "too_few_clients"
    with pytest.raises(SecAggAborted):
        server.unmask()


# --- the neighbour graph and the parameters ------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 7, 10, 31])
def test_neighbour_graph_is_symmetric_with_exactly_k_neighbours(size: int) -> None:
    cohort = cohort_of(size)
    for num_neighbours in valid_neighbour_counts(size):
        graph = neighbour_graph(cohort, num_neighbours, ROUND_SEED)
        assert set(graph) == set(cohort)
        for client, peers in graph.items():
            assert len(peers) == num_neighbours
            assert client not in peers
            assert all(client in graph[peer] for peer in peers)
        assert graph == neighbour_graph(list(reversed(cohort)), num_neighbours, ROUND_SEED)


def test_neighbour_graph_changes_with_the_round_seed() -> None:
    cohort = cohort_of(40)
    graphs = {
        tuple(sorted(neighbour_graph(cohort, 4, os.urandom(32))["client-00"])) for _ in range(5)
    }
    assert len(graphs) > 1


def test_default_threshold_outvotes_any_equivocation_and_k_is_the_least_meeting_the_bound() -> None:
    """Recomputes the defaults with SciPy: c = n // 10, t = floor((k+1+c)/2) + 1, k least."""
    survive = float(1 - DESIGN_DROPOUT)
    expected = {5: (0, 4, 3), 20: (2, 19, 12), 100: (10, 99, 56), 1000: (100, 504, 303)}
    for size, (corrupted, num_neighbours, threshold) in expected.items():
        resolved = SecAggParameters().resolved(size)
        k, t, c = resolved.num_neighbours, resolved.threshold, resolved.corrupted_clients
        assert (c, k, t) == (corrupted, num_neighbours, threshold)
        assert c == size // 10
        # Two lists each signed by t of the k + 1 holders share more than c signers.
        assert 2 * t - (k + 1) > c and t > c and t <= k + 1
        meets = size * stats.binom.cdf(t - 1, k, survive) <= float(DESIGN_ABORT_PROBABILITY)
        assert meets or k == size - 1
        for smaller in range(2, k):
            if (smaller * size) % 2 == 0:
                t_smaller = (smaller + 1 + c) // 2 + 1
                bound = size * stats.binom.cdf(t_smaller - 1, smaller, survive)
                assert t_smaller > smaller + 1 or bound > float(DESIGN_ABORT_PROBABILITY)


@pytest.mark.parametrize(
    ("params", "size", "message"),
    [
        (SecAggParameters(num_neighbours=9), 8, "num_neighbours=9 exceeds n - 1 = 7"),
        (SecAggParameters(num_neighbours=3), 7, "k \\* n = 21 is odd"),
        (SecAggParameters(num_neighbours=4, threshold=6), 9, "threshold=6 must satisfy"),
        (SecAggParameters(num_neighbours=19, threshold=5), 20, "threshold=5 must satisfy"),
        (SecAggParameters(num_neighbours=19, threshold=11, corrupted_clients=2), 20, "12 <= t"),
        (SecAggParameters(), 1, "at least|2\\.\\."),
    ],
)
def test_bad_neighbour_counts_and_thresholds_are_refused_with_the_numbers(
    params: SecAggParameters, size: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        params.resolved(size)


@pytest.mark.parametrize(
    "fields", [{"modulus_bits": 0}, {"modulus_bits": 63}, {"threshold": 1}, {"num_neighbours": 0}]
)
def test_out_of_range_parameters_are_refused(fields: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        SecAggParameters(**fields)


# --- what an honest client refuses ---------------------------------------------------------


def unmasking_stage(size: int = 5) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    """A classic-SecAgg round of ``size`` with the last client dropped before masked input."""
    cohort = cohort_of(size)
    params = SecAggParameters(32, size - 1, secure_threshold(size - 1, 0), 0)
    server, clients, _ = set_up_round(cohort, 6, params)
    for client_id in cohort[:-1]:
        server.receive_masked_input(clients[client_id].mask_input(np.ones(6, dtype=np.uint64)))
    check = server.close_masked_inputs()
    for client_id in cohort[:-1]:
        server.receive_consistency_ack(clients[client_id].check_consistency(check))
    return server, clients


def test_a_client_refuses_to_reveal_both_shares_of_one_peer() -> None:
    server, clients = unmasking_stage()
    request = server.close_consistency()
    greedy = replace(request, dropped=(*request.dropped, "client-01"))
    with pytest.raises(SecAggRefused, match="both the self-mask share and the secret-key share"):
        clients["client-00"].unmask(greedy)


def test_a_client_answers_one_unmasking_request_only() -> None:
    server, clients = unmasking_stage()
    request = server.close_consistency()
    clients["client-00"].unmask(request)
    flipped = UnmaskingRequest(request.round_seed, ("client-00",), ("client-01",))
    with pytest.raises(SecAggRefused) as refused:
        clients["client-00"].unmask(flipped)
    assert refused.value.reason == "out_of_order"


def test_a_client_refuses_survivors_other_than_those_it_acknowledged() -> None:
    server, clients = unmasking_stage()
    request = server.close_consistency()
    fewer = UnmaskingRequest(request.round_seed, request.survivors[:-1], request.dropped)
    with pytest.raises(SecAggRefused) as refused:
        clients["client-00"].unmask(fewer)
    assert refused.value.reason == "inconsistent_survivors"


def test_a_client_refuses_a_consistency_check_with_fewer_than_t_survivors() -> None:
    cohort = cohort_of(5)
    _, clients, _ = set_up_round(cohort, 4, SecAggParameters(32, 4, 3, 0))
    clients["client-00"].mask_input(np.zeros(4, dtype=np.uint64))
    with pytest.raises(SecAggRefused) as refused:
        clients["client-00"].check_consistency(
            ConsistencyCheck(ROUND_SEED, ("client-00", "client-01"))
        )
    assert refused.value.reason == "too_few_survivors"


def test_inputs_outside_the_ring_are_refused_before_masking() -> None:
    _, clients, _ = set_up_round(cohort_of(3), 4, SecAggParameters(8, 2, 2, 0))
    with pytest.raises(SecAggError, match="outside the ring"):
        clients["client-00"].mask_input(np.array([0, 1, 256, 3], dtype=np.uint64))


# --- masked vectors hide the input ---------------------------------------------------------


def test_a_masked_vector_is_uniform_and_uncorrelated_with_the_input() -> None:
    length = 1 << 16
    _, clients, _ = set_up_round(cohort_of(3), length, SecAggParameters(32, 2, 2, 0))
    zeros = clients["client-00"].mask_input(np.zeros(length, dtype=np.uint64)).masked
    assert zeros.dtype == np.uint32
    # Bytes and top bytes of a uniform 32-bit word are uniform over 256 values; the loose
    # p > 1e-6 fails only for biased masks (the masks are secure random, not seeded).
    assert stats.chisquare(np.bincount(zeros.view(np.uint8), minlength=256)).pvalue > 1e-6
    assert stats.chisquare(np.bincount(zeros >> 24, minlength=256)).pvalue > 1e-6

    signal = np.random.default_rng(1).integers(0, 1 << 32, size=length, dtype=np.uint64)
    masked = clients["client-01"].mask_input(signal).masked
    # P[y_i = x_i] = 2^-32 per coordinate; two equal coordinates would have probability ~1e-10.
    assert np.sum(masked == signal) <= 1
    correlation = np.corrcoef(masked.astype(np.float64), signal.astype(np.float64))[0, 1]
    assert abs(correlation) < 6 / math.sqrt(length)  # independent: r ~ N(0, 1/d)


def test_upload_is_within_1_1_times_a_float32_vector() -> None:
    length = 1000
    secure_sum = InProcessSecureSum(cohort_of(4), length, SecAggParameters(32))
    secure_sum.setup()
    uploaded = secure_sum.submit("client-00", np.zeros(length, dtype=np.uint64))
    assert 4 * length <= uploaded <= 1.1 * 4 * length


# --- unknown, duplicate, late and forged senders --------------------------------------------


def test_unknown_duplicate_and_wrong_round_advertisements_are_rejected() -> None:
    cohort = cohort_of(3)
    identities = enrolled(cohort)
    public = {client: key.public_key() for client, key in identities.items()}
    server = SecAggServer(
        cohort, 4, SecAggParameters(32, 2, 2, 0), round_seed=ROUND_SEED, identities=public
    )
    client = SecAggClient(
        "client-00", server.setup, identity=identities["client-00"], peer_identities=public
    )
    advertisement = client.advertise_keys()
    server.receive_advertisement(advertisement)
    cases = [
        (advertisement, "duplicate"),
        (replace(advertisement, client_id="mallory"), "unknown_sender"),
        (replace(advertisement, client_id="client-01", round_seed=bytes(32)), "wrong_round"),
    ]
    for message, reason in cases:
        with pytest.raises(UpdateRejected) as rejected:
            server.receive_advertisement(message)
        assert rejected.value.reason == reason


def test_late_and_dropped_out_senders_are_rejected_and_not_summed() -> None:
    cohort = cohort_of(5)
    params = SecAggParameters(32, 4, 3, 0)
    server, clients, _ = set_up_round(cohort, 4, params, drop=["client-04"])
    stranger = MaskedInput(ROUND_SEED, "client-04", np.ones(4, dtype=np.uint32))
    with pytest.raises(UpdateRejected) as rejected:
        server.receive_masked_input(stranger)
    assert rejected.value.reason == "dropped_out"
    for client_id in cohort[:3]:
        server.receive_masked_input(clients[client_id].mask_input(np.ones(4, dtype=np.uint64)))
    with pytest.raises(UpdateRejected) as rejected:
        server.receive_masked_input(MaskedInput(ROUND_SEED, "client-00", np.ones(4, np.uint32)))
    assert rejected.value.reason == "duplicate"
    check = server.close_masked_inputs()
    late = clients["client-03"].mask_input(np.full(4, 7, dtype=np.uint64))
    with pytest.raises(UpdateRejected) as rejected:
        server.receive_masked_input(late)
    assert rejected.value.reason == "late"
    for client_id in check.survivors:
        server.receive_consistency_ack(clients[client_id].check_consistency(check))
    request = server.close_consistency()
    for client_id in check.survivors:
        server.receive_unmasking_response(clients[client_id].unmask(request))
    assert server.unmask().tolist() == [3, 3, 3, 3]


def test_signed_rounds_sum_exactly() -> None:
    cohort = cohort_of(5)
    inputs = inputs_for(cohort, 12, 32)
    secure_sum = InProcessSecureSum(
        cohort, 12, SecAggParameters(32, 4, 3, 0), identities=enrolled(cohort)
    )
    secure_sum.setup()
    for client in cohort[:4]:
        secure_sum.submit(client, inputs[client])
    assert secure_sum.finish().tolist() == exact_sum([inputs[c] for c in cohort[:4]], 32)


def test_forged_unsigned_and_unenrolled_key_advertisements_are_rejected() -> None:
    cohort = cohort_of(3)
    identities = enrolled(cohort)
    public = {client: key.public_key() for client, key in identities.items()}
    enrolled_two = {client: public[client] for client in cohort[:2]}
    setup_server = SecAggServer(
        cohort, 4, SecAggParameters(32, 2, 2, 0), round_seed=ROUND_SEED, identities=enrolled_two
    )

    def client(client_id: str, key: Ed25519PrivateKey) -> SecAggClient:
        return SecAggClient(
            client_id,
            setup_server.setup,
            identity=key,
            peer_identities={**public, client_id: key.public_key()},
        )

    advertisement = client("client-00", identities["client-00"]).advertise_keys()
    impostor = client("client-01", identities["client-00"])
    cases: list[tuple[KeyAdvertisement, str]] = [
        (replace(advertisement, masking_public_key=os.urandom(32)), "bad_signature"),
        (replace(advertisement, self_mask_commitment=os.urandom(32)), "bad_signature"),
        (impostor.advertise_keys(), "bad_signature"),
        (replace(advertisement, signature=b""), "bad_signature"),
        (client("client-02", identities["client-02"]).advertise_keys(), "not_enrolled"),
    ]
    for message, reason in cases:
        with pytest.raises(UpdateRejected) as rejected:
            setup_server.receive_advertisement(message)
        assert rejected.value.reason == reason
    setup_server.receive_advertisement(advertisement)


def test_every_protocol_message_crosses_the_wire_unchanged() -> None:
    """Signatures, commitments and paired digests survive secagg.proto both ways."""
    cohort = cohort_of(5)
    server, clients, _ = set_up_round(cohort, 4, SecAggParameters(32, 4, 3, 0))
    mask_all(server, clients, 4)
    check = server.close_masked_inputs()
    for client in cohort:
        ack = clients[client].check_consistency(check)
        assert read_client_step(client_step_bytes(ack)) == ack
        server.receive_consistency_ack(ack)
    request = server.close_consistency()
    assert read_server_step(server_step_bytes(request)) == request
    assert len(request.signatures) == 5
    response = clients["client-00"].unmask(request)
    assert read_client_step(client_step_bytes(response)) == response
    assert all(item.signature and item.paired_digest for item in response.self_mask_shares)
    advertisement = SecAggClient(
        "client-00",
        server.setup,
        identity=(key := Ed25519PrivateKey.generate()),
        peer_identities={client: key.public_key() for client in cohort},
    ).advertise_keys()
    assert read_client_step(client_step_bytes(advertisement)) == advertisement
    assert len(advertisement.self_mask_commitment) == 32
