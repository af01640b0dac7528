"""Specifications of NoiseSource: OS entropy in production, loud reproducibility in tests.

The statistical checks use test-mode sources with fixed seeds, so they are
deterministic and cannot flake; their thresholds are loose enough for any seed.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import math
import pickle
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

import fedwarden.privacy
from fedwarden.core.errors import FedwardenError
from fedwarden.privacy import randomness
from fedwarden.privacy.randomness import GAUSSIAN_SUMMANDS, NoiseSource, PrivacyNoiseError

REPRODUCIBLE_WARNING = (
    "privacy noise is REPRODUCIBLE (test mode, seed={seed}): never use this for a real release"
)


class ScriptedBytes:
    """A byte stream that replays fixed bytes, to pin down exact behaviour at boundaries."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def read(self, count: int) -> bytes:
        chunk = self.data[self.position : self.position + count]
        assert len(chunk) == count, "the sampler asked for more bytes than the script holds"
        self.position += count
        return chunk


def words(*values: int) -> bytes:
    """64-bit words as the little-endian bytes a NoiseSource reads them from."""
    return b"".join(struct.pack("<Q", value) for value in values)


def within_sigmas(observed: float, expected: float, standard_error: float) -> bool:
    """``observed`` lies within five standard errors of ``expected``."""
    return abs(observed - expected) <= 5 * standard_error


# --- where the randomness comes from -------------------------------------------------------


def test_secure_source_reads_operating_system_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[int] = []

    def fake_urandom(count: int) -> bytes:
        requests.append(count)
        return bytes(range(count))

    monkeypatch.setattr(randomness.os, "urandom", fake_urandom)
    assert NoiseSource.secure().random_bytes(16) == bytes(range(16))
    assert requests == [16]
    # A long request is the AES-CTR keystream under a fresh 32-byte key read from the OS.
    long = NoiseSource.secure().random_bytes(4096)
    key = bytes(range(32))
    expected = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4096))
    assert requests == [16, 32] and long == expected


def test_two_secure_sources_give_different_streams_and_are_not_reproducible() -> None:
    first, second = NoiseSource.secure(), NoiseSource.secure()
    assert not first.reproducible and not second.reproducible
    assert first.random_bytes(32) != second.random_bytes(32)
    assert first.random_bytes(32) != first.random_bytes(32)
    assert not np.array_equal(first.uniform(1000), second.uniform(1000))


def test_creating_a_secure_source_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedwarden.privacy"):
        NoiseSource.secure()
    assert caplog.records == []


def test_test_mode_gives_identical_streams_for_the_same_seed() -> None:
    first, second = NoiseSource.for_testing(7), NoiseSource.for_testing(7)
    assert first.reproducible and second.reproducible
    assert first.random_bytes(64) == second.random_bytes(64)
    np.testing.assert_array_equal(first.gaussian(100, 1.0), second.gaussian(100, 1.0))
    assert NoiseSource.for_testing(8).random_bytes(64) != NoiseSource.for_testing(7).random_bytes(
        64
    )


def test_test_mode_stream_is_the_chacha20_keystream_keyed_by_sha256_of_the_seed() -> None:
    for seed in (0, 7, -3, 2**80):
        seed_bytes = seed.to_bytes(seed.bit_length() // 8 + 1, "big", signed=True)
        key = hashlib.sha256(seed_bytes).digest()
        keystream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        assert NoiseSource.for_testing(seed).random_bytes(200) == keystream.update(bytes(200))


def test_test_mode_stream_does_not_depend_on_how_draws_are_split() -> None:
    split = NoiseSource.for_testing(11)
    whole = NoiseSource.for_testing(11)
    assert split.random_bytes(5) + split.random_bytes(59) == whole.random_bytes(64)


def test_every_test_mode_source_logs_the_loud_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedwarden.privacy"):
        NoiseSource.for_testing(42)
        NoiseSource.for_testing(42)
    messages = [
        record.getMessage()
        for record in caplog.records
        if record.name == "fedwarden.privacy" and record.levelno == logging.WARNING
    ]
    assert messages == [REPRODUCIBLE_WARNING.format(seed=42)] * 2


def test_a_copied_secure_source_draws_fresh_entropy_and_a_test_source_refuses_to_copy() -> None:
    copy = pickle.loads(pickle.dumps(NoiseSource.secure()))
    assert not copy.reproducible
    assert copy.random_bytes(32) != copy.random_bytes(32)
    with pytest.raises(PrivacyNoiseError, match="for_testing"):
        pickle.dumps(NoiseSource.for_testing(1))


# --- no predictable generator on any path a privacy guarantee relies on ---------------------

PREDICTABLE_MODULES = {"random", "numpy.random"}
PREDICTABLE_NAMES = {"default_rng", "RandomState", "Generator", "MT19937", "PCG64"}
TORCH_GENERATORS = {"manual_seed", "rand", "randn", "randint", "randperm", "normal", "bernoulli"}


def predictable_randomness_uses(source: str) -> list[str]:
    """Imports of ``random`` or ``numpy.random``, ``<anything>.random``, generator names,
    and PyTorch's seeded samplers (``torch.randn``, ``torch.manual_seed``, ...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name in PREDICTABLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.module in PREDICTABLE_MODULES or (
                node.module == "numpy" and any(alias.name == "random" for alias in node.names)
            ):
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and (
            node.attr == "random"
            or (
                node.attr in TORCH_GENERATORS
                and isinstance(node.value, ast.Name)
                and node.value.id == "torch"
            )
        ):
            found.append(f"{ast.unparse(node)}")
        elif isinstance(node, ast.Name) and node.id in PREDICTABLE_NAMES:
            found.append(node.id)
    return found


def test_the_detector_finds_every_way_to_reach_a_predictable_generator() -> None:
    assert predictable_randomness_uses("import random") == ["random"]
    assert predictable_randomness_uses("from numpy import random") == ["from numpy import ..."]
    assert predictable_randomness_uses("import numpy as np\nnp.random.normal(0, 1)")
    assert predictable_randomness_uses("from numpy.random import default_rng")
    assert predictable_randomness_uses("torch.randn(3)") == ["torch.randn"]
    assert predictable_randomness_uses("torch.manual_seed(0)") == ["torch.manual_seed"]
    assert predictable_randomness_uses('"""np.random is forbidden"""') == []


SEEDED_RANDOMNESS_ALLOWED = {
    "attacks/data_poisoning.py": "simulated attackers choose whom to poison: no guarantee",
    "audits/canary_clients.py": "the auditor's canary directions and coin flips",
    "audits/dp_audit.py": "the auditor's canaries and coin flips, not the audited release",
    "audits/inversion.py": "the attacker's own initialization of its reconstruction",
    "audits/membership.py": "the attacker's shadow splits",
    "attacks/model_poisoning.py": "simulated malicious updates: no guarantee",
    "core/messages.py": "client_seed derives a client's training generator and test-mode keys",
    "data/partitioners.py": "simulation: how a public data set is cut into clients",
    "data/sources.py": "simulation: bundled data sets' holdout, partition and train/test splits",
    "data/synthetic.py": "simulation: the Synthetic(alpha, beta) devices, each from its own stream",
    "models/batching.py": "the epoch order of non-private training (DP-SGD uses poisson.py)",
    "models/dp_sgd.py": "the rng parameter of the TorchTrainer step it overrides, unused: batches "
    "and noise are secure",
    "models/numpy.py": "model initialization from the public seed",
    "models/sklearn.py": "non-private training's shuffling",
    "models/torch.py": "non-private training's shuffling and initialization",
    "models/trainer.py": "the client's non-private training generator, which also keys its "
    "test-mode noise (ClientContext.test_noise_key)",
    "runtime/engine.py": "seeds each client's non-private training generator",
    "serve/shadow.py": "which prediction request goes to the candidate model: no guarantee",
    "build/pipeline.py": "FLTrust's server trains non-privately on its own root set, seeded "
    "like a client",
    "build/rollout.py": "which clients evaluate a candidate model: no DP guarantee relies on it",
    "cli/new.py": "how a starter project's sample rows are dealt to its clinics: no guarantee",
    "vertical/architecture.py": "initialization of split models from the public seed",
    "vertical/remote/driver.py": "split learning's public batches: its accounting composes "
    "every batch in parallel and takes no amplification from sampling",
    "vertical/split.py": "split learning's public batches (see vertical/remote/driver.py)",
}
"""Every module that may use a seeded generator, and why no privacy guarantee relies on it."""


def test_no_module_of_the_package_uses_a_seeded_generator_except_those_allowed_and_why() -> None:
    """Privacy noise, secure masks, DP-SGD batches and DP cohorts all draw from NoiseSource.

    The scan covers the whole package: the leaks of issue 15 (DP-SGD batches,
    cohorts) lived outside ``privacy/``. An allowed module that no longer uses
    a seeded generator fails too, so the list stays exact.
    """
    package = Path(fedwarden.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert package / "privacy" / "randomness.py" in modules
    offenders = {
        path.relative_to(package).as_posix()
        for path in modules
        if predictable_randomness_uses(path.read_text())
    }
    assert offenders == set(SEEDED_RANDOMNESS_ALLOWED)
    guarded = ("privacy/", "secure/", "pipeline/", "strategies/", "server/server.py")
    assert not [module for module in offenders if module.startswith(guarded)]


# --- uniform floats and integers -----------------------------------------------------------


def test_uniform_lies_in_the_half_open_unit_interval_on_a_53_bit_grid() -> None:
    extremes = NoiseSource(ScriptedBytes(words(0, 2**64 - 1)), reproducible=True).uniform(2)
    assert extremes.tolist() == [0.0, 1.0 - 2.0**-53]
    draws = NoiseSource.for_testing(1).uniform((500, 200))
    assert draws.shape == (500, 200) and draws.dtype == np.float64
    assert draws.min() >= 0.0 and draws.max() < 1.0
    np.testing.assert_array_equal(draws * 2.0**53, np.floor(draws * 2.0**53))
    assert stats.kstest(draws.ravel(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("high", [3, 10, 3 * 2**61])
def test_integers_are_uniform_below_high(high: int) -> None:
    draws = NoiseSource.for_testing(high % 1000).integers(high, 300_000)
    assert draws.dtype == np.int64 and draws.min() >= 0 and draws.max() < high
    # Modulo reduction of 64-bit words would put 3/8 of all mass in the lowest third of
    # [0, 3 * 2**61); masking without rejection would put values >= high. Both fail here.
    lowest_third = float(np.mean(draws < high // 3))
    assert within_sigmas(lowest_third, (high // 3) / high, math.sqrt(2 / 9 / draws.size))
    if high <= 10:
        counts = np.bincount(draws, minlength=high)
        assert stats.chisquare(counts).pvalue > 1e-3


def test_integers_with_one_value_and_out_of_range_highs() -> None:
    source = NoiseSource.for_testing(0)
    np.testing.assert_array_equal(source.integers(1, 5), np.zeros(5, dtype=np.int64))
    assert source.integers(2**63, 1000).min() >= 0
    for bad in (0, 2**63 + 1):
        with pytest.raises(PrivacyNoiseError, match=r"high must be an int in \[1, 2\*\*63\]"):
            source.integers(bad, 3)


@pytest.mark.parametrize("n", [3, 7 * 2**70 + 5])
def test_randbelow_is_uniform_below_any_python_int(n: int) -> None:
    source = NoiseSource.for_testing(n % 97)
    draws = [source.randbelow(n) for _ in range(30_000)]
    assert all(isinstance(draw, int) and 0 <= draw < n for draw in draws)
    lowest_third = sum(draw < n // 3 for draw in draws) / len(draws)
    assert within_sigmas(lowest_third, (n // 3) / n, math.sqrt(2 / 9 / len(draws)))
    assert source.randbelow(1) == 0


# --- Bernoulli coins -----------------------------------------------------------------------


@pytest.mark.parametrize("probability", [0.3, 0.01, 0.999])
def test_bernoulli_frequency_matches_the_probability(probability: float) -> None:
    coins = NoiseSource.for_testing(3).bernoulli(probability, 400_000)
    assert coins.dtype == np.bool_
    standard_error = math.sqrt(probability * (1 - probability) / coins.size)
    assert within_sigmas(float(coins.mean()), probability, standard_error)


def test_bernoulli_is_exact_at_ties_with_the_binary_expansion_of_the_probability() -> None:
    probability = 2.0**-20 / 3  # a double whose binary expansion needs 74 bits: two 64-bit words
    expansion = Fraction(probability) * 2**128
    assert expansion.denominator == 1
    high_word, low_word = divmod(int(expansion), 2**64)

    def coin(*drawn: int) -> bool:
        source = NoiseSource(ScriptedBytes(words(*drawn)), reproducible=True)
        return bool(source.bernoulli(probability, 1)[0])

    assert coin(high_word - 1)
    assert not coin(high_word + 1)
    assert coin(high_word, low_word - 1)
    assert not coin(high_word, low_word)  # the uniform equals p on every bit p has: U >= p


def test_bernoulli_of_zero_and_one_and_out_of_range() -> None:
    source = NoiseSource.for_testing(0)
    assert not source.bernoulli(0.0, 1000).any()
    assert source.bernoulli(1.0, 1000).all()
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(PrivacyNoiseError, match="probability must be a number in"):
            source.bernoulli(bad, 3)


# --- Gaussian vectors (Holohan & Braghin 2021) ---------------------------------------------


def test_gaussian_matches_the_normal_distribution_in_moments_and_shape() -> None:
    std = 3.0
    draws = NoiseSource.for_testing(2021).gaussian(1_000_000, std)
    n = draws.size
    assert within_sigmas(float(draws.mean()), 0.0, std / math.sqrt(n))
    assert within_sigmas(float(draws.var()), std**2, std**2 * math.sqrt(2 / n))
    assert within_sigmas(float(stats.kurtosis(draws)), 0.0, math.sqrt(24 / n))
    assert stats.kstest(draws, "norm", args=(0.0, std)).pvalue > 1e-3


def test_gaussian_is_a_scaled_sum_of_box_muller_normals_from_fresh_uniforms() -> None:
    size, std = 1000, 0.7
    draws = NoiseSource.for_testing(5).gaussian((10, 100), std)
    replay = NoiseSource.for_testing(5)
    expected = np.zeros(size)
    for _ in range(GAUSSIAN_SUMMANDS):
        radius_uniform, angle_uniform = replay.uniform(size), replay.uniform(size)
        expected += np.sqrt(-2 * np.log(1 - radius_uniform)) * np.cos(2 * np.pi * angle_uniform)
    expected *= std / math.sqrt(GAUSSIAN_SUMMANDS)
    assert GAUSSIAN_SUMMANDS >= 2
    assert draws.shape == (10, 100)
    np.testing.assert_allclose(draws.ravel(), expected, rtol=1e-12, atol=1e-15)


def test_gaussian_with_zero_std_is_zero_and_a_bad_std_is_refused() -> None:
    source = NoiseSource.for_testing(0)
    np.testing.assert_array_equal(source.gaussian(4, 0.0), np.zeros(4))
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(PrivacyNoiseError, match="std must be a finite number >= 0") as caught:
            source.gaussian(4, bad)
        assert isinstance(caught.value, FedwardenError)


def test_sizes_must_be_non_negative_integers() -> None:
    source = NoiseSource.secure()
    assert source.uniform(0).shape == (0,)
    assert source.gaussian(np.int64(3), 1.0).shape == (3,)
    for bad in (-1, (2, -1), 2.5):
        with pytest.raises(PrivacyNoiseError, match="size must be a non-negative int"):
            source.uniform(bad)  # type: ignore[arg-type]
    with pytest.raises(PrivacyNoiseError, match="count must be a non-negative int"):
        source.random_bytes(-1)


def test_a_seeded_stream_resumed_at_its_position_continues_where_it_stood() -> None:
    uninterrupted = NoiseSource.seeded(7, "cohort")
    uninterrupted.uniform(13)
    position = uninterrupted.position
    expected = uninterrupted.gaussian(100, 1.0)
    resumed = NoiseSource.seeded(7, "cohort")
    assert position is not None
    resumed.seek(position)
    assert np.array_equal(resumed.gaussian(100, 1.0), expected)
    assert NoiseSource.secure().position is None


def test_streams_of_one_seed_with_different_names_are_unrelated() -> None:
    assert NoiseSource.seeded(7).random_bytes(32) == NoiseSource.for_testing(7).random_bytes(32)
    assert NoiseSource.seeded(7, "cohort").random_bytes(32) != NoiseSource.seeded(7).random_bytes(
        32
    )


def test_a_secure_source_has_no_position_to_seek() -> None:
    with pytest.raises(PrivacyNoiseError, match="never reproducible"):
        NoiseSource.secure().seek(0)


def test_subset_is_a_uniform_sorted_subset_of_the_requested_size() -> None:
    source = NoiseSource.seeded(3)
    draws = 3000
    counts = np.zeros(10)
    for _ in range(draws):
        chosen = source.subset(10, 3)
        assert chosen == sorted(set(chosen)) and len(chosen) == 3
        counts[chosen] += 1
    tolerance = 5 * np.sqrt(0.3 * 0.7 / draws)
    np.testing.assert_allclose(counts / draws, 0.3, atol=tolerance)
    with pytest.raises(PrivacyNoiseError, match="cannot choose 4 of 3"):
        source.subset(3, 4)
