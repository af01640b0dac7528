"""Specifications of the run configuration: bad keys and values are refused, saying why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedwarden.core.config import RunConfig, load_config
from fedwarden.core.errors import ConfigError


def config_error(values: dict[str, Any]) -> str:
    """The message of the ConfigError that validating ``values`` raises."""
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_mapping(values)
    return str(caught.value)


def test_the_defaults_validate() -> None:
    config = RunConfig.from_mapping({})
    assert config == RunConfig()
    assert config.rounds == 10
    assert config.data.source == "digits"
    assert config.data.path is None
    assert config.strategy.name == "fedavg"
    assert config.sampling.scheme == "uniform"


def test_a_full_valid_mapping_is_read_into_typed_sections() -> None:
    config = RunConfig.from_mapping(
        {
            "rounds": 3,
            "data": {"source": "wine", "num_clients": 4, "partition": {"alpha": 0.1}},
            "strategy": {"name": "fedadam", "server_learning_rate": 0.02},
            "sampling": {"scheme": "stratified", "attribute": "region", "cohort_size": 2},
            "model": {"kind": "custom", "factory": "my_module:build"},
        }
    )
    assert config.rounds == 3
    assert config.data.num_clients == 4
    assert config.data.partition.alpha == 0.1
    assert config.strategy.server_learning_rate == 0.02
    assert config.sampling.attribute == "region"
    assert config.model.factory == "my_module:build"


@pytest.mark.parametrize(
    ("values", "dotted_key", "suggestion"),
    [
        ({"data": {"sorce": "digits"}}, "data.sorce", "source"),
        ({"roundz": 3}, "roundz", "rounds"),
        ({"data": {"partition": {"alpa": 1.0}}}, "data.partition.alpa", "alpha"),
        ({"strategy": {"proximal_nu": 0.1}}, "strategy.proximal_nu", "proximal_mu"),
    ],
)
def test_a_misspelled_key_is_named_with_its_dotted_path_and_the_close_match(
    values: dict[str, Any], dotted_key: str, suggestion: str
) -> None:
    message = config_error(values)
    assert f"{dotted_key}: unknown key" in message
    assert f"did you mean {suggestion!r}?" in message


def test_an_unknown_key_lists_the_keys_allowed_in_its_section() -> None:
    message = config_error({"data": {"sorce": "digits"}})
    assert "allowed here:" in message
    for key in ("source", "num_clients", "partition", "path"):
        assert key in message


def test_an_unknown_key_with_no_close_match_gets_no_suggestion() -> None:
    message = config_error({"train": {"zzzzzz": 1}})
    assert "train.zzzzzz: unknown key" in message
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("values", "dotted_key", "value", "allowed"),
    [
        ({"rounds": 0}, "rounds", "0", "greater than or equal to 1"),
        ({"strategy": {"name": "fedsgd"}}, "strategy.name", "'fedsgd'", "'fedavg'"),
        ({"data": {"partition": {"alpha": 0.0}}}, "data.partition.alpha", "0.0", "greater than 0"),
        (
            {"data": {"partition": {"alpha": -1.5}}},
            "data.partition.alpha",
            "-1.5",
            "greater than 0",
        ),
        ({"strategy": {"momentum": 1.0}}, "strategy.momentum", "1.0", "less than 1"),
        ({"sampling": {"rate": 1.5}}, "sampling.rate", "1.5", "less than or equal to 1"),
    ],
)
def test_a_bad_value_is_named_with_its_key_the_value_and_what_is_allowed(
    values: dict[str, Any], dotted_key: str, value: str, allowed: str
) -> None:
    message = config_error(values)
    line = next(line for line in message.splitlines() if line.startswith(f"{dotted_key}:"))
    assert f"(got {value})" in line
    assert allowed in line


def test_an_unknown_strategy_lists_every_strategy_that_exists() -> None:
    message = config_error({"strategy": {"name": "fedsgd"}})
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        assert repr(name) in message


def test_every_problem_is_reported_at_once() -> None:
    message = config_error({"rounds": 0, "data": {"sorce": "digits"}})
    assert message.startswith("config has 2 problem(s):")
    assert "rounds:" in message
    assert "data.sorce:" in message


def test_npz_folder_source_without_a_path_is_refused() -> None:
    message = config_error({"data": {"source": "npz_folder"}})
    assert "data" in message
    assert "npz_folder" in message
    assert "data.path" in message


def test_a_path_is_refused_for_a_source_that_does_not_read_it() -> None:
    message = config_error({"data": {"source": "digits", "path": "clients"}})
    assert "data.path" in message
    assert "'digits'" in message


def test_stratified_sampling_without_an_attribute_is_refused() -> None:
    message = config_error({"sampling": {"scheme": "stratified"}})
    assert "sampling.attribute" in message


def test_a_custom_model_without_a_factory_is_refused() -> None:
    message = config_error({"model": {"kind": "custom"}})
    assert "model.factory" in message


def test_a_factory_for_a_builtin_model_is_refused() -> None:
    message = config_error({"model": {"kind": "softmax", "factory": "my_module:build"}})
    assert "model.factory" in message


def test_load_config_reads_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('rounds = 4\n[strategy]\nname = "fedyogi"\n')
    config = load_config(path)
    assert config.rounds == 4
    assert config.strategy.name == "fedyogi"


def test_load_config_names_the_file_in_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[data]\nsorce = "digits"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path} has 1 problem(s)")
    assert "did you mean 'source'?" in str(caught.value)


def test_invalid_toml_syntax_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_a_missing_config_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_a_relative_data_path_is_resolved_from_the_toml_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_folder = tmp_path / "experiments"
    config_folder.mkdir()
    path = config_folder / "run.toml"
    path.write_text('[data]\nsource = "npz_folder"\npath = "../clients"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(path)

    assert config.data.path == (tmp_path / "clients").resolve()


def test_an_absolute_data_path_is_kept(tmp_path: Path) -> None:
    clients = (tmp_path / "clients").resolve()
    path = tmp_path / "sub" / "run.toml"
    path.parent.mkdir()
    path.write_text(f'[data]\nsource = "npz_folder"\npath = "{clients.as_posix()}"\n')
    assert load_config(path).data.path == clients


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://hooks.example/T0KEN", "https:///T0KEN-no-host"]
)
def test_a_bad_webhook_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"monitoring\.webhook_url") as refused:
        RunConfig.from_mapping({"monitoring": {"webhook_url": url}})
    assert url not in str(refused.value) and "T0KEN" not in str(refused.value)
    accepted = RunConfig.from_mapping({"monitoring": {"webhook_url": "https://hooks.example/T"}})
    assert accepted.monitoring.webhook_url == "https://hooks.example/T"


def test_homomorphic_aggregation_over_grpc_needs_a_key_holder_process() -> None:
    message = config_error({"runtime": {"kind": "grpc"}, "secure": {"kind": "he"}})
    assert "secure.kind 'he' over the grpc runtime needs its key holder" in message
    assert "fedwarden keyholder serve" in message
    remote = {"key_holder": "keyholder.example:8471", "key_holder_identity": "pki/aggregator"}
    config = RunConfig.from_mapping(
        {"runtime": {"kind": "grpc"}, "secure": {"kind": "he", **remote}}
    )
    assert config.secure.key_holder == "keyholder.example:8471"
    assert config.secure.key_holder_identity == Path("pki/aggregator")
    message = config_error({"secure": {"kind": "he", **remote}})
    assert "simulated runs keep their key holder in process" in message
    assert RunConfig.from_mapping({"secure": {"kind": "he"}}).secure.key_holder is None
