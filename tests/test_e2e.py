"""End-to-end runs through the `fedwarden` command and the Python API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedwarden.core.config import RunConfig, load_config
from fedwarden.server import RunDirectory, run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FEDWARDEN = [sys.executable, "-m", "fedwarden.cli"]


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
    assert [row["round_index"] for row in rows] == list(range(12))
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

    uninterrupted = json.loads(_cli("run", str(config), "--json", env=env).stdout)

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
                RunDirectory(run_dir).load_checkpoint()
                if run_dir != Path(uninterrupted["run_dir"])
                else None
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
        np.load(Path(uninterrupted["run_dir"]) / "model.npz") as straight,
    ):
        for name in straight.files:
            np.testing.assert_array_equal(after_resume[name], straight[name])


def test_ray_runtime_trains_the_same_model_as_the_local_runtime(tmp_path: Path) -> None:
    values = {
        "seed": 2,
        "rounds": 3,
        "data": {"source": "digits", "num_clients": 6},
        "sampling": {"cohort_size": 3},
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


def test_quickstart_reaches_90_percent_central_accuracy(tmp_path: Path) -> None:
    config = load_config(ROOT / "examples" / "quickstart.toml")
    result = run(config, write_run_dir=False)
    assert result.accuracy is not None and result.accuracy >= 0.90
    assert result.personalized_accuracy is not None


def test_user_level_dp_run_reports_its_privacy_and_a_resume_keeps_the_spend(
    tmp_path: Path,
) -> None:
    from fedwarden.privacy.accounting import compute_spend, poisson_gaussian
    from fedwarden.server import resumed

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
