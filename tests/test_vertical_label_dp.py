"""A feature party reading the labels from the cut gradients, with and without label DP.

Issue 17, finding 7: in vertical logistic regression each gradient row a
feature party gets back is ``softmax - onehot(label)``, whose only negative
entry is the label. The attack below is that feature party: it watches the
``Forward`` rows it is asked for and the ``Backward`` gradients that answer
them, and guesses each row's label as the gradient's smallest entry. Without
label DP it reads every label; with the default label DP (randomized response
at epsilon 2, Ghazi et al. 2021) it guesses right at most as often as the
guarantee allows, e^eps / (e^eps + k - 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting import dp_event
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting import compute_spend
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.vertical import (
    ArchitectureSpec,
    FeatureParty,
    FeaturePartyServer,
    LabelParty,
    PartyTable,
    RemoteFeatureParty,
    SplitLearning,
    TrainingPlan,
    VerticalResult,
    align_rows,
    train_label_party,
)
from fedwarden.vertical.label_dp import DEFAULT_LABEL_EPSILON, LabelRandomizedResponse
from fedwarden.vertical.remote import decode_rows, decode_tensor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABEL_PARTY = "bank"
COLUMNS = {"bank": slice(0, 10), "clinic": slice(10, 20), "lab": slice(20, 30)}
PLAN = TrainingPlan(epochs=4, batch_size=32, learning_rate=0.05, seed=1)


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


class GradientReader(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """What the feature party ``victim`` receives: the rows it is asked for, and their gradients.

    Seen from the label party's channel, so it is exactly what that party's
    server reads; the attack uses nothing else.
    """

    def __init__(self) -> None:
        self.training_rows: npt.NDArray[np.int64] | None = None
        self.guesses: dict[int, int] = {}
        """The attacker's guess of each aligned row's label (the last gradient wins)."""

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method.rsplit("/", 1)[-1]
        if method == "Forward" and request.training:
            self.training_rows = decode_rows(request.rows, 1 << 40)
        if method == "Backward":
            assert self.training_rows is not None
            gradient = decode_tensor(request.values, "the gradient")
            # softmax - onehot(label): the label is the only negative entry, the smallest.
            for row, guess in zip(self.training_rows, gradient.argmin(axis=1), strict=True):
                self.guesses[int(row)] = int(guess)
        return continuation(client_call_details, request)


@contextmanager
def insecure_parties(
    tables: dict[str, PartyTable], reader: GradientReader | None = None
) -> Iterator[list[RemoteFeatureParty]]:
    """clinic and lab served on loopback without TLS; clinic's channel goes through ``reader``."""
    servers = [
        FeaturePartyServer(
            party, tables[party].identifiers, tables[party].features,
            address="127.0.0.1:0", tls=None,
        )
        for party in ("clinic", "lab")
    ]  # fmt: skip
    with ExitStack() as stack:
        parties = []
        for server in servers:
            server.serve()
            stack.callback(server.stop)
            interceptors = [reader] if reader is not None and server.name == "clinic" else []
            address = f"127.0.0.1:{server.port}"
            parties.append(
                stack.enter_context(
                    RemoteFeatureParty.connect(address, None, interceptors=interceptors)
                )
            )
        yield parties


def read_labels(tables: dict[str, PartyTable], **options: Any) -> tuple[float, int, VerticalResult]:
    """Train with ``options``; the share of training labels the feature party clinic read."""
    reader = GradientReader()
    with insecure_parties(tables, reader) as parties:
        result = train_label_party(
            LABEL_PARTY, tables[LABEL_PARTY], parties, kind="logistic", plan=PLAN, **options
        )
    aligned = align_rows({party: table.identifiers for party, table in tables.items()})
    labels = tables[LABEL_PARTY].labels
    assert labels is not None
    truth = labels[aligned.rows[LABEL_PARTY]]
    rows = np.array(sorted(reader.guesses))
    guesses = np.array([reader.guesses[row] for row in rows])
    return float((guesses == truth[rows]).mean()), len(rows), result


def test_without_label_dp_a_feature_party_reads_every_training_label(
    tables: dict[str, PartyTable], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        accuracy, rows, result = read_labels(tables, label_epsilon=None)
    assert rows == int(0.7 * result.aligned_rows)  # every training row was attacked
    assert accuracy == 1.0
    assert result.label_epsilon is None  # the opt-out is in the report
    assert "label DP is OFF" in caplog.text


def test_with_default_label_dp_the_attack_guesses_no_better_than_the_guarantee_allows(
    tables: dict[str, PartyTable],
) -> None:
    accuracy, rows, result = read_labels(tables)  # label DP is on by default
    bound = math.exp(DEFAULT_LABEL_EPSILON) / (math.exp(DEFAULT_LABEL_EPSILON) + 2 - 1)
    assert bound == pytest.approx(0.8808, abs=1e-4)
    # The attack reads the randomized labels exactly, so its hits are Binomial(rows, bound):
    # four standard deviations either side (a false failure about once in 30,000 runs).
    margin = 4 * math.sqrt(bound * (1 - bound) / rows)
    assert accuracy <= bound + margin
    assert accuracy >= bound - margin  # it is randomized response, not something noisier
    assert result.accuracy > 0.85  # and the model still learns
    # Epsilon charged to the label party is the accountant's figure for that randomized response.
    response = dp_event.RandomizedResponseDpEvent(2 / (math.exp(DEFAULT_LABEL_EPSILON) + 1), 2)
    assert result.delta is not None
    oracle = compute_spend([response], result.delta, "replace_one").epsilon
    assert result.label_epsilon == oracle
    assert result.label_epsilon == pytest.approx(DEFAULT_LABEL_EPSILON, abs=1e-3)


def test_label_dp_over_the_driver_budget_is_refused_before_training(
    tables: dict[str, PartyTable],
) -> None:
    reader = GradientReader()
    with insecure_parties(tables, reader) as parties, pytest.raises(BudgetExceeded, match="bank"):
        train_label_party(
            LABEL_PARTY, tables[LABEL_PARTY], parties, kind="logistic", plan=PLAN,
            budget=PrivacyBudget(1.0, 1e-5), label_epsilon=2.0,
        )  # fmt: skip
    assert reader.guesses == {}  # no gradient was sent


def test_randomized_response_keeps_each_label_with_the_stated_probability() -> None:
    response = LabelRandomizedResponse(epsilon=1.0, classes=4)
    labels = np.arange(40_000) % 4
    randomized = response.randomize(labels, NoiseSource.for_testing(3))
    keep = math.e / (math.e + 3)
    assert response.keep_probability == pytest.approx(keep)
    assert abs((randomized == labels).mean() - keep) < 4 * math.sqrt(keep * (1 - keep) / 40_000)
    # each wrong class equally likely: e^eps times less than the true one
    wrong = randomized[randomized != labels] - labels[randomized != labels]
    shares = np.bincount(wrong % 4, minlength=4)[1:] / len(wrong)
    assert np.allclose(shares, 1 / 3, atol=0.02)


def test_the_train_command_reports_label_dp_and_its_opt_out(
    tables: dict[str, PartyTable], tmp_path: Any
) -> None:
    bank = tables[LABEL_PARTY]
    assert bank.labels is not None
    data = tmp_path / "bank.npz"
    np.savez(data, ids=np.array(bank.identifiers), features=bank.features, labels=bank.labels)
    with insecure_parties(tables) as parties:
        command = [
            "vertical", "train", "--data", str(data), "--insecure", "--name", LABEL_PARTY,
            "--architecture", "logistic", "--epochs", "2",
            *(argument for party in parties for argument in ("--party", party.address)),
        ]  # fmt: skip
        on = CliRunner().invoke(app, command)
        off = CliRunner().invoke(app, [*command, "--no-label-dp"])
    assert on.exit_code == 0, on.output
    assert "label DP epsilon charged to bank: 2.0000 (delta 1e-05)" in on.output
    assert off.exit_code == 0, off.output
    assert "label DP: OFF (--no-label-dp)" in off.output


def test_in_process_label_dp_needs_a_ledger_and_is_charged_once_however_long_training_runs(
    tables: dict[str, PartyTable],
) -> None:
    aligned = align_rows({party: table.identifiers for party, table in tables.items()})
    architecture = ArchitectureSpec("logistic", (10, 10, 10), 2, seed=0).build()
    parties = [
        FeatureParty(party, tables[party].features[aligned.rows[party]], bottom)
        for party, bottom in zip(COLUMNS, architecture.bottoms, strict=True)
    ]
    labels = tables[LABEL_PARTY].labels
    assert labels is not None
    response = LabelRandomizedResponse(epsilon=1.0, classes=2)
    label = LabelParty(
        LABEL_PARTY, labels[aligned.rows[LABEL_PARTY]], architecture.top, label_dp=response
    )
    with pytest.raises(ConfigError, match="label DP is set but no PrivacyLedger"):
        SplitLearning(parties, label)
    ledger = PrivacyLedger(
        PrivacyBudget(1.5, 1e-5), privacy_unit="example", neighboring="replace_one",
        client_budget=1.5,
    )  # fmt: skip
    split = SplitLearning(parties, label, ledger=ledger)
    rows = np.arange(64)
    split.fit(rows, TrainingPlan(epochs=2, batch_size=32))
    split.fit(rows, TrainingPlan(epochs=3, batch_size=32))  # the same randomized labels again
    charged = [entry for entry in ledger.entries if entry.kind == "label_randomized_response"]
    assert [(entry.client_id, entry.event) for entry in charged] == [
        (LABEL_PARTY, response.event())
    ]
    assert ledger.client_spent(LABEL_PARTY).epsilon == pytest.approx(1.0, abs=1e-3)
