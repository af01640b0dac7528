"""FLTrust from the config: the server's root data set and its update every round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig, load_config
from fedwarden.core.config.learning import DataConfig
from fedwarden.core.errors import ConfigError, DataError
from fedwarden.data.dataset import ClientData
from fedwarden.data.sources import load_dataset, load_root_file

SEED = 9
CLIENTS = 10


def _config_text(runs_dir: Path, pipeline: str, attack: str) -> str:
    return f"""
name = "fltrust"
seed = {SEED}
rounds = 5
runs_dir = "{runs_dir}"
[data]
source = "digits"
num_clients = {CLIENTS}
[train]
local_epochs = 2
batch_size = 16
learning_rate = 0.3
[sampling]
cohort_size = {CLIENTS}
[runtime]
workers = 1
[pipeline]
{pipeline}
[attack]
{attack}
"""


def _save_root(clients: list[ClientData], examples: slice, path: Path) -> None:
    """A root set of ``examples`` of every client's training data (clean, all classes)."""
    with open(path, "wb") as file:
        np.savez(
            file,
            x=np.concatenate([client.x_train[examples] for client in clients]),
            y=np.concatenate([client.y_train[examples] for client in clients]),
        )


@pytest.mark.slow
def test_fltrust_from_a_toml_config_gives_sign_flippers_no_trust(tmp_path: Path) -> None:
    sign_flip = 'kind = "sign_flip"\nscale = 10.0\nmalicious_fraction = 0.3'
    clean = run(
        load_config(_write(tmp_path / "clean.toml", _config_text(tmp_path, "", 'kind = "none"'))),
        write_run_dir=False,
    )
    attacked_mean = run(
        load_config(_write(tmp_path / "mean.toml", _config_text(tmp_path, "", sign_flip))),
        write_run_dir=False,
    )
    # The server's root set: 100 clean digits it holds itself, here copies of 10 training
    # examples of every client (in the data's own scaling); two disjoint such sets.
    clients = list(
        load_dataset(DataConfig(source="digits", num_clients=CLIENTS), SEED).clients.values()
    )
    _save_root(clients, slice(0, 10), tmp_path / "root_a.npz")
    _save_root(clients, slice(10, 20), tmp_path / "root_b.npz")
    results = {}
    for name in ("root_a", "root_b"):
        pipeline = f'aggregator = "fltrust"\nroot_data = "{name}.npz"'
        config = load_config(
            _write(tmp_path / f"{name}.toml", _config_text(tmp_path, pipeline, sign_flip))
        )
        assert config.pipeline.root_data == tmp_path / f"{name}.npz"  # relative to the config
        results[name] = run(config, write_run_dir=False)
    fltrust = results["root_a"]
    malicious = set(fltrust.extras["attack"]["malicious_clients"])
    assert len(malicious) == 3
    trust = fltrust.extras["robust_aggregation"]["trust_last_round"]
    assert fltrust.extras["robust_aggregation"]["robust_rule"] == "fltrust"
    assert set(trust) == {f"client_{i}" for i in range(CLIENTS)}
    assert all(trust[client] == 0.0 for client in malicious)
    assert all(trust[client] > 0.0 for client in set(trust) - malicious)
    assert clean.accuracy is not None and attacked_mean.accuracy is not None
    assert fltrust.accuracy is not None
    # Measured: clean 0.89, FLTrust under attack 0.85, the mean under attack 0.10.
    assert fltrust.accuracy >= clean.accuracy - 0.07
    assert fltrust.accuracy > attacked_mean.accuracy + 0.5
    # The trust scores come from the root set: another root set scores the clients differently.
    other = results["root_b"].extras["robust_aggregation"]["trust_last_round"]
    assert all(other[client] == 0.0 for client in malicious)
    assert other != trust


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _values(**pipeline: object) -> dict[str, object]:
    return {"data": {"source": "digits"}, "pipeline": pipeline}


def test_fltrust_without_root_data_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'fltrust' needs pipeline\.root_data"):
        RunConfig.from_mapping(_values(aggregator="fltrust"))


def test_root_data_without_fltrust_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"root_data is only read by pipeline\.aggregator"):
        RunConfig.from_mapping(_values(aggregator="median", root_data="root.npz"))


def test_fltrust_is_refused_with_clustering_and_scaffold() -> None:
    values = _values(aggregator="fltrust", root_data="root.npz")
    values["clustering"] = {"enabled": True}
    values["strategy"] = {"name": "scaffold"}
    with pytest.raises(ConfigError, match=r"clustering must be off.*scaffold"):
        RunConfig.from_mapping(values)


def test_the_root_set_is_read_whole_and_a_test_split_in_it_is_refused(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    with open(tmp_path / "root.npz", "wb") as file:
        np.savez(file, x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    root = load_root_file(tmp_path / "root.npz", DataConfig(source="digits"), 3)
    np.testing.assert_array_equal(root.x_train, x.astype(np.float32))
    assert root.num_train == 6 and root.num_test == 0
    with pytest.raises(DataError, match=r"class indices 0\.\.1"):
        load_root_file(tmp_path / "root.npz", DataConfig(source="digits"), 2)
    with open(tmp_path / "split.npz", "wb") as file:
        np.savez(file, x=x, y=np.zeros(6), x_test=x, y_test=np.zeros(6))
    with pytest.raises(DataError, match="brings a test split"):
        load_root_file(tmp_path / "split.npz", DataConfig(source="digits"), 3)
    with pytest.raises(DataError, match="does not exist"):
        load_root_file(tmp_path / "missing.npz", DataConfig(source="digits"), 3)
