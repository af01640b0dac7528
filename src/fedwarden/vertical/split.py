"""Split learning across parties that hold different columns of the same entities (local runtime).

The protocol of Vepakomma et al. (2018), "Split learning for health", in the
vertical setting: every party runs a bottom model on its own columns; the
label party runs the top model on the bottoms' outputs (the cut layer). One
training step on a batch:

1. :meth:`FeatureParty.forward`: each party computes its cut-layer
   activations and sends them as a :class:`~fedwarden.vertical.messages.CutActivation`;
2. :meth:`LabelParty.train_step`: the label party computes the loss, updates
   its top model, and sends each party the gradient of each example's loss
   with respect to that party's activations as a
   :class:`~fedwarden.vertical.messages.CutGradient`;
3. :meth:`FeatureParty.backward`: each party back-propagates the gradient
   through its bottom model and updates it.

Nothing else crosses: features stay with their party, labels and the top
model with the label party. With a
:class:`~fedwarden.vertical.release.GaussianRelease` on a party, what it
sends is clipped row by row and noised, its model update is a DP-SGD step
(per-example gradients clipped, summed and noised; Abadi et al. 2016), and
every pass's events (:func:`~fedwarden.vertical.release.release_events`) are
charged to that party's entries in the
:class:`~fedwarden.privacy.ledger.PrivacyLedger` (see
:mod:`fedwarden.vertical.release` for what exactly is protected). With
label DP on the :class:`LabelParty` it trains on labels randomized once
(:mod:`fedwarden.vertical.label_dp`), charged once to its own ledger entries,
so the cut gradients it sends do not give the feature parties its labels.

Runtime: :class:`SplitLearning`, run by the label party, drives every step
and passes the messages between the parties explicitly, recording each
crossing message in an :class:`~fedwarden.vertical.messages.ExchangeLog`. It
reaches each feature party through the :class:`BottomParty` interface: a
:class:`FeatureParty` in this process, or a
:class:`~fedwarden.vertical.remote.client.RemoteFeatureParty` that carries the same
calls over gRPC with mutual TLS to a feature party in another process
(``fedwarden vertical party``). The loop is the same either way.

The centralized baseline (:func:`train_centralized`) trains the same modules
as one :class:`~fedwarden.vertical.architecture.StackedModel` with the same
batches and optimizer, so the two runs differ only in where each step runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting import compute_spend
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.vertical.architecture import StackedModel
from fedwarden.vertical.label_dp import LabelRandomizedResponse
from fedwarden.vertical.messages import CutActivation, CutGradient, ExchangeLog, VerticalError
from fedwarden.vertical.release import (
    GaussianRelease,
    clip_rows,
    noisy_mean_gradient,
    per_example_gradients,
    release_events,
    set_gradients,
)

logger = logging.getLogger(__name__)

Rows = npt.NDArray[np.int64]
_Message = TypeVar("_Message", CutActivation, CutGradient)


@dataclass(frozen=True)
class TrainingPlan:
    """How to train: epochs, batch size, Adam's learning rate, and the public batch-order seed."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"TrainingPlan.{name} must be a whole number >= 1, got {value!r}")
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise ConfigError(f"TrainingPlan.learning_rate must be > 0, got {self.learning_rate!r}")

    def batches(self, rows: Rows, epoch: int) -> list[Rows]:
        """The epoch's mini-batches: ``rows`` permuted by a generator seeded from (seed, epoch).

        The order is public: every party derives the same batches from the seed.
        """
        order = np.random.default_rng([self.seed, epoch]).permutation(np.asarray(rows))
        return [
            order[start : start + self.batch_size]
            for start in range(0, len(order), self.batch_size)
        ]


class BottomParty(Protocol):
    """What :class:`SplitLearning` needs of a feature party, here or in another process."""

    @property
    def name(self) -> str:
        """The party's name: the sender of its activations."""

    @property
    def release(self) -> GaussianRelease | None:
        """The DP release the party applies to what it sends, or None."""

    @property
    def rows(self) -> int:
        """How many aligned entities the party holds."""

    def start(self, plan: TrainingPlan) -> None:
        """Prepare to train under ``plan``."""

    def forward(self, rows: Rows, recipient: str, *, training: bool) -> CutActivation:
        """The party's cut-layer activations for ``rows``."""

    def backward(self, gradient: CutGradient) -> None:
        """Back-propagate ``gradient`` through the party's bottom model and update it."""


class FeatureParty:
    """A party holding some columns of every aligned entity and the bottom model reading them."""

    def __init__(
        self,
        name: str,
        features: npt.ArrayLike,
        bottom: nn.Module,
        *,
        release: GaussianRelease | None = None,
        noise: NoiseSource | None = None,
    ) -> None:
        self.name = name
        self._features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if self._features.ndim != 2:
            raise VerticalError(
                f"party {name!r} features must be a (rows, columns) table, got shape "
                f"{tuple(self._features.shape)}"
            )
        self._bottom = bottom
        self._release = release
        self._noise = noise if noise is not None else NoiseSource.secure()
        self._optimizer: torch.optim.Optimizer | None = None
        self._sent: torch.Tensor | None = None
        self._inputs: torch.Tensor | None = None

    @property
    def release(self) -> GaussianRelease | None:
        """The DP release applied to what this party sends, or None."""
        return self._release

    @property
    def rows(self) -> int:
        """How many aligned entities this party holds."""
        return int(self._features.shape[0])

    def start(self, plan: TrainingPlan) -> None:
        """Prepare to train: a fresh Adam optimizer over this party's bottom model."""
        self._optimizer = torch.optim.Adam(self._bottom.parameters(), lr=plan.learning_rate)

    def forward(self, rows: Rows, recipient: str, *, training: bool) -> CutActivation:
        """This party's cut-layer activations for ``rows``, clipped and noised under a release."""
        inputs = self._features[torch.as_tensor(rows)]
        with torch.set_grad_enabled(training):
            activations: torch.Tensor = self._bottom(inputs)
            if self._release is None:
                values = activations.detach().numpy()
            else:
                activations = clip_rows(activations, self._release.clip_norm)
                values = self._release.add_noise(activations, self._noise)
        self._sent = activations if training else None
        self._inputs = inputs if training else None
        return CutActivation(sender=self.name, recipient=recipient, values=values)

    def backward(self, gradient: CutGradient) -> None:
        """Back-propagate each example's loss gradient (averaged over the batch) and step Adam.

        Under a release the step is DP-SGD's (Abadi et al. 2016): each
        example's bottom-model gradient, clipped to ``clip_norm``, summed,
        noised and divided by the batch size (:meth:`_privatized_gradients`).
        """
        if self._sent is None or self._inputs is None or self._optimizer is None:
            raise VerticalError(
                f"party {self.name!r} got a gradient without a training forward pass to match; "
                "call start(), then forward(..., training=True), then backward()"
            )
        if gradient.values.shape != tuple(self._sent.shape):
            raise VerticalError(
                f"party {self.name!r} sent activations of shape {tuple(self._sent.shape)} but got "
                f"a gradient of shape {gradient.values.shape}: it answers another batch"
            )
        self._optimizer.zero_grad()
        if self._release is None:
            self._sent.backward(torch.tensor(gradient.values) / self._sent.shape[0])
        else:
            set_gradients(self._bottom, self._privatized_gradients(self._inputs, gradient))
        self._optimizer.step()
        self._sent = None
        self._inputs = None

    def _privatized_gradients(
        self, inputs: torch.Tensor, gradient: CutGradient
    ) -> dict[str, torch.Tensor]:
        """DP-SGD's noisy mean of the examples' bottom-model gradients, through the row clipping."""
        assert self._release is not None
        clip_norm = self._release.clip_norm

        def example_loss(output: torch.Tensor, row_gradient: torch.Tensor) -> torch.Tensor:
            return (clip_rows(output, clip_norm) * row_gradient).sum()

        per_example = per_example_gradients(
            self._bottom, inputs, torch.tensor(gradient.values), example_loss
        )
        return noisy_mean_gradient(per_example, self._release, self._noise)


class LabelParty:
    """The party holding labels and the top model; it computes the loss and the cut gradients.

    With ``label_dp`` it trains on labels randomized once, here, at
    construction (:mod:`fedwarden.vertical.label_dp`); its accuracy is still
    measured against the true labels, which never leave it.
    """

    def __init__(
        self,
        name: str,
        labels: npt.ArrayLike,
        top: nn.Module,
        *,
        release: GaussianRelease | None = None,
        label_dp: LabelRandomizedResponse | None = None,
        noise: NoiseSource | None = None,
    ) -> None:
        self.name = name
        self._labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self._top = top
        self._release = release
        self._label_dp = label_dp
        self._noise = noise if noise is not None else NoiseSource.secure()
        self._training_labels = self._labels
        if label_dp is not None:
            self._training_labels = torch.as_tensor(label_dp.randomize(labels, self._noise))
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def release(self) -> GaussianRelease | None:
        """The DP release applied to the gradients this party sends, or None."""
        return self._release

    @property
    def label_dp(self) -> LabelRandomizedResponse | None:
        """The randomized response this party's training labels went through, or None."""
        return self._label_dp

    @property
    def rows(self) -> int:
        """How many aligned entities this party holds labels for."""
        return int(self._labels.shape[0])

    def start(self, plan: TrainingPlan) -> None:
        """Prepare to train: a fresh Adam optimizer over the top model."""
        self._optimizer = torch.optim.Adam(self._top.parameters(), lr=plan.learning_rate)

    def train_step(
        self, rows: Rows, activations: Sequence[CutActivation]
    ) -> tuple[list[CutGradient], float]:
        """One step on a batch: update the top model; per-example cut gradients for each sender.

        The loss is the batch mean of cross-entropy; row ``i`` of each gradient
        is the gradient of example ``i``'s own loss. Under a release every
        gradient is clipped row by row and noised (the one to the label
        party's own bottom too: the bottom's updates would otherwise carry the
        labels into its later activations), and the top model's step is
        DP-SGD's (Abadi et al. 2016) over each example's cross-entropy.
        """
        if self._optimizer is None:
            raise VerticalError(f"label party {self.name!r} must start() before train_step()")
        inputs = [torch.tensor(message.values, requires_grad=True) for message in activations]
        self._optimizer.zero_grad()
        logits = self._top(torch.cat(inputs, dim=1))
        targets = self._training_labels[torch.as_tensor(rows)]
        loss = nn.functional.cross_entropy(logits, targets)
        loss.backward()
        if self._release is not None:
            examples = per_example_gradients(
                self._top, torch.cat(inputs, dim=1).detach(), targets, nn.functional.cross_entropy
            )
            set_gradients(self._top, noisy_mean_gradient(examples, self._release, self._noise))
        self._optimizer.step()
        batch = len(rows)
        gradients = []
        for message, cut in zip(activations, inputs, strict=True):
            assert cut.grad is not None
            per_example = cut.grad * batch
            if self._release is None:
                values = per_example.numpy()
            else:
                clipped = clip_rows(per_example, self._release.clip_norm)
                values = self._release.add_noise(clipped, self._noise)
            gradients.append(CutGradient(sender=self.name, recipient=message.sender, values=values))
        return gradients, loss.item()

    def predict(self, activations: Sequence[CutActivation]) -> npt.NDArray[np.int64]:
        """The top model's class for each example of the batch."""
        with torch.no_grad():
            logits = self._top(torch.cat([torch.tensor(m.values) for m in activations], dim=1))
        return logits.argmax(dim=1).numpy()

    def accuracy(self, rows: Rows, predictions: npt.NDArray[np.int64]) -> float:
        """The share of ``rows`` whose label is the prediction."""
        return float((self._labels[torch.as_tensor(rows)].numpy() == predictions).mean())


class SplitLearning:
    """Split learning driven by the label party: runs every step and carries the messages.

    ``feature_parties`` are in the top model's input order; one of them may be
    the label party's own bottom (same name), whose messages stay local and
    take no release.
    """

    def __init__(
        self,
        feature_parties: Sequence[BottomParty],
        label_party: LabelParty,
        *,
        ledger: PrivacyLedger | None = None,
        log: ExchangeLog | None = None,
    ) -> None:
        self._parties = list(feature_parties)
        self._label = label_party
        self._ledger = ledger
        self.log = log if log is not None else ExchangeLog()
        self._check_parties()
        self._check_ledger()
        self._pass_index = 0 if ledger is None else ledger.next_round_index
        self._labels_charged = False
        """Whether the label party's randomized labels were charged (once, at the first fit)."""

    def fit(self, rows: Rows, plan: TrainingPlan) -> list[float]:
        """Train on the aligned ``rows`` for ``plan.epochs`` epochs; the mean loss of each epoch."""
        self._check_budget(plan.epochs)
        self._charge_labels()
        for party in self._parties:
            party.start(plan)
        self._label.start(plan)
        losses = []
        for epoch in range(plan.epochs):
            self._charge(training=True)
            epoch_losses = []
            for batch in plan.batches(rows, epoch):
                activations = [
                    self._send(party.forward(batch, self._label.name, training=True))
                    for party in self._parties
                ]
                gradients, loss = self._label.train_step(batch, activations)
                for party, gradient in zip(self._parties, gradients, strict=True):
                    party.backward(self._send(gradient))
                epoch_losses.append(loss)
            losses.append(float(np.mean(epoch_losses)))
            logger.debug("split learning epoch %d: mean loss %.4f", epoch, losses[-1])
        return losses

    def predict(self, rows: Rows) -> npt.NDArray[np.int64]:
        """The label party's predicted class for ``rows`` (a release of their activations)."""
        self._charge(training=False)
        activations = [
            self._send(party.forward(rows, self._label.name, training=False))
            for party in self._parties
        ]
        return self._label.predict(activations)

    def accuracy(self, rows: Rows) -> float:
        """The label party's accuracy on ``rows``."""
        return self._label.accuracy(rows, self.predict(rows))

    def _send(self, message: _Message) -> _Message:
        """Carry ``message`` to its recipient, recording it if it crosses between parties."""
        self.log.record(message)
        return message

    def _releases(self, training: bool) -> list[tuple[str, str, dp_event.DpEvent]]:
        """(party, kind, event) for each DP release one pass makes (:func:`release_events`).

        A feature party: its activations, then in training its bottom update.
        The label party, in training only: its gradients to each bottom, then
        its top update.
        """
        releases = []
        for party in self._parties:
            if party.release is not None:
                events = release_events(party.release, training)
                kinds = ["cut_activation", "bottom_update"][: len(events)]
                releases += [(party.name, k, e) for k, e in zip(kinds, events, strict=True)]
        if training and self._label.release is not None:
            recipients = len(self._parties)
            events = release_events(self._label.release, training, recipients=recipients)
            kinds = [*["cut_gradient"] * recipients, "top_update"]
            releases += [(self._label.name, k, e) for k, e in zip(kinds, events, strict=True)]
        return releases

    def _label_events(self) -> list[dp_event.DpEvent]:
        """The label party's randomized response, until it is charged (it is released once)."""
        label_dp = self._label.label_dp
        return [] if label_dp is None or self._labels_charged else [label_dp.event()]

    def _charge_labels(self) -> None:
        """Charge the randomized labels to the label party's own entries, once."""
        if self._ledger is None:
            return
        for event in self._label_events():
            spend = self._ledger.charge_client(
                self._label.name, self._pass_index, event, kind="label_randomized_response"
            )
            logger.info("label party %s: label DP epsilon %.4g", self._label.name, spend.epsilon)
        self._labels_charged = True

    def _charge(self, training: bool) -> None:
        """Charge one pass's releases to each sending party's own ledger entries."""
        if self._ledger is None:
            return
        for party, kind, event in self._releases(training):
            spend = self._ledger.charge_client(party, self._pass_index, event, kind=kind)
            logger.debug(
                "party %s %s pass %d: epsilon %.4g", party, kind, self._pass_index, spend.epsilon
            )
        self._pass_index += 1

    def _check_budget(self, epochs: int) -> None:
        """Refuse to train when ``epochs`` more passes would take a party past its budget."""
        ledger = self._ledger
        if ledger is None or ledger.client_budget is None:
            return
        planned: dict[str, list[dp_event.DpEvent]] = {}
        for party, _, event in self._releases(training=True):
            planned.setdefault(party, []).append(dp_event.SelfComposedDpEvent(event, epochs))
        if self._label_events():
            planned.setdefault(self._label.name, []).extend(self._label_events())
        budget = PrivacyBudget(ledger.client_budget, ledger.budget.delta)
        for party, events in planned.items():
            previous = [e.event for e in ledger.entries if e.client_id == party]
            would_spend = compute_spend([*previous, *events], budget.delta, ledger.neighboring)
            if would_spend.epsilon > budget.epsilon:
                raise BudgetExceeded(
                    f"{epochs} epochs of split learning releasing party {party!r}'s data",
                    ledger.client_spent(party),
                    would_spend,
                    budget,
                )

    def _check_parties(self) -> None:
        """Refuse parties that do not fit: sizes, names, or a release that never crosses."""
        if not self._parties:
            raise VerticalError("split learning needs at least one feature party, got none")
        names = [party.name for party in self._parties]
        if len(set(names)) != len(names):
            raise VerticalError(f"feature party names must be distinct, got {names}")
        for party in self._parties:
            if party.rows != self._label.rows:
                raise VerticalError(
                    f"party {party.name!r} holds {party.rows} aligned rows but the label party "
                    f"{self._label.name!r} holds {self._label.rows}; align the tables with "
                    "align_rows first"
                )
            if party.name == self._label.name and party.release is not None:
                raise VerticalError(
                    f"party {party.name!r} is the label party's own bottom: its activations never "
                    "cross, so it takes no release; remove it"
                )
        releases = any(party.release is not None for party in self._parties) or (
            self._label.release is not None or self._label.label_dp is not None
        )
        if releases and self._ledger is None:
            raise ConfigError(
                "a GaussianRelease or label DP is set but no PrivacyLedger was given; pass "
                "ledger= so every release is charged"
            )

    def _check_ledger(self) -> None:
        """Refuse a ledger whose privacy unit or relation differs from the releases' accounting."""
        ledger = self._ledger
        if ledger is None:
            return
        if ledger.privacy_unit != "example" or ledger.neighboring != "replace_one":
            raise ConfigError(
                f"split learning releases protect one example under replace-one neighbours, but "
                f"the ledger has privacy_unit={ledger.privacy_unit!r}, neighboring="
                f"{ledger.neighboring!r}; use PrivacyLedger(..., privacy_unit='example', "
                "neighboring='replace_one')"
            )


def train_centralized(
    model: StackedModel,
    blocks: Sequence[npt.ArrayLike],
    labels: npt.ArrayLike,
    rows: Rows,
    plan: TrainingPlan,
) -> list[float]:
    """Train the split architecture in one place (the baseline); the mean loss of each epoch.

    ``blocks`` are the parties' aligned column blocks in the model's order. The
    batches and the optimizer (Adam over every module) are those of
    :meth:`SplitLearning.fit`, so the two runs compute the same updates.
    """
    inputs = [torch.as_tensor(np.asarray(block, dtype=np.float32)) for block in blocks]
    targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=plan.learning_rate)
    losses = []
    for epoch in range(plan.epochs):
        epoch_losses = []
        for batch in plan.batches(rows, epoch):
            index = torch.as_tensor(batch)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model([x[index] for x in inputs]), targets[index])
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
        losses.append(float(np.mean(epoch_losses)))
    return losses


def centralized_accuracy(
    model: StackedModel, blocks: Sequence[npt.ArrayLike], labels: npt.ArrayLike, rows: Rows
) -> float:
    """The centralized model's accuracy on ``rows``."""
    index = torch.as_tensor(np.asarray(rows))
    with torch.no_grad():
        logits = model([torch.as_tensor(np.asarray(b, dtype=np.float32))[index] for b in blocks])
    predictions = logits.argmax(dim=1).numpy()
    return float((np.asarray(labels)[np.asarray(rows)] == predictions).mean())
