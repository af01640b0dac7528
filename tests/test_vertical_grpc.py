"""Vertical federated learning over gRPC with mutual TLS: the same run as in one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import torch
from dp_accounting import dp_event
from google.protobuf.message import Message
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.core.errors import ConfigError, DataError
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.privacy.accounting import compute_spend
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.runtime.grpc.credentials import TlsKit
from fedwarden.secure.psi import POINT_BYTES, PsiReceiver, PsiResponse
from fedwarden.vertical import (
    ArchitectureSpec,
    BottomParty,
    CutActivation,
    CutGradient,
    FeatureParty,
    FeaturePartyServer,
    GaussianRelease,
    LabelParty,
    PartyTable,
    RemoteFeatureParty,
    SplitLearning,
    TrainingPlan,
    VerticalError,
    align_as_leader,
    align_rows,
    centralized_accuracy,
    train_centralized,
    train_label_party,
)
from fedwarden.vertical import vertical_pb2 as vpb
from fedwarden.vertical.alignment import order_digest
from fedwarden.vertical.remote import (
    SERVICE,
    channel_options,
    decode_tensor,
    encode_tensor,
    load_party_table,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLUMNS = {"bank": slice(0, 10), "clinic": slice(10, 20), "lab": slice(20, 30)}
LABEL_PARTY = "bank"
FEATURE_PARTIES = ("clinic", "lab")
CUT_WIDTH = 4
PLAN = TrainingPlan(epochs=20, batch_size=32, learning_rate=0.01, seed=5)
SPECS = {
    "split neural network": ArchitectureSpec("mlp", (10, 10, 10), 2, cut_width=CUT_WIDTH, seed=3),
    "vertical logistic regression": ArchitectureSpec("logistic", (10, 10, 10), 2, seed=3),
}


@pytest.fixture(scope="module")
def tables() -> dict[str, PartyTable]:
    """breast_cancer by columns; each party shuffles its rows, drops 20, scales its own."""
    features, labels = load_breast_cancer(return_X_y=True)
    result = {}
    for seed, (party, columns) in enumerate(COLUMNS.items()):
        kept = np.random.default_rng(100 + seed).permutation(len(labels))[: len(labels) - 20]
        block = features[kept, columns]
        block = (block - block.mean(axis=0)) / block.std(axis=0)
        party_labels = labels[kept] if party == LABEL_PARTY else None
        result[party] = PartyTable(tuple(f"patient-{k}" for k in kept), block, party_labels)
    return result


@dataclass(frozen=True)
class Kits:
    """Startup kits: one CA's servers and label party, an intruder of the same CA, a rogue CA's."""

    servers: dict[str, TlsKit]
    driver: TlsKit
    intruder: TlsKit
    rogue: TlsKit
    directory: Path


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Kits:
    root = tmp_path_factory.mktemp("vertical-pki")
    init_ca(root / "ca", "vertical")
    for party in FEATURE_PARTIES:
        issue(root / "ca", "server", party)
    issue(root / "ca", "client", LABEL_PARTY)
    issue(root / "ca", "client", "intruder")
    init_ca(root / "rogue", "rogue")
    issue(root / "rogue", "client", LABEL_PARTY)
    return Kits(
        servers={p: TlsKit.from_dir(root / "ca" / "servers" / p) for p in FEATURE_PARTIES},
        driver=TlsKit.from_dir(root / "ca" / "clients" / LABEL_PARTY),
        intruder=TlsKit.from_dir(root / "ca" / "clients" / "intruder"),
        rogue=TlsKit.from_dir(root / "rogue" / "clients" / LABEL_PARTY),
        directory=root,
    )


@contextmanager
def party_servers(
    tables: dict[str, PartyTable],
    kits: Kits,
    *,
    release: GaussianRelease | None = None,
    budget: PrivacyBudget | None = None,
    noise: NoiseSource | None = None,
    parties: Sequence[str] = FEATURE_PARTIES,
    bottom_seed: int | None = None,
) -> Iterator[dict[str, str]]:
    """Feature-party servers on 127.0.0.1 (mutual TLS, bank only); their addresses by name.

    ``bottom_seed`` is each party's own choice of seed (None: secret); the
    runs compared with an in-process run give the seed that run uses.
    """
    servers = {
        party: FeaturePartyServer(
            party,
            tables[party].identifiers,
            tables[party].features,
            address="127.0.0.1:0",
            tls=kits.servers[party],
            driver=LABEL_PARTY,
            release=release,
            budget=budget,
            noise=noise,
            bottom_seed=bottom_seed,
        )
        for party in parties
    }
    try:
        yield {party: f"127.0.0.1:{server.serve()}" for party, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@dataclass
class Run:
    """A finished split-learning run: its losses, test accuracy, and what crossed."""

    losses: list[float]
    accuracy: float
    split: SplitLearning
    identifiers: tuple[object, ...]


def held_out_split(count: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The public 70/30 draw of the aligned rows into train and test."""
    order = np.random.default_rng(7).permutation(count)
    cut = int(0.7 * count)
    return order[:cut], order[cut:]


def in_process_run(
    tables: dict[str, PartyTable],
    spec: ArchitectureSpec,
    plan: TrainingPlan,
    *,
    ledger: PrivacyLedger | None = None,
    release: GaussianRelease | None = None,
    gradient_release: GaussianRelease | None = None,
) -> Run:
    """Every party in this process, aligned by align_rows."""
    aligned = align_rows({party: table.identifiers for party, table in tables.items()})
    architecture = spec.build()
    parties = [
        FeatureParty(
            party,
            tables[party].features[aligned.rows[party]],
            bottom,
            release=None if party == LABEL_PARTY else release,
        )
        for party, bottom in zip(COLUMNS, architecture.bottoms, strict=True)
    ]
    labels = tables[LABEL_PARTY].labels
    assert labels is not None
    label = LabelParty(
        LABEL_PARTY, labels[aligned.rows[LABEL_PARTY]], architecture.top, release=gradient_release
    )
    split = SplitLearning(parties, label, ledger=ledger)
    train, test = held_out_split(len(aligned.identifiers))
    losses = split.fit(train, plan)
    return Run(losses, split.accuracy(test), split, aligned.identifiers)


def grpc_run(
    tables: dict[str, PartyTable],
    remotes: Sequence[RemoteFeatureParty],
    spec: ArchitectureSpec,
    plan: TrainingPlan,
    *,
    ledger: PrivacyLedger | None = None,
    gradient_release: GaussianRelease | None = None,
) -> Run:
    """The bank drives; clinic and lab are reached over gRPC and aligned by PSI over the wire."""
    bank = tables[LABEL_PARTY]
    assert bank.labels is not None
    aligned = align_as_leader(LABEL_PARTY, bank.identifiers, remotes)
    own_rows = aligned.rows[LABEL_PARTY]
    for position, remote in enumerate(remotes, start=1):
        remote.prepare(spec, position)
    architecture = spec.build()
    own = FeatureParty(LABEL_PARTY, bank.features[own_rows], architecture.bottoms[0])
    parties: list[BottomParty] = [own, *remotes]
    label = LabelParty(
        LABEL_PARTY, bank.labels[own_rows], architecture.top, release=gradient_release
    )
    split = SplitLearning(parties, label, ledger=ledger)
    train, test = held_out_split(len(aligned.identifiers))
    losses = split.fit(train, plan)
    return Run(losses, split.accuracy(test), split, aligned.identifiers)


@contextmanager
def connected(
    addresses: dict[str, str], kit: TlsKit, interceptors: Sequence[Any] = ()
) -> Iterator[list[RemoteFeatureParty]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(RemoteFeatureParty.connect(address, kit, interceptors=interceptors))
            for address in addresses.values()
        ]


@pytest.mark.parametrize("name", list(SPECS))
def test_grpc_run_equals_the_in_process_run_and_is_within_two_points_of_centralized(
    tables: dict[str, PartyTable], kits: Kits, name: str
) -> None:
    spec = SPECS[name]
    local = in_process_run(tables, spec, PLAN)
    with (
        party_servers(tables, kits, bottom_seed=spec.seed) as addresses,
        connected(addresses, kits.driver) as remotes,
    ):
        remote = grpc_run(tables, remotes, spec, PLAN)

    aligned = align_rows({party: table.identifiers for party, table in tables.items()})
    central = spec.build().stacked()
    labels = tables[LABEL_PARTY].labels
    assert labels is not None
    labels = labels[aligned.rows[LABEL_PARTY]]
    blocks = [tables[party].features[aligned.rows[party]] for party in COLUMNS]
    train, test = held_out_split(len(aligned.identifiers))
    train_centralized(central, blocks, labels, train, PLAN)
    central_accuracy = centralized_accuracy(central, blocks, labels, test)

    print(
        f"{name}: centralized {central_accuracy:.4f}, in-process {local.accuracy:.4f}, "
        f"gRPC {remote.accuracy:.4f}"
    )
    assert remote.identifiers == local.identifiers  # the same entities in the same order
    assert remote.losses == local.losses  # bit-for-bit the same training
    assert remote.accuracy == local.accuracy
    assert central_accuracy > 0.9
    assert abs(remote.accuracy - central_accuracy) <= 0.02


class WireRecorder(grpc.UnaryUnaryClientInterceptor):
    """Records every call the label party makes: method, request, reply."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Message, Message]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Message) -> Any:
        outcome = continuation(details, request)
        self.calls.append((details.method.rsplit("/", 1)[-1], request, outcome.result()))
        return outcome


def points(data: bytes) -> int:
    """How many whole 32-byte points ``data`` is (fails the test if it is not whole points)."""
    assert len(data) % POINT_BYTES == 0
    return len(data) // POINT_BYTES


def test_only_blinded_points_cross_during_alignment_and_only_cut_tensors_after(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    plan = TrainingPlan(epochs=2, batch_size=64, seed=1)
    spec = SPECS["split neural network"]
    recorder = WireRecorder()
    with (
        party_servers(tables, kits) as addresses,
        connected(addresses, kits.driver, [recorder]) as remotes,
    ):
        run = grpc_run(tables, remotes, spec, plan)  # trains, then predicts the test rows

    shared = len(run.identifiers)
    bank_ids = len(tables[LABEL_PARTY].identifiers)
    table_rows = len(tables["clinic"].identifiers)  # each party holds 549 ids
    methods = [method for method, _, _ in recorder.calls]
    alignment = ["Offer", "Intersect"] * 2 + ["RequestFinal", "FinishFinal"] * 2
    assert methods[:10] == ["Describe", "Describe", *alignment]
    assert methods[10:14] == ["Prepare", "Prepare", "Start", "Start"]
    assert set(methods[14:]) == {"Forward", "Backward"}

    for method, request, reply in recorder.calls[2:10]:
        fields = {f.name for f, _ in request.ListFields()} | {f.name for f, _ in reply.ListFields()}
        if method == "Offer":  # the party, as sender, offers its blinded ids first
            assert isinstance(request, vpb.Empty) and isinstance(reply, vpb.PsiPoints)
            assert points(reply.points) == table_rows
            assert fields == {"mode", "points"}
        elif method == "Intersect":
            assert isinstance(request, vpb.PsiPoints) and isinstance(reply, vpb.PsiAnswer)
            assert points(request.points) == bank_ids
            assert points(reply.double_blinded) == bank_ids
            assert fields == {"mode", "points", "double_blinded"}
        elif method == "RequestFinal":  # the driver's offer in, the party's request out
            assert isinstance(request, vpb.PsiPoints) and isinstance(reply, vpb.PsiPoints)
            assert points(request.points) == shared  # the leader holds only the result
            assert points(reply.points) == table_rows
            assert fields == {"mode", "points"}
        else:
            assert isinstance(request, vpb.PsiAnswer)
            assert isinstance(reply, vpb.AlignmentReceipt)
            assert points(request.double_blinded) == table_rows
            assert {f.name for f, _ in request.ListFields()} == {"double_blinded"}
            order = sorted(str(identifier).encode() for identifier in run.identifiers)
            assert (reply.rows, reply.order_sha256) == (shared, order_digest(order))

    batches = 2 * len(plan.batches(held_out_split(shared)[0], 0))
    forwards = [(q, r) for m, q, r in recorder.calls if m == "Forward"]
    backwards = [q for m, q, _ in recorder.calls if m == "Backward"]
    assert len(forwards) == 2 * (batches + 1) and len(backwards) == 2 * batches
    for request, reply in forwards:
        assert isinstance(request, vpb.ForwardRequest) and isinstance(reply, vpb.Activation)
        batch = len(request.rows) // 8
        assert list(reply.values.shape) == [batch, CUT_WIDTH]
        assert len(reply.values.data) == batch * CUT_WIDTH * 4
    # No message carries a raw feature row of a feature party, as float32 or float64.
    wire = [
        request.SerializeToString() + reply.SerializeToString()
        for _, request, reply in recorder.calls
    ]
    for party in FEATURE_PARTIES:
        features = tables[party].features
        for row in [*features.astype(np.float32), *features.astype(np.float64)]:
            assert not any(row.tobytes() in message for message in wire)
    for request in backwards:
        assert isinstance(request, vpb.Gradient)
        assert request.values.shape[1] == CUT_WIDTH
        assert len(request.values.data) == request.values.shape[0] * CUT_WIDTH * 4
    # What crossed is what the in-process log records: the same messages, the same count.
    crossing = run.split.log.messages
    assert len(crossing) == len(forwards) + len(backwards)


def test_the_party_refuses_alignment_steps_out_of_order_then_aligns(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    bank = tables[LABEL_PARTY].identifiers
    with (
        party_servers(tables, kits, parties=["clinic"]) as addresses,
        connected(addresses, kits.driver) as (remote,),
    ):
        request = PsiReceiver(bank).request()
        with pytest.raises(VerticalError, match=r"INVALID_ARGUMENT.*before it offered its ids"):
            remote.answer_intersection(request)
        with pytest.raises(VerticalError, match=r"call final_request\(offer\) first"):
            remote.finish_final(PsiResponse(()))
        aligned = align_as_leader(LABEL_PARTY, bank, [remote])
        assert set(aligned.identifiers) == set(bank) & set(tables["clinic"].identifiers)
        assert remote.rows == len(aligned.identifiers)


def test_a_certificate_from_another_ca_or_of_another_client_is_refused(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    with party_servers(tables, kits, parties=["clinic"]) as addresses:
        with pytest.raises(VerticalError, match="UNAVAILABLE"):
            RemoteFeatureParty.connect(addresses["clinic"], kits.rogue, timeout_s=5)
        with pytest.raises(VerticalError, match="answers only the label party 'bank'"):
            RemoteFeatureParty.connect(addresses["clinic"], kits.intruder, timeout_s=5)
        with RemoteFeatureParty.connect(addresses["clinic"], kits.driver) as remote:
            assert (remote.name, remote.table_rows, remote.columns) == ("clinic", 549, 10)


def test_a_malformed_array_is_refused_with_a_clear_error_and_changes_nothing(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    spec = ArchitectureSpec("mlp", (10, 10), 2, cut_width=CUT_WIDTH, seed=0)
    with (
        party_servers(tables, kits, parties=["clinic"]) as addresses,
        connected(addresses, kits.driver) as (remote,),
    ):
        align_as_leader(LABEL_PARTY, tables[LABEL_PARTY].identifiers, [remote])
        remote.prepare(spec, 1)
        remote.start(TrainingPlan())
        rows = np.arange(8)
        before = remote.forward(rows, LABEL_PARTY, training=False).values
        remote.forward(rows, LABEL_PARTY, training=True)

        nan = np.ones((8, CUT_WIDTH), dtype=np.float32)
        nan[3, 1] = np.nan
        with pytest.raises(VerticalError, match="NaN or infinite"):
            remote.backward(CutGradient(LABEL_PARTY, "clinic", nan))
        short = encode_tensor(np.ones((8, CUT_WIDTH), dtype=np.float32))
        short.data = short.data[:-4]
        three_dimensional = vpb.Tensor(shape=[2, 4, 4], data=bytes(128))
        with grpc.secure_channel(
            addresses["clinic"], kits.driver.channel_credentials(), options=channel_options()
        ) as channel:
            backward = channel.unary_unary(
                f"/{SERVICE}/Backward",
                request_serializer=vpb.Gradient.SerializeToString,
                response_deserializer=vpb.Empty.FromString,
            )
            for values, message in [
                (short, r"declares shape \(8, 4\), 128 bytes of float32, but carries 124"),
                (three_dimensional, r"must be a \(batch, cut_width\) array"),
            ]:
                with pytest.raises(grpc.RpcError) as refused:
                    backward(vpb.Gradient(sender=LABEL_PARTY, recipient="clinic", values=values))
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert refused.match(message)
        with pytest.raises(VerticalError, match=r"row indices must lie in \[0, 529\)"):
            remote.forward(np.array([0, 10_000]), LABEL_PARTY, training=False)

        after = remote.forward(rows, LABEL_PARTY, training=False).values
        np.testing.assert_array_equal(after, before)  # the bottom model did not move


def test_the_label_party_refuses_non_finite_or_misshapen_activations() -> None:
    values = np.zeros((3, CUT_WIDTH), dtype=np.float32)
    values[0, 0] = np.inf
    with pytest.raises(VerticalError, match="NaN or infinite"):
        decode_tensor(encode_tensor(values), "activations")
    with pytest.raises(VerticalError, match="holds 3 rows for a batch of 4"):
        decode_tensor(encode_tensor(np.zeros((3, 4), np.float32)), "activations", rows=4)
    exact = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert decode_tensor(encode_tensor(exact), "activations").tobytes() == exact.tobytes()


def ledger() -> PrivacyLedger:
    return PrivacyLedger(
        PrivacyBudget(epsilon=100.0, delta=1e-5), privacy_unit="example", neighboring="replace_one"
    )


def test_dp_over_grpc_charges_the_ledger_what_the_in_process_run_charges(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    release = GaussianRelease(clip_norm=1.0, noise_multiplier=1.5)
    gradient = GaussianRelease(clip_norm=0.5, noise_multiplier=3.0)
    plan = TrainingPlan(epochs=2, batch_size=64)
    spec = SPECS["split neural network"]
    local_ledger, remote_ledger = ledger(), ledger()
    local = in_process_run(
        tables, spec, plan, ledger=local_ledger, release=release, gradient_release=gradient
    )
    local.split.predict(held_out_split(len(local.identifiers))[1])
    with (
        party_servers(
            tables,
            kits,
            release=release,
            budget=PrivacyBudget(100.0, 1e-5),
            bottom_seed=spec.seed,
        ) as addresses,
        connected(addresses, kits.driver) as remotes,
    ):
        assert all(remote.release == release for remote in remotes)  # declared at Describe
        remote = grpc_run(
            tables, remotes, spec, plan, ledger=remote_ledger, gradient_release=gradient
        )
        remote.split.predict(held_out_split(len(remote.identifiers))[1])

    for party in COLUMNS:
        spent = remote_ledger.client_spent(party).epsilon
        assert spent == local_ledger.client_spent(party).epsilon
        print(f"{party}: epsilon {spent:.4f} over gRPC and in process")
    assert remote_ledger.client_spent("clinic").epsilon > 0
    # The parties noised what they sent: the bank saw rows longer than the clip norm.
    norms = [
        float(np.linalg.norm(m.values, axis=1).max())
        for m in remote.split.log.messages
        if isinstance(m, CutActivation)
    ]
    assert max(norms) > release.clip_norm


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the party process exited early"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"no party listening on port {port} after {timeout} s")


@pytest.mark.slow
def test_party_processes_serve_the_label_party_the_same_run_as_in_one_process(
    tables: dict[str, PartyTable], kits: Kits, tmp_path: Path
) -> None:
    spec = ArchitectureSpec("logistic", (10, 10, 10), 2, seed=0)
    plan = TrainingPlan(epochs=5, batch_size=32, seed=2)
    local = in_process_run(tables, spec, plan)
    processes: list[subprocess.Popen[bytes]] = []
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as in this process
    addresses = {}
    try:
        for party in FEATURE_PARTIES:
            data = tmp_path / f"{party}.npz"
            np.savez(data, ids=np.array(tables[party].identifiers), features=tables[party].features)
            port = free_port()
            command = [
                sys.executable, "-m", "fedwarden.cli", "vertical", "party",
                "--data", str(data),
                "--identity", str(kits.directory / "ca" / "servers" / party),
                "--address", f"127.0.0.1:{port}",
                "--driver", LABEL_PARTY,
                "--bottom-seed", str(spec.seed),
            ]  # fmt: skip
            with open(tmp_path / f"{party}.log", "wb") as log:  # the child keeps its own copy
                processes.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
                )
            addresses[party] = f"127.0.0.1:{port}"
        for process, address in zip(processes, addresses.values(), strict=True):
            wait_listening(int(address.rsplit(":", 1)[1]), process)
        with connected(addresses, kits.driver) as remotes:
            result = train_label_party(
                LABEL_PARTY, tables[LABEL_PARTY], remotes, kind="logistic", plan=plan,
                label_epsilon=None,  # the in-process run trains on the true labels
            )  # fmt: skip
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    assert result.aligned_rows == len(local.identifiers)
    assert list(result.losses) == local.losses
    assert result.accuracy == local.accuracy


def test_the_train_command_drives_the_parties_and_reports_accuracy(
    tables: dict[str, PartyTable], kits: Kits, tmp_path: Path
) -> None:
    bank = tables[LABEL_PARTY]
    assert bank.labels is not None
    data = tmp_path / "bank.npz"
    np.savez(data, ids=np.array(bank.identifiers), features=bank.features, labels=bank.labels)
    with party_servers(tables, kits) as addresses:
        result = CliRunner().invoke(
            app,
            [
                "vertical", "train",
                "--data", str(data),
                "--identity", str(kits.directory / "ca" / "clients" / LABEL_PARTY),
                "--party", addresses["clinic"],
                "--party", addresses["lab"],
                "--architecture", "logistic",
                "--epochs", "3",
            ],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "aligned entities: 510" in result.output  # shared by all three
    accuracy = float(result.output.split("test accuracy:")[1].split()[0])
    # Label DP is on (epsilon 2): about 12% of the training labels are flipped with fresh
    # secure randomness each run, so accuracy varies (0.93-0.97 in six runs, 0.876 once in
    # CI); the majority class is 63% of breast_cancer, so 0.8 still fails a run that did not learn.
    assert accuracy > 0.8


class CountingNoise(NoiseSource):
    """A noise source that counts its Gaussian draws: one per release the party makes."""

    draws = 0

    def gaussian(self, size: int | tuple[int, ...], std: float) -> npt.NDArray[np.float64]:
        self.draws += 1
        return super().gaussian(size, std)


def gaussians_spend(count: int, noise_multiplier: float, delta: float = 1e-5) -> float:
    """The oracle: epsilon of ``count`` Gaussian mechanisms on one example, replace-one."""
    event = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), count)
    return compute_spend([event], delta, "replace_one").epsilon


def test_a_party_refuses_passes_past_its_own_budget_before_releasing_and_refuses_duplicates(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    release = GaussianRelease(clip_norm=1.0, noise_multiplier=2.0)
    # Room for two Gaussian mechanisms per row, not three: two predict passes (one message
    # each), or one training pass (the message and the DP-SGD bottom update).
    budget = PrivacyBudget((gaussians_spend(2, 2.0) + gaussians_spend(3, 2.0)) / 2, 1e-5)
    noise = CountingNoise.for_testing(0)
    assert isinstance(noise, CountingNoise)
    spec = ArchitectureSpec("mlp", (10, 10), 2, cut_width=CUT_WIDTH, seed=0)
    first, second, third = np.arange(0, 8), np.arange(8, 16), np.arange(16, 24)
    with (
        party_servers(
            tables, kits, release=release, budget=budget, noise=noise, parties=["clinic"]
        ) as addresses,
        connected(addresses, kits.driver) as (remote,),
    ):
        align_as_leader(LABEL_PARTY, tables[LABEL_PARTY].identifiers, [remote])
        remote.prepare(spec, 1)
        remote.start(TrainingPlan())

        with pytest.raises(VerticalError, match=r"INVALID_ARGUMENT.*row indices must be distinct"):
            remote.forward(np.array([8, 8, 9]), LABEL_PARTY, training=False)
        for _ in range(2):
            remote.forward(first, LABEL_PARTY, training=False)
        draws = noise.draws
        with pytest.raises(
            VerticalError,
            match=r"FAILED_PRECONDITION.*already released by predict pass x2\)",
        ):
            remote.forward(first, LABEL_PARTY, training=False)
        # One exhausted row refuses the whole call, which releases and counts nothing.
        with pytest.raises(VerticalError, match="FAILED_PRECONDITION"):
            remote.forward(np.array([9, 3]), LABEL_PARTY, training=False)
        assert noise.draws == draws  # no noise drawn: nothing was computed or released
        for _ in range(2):  # the refused calls counted nothing against row 9, nor the duplicates
            remote.forward(second, LABEL_PARTY, training=False)
        with pytest.raises(VerticalError, match="FAILED_PRECONDITION"):
            remote.forward(second, LABEL_PARTY, training=False)

        remote.forward(third, LABEL_PARTY, training=True)  # two mechanisms per row
        remote.backward(CutGradient(LABEL_PARTY, "clinic", np.zeros((8, CUT_WIDTH), np.float32)))
        with pytest.raises(
            VerticalError, match="already released by predict pass x0, training pass x1"
        ):
            remote.forward(third, LABEL_PARTY, training=False)

        # Aligning again does not reset a row's count: the party counts by its own table row.
        align_as_leader(LABEL_PARTY, tables[LABEL_PARTY].identifiers, [remote])
        remote.prepare(spec, 1)
        with pytest.raises(VerticalError, match="FAILED_PRECONDITION"):
            remote.forward(first, LABEL_PARTY, training=False)


def test_a_party_with_tls_must_name_its_driver_and_a_release_needs_a_budget(
    tables: dict[str, PartyTable], kits: Kits, tmp_path: Path
) -> None:
    clinic = tables["clinic"]
    arguments: dict[str, Any] = {"address": "127.0.0.1:0", "tls": kits.servers["clinic"]}
    with pytest.raises(VerticalError, match="names no driver"):
        FeaturePartyServer("clinic", clinic.identifiers, clinic.features, **arguments)
    release = GaussianRelease(clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="release but no budget"):
        FeaturePartyServer(
            "clinic", clinic.identifiers, clinic.features, driver=LABEL_PARTY, release=release,
            **arguments,
        )  # fmt: skip

    data = tmp_path / "clinic.npz"
    np.savez(data, ids=np.array(clinic.identifiers), features=clinic.features)
    identity = str(kits.directory / "ca" / "servers" / "clinic")
    command = ["vertical", "party", "--data", str(data), "--identity", identity]
    command += ["--address", f"127.0.0.1:{free_port()}"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code != 0 and "names no driver" in result.output
    dp = ["--driver", LABEL_PARTY, "--clip-norm", "1", "--noise-multiplier", "1"]
    result = CliRunner().invoke(app, [*command, *dp])
    assert result.exit_code != 0 and "give all four or none" in result.output


def test_the_label_party_refuses_a_zero_size_array_or_one_of_another_cut_width(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    for shape in ([0, CUT_WIDTH], [3, 0]):
        with pytest.raises(VerticalError, match="at least one row and one column"):
            decode_tensor(vpb.Tensor(shape=shape, data=b""), "activations")
    with pytest.raises(VerticalError, match="3 columns wide but the architecture's cut width is 4"):
        decode_tensor(encode_tensor(np.zeros((2, 3), np.float32)), "activations", columns=4)

    narrow = ArchitectureSpec("mlp", (10, 10), 2, cut_width=CUT_WIDTH, seed=0)
    wide = ArchitectureSpec("mlp", (10, 10), 2, cut_width=CUT_WIDTH + 2, seed=0)
    with (
        party_servers(tables, kits, parties=["clinic"]) as addresses,
        connected({"a": addresses["clinic"], "b": addresses["clinic"]}, kits.driver) as handles,
    ):
        first, second = handles
        with pytest.raises(VerticalError, match=r"call prepare\(\) before forward\(\)"):
            first.forward(np.arange(4), LABEL_PARTY, training=False)
        align_as_leader(LABEL_PARTY, tables[LABEL_PARTY].identifiers, [first])
        first.prepare(narrow, 1)
        second.prepare(wide, 1)  # the party now runs a bottom of another width
        with pytest.raises(VerticalError, match="6 columns wide but the architecture's cut width"):
            first.forward(np.arange(4), LABEL_PARTY, training=False)
        with grpc.secure_channel(
            addresses["clinic"], kits.driver.channel_credentials(), options=channel_options()
        ) as channel:
            prepare = channel.unary_unary(
                f"/{SERVICE}/Prepare",
                request_serializer=vpb.Architecture.SerializeToString,
                response_deserializer=vpb.Declaration.FromString,
            )
            with pytest.raises(grpc.RpcError) as refused:
                prepare(vpb.Architecture(kind="tree", column_counts=[10, 10], classes=2))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.match("architecture kind must be one of")


def test_training_over_budget_is_refused_before_any_pass_and_dp_needs_a_driver_budget(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    release = GaussianRelease(clip_norm=1.0, noise_multiplier=2.0)
    plan = TrainingPlan(epochs=3, batch_size=64)
    recorder = WireRecorder()
    with (
        party_servers(
            tables, kits, release=release, budget=PrivacyBudget(100.0, 1e-5)
        ) as addresses,
        connected(addresses, kits.driver, [recorder]) as remotes,
    ):
        with pytest.raises(ConfigError, match="release under DP but the label party"):
            train_label_party(LABEL_PARTY, tables[LABEL_PARTY], remotes, kind="logistic", plan=plan)
        # Three epochs are six Gaussian mechanisms per example; a budget for five is too small.
        budget = PrivacyBudget((gaussians_spend(5, 2.0) + gaussians_spend(6, 2.0)) / 2, 1e-5)
        with pytest.raises(BudgetExceeded, match="3 epochs of split learning"):
            train_label_party(
                LABEL_PARTY, tables[LABEL_PARTY], remotes, kind="logistic", plan=plan,
                budget=budget,
            )  # fmt: skip
    methods = {method for method, _, _ in recorder.calls}
    assert "Prepare" in methods and "Forward" not in methods  # refused before any pass


def test_an_empty_or_tiny_intersection_is_refused_naming_the_aligned_count(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    bank, clinic = tables[LABEL_PARTY], tables["clinic"]
    assert bank.labels is not None
    shared = sorted(set(bank.identifiers) & set(clinic.identifiers), key=str)[0]
    row = bank.identifiers.index(shared)
    tiny = PartyTable((shared, "stranger"), bank.features[[row, 0]], bank.labels[[row, 0]])
    empty = PartyTable(("stranger",), bank.features[:1], bank.labels[:1])
    with (
        party_servers(tables, kits, parties=["clinic"]) as addresses,
        connected(addresses, kits.driver) as remotes,
    ):
        for table, count in ((tiny, 1), (empty, 0)):
            with pytest.raises(DataError, match=f"the parties share {count} aligned entities"):
                train_label_party(LABEL_PARTY, table, remotes, kind="logistic", plan=PLAN)


@pytest.mark.parametrize(
    ("contents", "problem"),
    [
        ({"features": np.full((3, 2), "x")}, "features must be numbers"),
        ({"features": np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]])}, "NaN or infinite"),
        ({"labels": np.array([0, -1, 1])}, "number the classes from 0"),
        ({"labels": np.array([0.0, 1.0, 1.0])}, "labels must be one whole-number class per id"),
    ],
)
def test_a_party_table_with_bad_features_or_labels_is_refused_naming_the_file(
    tmp_path: Path, contents: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "table.npz"
    arrays = {"ids": np.array(["a", "b", "c"]), "features": np.zeros((3, 2)), **contents}
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=problem) as refused:
        load_party_table(path)
    assert str(path) in str(refused.value)


def test_the_train_command_charges_releases_to_its_budget_and_prints_its_delta(
    tables: dict[str, PartyTable], kits: Kits, tmp_path: Path
) -> None:
    bank = tables[LABEL_PARTY]
    assert bank.labels is not None
    data = tmp_path / "bank.npz"
    np.savez(data, ids=np.array(bank.identifiers), features=bank.features, labels=bank.labels)
    release = GaussianRelease(clip_norm=1.0, noise_multiplier=2.0)
    command = [
        "vertical", "train",
        "--data", str(data),
        "--identity", str(kits.directory / "ca" / "clients" / LABEL_PARTY),
        "--architecture", "logistic",
        "--epochs", "3",
    ]  # fmt: skip
    with party_servers(
        tables, kits, release=release, budget=PrivacyBudget(100.0, 1e-6)
    ) as addresses:
        parties = [argument for address in addresses.values() for argument in ("--party", address)]
        result = CliRunner().invoke(app, [*command, *parties, "--epsilon", "50", "--delta", "1e-6"])
        timed_out = CliRunner().invoke(app, [*command, *parties, "--timeout", "0.000001"])
    assert result.exit_code == 0, result.output
    # Three training passes (message and bottom update each) and one predict pass.
    expected = gaussians_spend(7, release.noise_multiplier, delta=1e-6)
    for party in FEATURE_PARTIES:
        assert f"epsilon charged to {party}: {expected:.4f} (delta 1e-06)" in result.output
    assert timed_out.exit_code != 0 and "DEADLINE_EXCEEDED" in timed_out.output


@pytest.mark.parametrize(
    "spec",
    [
        ArchitectureSpec("logistic", (10, 10), 12, seed=0),
        ArchitectureSpec("mlp", (10, 10), 2, cut_width=10, seed=0),
    ],
    ids=["logistic with classes >= columns", "mlp with cut width >= columns"],
)
def test_a_party_without_a_release_refuses_a_bottom_model_that_would_expose_its_rows(
    tables: dict[str, PartyTable], kits: Kits, spec: ArchitectureSpec
) -> None:
    # With as many cut columns as raw ones and a bottom the label party built from its own
    # seed, the activations W x + b give back x by least squares (issue 17, finding 7).
    with (
        party_servers(tables, kits, parties=["clinic"]) as addresses,
        connected(addresses, kits.driver) as (remote,),
    ):
        align_as_leader(LABEL_PARTY, tables[LABEL_PARTY].identifiers, [remote])
        with pytest.raises(VerticalError, match="would expose its raw rows"):
            remote.prepare(spec, 1)
        with pytest.raises(VerticalError, match="no bottom model yet"):
            remote.start(TrainingPlan())
        remote.prepare(ArchitectureSpec("logistic", (10, 10), 2, seed=0), 1)


def test_the_party_builds_its_bottom_from_its_own_seed_not_the_label_partys(
    tables: dict[str, PartyTable], kits: Kits
) -> None:
    # Knowing the seed, the label party knows the bottom's weights (issue 17, finding 7).
    spec = ArchitectureSpec("logistic", (10, 10), 2, seed=0)
    with (
        party_servers(tables, kits, parties=["clinic"]) as addresses,
        connected(addresses, kits.driver) as (remote,),
    ):
        aligned = align_as_leader(LABEL_PARTY, tables[LABEL_PARTY].identifiers, [remote])
        remote.prepare(spec, 1)
        rows = np.arange(8)
        released = remote.forward(rows, LABEL_PARTY, training=False).values
    clinic = tables["clinic"]
    table_rows = [clinic.identifiers.index(aligned.identifiers[row]) for row in rows]
    features = torch.from_numpy(clinic.features[table_rows].astype(np.float32))
    with torch.no_grad():
        rebuilt = spec.build().bottoms[1](features).numpy()
    assert released.shape == rebuilt.shape
    assert not np.allclose(released, rebuilt, atol=1e-3)
