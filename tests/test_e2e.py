"""End-to-end runs through the `fedwarden` command and the Python API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.dp_event import DpEvent
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig, load_config
from fedwarden.core.messages import TrainConfig
from fedwarden.server import RunDirectory

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FEDWARDEN = [sys.executable, "-m", "fedwarden.cli"]


def _digits_run(
    seed: int, rounds: int, clients: int, cohort: int, **sections: Any
) -> dict[str, Any]:
    """A short FedAvg run on digits over two local workers, plus ``sections``."""
    return {
        "seed": seed,
        "rounds": rounds,
        "data": {"source": "digits", "num_clients": clients},
        "train": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1},
        "sampling": {"cohort_size": cohort},
        "runtime": {"workers": 2},
        **sections,
    }


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDWARDEN, *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )


def _write_silos(folder: Path, hospitals: int = 6) -> None:
    """Per-client .npz files written by the example script users run."""
    script = ROOT / "examples" / "make_silos.py"
    subprocess.run(
        [sys.executable, str(script), str(folder), "--hospitals", str(hospitals)], check=True
    )


def _config_text(
    data: str, runs_dir: Path, rounds: int = 12, model: str = 'kind = "softmax"'
) -> str:
    return f"""
name = "e2e"
seed = 11
rounds = {rounds}
runs_dir = "{runs_dir}"
[data]
{data}
[model]
{model}
[train]
local_epochs = 2
batch_size = 16
learning_rate = 0.1
[sampling]
cohort_size = 4
[runtime]
workers = 2
"""


def test_run_json_on_a_folder_of_client_npz_files(tmp_path: Path) -> None:
    _write_silos(tmp_path / "silos")
    config = tmp_path / "silos.toml"
    config.write_text(_config_text('source = "npz_folder"\npath = "silos"', tmp_path / "runs"))
    completed = _cli("run", str(config), "--json")
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    for key in (
        "rounds",
        "accuracy",
        "loss",
        "client_accuracy",
        "client_rounds_per_s",
        "wall_s",
        "peak_rss_mb",
        "run_dir",
    ):
        assert key in summary
    assert summary["rounds"] == 12
    assert summary["num_clients"] == 6
    assert summary["accuracy"] > 0.85
    run_dir = Path(summary["run_dir"])
    for name in (
        "config.json",
        "metrics.csv",
        "metrics.json",
        "model.npz",
        "param_spec.json",
        "accuracy.png",
        "loss.png",
        "checkpoint.npz",
    ):
        assert (run_dir / name).is_file(), name
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in rows] == list(range(1, 13))
    assert rows[-1]["accuracy"] == pytest.approx(summary["accuracy"])


def test_resume_after_kill_ends_with_the_same_model_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    model = 'kind = "custom"\nfactory = "fakes:slow_softmax"'
    config = tmp_path / "slow.toml"
    config.write_text(
        _config_text('source = "digits"\nnum_clients = 8', tmp_path / "runs", 6, model)
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{os.environ.get('PYTHONPATH', '')}"}

    # The uninterrupted run in this process (the same config and build.run, one start-up less).
    straight_dir = run(load_config(config)).run_dir
    assert straight_dir is not None

    process = subprocess.Popen(
        [*FEDWARDEN, "run", str(config), "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    killed_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed_at is None:
        time.sleep(0.05)
        for run_dir in (tmp_path / "runs").glob("e2e-*"):
            checkpoint = (
                RunDirectory(run_dir).load_checkpoint() if run_dir != Path(straight_dir) else None
            )
            if checkpoint is not None and checkpoint.round_index >= 1:
                os.killpg(process.pid, signal.SIGKILL)
                killed_at = (run_dir, checkpoint.round_index)
    process.wait()
    assert killed_at is not None, "the run finished before it could be killed"
    run_dir, completed_round = killed_at
    assert completed_round < 5
    assert not (run_dir / "model.npz").exists()

    resumed = _cli("run", "--resume", str(run_dir), "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["rounds"] == 6
    with (
        np.load(run_dir / "model.npz") as after_resume,
        np.load(Path(straight_dir) / "model.npz") as straight,
    ):
        for name in straight.files:
            np.testing.assert_array_equal(after_resume[name], straight[name])


def test_ray_runtime_trains_the_same_model_as_the_local_runtime_under_secagg() -> None:
    values: dict[str, Any] = {
        "seed": 2,
        "rounds": 3,
        "data": {"source": "digits", "num_clients": 6},
        "sampling": {"cohort_size": 3},
        # The quantization's rounding is seeded in test mode; masks cancel exactly.
        "privacy": {"reproducible_noise": True},
        "secure": {"kind": "secagg"},
        "runtime": {"workers": 2},
    }
    local = run(RunConfig.from_mapping(values), write_run_dir=False)
    values["runtime"] = {"kind": "ray", "workers": 2}
    on_ray = run(RunConfig.from_mapping(values), write_run_dir=False)
    assert on_ray.extras["runtime"] == "ray"
    assert on_ray.accuracy == local.accuracy
    assert on_ray.loss == local.loss
    assert [r.participants for r in on_ray.history] == [3, 3, 3]


def test_a_config_typo_exits_2_naming_the_key_and_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("rounds = 3\n[sampling]\ncohort_sise = 4\n")
    completed = _cli("run", str(config))
    assert completed.returncode == 2
    assert "sampling.cohort_sise" in completed.stderr
    assert "did you mean 'cohort_size'" in completed.stderr


def test_a_missing_client_file_array_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "silos"
    _write_silos(folder)
    np.savez(folder / "hospital-02.npz", x=np.zeros((5, 64), np.float32))
    config = tmp_path / "silos.toml"
    config.write_text(_config_text('source = "npz_folder"\npath = "silos"', tmp_path / "runs"))
    completed = _cli("run", str(config))
    assert completed.returncode == 2
    assert "hospital-02.npz" in completed.stderr


def test_personalization_example_reaches_90_percent_central_accuracy() -> None:
    config = load_config(ROOT / "examples" / "personalization.toml")
    result = run(config, write_run_dir=False)
    assert result.accuracy is not None and result.accuracy >= 0.90
    assert result.personalized_accuracy is not None


def dp_sgd_silo_event(num_examples: int, train: TrainConfig, rounds: int, z: float) -> DpEvent:
    """A silo's DP-SGD over ``rounds`` rounds, written from the algorithm, not fedwarden's code.

    Each epoch is n / batch steps rounded to the nearest integer (halves up), each step the
    Gaussian mechanism on a Poisson sample of rate batch / n (no sampling at rate 1).
    """
    per_epoch = max(1, (2 * num_examples + train.batch_size) // (2 * train.batch_size))
    rate = min(1.0, train.batch_size / num_examples)
    step: DpEvent = dp_event.GaussianDpEvent(z)
    if rate < 1.0:
        step = dp_event.PoissonSampledDpEvent(rate, step)
    return dp_event.SelfComposedDpEvent(step, rounds * train.local_epochs * per_epoch)


def test_quickstart_epsilon_is_dp_accountings_for_the_steps_each_hospital_ran() -> None:
    """The oracle is dp-accounting's accountants called here, never fedwarden's accounting."""
    from fedwarden.data import load_dataset

    deployed = load_config(ROOT / "examples" / "quickstart.toml")
    assert deployed.runtime.kind == "grpc"  # make demo; the same training simulated here
    values = deployed.model_dump()
    values["runtime"] = {"kind": "local"}
    values["rollout"] = {}
    config = RunConfig.from_mapping(values)
    assert config.privacy.noise_multiplier is None  # calibrated from the budget at start
    result = run(config, write_run_dir=False)
    summary = result.to_json()
    assert summary["privacy_unit"] == "example" and summary["retired_silos"] == []
    # the server saw only sums, and no client statistic beside them
    assert summary["pipeline"] == ["withhold_client_statistics", "secure_sum"]
    assert summary["secure_aggregation"]["threshold"] == 2
    assert result.rounds == config.rounds and config.sampling.cohort_size == 3
    # Every hospital is in every round's cohort of three, so each ran every round's steps.
    train = TrainConfig(config.train.local_epochs, config.train.batch_size, 0.0)
    delta, z = config.privacy.delta, summary["noise_multiplier"]
    pld, rdp = {}, {}
    for client_id, client in load_dataset(config.data, config.seed).clients.items():
        event = dp_sgd_silo_event(client.num_train, train, config.rounds, z)
        pld[client_id] = pld_privacy_accountant.PLDAccountant().compose(event).get_epsilon(delta)
        rdp[client_id] = rdp_privacy_accountant.RdpAccountant().compose(event).get_epsilon(delta)
    largest = max(pld, key=pld.__getitem__)
    assert summary["accountant"] == "pld"
    assert summary["epsilon"] == pytest.approx(pld[largest], rel=1e-3)
    assert summary["epsilon_rdp"] == pytest.approx(rdp[largest], rel=1e-6)
    for client_id, epsilon in summary["client_epsilons"].items():
        assert epsilon == pytest.approx(pld[client_id], rel=1e-3)
    # The published budget: calibrated so the smallest hospital spends epsilon = 3 and no more.
    assert pld[largest] == pytest.approx(3.0, rel=2e-3) and summary["epsilon"] <= 3.0
    # The non-private run of the same config reaches 0.94 (README, privacy-utility table).
    assert summary["accuracy"] >= 0.85


def test_compressed_updates_are_counted_on_the_wire_and_train_as_well() -> None:
    values = _digits_run(seed=6, rounds=5, clients=8, cohort=6)
    plain = run(RunConfig.from_mapping(values), write_run_dir=False)
    values["pipeline"] = {"compression": {"quantize": "uniform", "bits": 8}}
    compressed = run(RunConfig.from_mapping(values), write_run_dir=False)
    for record in compressed.history:
        # 650 float32 parameters -> 650 one-byte codes, a range and a small JSON header.
        assert 3.0 < record.compression_ratio < 4.0
        assert record.bytes_up * record.compression_ratio == pytest.approx(6 * 650 * 4)
    assert compressed.accuracy is not None and plain.accuracy is not None
    assert abs(compressed.accuracy - plain.accuracy) <= 0.02


def test_a_robust_rule_flags_and_quarantines_sign_flippers_the_mean_cannot_resist() -> None:
    attack = {"kind": "sign_flip", "scale": 10.0, "malicious_fraction": 0.2}
    values = _digits_run(seed=9, rounds=6, clients=10, cohort=10, attack=attack)
    with_mean = run(RunConfig.from_mapping(values), write_run_dir=False)
    values["pipeline"] = {"aggregator": "median", "quarantine_after": 2}
    with_median = run(RunConfig.from_mapping(values), write_run_dir=False)
    malicious = set(with_median.extras["attack"]["malicious_clients"])
    assert set(with_median.history[0].flagged) == malicious
    assert set(with_median.history[1].quarantined) == malicious
    assert all(r.sampled == 8 for r in with_median.history[2:])  # no longer sampled
    assert with_median.extras["quarantined_clients"] == sorted(malicious)
    assert with_median.extras["robust_aggregation"]["robust_rule"] == "median"
    assert with_mean.accuracy is not None and with_median.accuracy is not None
    assert with_median.accuracy > with_mean.accuracy + 0.1


def test_clustering_separates_two_populations_that_disagree_on_labels() -> None:
    # Half the hospitals label digits differently (y -> (y + 1) % 10): two populations.
    values = _digits_run(
        seed=4,
        rounds=5,
        clients=8,
        cohort=8,
        attack={"kind": "label_flip", "malicious_fraction": 0.5},
        clustering={"enabled": True, "warmup_rounds": 1, "distance_threshold": 0.5},
    )
    values["train"] = {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.5}
    result = run(RunConfig.from_mapping(values), write_run_dir=False)
    flipped = set(result.extras["attack"]["malicious_clients"])
    clusters = [set(cluster) for cluster in result.extras["clustering"]["clusters"]]
    assert sorted(clusters, key=sorted) == sorted(
        [flipped, set(f"client_{i}" for i in range(8)) - flipped], key=sorted
    )
    # Accuracy is not compared here: label flipping leaves the clients' test splits
    # clean (tests/test_clustered.py compares accuracy on consistent test labels).
    assert set(result.extras["clustering"]["clustered_client_metrics"]) >= {"accuracy"}


def test_a_backdoor_attack_reports_its_success_rate_and_its_malicious_clients() -> None:
    values: dict[str, Any] = {
        "seed": 8,
        "rounds": 6,
        "data": {"source": "digits", "num_clients": 10},
        "train": {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.1},
        "sampling": {"cohort_size": 10},
        "pipeline": {"weighting": "uniform"},
        "attack": {"kind": "backdoor", "malicious_fraction": 0.2, "target_label": 0},
        "runtime": {"workers": 2},
    }
    result = run(RunConfig.from_mapping(values), write_run_dir=False)
    attack = result.extras["attack"]
    assert len(attack["malicious_clients"]) == 2 and attack["poisoned_updates"] == 12
    # Model replacement implants the trigger: most triggered digits are now read as 0.
    assert result.history[-1].backdoor_success is not None
    assert result.history[-1].backdoor_success > 0.5


@pytest.mark.parametrize("kind", ["secagg", "he"])
def test_secure_aggregation_trains_the_same_model_as_plain_aggregation(kind: str) -> None:
    values = _digits_run(seed=5, rounds=4, clients=8, cohort=6)
    plain = run(RunConfig.from_mapping(values), write_run_dir=False)
    secure = run(RunConfig.from_mapping({**values, "secure": {"kind": kind}}), write_run_dir=False)
    assert secure.extras["pipeline"] == [
        "withhold_client_statistics",
        "secure_sum" if kind == "secagg" else "he_mean",
    ]
    # Quantization (SecAgg+) and CKKS errors are ~1e-7 per coordinate: the same model.
    for plain_round, secure_round in zip(plain.history, secure.history, strict=True):
        assert secure_round.loss == pytest.approx(plain_round.loss, rel=1e-3)


def test_distributed_dp_under_secure_aggregation_spends_the_accountants_epsilon() -> None:
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    from fedwarden.models.numpy import softmax_regression
    from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian

    values = {
        "name": "ddp",
        "seed": 3,
        "rounds": 3,
        "data": {"source": "synthetic", "num_clients": 60},
        "sampling": {"scheme": "uniform", "cohort_size": 10},
        "privacy": {"mechanism": "user_level", "epsilon": 6.0, "clip_norm": 0.5},
        "secure": {"kind": "secagg"},
        "runtime": {"workers": 2},
    }
    summary = run(RunConfig.from_mapping(values), write_run_dir=False).to_json()
    secure = summary["secure_aggregation"]
    assert summary["pipeline"] == ["withhold_client_statistics", "secure_sum"]
    assert secure["distributed_dp"]
    assert summary["accountant"] == "rdp" and summary["neighboring"] == "replace_one"
    mechanism = DistributedDiscreteGaussian.calibrated(
        0.5,
        summary["noise_multiplier"],
        softmax_regression(60, 10).spec.size,
        10,
        secure["threshold"],
    )
    accountant = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=rdp_privacy_accountant.NeighborRel.REPLACE_ONE
    )
    accountant.compose(dp_event.ZCDpEvent(mechanism.zcdp_rho("replace_one")), 3)
    assert summary["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert summary["epsilon"] <= 6.0 and summary["epsilon"] == pytest.approx(6.0, rel=1e-3)


def test_user_level_dp_run_reports_its_privacy_and_a_resume_keeps_the_spend(
    tmp_path: Path,
) -> None:
    from fedwarden.build.run import resumed
    from fedwarden.privacy.accounting import compute_spend, poisson_gaussian

    values = {
        "name": "dp",
        "seed": 4,
        "rounds": 6,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"source": "synthetic", "num_clients": 200},
        "sampling": {"scheme": "poisson", "rate": 0.1},
        "privacy": {
            "mechanism": "user_level",
            "epsilon": 4.0,
            "noise_multiplier": 1.2,
            "clip_norm": 0.5,
            "reproducible_noise": True,
        },
        "runtime": {"workers": 2},
    }
    interrupted = run(RunConfig.from_mapping(values), stop_after=3)
    assert interrupted.rounds == 3
    assert interrupted.run_dir is not None
    config, completed = resumed(Path(interrupted.run_dir))
    assert completed == 3
    result = run(config, resume=Path(interrupted.run_dir))
    summary = result.to_json()

    expected = compute_spend([poisson_gaussian(0.1, 1.2)] * 6, 1e-5)
    assert summary["epsilon"] == pytest.approx(expected.epsilon, rel=1e-3)
    assert summary["epsilon_rdp"] == pytest.approx(expected.epsilon_rdp, rel=1e-9)
    for key in (
        "epsilon",
        "delta",
        "accountant",
        "noise_multiplier",
        "clip_norm",
        "sampling_rate",
        "privacy_unit",
        "budget_remaining",
    ):
        assert summary[key] is not None, key
    assert summary["privacy_unit"] == "client"
    assert summary["sampling_rate"] == 0.1
    ledger = json.loads((Path(result.run_dir or "") / "privacy_ledger.json").read_text())
    assert len(ledger["entries"]) == 6
    stored = json.loads((Path(result.run_dir or "") / "summary.json").read_text())
    assert stored["epsilon"] == summary["epsilon"]


def test_fedwarden_version_names_the_installed_version() -> None:
    completed = _cli("--version")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"fedwarden {metadata.version('fedwarden')}"


def test_outside_a_terminal_each_round_is_one_plain_line_that_never_wraps(
    tmp_path: Path,
) -> None:
    config = tmp_path / "dp.toml"
    config.write_text(
        _config_text('source = "digits"\nnum_clients = 6', tmp_path / "runs", rounds=3)
        + '[privacy]\nmechanism = "user_level"\nepsilon = 8.0\nclip_norm = 1.0\n'
    )
    completed = _cli("run", str(config))
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    rows = [line for line in lines if re.match(r"\s+\d+\s", line) and "epsilon" in line]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert all(len(row) > 80 for row in rows)  # longer than the 80 columns rich assumes
    alerts = [line for line in lines if "alert privacy_budget" in line]
    assert alerts and all(line.endswith("(100%)") for line in alerts)  # one line each
