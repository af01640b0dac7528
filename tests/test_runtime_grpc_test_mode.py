"""Specifications of a deployment client's refusal of test-mode noise chosen by the server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fedwarden.build.client import build_client
from fedwarden.core.config import load_config
from fedwarden.core.errors import DataError
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.client import FederationClient, ReproducibleNoiseRefused
from fedwarden.runtime.grpc.credentials import ClientKit

EXAMPLES = Path(__file__).parent.parent / "examples"


def join_reply(tmp_path: Path, reproducible_noise: bool) -> pb.JoinReply:
    """The server's answer to a join: the quickstart's config, in test mode or not."""
    config = load_config(EXAMPLES / "quickstart.toml")
    privacy = config.privacy.model_copy(update={"reproducible_noise": reproducible_noise})
    config = config.model_copy(update={"privacy": privacy, "runs_dir": tmp_path / "runs"})
    return pb.JoinReply(
        run_id="run-1", run_config_json=config.model_dump_json(), num_features=64, num_classes=10
    )


def site(tmp_path: Path, **options: bool) -> FederationClient:
    """A ``fedwarden client`` of one site with its kit (no server: the refusal comes first)."""
    init_ca(tmp_path / "pki", "test")
    issue(tmp_path / "pki", "client", "hospital-0")
    kit = ClientKit.from_dir(tmp_path / "pki" / "clients" / "hospital-0")
    return FederationClient("127.0.0.1:1", kit, tmp_path / "missing.npz", build_client, **options)


def test_a_server_cannot_switch_a_client_to_test_mode_noise(tmp_path: Path) -> None:
    """The attack: the server sends reproducible_noise = true and would know every noise."""
    client = site(tmp_path)
    with pytest.raises(
        ReproducibleNoiseRefused, match=r"refuses run 'quickstart'.*reproducible_noise"
    ):
        client._engine_for(join_reply(tmp_path, reproducible_noise=True))
    assert client._engine is None  # nothing built, nothing trained


def test_a_client_that_allows_test_mode_says_so_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = site(tmp_path, allow_test_mode_noise=True)
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match=r"missing\.npz"):
        client._engine_for(join_reply(tmp_path, reproducible_noise=True))  # past the check
    assert "TEST MODE" in caplog.text


def test_the_default_client_takes_a_config_without_test_mode(tmp_path: Path) -> None:
    client = site(tmp_path)
    with pytest.raises(DataError, match=r"missing\.npz"):  # past the check, on to its data
        client._engine_for(join_reply(tmp_path, reproducible_noise=False))
