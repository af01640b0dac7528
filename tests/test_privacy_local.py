"""Local DP honours privacy.epsilon: each client's budget holds before it would be exceeded."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig

DELTA = 1e-5
CLIENTS = 4


def local_dp_config(tmp_path: Path, epsilon: float, noise_multiplier: float) -> RunConfig:
    """Four digits clients, all sampled every round for five rounds, local DP at ``epsilon``."""
    return RunConfig.from_mapping(
        {
            "seed": 0,
            "rounds": 5,
            "runs_dir": str(tmp_path / "runs"),
            "data": {"source": "digits", "num_clients": CLIENTS, "partition": {"scheme": "iid"}},
            "model": {"kind": "softmax"},
            "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.1},
            "sampling": {"scheme": "uniform", "cohort_size": CLIENTS},
            "runtime": {"kind": "local", "workers": 1},
            "privacy": {
                "mechanism": "local",
                "epsilon": epsilon,
                "delta": DELTA,
                "noise_multiplier": noise_multiplier,
                "clip_norm": 1.0,
            },
        }
    )


def releases_epsilon(noise_multiplier: float, releases: int) -> float:
    """dp-accounting's PLD epsilon of ``releases`` Gaussian releases, noise z over sensitivity."""
    accountant = pld_privacy_accountant.PLDAccountant()
    event = dp_event.GaussianDpEvent(noise_multiplier)
    accountant.compose(dp_event.SelfComposedDpEvent(event, releases))
    return float(accountant.get_epsilon(DELTA))


def test_local_dp_at_epsilon_0_1_is_refused_before_any_client_trains(tmp_path: Path) -> None:
    """Issue 15: epsilon = 0.1 ran four rounds and reached a client epsilon of 24.4."""
    assert releases_epsilon(1.0, 1) > 0.1  # one release already spends more than the budget
    result = run(local_dp_config(tmp_path, epsilon=0.1, noise_multiplier=1.0))
    assert result.rounds == 0  # the first round never reached a client
    assert result.stopped_early is not None and "within its budget" in result.stopped_early
    privacy = result.extras["privacy"]
    assert privacy["max_client_epsilon"] in (0.0, None)
    assert sorted(privacy["retired_clients"]) == [f"client_{i}" for i in range(CLIENTS)]


def test_each_client_takes_part_only_while_its_next_release_fits_its_budget(
    tmp_path: Path,
) -> None:
    z = 3.0
    two, three = releases_epsilon(z, 2), releases_epsilon(z, 3)
    budget = (two + three) / 2  # room for two releases per client, not three
    result = run(local_dp_config(tmp_path, epsilon=budget, noise_multiplier=z))
    assert result.rounds == 2
    privacy = result.extras["privacy"]
    assert set(privacy["client_epsilons"]) == {f"client_{i}" for i in range(CLIENTS)}
    for epsilon in privacy["client_epsilons"].values():
        assert epsilon == pytest.approx(two, rel=1e-3)
        assert epsilon <= budget
    assert privacy["client_epsilon_round"] == pytest.approx(releases_epsilon(z, 1), rel=1e-3)
    assert privacy["max_client_reported_epsilon"] == pytest.approx(two, rel=1e-3)
