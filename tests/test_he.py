"""CKKS aggregation: the HE weighted mean equals the plain one, and the server cannot decrypt."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.core.errors import ConfigError, UpdateRejected
from fedwarden.secure.he import (
    CkksParameters,
    Contribution,
    EncryptedUpdate,
    HomomorphicSum,
    PublicContext,
    chunk_count,
    encrypt_update,
    sign_contribution,
)
from fedwarden.secure.he_keyholder import CkksKeyHolder, DecryptionRefused

SLOTS = 4096

# Per-slot error of one fresh CKKS ciphertext, in plaintext units. Cheon et al.
# (ASIACRYPT 2017, Lemma 1) bound the fresh-encryption noise in the canonical
# embedding by 8*sqrt(2)*sigma*N + 6*sigma*sqrt(N) + 16*sigma*sqrt(h*N); with
# SEAL's sigma = 3.2, N = 8192 and a ternary secret (h <= N) that is < 717,800,
# and encoding's rounding adds at most N/2 = 4096: below 2^20 in all. Dividing
# by the scale 2^40 gives 2^-20 per ciphertext; adding n ciphertexts adds their
# errors, so a sum of n updates is off by at most n * 2^-20 in every slot.
FRESH_ERROR = 2.0**-20
FLOAT32_ROUNDING = 2.0**-24


IDENTITIES: dict[str, Ed25519PrivateKey] = {}
"""Each test client's identity key, made on first use."""


@pytest.fixture
def key_holder() -> CkksKeyHolder:
    """A fresh key holder (N = 8192, primes 60/40/40/60, scale 2^40): every round is new to it."""
    return CkksKeyHolder()


@pytest.fixture
def public(key_holder: CkksKeyHolder) -> PublicContext:
    """The clients' view of the key holder's context."""
    return PublicContext.load(key_holder.public_context())


def _signed(
    key_holder: CkksKeyHolder, message: EncryptedUpdate, round_index: int = 0
) -> Contribution:
    """``message`` signed by its client's identity key, which ``key_holder`` authorizes."""
    identity = IDENTITIES.setdefault(message.client_id, Ed25519PrivateKey.generate())
    key_holder.authorize(message.client_id, identity.public_key())
    return sign_contribution(message, round_index, identity)


def _updates(length: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2.0, 2.0, length).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize(
    ("length", "weights"),
    [
        (51_200, [3.0, 50.0, 1.0]),
        (SLOTS - 1, [1.0, 1.0]),
        (SLOTS, [7.0, 2.5, 0.25, 12.0]),
        (1, [2.0, 5.0]),
    ],
)
def test_he_weighted_mean_equals_plain_within_ckks_error(
    key_holder: CkksKeyHolder, public: PublicContext, length: int, weights: list[float]
) -> None:
    updates = _updates(length, len(weights), seed=length)
    server = HomomorphicSum(key_holder.public_context())
    server.start(length, 0)
    for index, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        message = encrypt_update(public, f"client-{index}", update, weight)
        assert len(message.chunks) == chunk_count(length, SLOTS) == -(-(length + 1) // SLOTS)
        server.add(_signed(key_holder, message))
    request = server.result()
    assert len(request.contributions) == len(weights)

    mean, total_weight, contributors = key_holder.decrypt(request)
    assert contributors == len(weights)

    plain_sum = sum(w * u.astype(np.float64) for u, w in zip(updates, weights, strict=True))
    plain_weight = sum(weights)
    plain_mean = plain_sum / plain_weight
    sum_error = len(weights) * FRESH_ERROR
    # mean = (S + e_S) / (W + e_W) with |e_S|, |e_W| <= sum_error, then rounded to float32.
    bound = sum_error * (1.0 + np.abs(plain_mean)) / (plain_weight - sum_error)
    bound += FLOAT32_ROUNDING * (np.abs(plain_mean) + bound)
    assert mean.dtype == np.float32
    assert mean.shape == (length,)
    assert abs(total_weight - plain_weight) <= sum_error
    assert np.all(np.abs(mean.astype(np.float64) - plain_mean) <= bound)


def test_a_51200_element_layer_travels_in_13_chunks(public: PublicContext) -> None:
    message = encrypt_update(public, "client-0", np.ones(51_200, dtype=np.float32), 4.0)
    assert len(message.chunks) == 13
    assert message.payload_bytes == sum(len(chunk) for chunk in message.chunks)


def test_aggregation_server_holds_no_secret_key_and_cannot_decrypt(
    key_holder: CkksKeyHolder, public: PublicContext
) -> None:
    server = HomomorphicSum(key_holder.public_context())
    assert not server.public.context.is_private()
    assert not server.public.context.has_secret_key()
    server.start(10, 0)
    server.add(_signed(key_holder, encrypt_update(public, "a", np.ones(10, dtype=np.float32))))
    server.add(_signed(key_holder, encrypt_update(public, "b", np.ones(10, dtype=np.float32))))
    chunk = server.result().total.chunks[0]
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(server.public.context, chunk).decrypt()


def test_context_holding_the_secret_key_is_refused_by_the_server() -> None:
    private = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60]
    )
    with pytest.raises(ConfigError, match="secret key"):
        HomomorphicSum(private.serialize(save_secret_key=True))


def test_update_under_another_key_is_refused(key_holder: CkksKeyHolder) -> None:
    other = PublicContext.load(CkksKeyHolder().public_context())
    server = HomomorphicSum(key_holder.public_context())
    server.start(8, 0)
    stranger = encrypt_update(other, "stranger", np.ones(8, dtype=np.float32))
    with pytest.raises(UpdateRejected, match="key") as refused:
        server.add(_signed(key_holder, stranger))
    assert refused.value.reason == "key"


def test_ciphertext_under_other_parameters_is_refused_even_with_the_right_key_id(
    key_holder: CkksKeyHolder,
) -> None:
    small = CkksKeyHolder(CkksParameters(4096, (40, 20, 40), scale_bits=20))
    forged = dataclasses.replace(
        encrypt_update(
            PublicContext.load(small.public_context()), "forger", np.ones(8, dtype=np.float32)
        ),
        key_id=key_holder.key_id,
    )
    server = HomomorphicSum(key_holder.public_context())
    server.start(8, 0)
    with pytest.raises(UpdateRejected, match="chunk 0 is not a CKKS ciphertext") as refused:
        server.add(_signed(key_holder, forged))
    assert refused.value.reason == "ciphertext"


def test_wrong_length_chunk_count_or_bytes_are_refused_and_leave_the_sum_unchanged(
    key_holder: CkksKeyHolder, public: PublicContext
) -> None:
    length = SLOTS + 100
    first, second = _updates(length, 2, seed=5)
    good = encrypt_update(public, "good", first, 2.0)
    server = HomomorphicSum(key_holder.public_context())
    server.start(length, 0)
    server.add(_signed(key_holder, good))

    bad: list[tuple[EncryptedUpdate, str]] = [
        (encrypt_update(public, "short", first[:-1]), "length"),
        (dataclasses.replace(good, client_id="dropped", chunks=good.chunks[:1]), "chunks"),
        (dataclasses.replace(good, client_id="swapped", chunks=good.chunks[::-1]), "length"),
        (dataclasses.replace(good, client_id="noise", chunks=(b"\x00" * 64, b"x")), "ciphertext"),
        (good, "duplicate"),
    ]
    for message, reason in bad:
        with pytest.raises(UpdateRejected) as refused:
            server.add(_signed(key_holder, message))
        assert refused.value.reason == reason
        assert message.client_id in str(refused.value)
    with pytest.raises(UpdateRejected) as refused:
        server.add(_signed(key_holder, encrypt_update(public, "late", second), round_index=1))
    assert refused.value.reason == "round"

    server.add(_signed(key_holder, encrypt_update(public, "also-good", second, 6.0)))
    mean, total_weight, _ = key_holder.decrypt(server.result())
    expected = (2.0 * first.astype(np.float64) + 6.0 * second) / 8.0
    assert abs(total_weight - 8.0) <= 2 * FRESH_ERROR
    assert np.max(np.abs(mean - expected)) <= 2 * FRESH_ERROR * 3.0 / 7.9 + 3.0 * FLOAT32_ROUNDING


def test_key_holder_refuses_a_sum_under_another_key(
    key_holder: CkksKeyHolder, public: PublicContext
) -> None:
    server = HomomorphicSum(key_holder.public_context())
    server.start(4, 0)
    for client in ("a", "b"):
        server.add(_signed(key_holder, encrypt_update(public, client, np.ones(4, np.float32))))
    other = CkksKeyHolder(min_updates=1)
    with pytest.raises(DecryptionRefused, match="key holder of its run"):
        other.decrypt(server.result())


@pytest.mark.parametrize(
    ("update", "weight", "reason"),
    [
        (np.array([1.0, np.nan], dtype=np.float32), 1.0, "non_finite"),
        (np.ones(3, dtype=np.float64), 1.0, "dtype"),
        (np.ones((2, 2), dtype=np.float32), 1.0, "shape"),
        (np.ones(3, dtype=np.float32), 0.0, "weight"),
        (np.ones(3, dtype=np.float32), float("inf"), "weight"),
    ],
)
def test_client_refuses_to_encrypt_an_invalid_update(
    public: PublicContext, update: np.ndarray, weight: float, reason: str
) -> None:
    with pytest.raises(UpdateRejected) as refused:
        encrypt_update(public, "client", update, weight)
    assert refused.value.reason == reason


def test_bad_ckks_parameters_are_refused_with_the_field_name() -> None:
    with pytest.raises(ConfigError, match="poly_modulus_degree is 5000"):
        CkksParameters(poly_modulus_degree=5000)
    with pytest.raises(ConfigError, match="TenSEAL refused"):
        CkksKeyHolder(CkksParameters(4096, (60, 60, 60, 60)))
