"""Specifications of the mask PRG (AES-256-CTR keystream in Z_2^b) and of Shamir secret sharing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwarden.core.errors import FedwardenError
from fedwarden.secure import prg
from fedwarden.secure.prg import (
    SEED_BYTES,
    MaskSeedError,
    apply_mask,
    apply_masks,
    derive_seed,
    expand_mask,
    reduce_modulo,
)
from fedwarden.secure.shamir import PRIME, ShamirError, Share, combine_shares, split_secret


def aes_ctr_keystream(seed: bytes, count: int) -> bytes:
    """The first ``count`` bytes of the AES-256-CTR keystream under ``seed`` from counter zero."""
    return Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(count))


# --- the PRG ---------------------------------------------------------------------------------


@pytest.mark.parametrize("modulus_bits", [1, 7, 16, 32, 33, 48, 62])
def test_mask_is_the_aes_ctr_keystream_reduced_into_the_ring(modulus_bits: int) -> None:
    seed = os.urandom(SEED_BYTES)
    width = 4 if modulus_bits <= 32 else 8
    words = np.frombuffer(aes_ctr_keystream(seed, 100 * width), dtype=f"<u{width}")
    expected = words.astype(np.uint64) % np.uint64(1 << modulus_bits)
    mask = expand_mask(seed, 100, modulus_bits)
    assert mask.dtype == np.uint64
    np.testing.assert_array_equal(mask, expected)


def test_mask_is_deterministic_in_its_seed_and_differs_across_seeds() -> None:
    seed, other = os.urandom(SEED_BYTES), os.urandom(SEED_BYTES)
    np.testing.assert_array_equal(expand_mask(seed, 1000, 32), expand_mask(seed, 1000, 32))
    # Two 32-bit words agree with probability 2^-32: several equal ones mean the seed is ignored.
    assert np.sum(expand_mask(seed, 1000, 32) == expand_mask(other, 1000, 32)) <= 2


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(31), bytes(33), 12345, "a" * 32])
def test_mask_refuses_seeds_that_are_not_32_bytes(seed: object) -> None:
    with pytest.raises(MaskSeedError, match="32 bytes"):
        expand_mask(seed, 10, 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("modulus_bits", [0, 63, 64, -1])
def test_mask_refuses_rings_outside_1_to_62_bits(modulus_bits: int) -> None:
    with pytest.raises(MaskSeedError, match="modulus_bits"):
        expand_mask(bytes(32), 10, modulus_bits)


@pytest.mark.parametrize("modulus_bits", [5, 32, 40])
def test_applied_masks_add_and_cancel_exactly_modulo_two_to_the_b(modulus_bits: int) -> None:
    seed = os.urandom(SEED_BYTES)
    values = np.arange(64, dtype=np.uint64) % np.uint64(1 << modulus_bits)
    accumulator = values.copy()
    apply_mask(accumulator, seed, modulus_bits, sign=1)
    expected = (values + expand_mask(seed, 64, modulus_bits)) % np.uint64(1 << modulus_bits)
    np.testing.assert_array_equal(reduce_modulo(accumulator.copy(), modulus_bits), expected)
    apply_mask(accumulator, seed, modulus_bits, sign=-1)
    np.testing.assert_array_equal(reduce_modulo(accumulator, modulus_bits), values)


def test_a_uint32_accumulator_is_refused_for_rings_above_32_bits() -> None:
    with pytest.raises(MaskSeedError, match="uint64"):
        apply_mask(np.zeros(4, dtype=np.uint32), bytes(32), 40, sign=1)


def test_derived_seeds_are_32_bytes_and_separated_by_purpose_and_context() -> None:
    key = os.urandom(32)
    seeds = {
        derive_seed(key, purpose=b"mask", context=b"round-1"),
        derive_seed(key, purpose=b"mask", context=b"round-2"),
        derive_seed(key, purpose=b"encrypt", context=b"round-1"),
        derive_seed(os.urandom(32), purpose=b"mask", context=b"round-1"),
    }
    assert len(seeds) == 4
    assert all(len(seed) == SEED_BYTES for seed in seeds)
    assert derive_seed(key, purpose=b"mask", context=b"r") == derive_seed(
        key, purpose=b"mask", context=b"r"
    )


# --- Shamir secret sharing -------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(data=st.data(), holders=st.integers(2, 12))
def test_any_threshold_shares_rebuild_the_secret(data: st.DataObject, holders: int) -> None:
    threshold = data.draw(st.integers(2, holders))
    secret = os.urandom(32)
    coordinates = data.draw(
        st.lists(st.integers(1, 500), min_size=holders, max_size=holders, unique=True)
    )
    shares = split_secret(secret, threshold, coordinates)
    chosen = data.draw(st.lists(st.sampled_from(shares), min_size=threshold, unique=True))
    assert combine_shares(chosen, threshold, 32) == secret


@settings(max_examples=20, deadline=None)
@given(data=st.data(), holders=st.integers(2, 10))
def test_fewer_than_threshold_shares_rebuild_nothing(data: st.DataObject, holders: int) -> None:
    threshold = data.draw(st.integers(2, holders))
    shares = split_secret(os.urandom(32), threshold, range(1, holders + 1))
    too_few = data.draw(st.lists(st.sampled_from(shares), max_size=threshold - 1, unique=True))
    with pytest.raises(ShamirError, match=f"at least {threshold}"):
        combine_shares(too_few, threshold, 32)


def test_duplicate_x_coordinates_are_refused() -> None:
    shares = split_secret(os.urandom(32), 2, [1, 2, 3])
    with pytest.raises(ShamirError, match="repeat"):
        combine_shares([shares[0], shares[0]], 2, 32)
    with pytest.raises(ShamirError, match="repeat"):
        split_secret(os.urandom(32), 2, [1, 1, 2])


def test_a_corrupted_extra_share_raises_instead_of_yielding_a_wrong_secret() -> None:
    shares = list(split_secret(os.urandom(32), 3, [1, 2, 3, 4]))
    shares[3] = Share(x=4, y=(shares[3].y + 1) % PRIME)
    with pytest.raises(ShamirError, match="corrupted"):
        combine_shares(shares, 3, 32)


def test_shares_encode_a_fresh_random_polynomial_each_time() -> None:
    secret = os.urandom(32)
    first, second = split_secret(secret, 2, [1, 2]), split_secret(secret, 2, [1, 2])
    assert first[0].y != second[0].y  # equal only with probability 2^-521


def test_shares_round_trip_through_bytes_and_malformed_bytes_are_refused() -> None:
    share = split_secret(os.urandom(32), 2, [7, 9])[0]
    assert Share.from_bytes(share.to_bytes()) == share
    with pytest.raises(ShamirError):
        Share.from_bytes(share.to_bytes()[:-1])
    with pytest.raises(ShamirError, match="x-coordinate"):
        Share.from_bytes(bytes(2) + share.to_bytes()[2:])


@pytest.mark.parametrize("threshold", [1, 0, 4])
def test_thresholds_outside_2_to_holders_are_refused(threshold: int) -> None:
    with pytest.raises(ShamirError, match="threshold"):
        split_secret(os.urandom(32), threshold, [1, 2, 3])


def test_shamir_errors_belong_to_the_fedwarden_hierarchy() -> None:
    assert issubclass(ShamirError, FedwardenError)
    assert issubclass(MaskSeedError, FedwardenError)


def test_masks_applied_from_several_threads_equal_the_sequential_masks() -> None:
    from concurrent.futures import ThreadPoolExecutor

    seeds = [bytes([index]) * SEED_BYTES for index in range(8)]
    lengths = [1000, 50_000, 1000, 70_000, 3, 50_000, 12_345, 1]

    def masked(index: int) -> np.ndarray:
        accumulator = np.zeros(lengths[index], dtype=np.uint32)
        for seed in seeds:
            apply_mask(accumulator, seed, 32, sign=1)
        return accumulator

    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(masked, range(8)))
    for index, result in enumerate(threaded):
        expected = sum(expand_mask(seed, lengths[index], 32) for seed in seeds) % (1 << 32)
        np.testing.assert_array_equal(result, expected.astype(np.uint32))


@pytest.mark.parametrize("modulus_bits", [20, 32, 40, 62])
def test_block_by_block_masking_equals_the_whole_keystreams(
    modulus_bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prg, "_BLOCK_BYTES", 4096)  # many blocks of a small vector
    seeds = [bytes([index + 1]) * SEED_BYTES for index in range(3)]
    length = 100_003  # and a ragged end
    accumulator = np.zeros(length, dtype=np.uint64)
    apply_masks(accumulator, [(seeds[0], 1), (seeds[1], -1), (seeds[2], 1)], modulus_bits)
    expected = (
        expand_mask(seeds[0], length, modulus_bits)
        - expand_mask(seeds[1], length, modulus_bits)
        + expand_mask(seeds[2], length, modulus_bits)
    )
    np.testing.assert_array_equal(
        reduce_modulo(accumulator, modulus_bits), reduce_modulo(expected, modulus_bits)
    )
