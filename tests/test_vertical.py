"""Vertical federated learning: PSI-aligned columns, split learning, and what crosses the cut."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch
from dp_accounting import dp_event, privacy_accountant
from dp_accounting.pld import pld_privacy_accountant
from sklearn.datasets import load_breast_cancer
from torch import nn

from fedwarden.core.errors import ConfigError, DataError
from fedwarden.privacy.accounting import calibrate_noise_multiplier
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.psi import PsiReceiver, PsiResponse
from fedwarden.vertical import (
    AlignmentFollower,
    CutActivation,
    CutGradient,
    FeatureParty,
    GaussianRelease,
    LabelParty,
    SplitArchitecture,
    SplitLearning,
    TrainingPlan,
    align_as_leader,
    align_rows,
    centralized_accuracy,
    split_logistic,
    split_mlp,
    train_centralized,
)
from fedwarden.vertical.release import clip_rows, per_example_gradients, release_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLUMNS = {"bank": slice(0, 10), "clinic": slice(10, 20), "lab": slice(20, 30)}
LABEL_PARTY = "bank"
CUT_WIDTH = 4
PLAN = TrainingPlan(epochs=20, batch_size=32, learning_rate=0.01, seed=5)


@dataclass(frozen=True)
class VerticalData:
    """breast_cancer split by columns across three parties, aligned by PSI; train and test rows."""

    blocks: dict[str, npt.NDArray[np.float64]]
    labels: npt.NDArray[np.int64]
    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]
    entity_index: npt.NDArray[np.int64]


@pytest.fixture(scope="module")
def vertical_data() -> VerticalData:
    """Each party shuffles its rows and drops ids of its own, then the tables are aligned by PSI."""
    features, labels = load_breast_cancer(return_X_y=True)
    entities = len(labels)
    tables: dict[str, tuple[list[str], npt.NDArray[np.float64]]] = {}
    party_labels: npt.NDArray[np.int64] | None = None
    for seed, (party, columns) in enumerate(COLUMNS.items()):
        generator = np.random.default_rng(100 + seed)
        kept = generator.permutation(entities)[: entities - 20]  # shuffled, 20 dropped
        block = features[kept, columns]
        block = (block - block.mean(axis=0)) / block.std(axis=0)  # each party's own scaling
        tables[party] = ([f"patient-{k}" for k in kept], block)
        if party == LABEL_PARTY:
            party_labels, label_rows = labels[kept], kept
    assert party_labels is not None
    aligned = align_rows({party: ids for party, (ids, _) in tables.items()})
    blocks = {party: tables[party][1][aligned.rows[party]] for party in COLUMNS}
    aligned_labels = party_labels[aligned.rows[LABEL_PARTY]]
    entity_index = label_rows[aligned.rows[LABEL_PARTY]]
    order = np.random.default_rng(7).permutation(len(aligned.identifiers))
    cut = int(0.7 * len(order))
    return VerticalData(blocks, aligned_labels, order[:cut], order[cut:], entity_index)


def split_run(
    data: VerticalData,
    architecture: SplitArchitecture,
    *,
    ledger: PrivacyLedger | None = None,
    activation_release: GaussianRelease | None = None,
    gradient_release: GaussianRelease | None = None,
) -> SplitLearning:
    """The three parties around ``architecture``, the label party's own bottom first."""
    parties = [
        FeatureParty(
            party,
            data.blocks[party],
            bottom,
            release=None if party == LABEL_PARTY else activation_release,
        )
        for party, bottom in zip(COLUMNS, architecture.bottoms, strict=True)
    ]
    label = LabelParty(LABEL_PARTY, data.labels, architecture.top, release=gradient_release)
    return SplitLearning(parties, label, ledger=ledger)


def test_psi_alignment_puts_the_same_entity_in_every_row(vertical_data: VerticalData) -> None:
    features, labels = load_breast_cancer(return_X_y=True)
    assert len(vertical_data.labels) < len(labels) - 20  # each party dropped ids of its own
    np.testing.assert_array_equal(vertical_data.labels, labels[vertical_data.entity_index])
    for party, columns in COLUMNS.items():
        original = features[vertical_data.entity_index, columns]
        scaled = (original - original.mean(axis=0)) / original.std(axis=0)
        block = vertical_data.blocks[party]
        assert np.allclose(np.corrcoef(block, scaled, rowvar=False).diagonal(block.shape[1]), 1.0)


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("split neural network", lambda: split_mlp([10, 10, 10], 2, cut_width=CUT_WIDTH, seed=3)),
        ("vertical logistic regression", lambda: split_logistic([10, 10, 10], 2, seed=3)),
    ],
)
def test_split_training_is_within_two_points_of_centralized(
    vertical_data: VerticalData, name: str, build: Callable[[], SplitArchitecture]
) -> None:
    blocks = [vertical_data.blocks[party] for party in COLUMNS]
    central = build().stacked()
    train_centralized(central, blocks, vertical_data.labels, vertical_data.train, PLAN)
    central_accuracy = centralized_accuracy(
        central, blocks, vertical_data.labels, vertical_data.test
    )

    split = split_run(vertical_data, build())
    split.fit(vertical_data.train, PLAN)
    split_accuracy = split.accuracy(vertical_data.test)

    print(f"{name}: centralized {central_accuracy:.4f}, split {split_accuracy:.4f}")
    assert central_accuracy > 0.9
    assert abs(split_accuracy - central_accuracy) <= 0.02


def test_only_cut_layer_tensors_cross_between_parties(vertical_data: VerticalData) -> None:
    plan = TrainingPlan(epochs=2, batch_size=64, seed=1)
    split = split_run(vertical_data, split_mlp([10, 10, 10], 2, cut_width=CUT_WIDTH, seed=0))
    split.fit(vertical_data.train, plan)
    split.predict(vertical_data.test)

    batches = 2 * len(plan.batches(vertical_data.train, 0))
    messages = split.log.messages
    activations = [m for m in messages if isinstance(m, CutActivation)]
    gradients = [m for m in messages if isinstance(m, CutGradient)]
    assert len(activations) == 2 * (batches + 1)  # clinic and lab; the bank's own stays local
    assert len(gradients) == 2 * batches
    assert len(messages) == len(activations) + len(gradients)
    assert {(m.sender, m.recipient) for m in activations} == {("clinic", "bank"), ("lab", "bank")}
    assert {(m.sender, m.recipient) for m in gradients} == {("bank", "clinic"), ("bank", "lab")}
    widths = {block.shape[1] for block in vertical_data.blocks.values()}
    for message in messages:
        assert message.values.dtype == np.float32
        assert message.values.ndim == 2 and message.values.shape[1] == CUT_WIDTH
        assert message.values.shape[1] not in widths | {1}  # never raw columns, never labels


def pld_epsilon(noise_multiplier: float, count: int, delta: float) -> float:
    """dp-accounting's own PLD epsilon of ``count`` Gaussian releases under replace-one."""
    accountant = pld_privacy_accountant.PLDAccountant(
        privacy_accountant.NeighboringRelation.REPLACE_ONE
    )
    accountant.compose(dp_event.GaussianDpEvent(noise_multiplier), count)
    return float(accountant.get_epsilon(delta))


def zero_noise() -> NoiseSource:
    """A test-only source whose Gaussian noise is exactly zero: all its bytes are zero."""

    class ZeroBytes:
        def read(self, count: int) -> bytes:
            return bytes(count)

    return NoiseSource(ZeroBytes(), reproducible=True)


def test_dp_mode_charges_each_party_the_accountants_epsilon(vertical_data: VerticalData) -> None:
    delta = 1e-5
    ledger = PrivacyLedger(
        PrivacyBudget(epsilon=100.0, delta=delta), privacy_unit="example", neighboring="replace_one"
    )
    activation = GaussianRelease(clip_norm=1.0, noise_multiplier=1.5)
    gradient = GaussianRelease(clip_norm=0.5, noise_multiplier=3.0)
    split = split_run(
        vertical_data,
        split_mlp([10, 10, 10], 2, cut_width=CUT_WIDTH, seed=0),
        ledger=ledger,
        activation_release=activation,
        gradient_release=gradient,
    )
    split.fit(vertical_data.train, TrainingPlan(epochs=2, batch_size=64))
    # Each epoch: a feature party's activations and its bottom's DP-SGD update; the label
    # party's gradients to each of the three bottoms (its own too) and its top's update.
    for party in ("clinic", "lab"):
        assert ledger.client_spent(party).epsilon == pytest.approx(pld_epsilon(1.5, 4, delta), 2e-3)
    assert ledger.client_spent("bank").epsilon == pytest.approx(pld_epsilon(3.0, 8, delta), 2e-3)
    assert [e.kind for e in ledger.entries if e.client_id == "clinic"] == 2 * [
        "cut_activation",
        "bottom_update",
    ]
    assert [e.kind for e in ledger.entries if e.client_id == "bank"] == 2 * [
        *3 * ["cut_gradient"],
        "top_update",
    ]
    split.predict(vertical_data.test)  # one more release of the activations, nothing else
    assert ledger.client_spent("clinic").epsilon == pytest.approx(pld_epsilon(1.5, 5, delta), 2e-3)
    assert ledger.client_spent("bank").epsilon == pytest.approx(pld_epsilon(3.0, 8, delta), 2e-3)
    assert ledger.spent().epsilon == 0.0  # nothing run-level: each party's data is its own
    # What crossed is noised: the label party saw activation rows longer than the clip norm.
    norms = [
        np.linalg.norm(m.values, axis=1).max()
        for m in split.log.messages
        if isinstance(m, CutActivation)
    ]
    assert max(norms) > activation.clip_norm


def test_release_events_are_the_message_then_in_training_the_model_update() -> None:
    release = GaussianRelease(clip_norm=1.0, noise_multiplier=2.0)
    one = dp_event.GaussianDpEvent(2.0)
    assert release_events(release, training=False) == [one]
    assert release_events(release, training=True) == [one, one]
    assert release_events(release, training=True, recipients=3) == [one] * 4
    with pytest.raises(ConfigError, match="recipients"):
        release_events(release, training=True, recipients=0)


def bottom_gradient_sum(
    bottom: nn.Module, features: npt.NDArray[np.float64], release: GaussianRelease | None
) -> npt.NDArray[np.float64]:
    """The bottom's summed per-example gradient after one backward step of a FeatureParty.

    The party receives the same cut gradient whatever its features; noise is
    off, so under a release the result is the sum of the clipped gradients.
    """
    party = FeatureParty("clinic", features, bottom, release=release, noise=zero_noise())
    party.start(TrainingPlan(learning_rate=1e-9))
    rows = np.arange(len(features))
    activation = party.forward(rows, "bank", training=True)
    upstream = np.random.default_rng(0).normal(size=activation.values.shape).astype(np.float32)
    party.backward(CutGradient(sender="bank", recipient="clinic", values=upstream))
    mean = np.concatenate(
        [p.grad.detach().numpy().ravel() for p in bottom.parameters() if p.grad is not None]
    )
    return mean.astype(np.float64) * len(features)


def test_one_examples_replacement_moves_the_clipped_bottom_update_by_at_most_twice_the_clip(
    vertical_data: VerticalData,
) -> None:
    release = GaussianRelease(clip_norm=0.5, noise_multiplier=1.0)
    features = vertical_data.blocks["clinic"][:48]
    neighbour = features.copy()
    neighbour[17] = 40.0 * np.sign(features[17] + 0.1)  # one patient's row replaced, far out
    bottom = split_mlp([10], 2, cut_width=CUT_WIDTH, seed=0).bottoms[0]

    def change(release: GaussianRelease | None) -> float:
        sums = [
            bottom_gradient_sum(copy.deepcopy(bottom), table, release)
            for table in (features, neighbour)
        ]
        return float(np.linalg.norm(sums[0] - sums[1]))

    clipped, unclipped = change(release), change(None)
    print(f"replace-one change: clipped {clipped:.3f}, unclipped {unclipped:.3f}")
    assert 0 < clipped <= 2 * release.clip_norm + 1e-5
    assert unclipped > 10 * 2 * release.clip_norm


def test_per_example_gradients_equal_the_gradients_of_single_example_batches(
    vertical_data: VerticalData,
) -> None:
    architecture = split_mlp([10, 10, 10], 2, cut_width=CUT_WIDTH, seed=1)
    generator = np.random.default_rng(3)
    cases = [
        (
            architecture.bottoms[1],
            torch.as_tensor(vertical_data.blocks["clinic"][:12], dtype=torch.float32),
            torch.as_tensor(generator.normal(size=(12, CUT_WIDTH)), dtype=torch.float32),
            lambda output, target: (clip_rows(output, 0.3) * target).sum(),
        ),
        (
            architecture.top,
            torch.as_tensor(generator.normal(size=(12, 3 * CUT_WIDTH)), dtype=torch.float32),
            torch.as_tensor(vertical_data.labels[:12]),
            nn.functional.cross_entropy,
        ),
    ]
    for module, inputs, targets, example_loss in cases:
        per_example = per_example_gradients(module, inputs, targets, example_loss)
        for index in range(len(inputs)):
            module.zero_grad()
            example_loss(module(inputs[index : index + 1]), targets[index : index + 1]).backward()
            for name, parameter in module.named_parameters():
                assert parameter.grad is not None
                torch.testing.assert_close(
                    per_example[name][index], parameter.grad, rtol=1e-5, atol=1e-6
                )


def test_dp_split_learning_still_learns(vertical_data: VerticalData) -> None:
    delta = 1e-5
    plan = TrainingPlan(epochs=10, batch_size=32, learning_rate=0.01, seed=5)
    multiplier = calibrate_noise_multiplier(
        8.0, delta, 2 * plan.epochs + 1, neighboring="replace_one"
    )
    ledger = PrivacyLedger(
        PrivacyBudget(epsilon=100.0, delta=delta), privacy_unit="example", neighboring="replace_one"
    )
    split = split_run(
        vertical_data,
        split_mlp([10, 10, 10], 2, cut_width=CUT_WIDTH, seed=3),
        ledger=ledger,
        activation_release=GaussianRelease(clip_norm=1.0, noise_multiplier=multiplier),
    )
    split.fit(vertical_data.train, plan)
    accuracy = split.accuracy(vertical_data.test)
    majority = float(np.mean(vertical_data.labels[vertical_data.test]))
    print(f"DP split network at epsilon 8: accuracy {accuracy:.4f} (majority {majority:.4f})")
    for party in ("clinic", "lab"):  # every training epoch's two events and the evaluation's
        assert ledger.client_spent(party).epsilon == pytest.approx(8.0, 1e-2)
    assert accuracy > max(majority, 1 - majority) + 0.15


def test_training_is_refused_before_any_release_when_a_budget_would_be_exceeded(
    vertical_data: VerticalData,
) -> None:
    ledger = PrivacyLedger(
        PrivacyBudget(epsilon=100.0, delta=1e-5),
        privacy_unit="example",
        neighboring="replace_one",
        client_budget=1.0,
    )
    split = split_run(
        vertical_data,
        split_logistic([10, 10, 10], 2),
        ledger=ledger,
        activation_release=GaussianRelease(clip_norm=1.0, noise_multiplier=0.5),
    )
    with pytest.raises(BudgetExceeded, match="clinic"):
        split.fit(vertical_data.train, TrainingPlan(epochs=10))
    assert split.log.messages == ()
    assert ledger.entries == ()


def test_a_release_needs_an_example_level_replace_one_ledger(vertical_data: VerticalData) -> None:
    release = GaussianRelease(clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="no PrivacyLedger"):
        split_run(vertical_data, split_logistic([10, 10, 10], 2), activation_release=release)
    add_remove = PrivacyLedger(PrivacyBudget(10.0, 1e-5), privacy_unit="example")
    with pytest.raises(ConfigError, match="replace_one"):
        split_run(
            vertical_data,
            split_logistic([10, 10, 10], 2),
            ledger=add_remove,
            activation_release=release,
        )


def test_alignment_refuses_an_id_held_in_two_rows() -> None:
    with pytest.raises(DataError, match="'b' holds entity id 'x'"):
        align_rows({"a": ["x", "y"], "b": ["x", "z", "x"]})


def test_the_leader_and_its_followers_align_as_the_relay_does() -> None:
    tables = {
        "bank": [f"customer-{k}" for k in range(0, 90)],
        "clinic": [f"customer-{k}" for k in range(60, 0, -1)],
        "lab": [f"customer-{k}" for k in (*range(20, 120), 500)],
    }
    followers = [AlignmentFollower(party, tables[party]) for party in ("clinic", "lab")]
    aligned = align_as_leader("bank", tables["bank"], followers)
    relayed = align_rows(tables)
    assert aligned.identifiers == relayed.identifiers
    assert aligned.identifiers == tuple(sorted(f"customer-{k}" for k in range(20, 61)))
    np.testing.assert_array_equal(aligned.rows["bank"], relayed.rows["bank"])
    for follower in followers:
        assert follower.rows is not None
        np.testing.assert_array_equal(follower.rows, relayed.rows[follower.name])


def test_a_follower_refuses_psi_steps_out_of_order() -> None:
    follower = AlignmentFollower("clinic", ["x", "y", "z"])
    leader = PsiReceiver(["y", "z"])
    request = leader.request()
    with pytest.raises(DataError, match="before it offered its ids"):
        follower.answer_intersection(request)
    with pytest.raises(DataError, match=r"call final_request\(offer\) first"):
        follower.finish_final(PsiResponse(()))
    leader.accept(follower.offer())
    assert leader.finish(follower.answer_intersection(request)).intersection == {"y", "z"}
    with pytest.raises(DataError, match="before it offered its ids"):
        follower.answer_intersection(request)  # each offer answers one request
