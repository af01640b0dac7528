"""Specifications of DP-SGD's Poisson sampling: the steps trained are the steps charged."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import ClientData
from fedwarden.models.dp_sgd import DpSgdTrainer
from fedwarden.models.torch import mlp
from fedwarden.models.trainer import ClientContext
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.poisson import PoissonSampling
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.privacy.silo import SiloPrivacy, dp_sgd_round_event

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = functools.partial(mlp, 2, 2, ())


@functools.lru_cache(maxsize=1)
def tiny_trainer() -> DpSgdTrainer:
    """A two-feature logistic regression trained with DP-SGD (secure noise and batches)."""
    return DpSgdTrainer(TINY_MODEL, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)


def optimizer_steps(num_examples: int, batch_size: int, local_epochs: int) -> int:
    """How many times the wrapped optimizer actually stepped during one DP-SGD fit."""
    trainer = tiny_trainer()
    rng = np.random.default_rng(num_examples)
    x = rng.normal(size=(num_examples, 2)).astype(np.float32)
    y = rng.integers(0, 2, num_examples)
    client = ClientContext("silo", ClientData("silo", x, y, x, y), 0, rng, {})
    optimizer = trainer._dp_optimizer.original_optimizer
    counted = [0]

    def counting_step(step=optimizer.step):  # type: ignore[no-untyped-def]
        counted[0] += 1
        return step()

    optimizer.step = counting_step  # type: ignore[method-assign]
    try:
        trainer.fit(trainer.initial_vector(0), client, TrainConfig(local_epochs, batch_size, 0.1))
    finally:
        del optimizer.step
    return counted[0]


def ledger_steps(num_examples: int, batch_size: int, local_epochs: int) -> int:
    """The DP-SGD steps the server's per-silo ledger charges for one round of that silo."""
    ledger = PrivacyLedger(
        PrivacyBudget(1e6, 1e-5),
        privacy_unit="example",
        neighboring="add_remove",
        client_budget=1e6,
    )
    privacy = SiloPrivacy(
        ledger,
        silo_sizes={"silo": num_examples},
        batch_size=batch_size,
        local_epochs=local_epochs,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    privacy.after_round(0, ["silo"], applied=True)
    (entry,) = ledger.entries
    return composed_steps(entry.event, min(1.0, batch_size / num_examples))


def composed_steps(event: dp_event.DpEvent, rate: float) -> int:
    """The steps of a DP-SGD round's event: its self-composition count, at ``rate``."""
    assert isinstance(event, dp_event.SelfComposedDpEvent)
    step = event.event
    if rate < 1.0:
        assert isinstance(step, dp_event.PoissonSampledDpEvent)
        assert step.sampling_probability == rate
        step = step.event
    assert step == dp_event.GaussianDpEvent(1.0)  # at rate 1 there is no sampling
    return event.count


def test_n_196_batch_8_charges_the_25_steps_the_optimizer_takes() -> None:
    """Issue 15's case: the trainer took round(1 / q) = 25 steps, the ledger charged 24."""
    assert optimizer_steps(196, 8, 1) == 25
    assert ledger_steps(196, 8, 1) == 25


@settings(max_examples=40, deadline=None)
@given(
    num_examples=st.integers(1, 400),
    batch_size=st.sampled_from([1, 2, 3, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 256]),
    local_epochs=st.integers(1, 2),
)
def test_ledger_charges_exactly_the_steps_the_optimizer_takes(
    num_examples: int, batch_size: int, local_epochs: int
) -> None:
    assert optimizer_steps(num_examples, batch_size, local_epochs) == ledger_steps(
        num_examples, batch_size, local_epochs
    )


def test_every_pair_below_5000_with_common_batches_charges_the_rounded_epoch() -> None:
    """The ledger's round event against n / batch, rounded, for every (n, batch) below 5000."""
    for batch_size in (8, 16, 32, 64, 128, 256):
        for num_examples in range(1, 5000):
            event = dp_sgd_round_event(num_examples, batch_size, 1, 1.0)
            steps = composed_steps(event, min(1.0, batch_size / num_examples))
            nearest = math.floor(num_examples / batch_size + 0.5)  # exact: batch is a power of 2
            assert steps == max(1, nearest) == PoissonSampling(num_examples, batch_size).steps(1)


def test_batches_are_exact_bernoulli_coins_of_rate_batch_over_n() -> None:
    sampling = PoissonSampling(1000, 50)
    source = NoiseSource.secure()
    sizes = [sampling.batch(source).size for _ in range(400)]
    # Binomial(1000, 0.05): mean 50, std about 6.9; the mean of 400 draws within 5 sigma.
    assert abs(np.mean(sizes) - 50) < 5 * 6.9 / np.sqrt(400)
