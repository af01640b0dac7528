"""Ring encoding for secure aggregation: exact sums up to quantization, and no wrap, ever."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.clipping import clip_to_norm
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.encoding import (
    RingEncoder,
    RingEncodingError,
    from_ring,
    signed_capacity,
    stochastic_round,
    to_ring,
)


def ring_sum(encodings: list[np.ndarray], modulus_bits: int) -> np.ndarray:
    """The exact sum mod 2^b that secure aggregation hands back (uint64 wrap, then a bit mask)."""
    total = np.zeros_like(encodings[0])
    for encoding in encodings:
        total += encoding
    return total & np.uint64((1 << modulus_bits) - 1)


def exact_weighted_sum(
    updates: list[np.ndarray], weights: list[int], clip_norm: float
) -> list[Fraction]:
    """Sum of w_i * clip(x_i), coordinate by coordinate, in exact rational arithmetic."""
    clipped = [clip_to_norm(update, clip_norm)[0] for update in updates]
    return [
        sum(
            (
                Fraction(float(vector[j])) * weight
                for vector, weight in zip(clipped, weights, strict=True)
            ),
            Fraction(0),
        )
        for j in range(updates[0].size)
    ]


@settings(max_examples=40, deadline=None)
@given(
    summands=st.integers(1, 30),
    modulus_bits=st.integers(8, 62),
    clip_norm=st.floats(1e-3, 1e3),
    max_weight=st.integers(1, 200),
    dimension=st.integers(1, 6),
    seed=st.integers(0, 2**32),
)
def test_decoded_sum_is_within_summands_times_step_of_the_exact_weighted_sum(
    summands: int,
    modulus_bits: int,
    clip_norm: float,
    max_weight: int,
    dimension: int,
    seed: int,
) -> None:
    if summands * max_weight > signed_capacity(modulus_bits):
        with pytest.raises(ConfigError, match="even the weights alone"):
            RingEncoder.finest(clip_norm, summands, modulus_bits, "example_count", max_weight)
        return
    encoder = RingEncoder.finest(clip_norm, summands, modulus_bits, "example_count", max_weight)
    source = NoiseSource.for_testing(seed)
    generator = np.random.default_rng(seed)
    updates = [
        (generator.normal(size=dimension) * clip_norm * generator.uniform(0.1, 3)).astype(
            np.float32
        )
        for _ in range(summands)
    ]
    weights = [int(w) for w in generator.integers(0, max_weight + 1, size=summands)]
    encodings = [encoder.encode(u, source, w) for u, w in zip(updates, weights, strict=True)]
    assert all(e.dtype == np.uint64 and int(e.max()) < 2**modulus_bits for e in encodings)

    total, weight = encoder.decode(ring_sum(encodings, modulus_bits))

    assert weight == sum(weights)
    bound = Fraction(encoder.sum_error_bound(summands))
    expected = exact_weighted_sum(updates, weights, clip_norm)
    for decoded, exact in zip(total, expected, strict=True):
        assert abs(Fraction(float(decoded)) - exact) <= bound
    if encoder.coordinate_bound < 2**40:  # float64 resolution is not the limit: the bound is n*step
        assert encoder.sum_error_bound(summands) <= summands * encoder.step * (1 + 2**-10)


@settings(max_examples=30, deadline=None)
@given(
    summands=st.integers(1, 1000),
    modulus_bits=st.integers(8, 62),
    clip_norm=st.floats(1e-3, 1e3),
    max_weight=st.integers(1, 50),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_the_largest_possible_sum_does_not_wrap(
    summands: int, modulus_bits: int, clip_norm: float, max_weight: int, sign: float
) -> None:
    if summands * max_weight > signed_capacity(modulus_bits):
        return
    encoder = RingEncoder.finest(clip_norm, summands, modulus_bits, "example_count", max_weight)
    source = NoiseSource.for_testing(summands)
    extreme = np.array([sign * clip_norm, 0.0], dtype=np.float32)  # all of the norm on one axis
    encoding = encoder.encode(extreme, source, max_weight)
    ring = (encoding * np.uint64(summands)) & np.uint64((1 << modulus_bits) - 1)

    total, weight = encoder.decode(ring)

    assert encoder.largest_sum <= signed_capacity(modulus_bits)
    assert weight == summands * max_weight
    exact = summands * max_weight * float(clip_to_norm(extreme, clip_norm)[0][0])
    assert math.copysign(1.0, total[0]) == sign
    assert abs(total[0] - exact) <= encoder.sum_error_bound(summands)


def test_finest_step_is_the_smallest_that_cannot_wrap() -> None:
    encoder = RingEncoder.finest(2.5, 300, 24, "example_count", 7)

    assert encoder.largest_sum <= signed_capacity(24)
    with pytest.raises(ConfigError, match="could wrap"):
        RingEncoder(2.5, 300, encoder.step * (1 - 1e-9), 24, "example_count", 7)


def test_a_wrapping_configuration_is_refused_with_its_numbers() -> None:
    with pytest.raises(ConfigError) as refused:
        RingEncoder(clip_norm=1.0, max_summands=1000, step=1e-9, modulus_bits=32)

    message = str(refused.value)
    largest = 1000 * math.ceil(1.0 / 1e-9)
    for part in ("n=1000", "C=1.0", "step=1e-09", "b=32", str(largest), "2^(b-1)=2147483648"):
        assert part in message
    assert "use a step of at least 4.65661e-07" in message  # W C / floor((2^31 - 1) / 1000)


def test_stochastic_rounding_is_unbiased() -> None:
    # 4096 coordinates at 3.725 steps: each rounds up with probability 0.725. Five binomial
    # standard deviations (0.035) separate the observed rate from any biased rounding rule
    # (nearest: rate 1; floor: rate 0) with a false alarm chance below 1e-6.
    encoder = RingEncoder(clip_norm=100.0, max_summands=1, step=0.125, modulus_bits=16)
    value = np.float32(3.725 * 0.125)
    update = np.full(4096, value, dtype=np.float32)
    source = NoiseSource.for_testing(7)

    total, _ = encoder.decode(encoder.encode(update, source))

    ups = np.count_nonzero(total == 0.5)
    assert np.all((total == 0.375) | (total == 0.5))
    probability = float(value) / 0.125 - 3
    spread = math.sqrt(probability * (1 - probability) / update.size)
    assert abs(ups / update.size - probability) <= 5 * spread
    assert abs(float(total.mean()) - float(value)) <= 5 * spread * 0.125


def test_rounding_draws_fresh_secure_randomness() -> None:
    encoder = RingEncoder(clip_norm=100.0, max_summands=1, step=0.125, modulus_bits=16)
    update = np.full(1024, 0.3, dtype=np.float32)

    first = encoder.encode(update, NoiseSource.secure())
    second = encoder.encode(update, NoiseSource.secure())

    assert not np.array_equal(first, second)


def test_stochastic_round_leaves_integers_alone() -> None:
    values = np.array([-3.0, 0.0, 5.0, 2.0**40], dtype=np.float64)

    assert stochastic_round(values, NoiseSource.for_testing(1)).tolist() == [-3, 0, 5, 2**40]


def test_updates_above_the_clip_norm_are_clipped() -> None:
    encoder = RingEncoder.finest(clip_norm=1.0, max_summands=1)
    update = np.array([30.0, 40.0], dtype=np.float32)  # norm 50

    total, _ = encoder.decode(encoder.encode(update, NoiseSource.for_testing(2)))

    assert np.linalg.norm(total) <= 1.0 + 2 * encoder.step
    np.testing.assert_allclose(total, [0.6, 0.8], atol=1e-5)  # clip_to_norm undershoots by 1e-6


def test_uniform_weighting_counts_each_update_once() -> None:
    encoder = RingEncoder.finest(clip_norm=1.0, max_summands=5)
    source = NoiseSource.for_testing(3)
    encodings = [encoder.encode(np.ones(3, np.float32) * 0.1, source, 999) for _ in range(5)]

    total, weight = encoder.decode(ring_sum(encodings, 32))

    assert weight == 5
    np.testing.assert_allclose(total, 0.5, atol=5 * encoder.step)


@settings(max_examples=30, deadline=None)
@given(modulus_bits=st.integers(8, 62), data=st.data())
def test_ring_round_trip_of_every_signed_value(modulus_bits: int, data: st.DataObject) -> None:
    half = 1 << (modulus_bits - 1)
    values = data.draw(st.lists(st.integers(-half, half - 1), min_size=1, max_size=20))
    integers = np.array(values, dtype=np.int64)

    ring = to_ring(integers, modulus_bits)

    assert int(ring.max()) < 2**modulus_bits
    assert from_ring(ring, modulus_bits).tolist() == values


@pytest.mark.parametrize(
    ("settings_", "match"),
    [
        ({"modulus_bits": 7}, "modulus_bits must be an int in 8..62"),
        ({"modulus_bits": 63}, "modulus_bits must be an int in 8..62"),
        ({"clip_norm": 0.0}, "clip_norm must be a positive"),
        ({"max_summands": 0}, "max_summands must be an int >= 1"),
        ({"max_weight": 3}, "weighting='uniform' gives every update weight 1"),
        ({"step": float("nan")}, "step must be a positive finite number"),
    ],
)
def test_bad_encoder_settings_are_refused(settings_: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"clip_norm": 1.0, "max_summands": 4, "step": 0.01}
    arguments.update(settings_)

    with pytest.raises(ConfigError, match=match):
        RingEncoder(**arguments)


def test_bad_updates_and_weights_are_refused() -> None:
    encoder = RingEncoder.finest(1.0, 4, weighting="example_count", max_weight=10)
    source = NoiseSource.for_testing(4)

    with pytest.raises(
        RingEncodingError, match=r"example_count must be an int in 0\.\.max_weight=10"
    ):
        encoder.encode(np.zeros(3, np.float32), source, 11)
    with pytest.raises(RingEncodingError, match="NaN or infinite"):
        encoder.encode(np.array([1.0, np.nan], np.float32), source, 1)
    with pytest.raises(RingEncodingError, match="flat 1-D float array"):
        encoder.encode(np.zeros((2, 2), np.float32), source, 1)
    with pytest.raises(RingEncodingError, match="uint64 ring elements"):
        encoder.decode(np.zeros(3, np.int64))
