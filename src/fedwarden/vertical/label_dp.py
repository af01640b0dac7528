"""Label differential privacy for split learning: the label party trains on randomized labels.

The attack it answers (issue 17, finding 7): the cut-layer gradients the label
party sends carry the labels. In vertical logistic regression each feature
party gets back ``softmax(logits) - onehot(label)`` per example, whose only
negative entry is the label, so a feature party reads every training label;
for deeper tops the gradient's direction and norm still reveal it (Li et al.
2022, "Label Leakage and Protection in Two-party Split Learning").

The mechanism is randomized response on the labels (Warner 1965), the
label-DP baseline of Ghazi, Golowich, Kumar, Manurangsi & Zhang (2021), "Deep
Learning with Label Differential Privacy", section 3: before training, the
label party replaces each example's label ``y`` among ``k`` classes by

- ``y`` itself with probability ``1 - p``, else
- a class drawn uniformly from all ``k`` (``y`` included) with probability ``p``,

where ``p = k / (e^epsilon + k - 1)``. The reported class equals ``y`` with
probability ``e^epsilon / (e^epsilon + k - 1)`` and each other class with
probability ``1 / (e^epsilon + k - 1)``: the ratio is ``e^epsilon``, so the
randomized labels are epsilon-label-DP (one example's label replaced,
``replace_one``). This is dp-accounting's
``RandomizedResponseDpEvent(p, k)``, which the label party charges once to
its own entries of the :class:`~fedwarden.privacy.ledger.PrivacyLedger`.

The labels are drawn once, from a cryptographic
:class:`~fedwarden.privacy.randomness.NoiseSource`, and every epoch trains on
the same randomized labels: the top model, the label party's own bottom and
every cut gradient are functions of the randomized labels, the activations and
public seeds only, so whatever training sends is post-processing and the
guarantee holds however many epochs run. Against a feature party whose prior on
the labels is uniform, no inference from what it receives guesses a label
right with probability above ``e^epsilon / (e^epsilon + k - 1)``.

What it protects: the labels, against the feature parties (and anyone reading
the cut gradients). Not the label party's feature columns, nor which entities
are aligned; the held-out rows' labels, used only to measure accuracy at the
label party, never leave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.randomness import NoiseSource

DEFAULT_LABEL_EPSILON: Final = 2.0
"""Label DP epsilon of a networked run unless it says otherwise.

At 2 a binary label is kept with probability e^2 / (e^2 + 1) = 0.88 (a
feature party guesses at most 88% of balanced labels, against 100% without);
training on labels with that symmetric noise keeps vertical logistic
regression on breast_cancer within a few points of the noise-free run
(``benchmarks/vertical.py``; README's vertical section)."""

REPORT_DELTA: Final = 1e-5
"""The delta a ledger opened for label DP alone reports at: randomized response is pure
epsilon-DP, so its figure at any delta is at most epsilon (up to the PLD accountant's
pessimistic discretization, about 1e-4)."""


@dataclass(frozen=True)
class LabelRandomizedResponse:
    """Randomized response over ``classes`` labels at ``epsilon`` (Ghazi et al. 2021, sec. 3)."""

    epsilon: float
    classes: int

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and 0 < self.epsilon < math.inf):
            raise ConfigError(
                f"label DP epsilon must be a finite number > 0, got {self.epsilon!r}; "
                f"{DEFAULT_LABEL_EPSILON} is the default, smaller protects the labels more"
            )
        if not (isinstance(self.classes, int) and self.classes >= 2):
            raise ConfigError(f"label DP needs at least 2 classes, got {self.classes!r}")

    @property
    def resample_probability(self) -> float:
        """``p``: the chance a label is replaced by a uniform draw over all classes."""
        return self.classes / (math.exp(self.epsilon) + self.classes - 1)

    @property
    def keep_probability(self) -> float:
        """The chance a randomized label is the true one: ``e^eps / (e^eps + k - 1)``.

        Also the most any attacker with a uniform prior guesses right.
        """
        return math.exp(self.epsilon) / (math.exp(self.epsilon) + self.classes - 1)

    def event(self) -> dp_event.DpEvent:
        """The dp-accounting event of randomizing every label once."""
        return dp_event.RandomizedResponseDpEvent(self.resample_probability, self.classes)

    def randomize(self, labels: npt.ArrayLike, noise: NoiseSource) -> npt.NDArray[np.int64]:
        """Each label kept, or with probability ``p`` replaced by a uniform class; cryptographic."""
        true_labels = np.asarray(labels, dtype=np.int64)
        if true_labels.ndim != 1:
            raise ConfigError(
                f"labels must be one class per example, got shape {true_labels.shape}"
            )
        if len(true_labels) and (true_labels.min() < 0 or true_labels.max() >= self.classes):
            raise ConfigError(
                f"labels must be classes 0 to {self.classes - 1} for label DP over "
                f"{self.classes} classes, got {true_labels.min()} to {true_labels.max()}"
            )
        resampled = noise.bernoulli(self.resample_probability, len(true_labels))
        uniform = noise.integers(self.classes, len(true_labels))
        return np.where(resampled, uniform, true_labels)
