"""The grpc runtime with real processes: ``fedwarden server`` and ``fedwarden client`` on loopback.

Every test here starts a server process and five client processes speaking
mutual TLS, and kills some of them with SIGKILL at chosen moments.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization

from fedwarden.deploy.pki import init_ca, issue
from fedwarden.governance.audit import load_public_key, read_entries, verify
from fedwarden.governance.store import RunStore
from fedwarden.privacy.accounting import compute_spend, event_from_json
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.wire import SERVICE, version_message
from grpc_federation import Federation, free_port, wait_for

pytestmark = pytest.mark.slow


def _round_started(federation: Federation, client_id: str, round_number: int) -> bool:
    log = federation.client_log(client_id)
    return log.exists() and f"round {round_number}: fit task" in log.read_text(errors="replace")


def test_one_server_and_five_clients_complete_three_rounds_over_mutual_tls(federation) -> None:
    run = federation()
    run.start_server()
    run.start_clients()
    assert run.wait_server() == 0, run.server_output()
    records = run.completed_rounds()
    assert [record["participants"] for record in records] == [5, 5, 5]
    assert all(record["applied"] for record in records)
    assert records[-1]["accuracy"] > records[0]["accuracy"]
    for process in run.clients.values():
        assert process.wait(timeout=30) == 0
    with RunStore(f"sqlite:///{run.root / 'store.db'}") as store:
        enrolled = {client.client_id: client for client in store.enrolled_clients()}
    assert sorted(enrolled) == run.sites
    for client_id, client in enrolled.items():
        pem = (run.pki / "clients" / client_id / "identity.pub").read_bytes()
        key = serialization.load_pem_public_key(pem)
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert client.public_key == raw
        assert client.source == "certificate"
    assert not any((run.run_dir() / "spool").rglob("*.bin")), "spool not cleared after the run"
    kinds = _verified_audit_kinds(run)
    assert kinds == ["run_created"] + ["round_started", "round_completed"] * 3 + [
        "model_registered"
    ]
    assert run.summary()["registered_model"] == "deployed@1.0.0"


def test_client_started_with_a_csv_table_joins_and_trains(federation) -> None:
    run = federation(sites=2, rounds=2, data={"target": "label"})
    csv_site, npz_site = run.sites
    with np.load(run.root / "data" / f"{csv_site}.npz") as arrays:
        x = np.concatenate([arrays["x"], arrays["x_test"]])
        y = np.concatenate([arrays["y"], arrays["y_test"]])
    table = pd.DataFrame(x, columns=[f"pixel_{index}" for index in range(x.shape[1])])
    table["label"] = y
    site_csv = run.root / "site.csv"
    table.to_csv(site_csv, index=False)
    run.start_server()
    run.start_client(csv_site, data=site_csv)
    run.start_client(npz_site)
    assert run.wait_server() == 0, run.server_output()
    records = run.completed_rounds()
    assert [record["participants"] for record in records] == [2, 2]
    assert all(record["applied"] for record in records)
    assert run.clients[csv_site].wait(timeout=30) == 0, run.client_log(csv_site).read_text()


def _verified_audit_kinds(run: Federation) -> list[str]:
    """The kinds of the run's audit entries, after checking the chain with the server's key."""
    public_key = load_public_key(run.pki / "servers" / "server" / "audit.pub")
    with RunStore(f"sqlite:///{run.root / 'store.db'}") as store:
        verification = verify(store, public_key)
        assert verification.ok, verification.problem
        return [entry.kind for entry in read_entries(store)]


def test_client_killed_mid_round_costs_only_that_client(federation) -> None:
    run = federation(model={"kind": "custom", "factory": "fakes:sluggish_softmax"})
    run.start_server()
    run.start_clients()
    victim = run.sites[2]
    wait_for(lambda: _round_started(run, victim, 2), 120, f"{victim} to start round 2")
    run.clients[victim].send_signal(signal.SIGKILL)
    assert run.wait_server() == 0, run.server_output()
    records = run.completed_rounds()
    assert [record["participants"] for record in records] == [5, 4, 4]
    assert records[1]["dropped"] == 1 and records[1]["applied"]
    assert "does not" not in records[1]["note"]


def test_server_killed_mid_run_continues_after_restart_without_forgetting_privacy_spend(
    federation,
) -> None:
    rounds = 3
    run = federation(
        rounds=rounds,
        model={"kind": "custom", "factory": "fakes:one_slow_site_in_round_one"},
        privacy={
            "mechanism": "user_level",
            "epsilon": 50.0,
            "noise_multiplier": 1.0,
            "clip_norm": 5.0,
        },
    )
    run.start_server()
    run.start_clients()
    wait_for(lambda: len(run.completed_rounds()) >= 1, 180, "the first round")
    with RunStore(f"sqlite:///{run.root / 'store.db'}") as store:
        wait_for(
            lambda: len(store.accepted_updates(run.run_dir().name, 1)) == 4,
            60,
            "the four fast sites' round-1 updates to be accepted",
        )
    assert run.server is not None
    run.server.send_signal(signal.SIGKILL)
    run.server.wait()
    run.start_server()
    assert run.wait_server() == 0, run.server_output()
    records = run.completed_rounds()
    assert [record["round"] for record in records] == list(range(1, rounds + 1))
    assert all(record["participants"] == 5 for record in records)
    assert "asking only the other 1 client(s)" in " ".join(run.server_output().split())
    privacy = run.summary()
    ledger = json.loads((run.run_dir() / "privacy_ledger.json").read_text())
    assert len(ledger["entries"]) == rounds
    assert [entry["round_index"] for entry in ledger["entries"]] == list(range(rounds))
    kinds = _verified_audit_kinds(run)
    assert kinds.count("run_created") == 1
    assert kinds.count("round_completed") == rounds
    events = [event_from_json(entry["event"]) for entry in ledger["entries"]]
    spend = compute_spend(events, ledger["budget"]["delta"], ledger["neighboring"])
    assert privacy["epsilon"] == pytest.approx(spend.epsilon, rel=1e-12)


def test_secure_aggregation_completes_when_clients_die_between_its_stages(federation) -> None:
    run = federation(
        model={"kind": "custom", "factory": "fakes:one_slow_site_in_round_one"},
        secure={"kind": "secagg", "clip_norm": 20.0},
    )
    run.start_server()
    run.start_clients()
    after_masking, before_masking = run.sites[0], run.sites[4]
    wait_for(
        lambda: "round 2: fit uploaded" in _log(run, after_masking),
        120,
        f"{after_masking}'s masked input of round 2",
    )
    run.clients[after_masking].send_signal(signal.SIGKILL)
    assert "round 2: fit uploaded" not in _log(run, before_masking)
    run.clients[before_masking].send_signal(signal.SIGKILL)
    assert run.wait_server() == 0, run.server_output()
    records = run.completed_rounds()
    assert [record["participants"] for record in records] == [5, 4, 3]
    assert [record["applied"] for record in records] == [True, True, True]
    assert records[1]["dropped"] == 1
    assert records[2]["accuracy"] > records[0]["accuracy"]
    summary = run.summary()
    assert summary["secure_aggregation"]["threshold"] >= 2


def test_fedbuff_keeps_updating_while_a_slow_site_trains(federation) -> None:
    run = federation(
        rounds=6,
        model={"kind": "custom", "factory": "fakes:one_slow_site"},
        asynchronous={"enabled": True, "buffer_size": 2, "concurrency": 5},
    )
    run.start_server()
    run.start_clients()
    assert run.wait_server() == 0, run.server_output()
    records = run.completed_rounds()
    assert [record["participants"] for record in records] == [2] * 6
    assert all(record["applied"] for record in records)
    assert records[-1]["accuracy"] > records[0]["accuracy"]
    slow = _log(run, run.sites[4])
    # The slow site was sent version 0 and trained 3 s; meanwhile the fast sites filled
    # buffers, so it was not sent another task before the server had moved on.
    assert "round 1: fit task" in slow
    assert "round 2: fit task" not in slow and "round 3: fit task" not in slow
    fast = _log(run, run.sites[0])
    assert "round 4: fit task" in fast or "round 5: fit task" in fast


def _log(run: Federation, client_id: str) -> str:
    return " ".join(run.client_log(client_id).read_text(errors="replace").split())


def test_server_refuses_foreign_certificates_and_garbage_then_completes_the_run(
    federation, tmp_path: Path
) -> None:
    run = federation()
    run.start_server()
    wait_for(lambda: _healthy(run.health_port), 60, "the health endpoint")
    kit = run.pki / "clients" / run.sites[0]
    init_ca(tmp_path / "rogue", "rogue")
    issue(tmp_path / "rogue", "client", run.sites[0])
    rogue = tmp_path / "rogue" / "clients" / run.sites[0]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(kit / "ca.crt").read_bytes(),
        private_key=(rogue / "tls.key").read_bytes(),
        certificate_chain=(rogue / "tls.crt").read_bytes(),
    )
    hello = pb.JoinRequest(version=version_message(), client_id=run.sites[0])
    with grpc.secure_channel(run.address, credentials) as channel:
        join = channel.unary_unary(
            f"/{SERVICE}/Join",
            request_serializer=pb.JoinRequest.SerializeToString,
            response_deserializer=pb.JoinReply.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            join(hello, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", run.port), timeout=5) as raw:
            raw.sendall(os.urandom(4096))
    context = ssl.create_default_context(cafile=str(kit / "ca.crt"))
    context.load_cert_chain(kit / "tls.crt", kit / "tls.key")
    with (
        socket.create_connection(("127.0.0.1", run.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(2048))
    genuine = grpc.ssl_channel_credentials(
        root_certificates=(kit / "ca.crt").read_bytes(),
        private_key=(kit / "tls.key").read_bytes(),
        certificate_chain=(kit / "tls.crt").read_bytes(),
    )
    with grpc.secure_channel(run.address, genuine) as channel:
        for method in ("Join", "Upload"):
            garbage = channel.unary_unary(f"/{SERVICE}/{method}")
            with pytest.raises(grpc.RpcError) as malformed:
                garbage(b"\xff\x01\x02 not a protobuf" + os.urandom(64), timeout=10)
            assert malformed.value.code() in (
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNIMPLEMENTED,
            )
        old = pb.JoinRequest(client_id=run.sites[0])
        old.version.major = 0
        join = channel.unary_unary(
            f"/{SERVICE}/Join",
            request_serializer=pb.JoinRequest.SerializeToString,
            response_deserializer=pb.JoinReply.FromString,
        )
        with pytest.raises(grpc.RpcError) as mismatch:
            join(old, timeout=10)
        assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "protocol 0." in (mismatch.value.details() or "")
    assert run.server is not None and run.server.poll() is None
    assert _healthy(run.health_port)
    run.start_clients()
    assert run.wait_server() == 0, run.server_output()
    assert [record["participants"] for record in run.completed_rounds()] == [5, 5, 5]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_fedwarden_run_on_the_grpc_runtime_trains_the_local_runtimes_model(tmp_path: Path) -> None:
    import numpy as np

    from fedwarden.build.run import run as run_config
    from fedwarden.core.config import RunConfig

    settings = {
        "name": "same",
        "rounds": 3,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"source": "digits", "num_clients": 4},
        "model": {"kind": "softmax"},
        "sampling": {"scheme": "uniform", "cohort_size": 4},
        "runtime": {"kind": "grpc", "heartbeat_s": 1},
    }
    deployed = run_config(RunConfig.from_mapping(settings))
    local = run_config(
        RunConfig.from_mapping({**settings, "runtime": {"kind": "local", "workers": 2}})
    )
    assert deployed.extras["runtime"] == "grpc"
    assert deployed.rounds == local.rounds == 3
    assert deployed.run_dir is not None and local.run_dir is not None
    with (
        np.load(Path(deployed.run_dir) / "model.npz") as grpc_model,
        np.load(Path(local.run_dir) / "model.npz") as local_model,
    ):
        for name in local_model.files:
            np.testing.assert_allclose(grpc_model[name], local_model[name], rtol=0, atol=1e-6)
    logs = Path(deployed.run_dir) / "deploy" / "logs"
    assert len(list(logs.glob("*.log"))) == 4


def test_successive_deployment_runs_pilot_each_candidate_against_production(
    tmp_path: Path,
) -> None:
    from fedwarden.build.deployment import local_federation
    from fedwarden.build.run import prepare
    from fedwarden.build.run import run as run_config
    from fedwarden.core.config import RunConfig
    from fedwarden.governance.audit import AuditLog, load_signing_key
    from fedwarden.governance.registry import ModelRegistry

    runs_dir = tmp_path / "runs"
    settings = {
        "name": "nightly",
        "rounds": 2,
        "runs_dir": str(runs_dir),
        "data": {"source": "digits", "num_clients": 4},
        "model": {"kind": "softmax"},
        "sampling": {"scheme": "uniform", "cohort_size": 4},
        "runtime": {"kind": "grpc", "heartbeat_s": 1},
        "rollout": {"pilot_clients": 2},
    }
    config = RunConfig.from_mapping(settings)
    first = run_config(config).extras
    kit = local_federation(runs_dir) / "servers" / "server"
    with RunStore.sqlite(runs_dir / "fedwarden.db") as store:
        registry = ModelRegistry(store, AuditLog(store, load_signing_key(kit / "audit.key")))
        assert first["registered_model"] == "nightly@1.0.0"
        pilot = first["pilot"]
        assert pilot["production"] is None and len(pilot["clients"]) == 2
        # The pilot's figure is the registered weights' accuracy on those clients' test data.
        prepared = prepare(config)
        weights = registry.weights("nightly@1.0.0")
        correct = examples = 0
        for client_id in pilot["clients"]:
            client = prepared.dataset.clients[client_id]
            accuracy = prepared.trainer.evaluate(weights, client.x_test, client.y_test)["accuracy"]
            correct += accuracy * len(client.y_test)
            examples += len(client.y_test)
        assert pilot["candidate_accuracy"] == pytest.approx(correct / examples, abs=1e-9)
        registry.promote("nightly@1.0.0", by="operator")

    second = run_config(RunConfig.from_mapping({**settings, "seed": 1})).extras
    assert second["registered_model"] == "nightly@1.1.0"
    assert second["pilot"]["production"] == "nightly@1.0.0"
    assert second["pilot"]["clients"] != [] and second["pilot"]["production_accuracy"] is not None
    public_key = load_public_key(kit / "audit.pub")
    with RunStore.sqlite(runs_dir / "fedwarden.db") as store:
        assert verify(store, public_key).ok
        kinds = [entry.kind for entry in read_entries(store)]
        recorded = ModelRegistry(store, None).pilot("nightly@1.1.0")
    assert recorded is not None and recorded.production == "nightly@1.0.0"
    assert recorded.production_accuracy == second["pilot"]["production_accuracy"]
    pilots = [index for index, kind in enumerate(kinds) if kind == "pilot_evaluated"]
    assert len(pilots) == 2 and pilots[0] < kinds.index("model_promoted") < pilots[1]


def test_homomorphic_aggregation_runs_with_the_key_holder_as_its_own_process(
    federation, tmp_path: Path
) -> None:
    """Server, two clients and `fedwarden keyholder serve` over mutual TLS: the server holds no key.

    The server's log and run directory never see a secret context; the model
    trains as in clear (CKKS errors ~1e-7), and the key holder decrypted each
    round exactly once.
    """
    key_holder_port = free_port()
    aggregator = tmp_path / "pki" / "clients" / "aggregator"
    run = federation(
        sites=2,
        rounds=2,
        secure={
            "kind": "he",
            "key_holder": f"localhost:{key_holder_port}",
            "key_holder_identity": str(aggregator),
        },
    )
    issue(run.pki, "client", "aggregator")
    issue(run.pki, "server", "keyholder")
    state = tmp_path / "keyholder"
    command = [
        sys.executable, "-m", "fedwarden.cli", "keyholder", "serve",
        "--state", str(state),
        "--identity", str(run.pki / "servers" / "keyholder"),
        "--aggregator", "aggregator",
        "--address", f"127.0.0.1:{key_holder_port}",
        *[f"--client={run.pki / 'clients' / site / 'tls.crt'}" for site in run.sites],
    ]  # fmt: skip
    with open(tmp_path / "keyholder.log", "wb") as log:
        key_holder = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        run.start_server()  # it waits for the key holder to come up
        wait_for(lambda: (state / "public_context.bin").exists(), 120, "the key holder's key")
        run.start_clients(options=["--he-public-context", str(state / "public_context.bin")])
        assert run.wait_server() == 0, run.server_output()
    finally:
        key_holder.terminate()
        key_holder.wait(timeout=30)
    records = run.completed_rounds()
    assert [record["participants"] for record in records] == [2, 2]
    assert all(record["applied"] for record in records)
    assert records[-1]["accuracy"] > records[0]["accuracy"]
    decrypted = json.loads((state / "decrypted_rounds.json").read_text())
    assert len(set(decrypted["rounds"])) == 2  # each of the two rounds, once
    assert not any("secret_context" in path.name for path in run.run_dir().rglob("*"))
