"""Compression: codecs within their error bounds, exact sizes, error feedback, bytes on the wire."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.linalg import hadamard

from fakes import ScriptedTrainer
from fedwarden.core.errors import ConfigError, PipelineError, UpdateRejected
from fedwarden.core.messages import ClientUpdate, FitInstruction, header_bytes
from fedwarden.data import FederatedDataset
from fedwarden.data.dataset import ClientData
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.pipeline.compress import (
    RESIDUAL_KEY,
    Codec,
    CompressUpdate,
    Encoded,
    MalformedPayload,
    hadamard_transform,
    pack_codes,
    padded_size,
    random_k_indices,
    rotate,
    unpack_codes,
    unrotate,
)
from fedwarden.pipeline.stage import Aggregate, Aggregator
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.runtime import ClientEngine, LocalRuntime, Workload
from fedwarden.server import Server, ServerSettings
from fedwarden.strategies import FedAvg, UniformSampler
from harness import TRAIN

finite_vectors = arrays(
    np.float32,
    st.integers(1, 200),
    elements=st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False),
)


def _source(seed: int = 0) -> NoiseSource:
    return NoiseSource.for_testing(seed)


def _context(state: dict[str, Any] | None = None) -> ClientContext:
    data = ClientData("c", np.zeros((1, 1)), np.zeros(1), np.zeros((0, 1)), np.zeros(0))
    return ClientContext("c", data, 0, np.random.default_rng(0), state or {})


def _float32_slack(vector: np.ndarray) -> float:
    """Rounding of a decoded value to float32 (half a unit in the last place of the largest)."""
    return float(np.spacing(np.float32(np.abs(vector).max()))) if vector.size else 0.0


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(0, 100), st.integers(0, 2**31))
def test_packed_codes_round_trip_in_exactly_ceil_count_bits_over_8_bytes(
    bits: int, count: int, seed: int
) -> None:
    codes = np.random.default_rng(seed).integers(0, 1 << bits, count).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert len(packed) == math.ceil(count * bits / 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


@settings(max_examples=30, deadline=None)
@given(finite_vectors, st.sampled_from([1, 2, 4, 8]))
def test_uniform_quantization_stays_within_one_step_of_every_value(
    vector: np.ndarray, bits: int
) -> None:
    codec = Codec(quantize="uniform", bits=bits)
    encoded = codec.encode(vector, _source())
    decoded = codec.decode(encoded)
    wide = vector.astype(np.float64)
    step = (wide.max() - wide.min()) / (2**bits - 1)
    error = np.abs(decoded.astype(np.float64) - wide)
    assert error.max() <= step * (1 + 1e-6) + _float32_slack(vector)
    assert len(encoded.payload) == 8 + math.ceil(vector.size * bits / 8)


def test_a_4_bit_payload_of_d_coordinates_is_ceil_d_over_2_bytes_plus_range_and_header() -> None:
    codec = Codec(quantize="uniform", bits=4)
    vector = np.linspace(-1, 1, 1001, dtype=np.float32)
    encoded = codec.encode(vector, _source())
    empty = np.empty(0, np.float32)
    update = ClientUpdate(0, "c", empty, 1, payload=encoded.payload, payload_header=encoded.header)
    assert len(encoded.payload) == 501 + 8
    assert update.payload_bytes == 501 + 8 + len(header_bytes(encoded.header))
    assert update.payload_bytes < vector.nbytes / 7


@pytest.mark.parametrize("bits", [1, 2])
def test_uniform_quantization_is_unbiased(bits: int) -> None:
    points = np.array([-1.0, -0.8, -0.3, 0.05, 0.21, 0.5, 0.77, 1.0], dtype=np.float32)
    repeats = 4000
    vector = np.tile(points, repeats)
    codec = Codec(quantize="uniform", bits=bits)
    decoded = codec.decode(codec.encode(vector, _source(bits))).astype(np.float64)
    means = decoded.reshape(repeats, points.size).mean(axis=0)
    step = 2.0 / (2**bits - 1)
    # Each decoded value lies within one step of its point: sd of a mean <= step / (2 sqrt(n)).
    bound = 6 * step / (2 * math.sqrt(repeats))
    np.testing.assert_array_less(np.abs(means - points), bound)


def test_qsgd_stays_within_one_level_of_every_value_and_within_lemma_3_1_variance() -> None:
    vector = np.random.default_rng(1).standard_t(3, 3000).astype(np.float32)
    levels, bucket_size = 7, 256
    codec = Codec(quantize="qsgd", levels=levels, bucket_size=bucket_size)
    wide = vector.astype(np.float64)
    padded = np.zeros(12 * bucket_size)
    padded[: vector.size] = wide
    bucket_norms = np.linalg.norm(padded.reshape(-1, bucket_size), axis=1)
    per_value_norm = np.repeat(bucket_norms, bucket_size)[: vector.size]
    squared_errors = []
    for draw in range(10):
        decoded = codec.decode(codec.encode(vector, _source(draw))).astype(np.float64)
        error = np.abs(decoded - wide)
        assert np.all(error <= per_value_norm / levels * (1 + 1e-6) + _float32_slack(vector))
        squared_errors.append(np.sum(error**2))
    lemma = min(bucket_size / levels**2, math.sqrt(bucket_size) / levels) * np.sum(wide**2)
    assert np.mean(squared_errors) <= lemma


def test_qsgd_is_unbiased() -> None:
    points = np.array([-0.9, -0.2, 0.0, 0.1, 0.35, 0.6], dtype=np.float32)
    repeats = 3000
    vector = np.tile(points, repeats)
    norm = float(np.linalg.norm(points.astype(np.float64)))
    # One bucket per copy of the points, one level: each decoded value is 0 or +-norm.
    codec = Codec(quantize="qsgd", levels=1, bucket_size=points.size)
    decoded = codec.decode(codec.encode(vector, _source(7))).astype(np.float64)
    means = decoded.reshape(repeats, points.size).mean(axis=0)
    bound = 6 * norm / (2 * math.sqrt(repeats))
    np.testing.assert_array_less(np.abs(means - points), bound)


def test_qsgd_payload_is_norms_signs_and_packed_magnitudes() -> None:
    codec = Codec(quantize="qsgd", levels=3, bucket_size=100)
    encoded = codec.encode(np.ones(1001, dtype=np.float32), _source())
    # 11 float32 norms, 1001 sign bits, 1001 two-bit magnitudes.
    assert len(encoded.payload) == 4 * 11 + 126 + 251 == codec.payload_length(1001)


@settings(max_examples=30, deadline=None)
@given(finite_vectors, st.floats(0.01, 1.0))
def test_top_k_keeps_the_k_largest_magnitudes_exactly(vector: np.ndarray, fraction: float) -> None:
    codec = Codec(sparsify="topk", fraction=fraction)
    encoded = codec.encode(vector, _source())
    decoded = codec.decode(encoded)
    k = codec.kept(vector.size)
    assert k == min(vector.size, max(1, math.ceil(fraction * vector.size)))
    kept = np.frombuffer(encoded.payload, dtype="<u4", count=k)
    dropped = np.setdiff1d(np.arange(vector.size), kept)
    np.testing.assert_array_equal(decoded[kept], vector[kept])
    assert np.all(decoded[dropped] == 0)
    if dropped.size:
        assert np.abs(vector[kept]).min() >= np.abs(vector[dropped]).max()
    assert len(encoded.payload) == 8 * k


def test_random_k_sends_only_values_and_regenerates_its_positions_from_the_seed() -> None:
    vector = np.arange(1, 1001, dtype=np.float32)
    codec = Codec(sparsify="randk", fraction=0.05)
    encoded = codec.encode(vector, _source())
    decoded = codec.decode(encoded)
    assert len(encoded.payload) == 4 * 50
    positions = np.flatnonzero(decoded)
    np.testing.assert_array_equal(positions, random_k_indices(1000, 50, encoded.header["seed"]))
    np.testing.assert_array_equal(decoded[positions], vector[positions])
    other = codec.encode(vector, _source(1))
    assert other.header["seed"] != encoded.header["seed"]
    assert not np.array_equal(codec.decode(other), decoded)


def test_random_k_picks_each_position_with_probability_k_over_d() -> None:
    size, k, draws = 40, 8, 400
    counts = np.zeros(size)
    for seed in range(draws):
        chosen = random_k_indices(size, k, seed)
        assert np.unique(chosen).size == k
        counts[chosen] += 1
    expected = draws * k / size
    sd = math.sqrt(draws * (k / size) * (1 - k / size))
    assert np.all(np.abs(counts - expected) <= 5 * sd)


def test_hadamard_transform_is_the_orthonormal_hadamard_matrix() -> None:
    values = np.random.default_rng(2).normal(size=16)
    np.testing.assert_allclose(hadamard_transform(values), hadamard(16) @ values / 4, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(finite_vectors, st.integers(0, 2**64 - 1))
def test_rotation_preserves_the_norm_and_is_undone_exactly(vector: np.ndarray, seed: int) -> None:
    rotated = rotate(vector, seed)
    wide = vector.astype(np.float64)
    assert rotated.size == padded_size(vector.size)
    assert np.linalg.norm(rotated) == pytest.approx(np.linalg.norm(wide), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(unrotate(rotated, seed, vector.size), wide, rtol=0, atol=1e-9)


@pytest.mark.parametrize("quantize", ["uniform", "qsgd"])
def test_rotated_quantization_is_within_its_l2_bound(quantize: str) -> None:
    vector = np.zeros(300, dtype=np.float32)
    vector[:3] = [40.0, -25.0, 10.0]  # a spiky update: the case rotation is for
    codec = Codec(quantize=quantize, bits=4, levels=15, bucket_size=512, rotate=True)
    encoded = codec.encode(vector, _source())
    decoded = codec.decode(encoded).astype(np.float64)
    rotated = rotate(vector, encoded.header["seed"])
    if quantize == "uniform":
        per_value = (rotated.max() - rotated.min()) / 15
    else:
        per_value = np.linalg.norm(rotated) / 15
    bound = math.sqrt(rotated.size) * per_value * (1 + 1e-6) + 1e-4
    assert np.linalg.norm(decoded - vector) <= bound
    plain = Codec(quantize="uniform", bits=4)
    plain_error = np.linalg.norm(plain.decode(plain.encode(vector, _source())) - vector)
    if quantize == "uniform":
        assert plain_error > np.linalg.norm(decoded - vector)


def test_top_k_then_8_bit_quantization_keeps_the_top_positions_within_one_step() -> None:
    vector = np.random.default_rng(3).normal(size=2000).astype(np.float32)
    codec = Codec(sparsify="topk", fraction=0.01, quantize="uniform", bits=8)
    encoded = codec.encode(vector, _source())
    decoded = codec.decode(encoded)
    kept = np.frombuffer(encoded.payload, dtype="<u4", count=20)
    assert set(kept) == set(np.argsort(-np.abs(vector))[:20])
    values = vector[kept].astype(np.float64)
    step = (values.max() - values.min()) / 255
    assert np.abs(decoded[kept] - values).max() <= step * (1 + 1e-6) + _float32_slack(values)
    assert np.count_nonzero(decoded) <= 20
    assert len(encoded.payload) == 20 * 4 + 8 + 20
    assert vector.nbytes / len(encoded.payload) >= 50


@pytest.mark.parametrize(
    "settings_",
    [
        {"quantize": "uniform", "bits": 3},
        {"sparsify": "topk", "fraction": 0.0},
        {"sparsify": "topk", "quantize": "uniform", "rotate": True},
        {"quantize": "qsgd", "levels": 256},
        {"sparsify": "sometimes"},
        {},
    ],
)
def test_invalid_codec_settings_are_refused_naming_the_field(settings_: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"\[pipeline.compression\]"):
        Codec(**settings_)


def _malformations(encoded: Encoded) -> list[Encoded]:
    payload, header = encoded.payload, encoded.header
    duplicate = np.frombuffer(payload, dtype="<u4").copy()
    duplicate[1] = duplicate[0]
    outside = np.frombuffer(payload, dtype="<u4").copy()
    outside[9] = 10_000  # the last of the 10 indices
    return [
        Encoded(header, payload[:-1]),
        Encoded(header, payload + b"\0"),
        Encoded({**header, "codec": "uniform:8"}, payload),
        Encoded({**header, "seed": 1}, payload),
        Encoded({**header, "size": "100"}, payload),
        Encoded(header, duplicate.tobytes()),
        Encoded(header, outside.tobytes()),
    ]


def test_malformed_payloads_are_refused_before_use() -> None:
    codec = Codec(sparsify="topk", fraction=0.1)
    encoded = codec.encode(np.arange(100, dtype=np.float32), _source())
    for bad in _malformations(encoded):
        with pytest.raises(MalformedPayload):
            codec.decode(bad)
    quantized = Codec(quantize="qsgd", levels=5)
    good = quantized.encode(np.ones(10, dtype=np.float32), _source())
    too_high = good.payload[:-1] + b"\xff"
    with pytest.raises(MalformedPayload, match="levels"):
        quantized.decode(Encoded(good.header, too_high))
    nan_norm = np.array([np.nan], "<f4").tobytes() + good.payload[4:]
    with pytest.raises(MalformedPayload, match="finite"):
        quantized.decode(Encoded(good.header, nan_norm))


def test_the_server_half_rejects_a_malformed_or_mis_sized_update_with_reason_encoding() -> None:
    stage = CompressUpdate(Codec(quantize="uniform", bits=8), size=10)
    sent = stage.client_half(ClientUpdate(0, "c", np.ones(10, np.float32), 5), _context())
    for bad in (
        replace(sent, payload=sent.payload[:-2] if sent.payload else None),
        replace(sent, payload_header={**sent.payload_header, "size": 11}),
    ):
        with pytest.raises(UpdateRejected) as caught:
            stage.server_half(bad)
        assert caught.value.reason == "encoding"
    np.testing.assert_array_equal(stage.server_half(sent).update, np.ones(10, np.float32))


@pytest.mark.parametrize(
    "codec",
    [
        Codec(sparsify="topk", fraction=0.05),
        Codec(sparsify="randk", fraction=0.1, quantize="uniform", bits=4),
        Codec(quantize="qsgd", levels=15, bucket_size=64),
        Codec(quantize="uniform", bits=4, rotate=True),
    ],
    ids=lambda codec: codec.label,
)
def test_error_feedback_decoded_sum_plus_residual_equals_the_sum_of_updates(codec: Codec) -> None:
    size, rounds = 200, 12
    stage = CompressUpdate(codec, size, error_feedback=True, reproducible=True)
    updates = np.random.default_rng(4).normal(size=(rounds, size)).astype(np.float32)
    state: dict[str, Any] = {}
    decoded_sum = np.zeros(size)
    residual = np.zeros(size, dtype=np.float32)
    rounding_bound = np.zeros(size)
    for round_index, vector in enumerate(updates):
        context = replace(_context(state), round_index=round_index)
        sent = stage.client_half(ClientUpdate(round_index, "c", vector, 1), context)
        assert sent.update.size == 0 and sent.payload is not None
        decoded_sum += stage.server_half(sent).update
        state = context.state
        previous, residual = residual, state[RESIDUAL_KEY]
        # u + e and (u + e) - decoded are each rounded once to float32.
        magnitude = np.abs(vector) + np.abs(previous) + np.abs(residual)
        rounding_bound += np.finfo(np.float32).eps * magnitude.astype(np.float64)
    assert np.linalg.norm(residual) > 0.1  # the codec did lose information each round
    error = decoded_sum + residual - updates.astype(np.float64).sum(axis=0)
    assert np.all(np.abs(error) <= rounding_bound)


def test_without_error_feedback_nothing_is_kept() -> None:
    stage = CompressUpdate(Codec(sparsify="topk"), 50, error_feedback=False)
    context = _context()
    stage.client_half(ClientUpdate(0, "c", np.ones(50, np.float32), 1), context)
    assert context.state == {}


def test_a_non_finite_update_is_refused_before_it_poisons_the_residual() -> None:
    stage = CompressUpdate(Codec(quantize="uniform"), 4)
    context = _context()
    vector = np.array([1.0, np.nan, 0.0, 2.0], np.float32)
    with pytest.raises(PipelineError, match="NaN"):
        stage.client_half(ClientUpdate(0, "c", vector, 1), context)
    assert RESIDUAL_KEY not in context.state


class _HidingAggregator(Aggregator):
    name: ClassVar[str] = "secure_sum"
    hides_individual_updates = True

    def start(self, size: int, cohort: Any) -> None: ...

    def add(self, update: ClientUpdate) -> None: ...

    def result(self) -> Aggregate:
        raise NotImplementedError


def test_compression_cannot_precede_an_aggregator_that_hides_updates() -> None:
    with pytest.raises(PipelineError, match="compress"):
        Pipeline([CompressUpdate(Codec(quantize="uniform"), 4)], _HidingAggregator())


@pytest.mark.slow
def test_bytes_up_on_the_local_runtime_are_the_compressed_payloads_and_headers(
    digits_clients: FederatedDataset,
) -> None:
    trainer = ScriptedTrainer()
    size = trainer.spec.size
    codec = Codec(sparsify="topk", fraction=0.05, quantize="uniform", bits=8)
    compress = CompressUpdate(codec, size, reproducible=True)
    pipeline = Pipeline([compress, ValidateUpdate(size)], StreamingWeightedMean())
    workload = Workload(digits_clients, trainer, pipeline.stages, run_seed=2)
    cohort = digits_clients.client_ids
    with LocalRuntime(workers=2) as runtime:
        server = Server(
            trainer=trainer,
            strategy=FedAvg(TRAIN),
            sampler=UniformSampler(len(cohort)),
            pipeline=pipeline,
            runtime=runtime,
            client_ids=cohort,
            settings=ServerSettings(rounds=1, seed=2),
        )
        runtime.start(workload)
        start = server.vector.copy()
        replies = list(runtime.fit(start, [FitInstruction(0, cid, TRAIN) for cid in cohort]))
        record = server.run_round(0)
    per_client = codec.payload_length(size) + len(
        header_bytes({"codec": codec.label, "size": size})
    )
    assert all(isinstance(r, ClientUpdate) and r.payload_bytes == per_client for r in replies)
    assert record.participants == len(cohort)
    assert record.bytes_up == len(cohort) * per_client
    assert record.bytes_up * 10 < len(cohort) * 4 * size
    engine = ClientEngine(workload)
    for reply in replies:
        assert isinstance(reply, ClientUpdate)
        expected = engine.fit(start, FitInstruction(0, reply.client_id, TRAIN))
        assert reply.payload == expected.payload
        decoded = pipeline.server_half(reply).update
        assert decoded.shape == (size,) and np.count_nonzero(decoded) <= codec.kept(size)
