"""The quickstart's reported epsilon is dp-accounting's for the DP-SGD steps it actually ran.

The oracle is computed here from the run's facts (each hospital's training
examples, batch size, epochs, rounds and the calibrated noise multiplier) with
dp-accounting's accountants called directly, never with fedwarden's accounting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedwarden.core.config import load_config
from fedwarden.data import load_dataset
from fedwarden.server.launch import run

QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart.toml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def silo_round_steps(num_examples: int, batch_size: int, local_epochs: int) -> int:
    """Steps of one round at a silo: n / batch to the nearest integer (halves up), per epoch."""
    return local_epochs * max(1, (2 * num_examples + batch_size) // (2 * batch_size))


def dp_sgd_event(num_examples: int, batch_size: int, steps: int, z: float) -> dp_event.DpEvent:
    """``steps`` Poisson-sampled Gaussian steps at rate batch / n (no sampling at rate 1)."""
    gaussian = dp_event.GaussianDpEvent(z)
    rate = min(1.0, batch_size / num_examples)
    step = gaussian if rate == 1.0 else dp_event.PoissonSampledDpEvent(rate, gaussian)
    return dp_event.SelfComposedDpEvent(step, steps)


def test_the_quickstarts_epsilon_is_dp_accountings_for_the_steps_it_ran(tmp_path: Path) -> None:
    config = load_config(QUICKSTART)
    assert config.privacy.mechanism == "dp_sgd" and config.sampling.cohort_size == 3
    config = config.model_copy(
        update={
            "runs_dir": tmp_path / "runs",
            "runtime": config.runtime.model_copy(update={"kind": "local", "workers": 1}),
        }
    )
    result = run(config)
    privacy = result.extras["privacy"]
    z = privacy["noise_multiplier"]
    delta = config.privacy.delta
    batch_size, epochs = config.train.batch_size, config.train.local_epochs
    assert result.stopped_early is None and result.rounds == config.rounds
    # Every hospital is in every round's cohort of three, so each ran every round's steps.
    sizes = {
        client_id: client.num_train
        for client_id, client in load_dataset(config.data, config.seed).clients.items()
    }
    pld, rdp = {}, {}
    for client_id, size in sizes.items():
        steps = config.rounds * silo_round_steps(size, batch_size, epochs)
        event = dp_sgd_event(size, batch_size, steps, z)
        pld_accountant = pld_privacy_accountant.PLDAccountant()
        pld[client_id] = pld_accountant.compose(event).get_epsilon(delta)
        rdp_accountant = rdp_privacy_accountant.RdpAccountant()
        rdp[client_id] = rdp_accountant.compose(event).get_epsilon(delta)
    largest = max(pld, key=pld.__getitem__)
    assert privacy["accountant"] == "pld"
    assert privacy["epsilon"] == pytest.approx(pld[largest], rel=1e-3)
    assert privacy["epsilon_rdp"] == pytest.approx(rdp[largest], rel=1e-6)
    for client_id, epsilon in privacy["client_epsilons"].items():
        assert epsilon == pytest.approx(pld[client_id], rel=1e-3)
    # The noise was calibrated so the smallest hospital spends the budget and no more.
    assert pld[largest] <= config.privacy.epsilon * (1 + 1e-3)
    assert pld[largest] == pytest.approx(config.privacy.epsilon, rel=0.02)
