"""Membership inference against our own models: does a model reveal who it was trained on?

Two attacks, both scored by the area under the ROC curve (AUC, 0.5 is a coin
flip) and by the true-positive rate at a low false-positive rate (Carlini et
al. 2022 argue the latter is what matters: confidently identifying a few
members is a breach even when the average case looks safe):

- the loss-threshold attack (Yeom, Giacomelli, Fredrikson & Jha 2018, "Privacy
  Risk in Machine Learning", section 3.2): an example whose loss is low is
  guessed to be a member; the score is minus the loss;
- the likelihood-ratio attack, LiRA (Carlini, Chien, Nasr, Song, Terzis &
  Tramer 2022, "Membership Inference Attacks From First Principles", online
  variant, Algorithm 1): shadow models are trained on random halves of a
  population, the logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` of
  each example is modelled as a Gaussian over the shadow models that trained on
  it (``in``) and over those that did not (``out``), and the score is the log
  likelihood ratio of the target model's ``phi`` under the two Gaussians. With
  few shadow models (CPU budgets) the paper's global-variance estimate is used
  (section VI.B: one variance per side, pooled over all examples).

Models are trained as a single fedwarden silo trains: rounds of
``Trainer.fit`` on one client's data, each update added to the model
(:func:`train_alone`), so the attacks hit exactly the code a run uses,
DP-SGD included.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score

from fedwarden.build.run import prepare, run
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, DataError
from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import Vector
from fedwarden.data.dataset import ClientData
from fedwarden.models.torch import TorchTrainer
from fedwarden.models.trainer import ClientContext
from fedwarden.server.rundir import RunDirectory

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

LOW_FALSE_POSITIVE_RATE = 0.01
"""The false-positive rate at which the true-positive rate is reported."""

_CONFIDENCE_FLOOR = 1e-30
"""Probabilities are kept at least this far from 0 and 1 before the logit scaling."""

__all__ = [
    "LOW_FALSE_POSITIVE_RATE",
    "MembershipResult",
    "attack_global_model",
    "lira_attack",
    "lira_scores",
    "logit_confidence",
    "loss_threshold_attack",
    "membership_result",
    "per_example_losses",
    "pooled",
    "predict_logits",
    "tpr_at_fpr",
    "train_alone",
]


@dataclass(frozen=True)
class MembershipResult:
    """How well an attack tells members from non-members.

    ``auc`` is the area under the ROC curve of the attack's scores (higher
    score: more likely a member); ``tpr_at_low_fpr`` is the fraction of
    members caught when at most ``low_fpr`` of non-members are wrongly flagged.
    ``model_accuracy`` is the attacked model's accuracy on the non-members (its
    test accuracy: what privacy costs in utility), when the attack knows it.
    """

    attack: str
    auc: float
    tpr_at_low_fpr: float
    low_fpr: float
    num_members: int
    num_non_members: int
    model_accuracy: float | None = None

    def summary(self) -> str:
        """One line for a report: attack, AUC and TPR at the low FPR."""
        return (
            f"{self.attack}: AUC {self.auc:.3f}, TPR {self.tpr_at_low_fpr:.3f} at FPR "
            f"{self.low_fpr:g} ({self.num_members} members, {self.num_non_members} non-members)"
        )


def membership_result(
    attack: str,
    member_scores: npt.ArrayLike,
    non_member_scores: npt.ArrayLike,
    low_fpr: float = LOW_FALSE_POSITIVE_RATE,
    model_accuracy: float | None = None,
) -> MembershipResult:
    """AUC (``sklearn.metrics.roc_auc_score``) and TPR at ``low_fpr`` of an attack's scores."""
    members = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    non_members = np.asarray(non_member_scores, dtype=np.float64).reshape(-1)
    if not len(members) or not len(non_members):
        raise DataError(
            f"membership scores need members and non-members, got {len(members)} and "
            f"{len(non_members)}; give the attack examples of both kinds"
        )
    if not (np.isfinite(members).all() and np.isfinite(non_members).all()):
        raise DataError("membership scores hold NaN or infinity; check the model's outputs")
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    auc = float(roc_auc_score(labels, np.concatenate([members, non_members])))
    return MembershipResult(
        attack,
        auc,
        tpr_at_fpr(members, non_members, low_fpr),
        low_fpr,
        len(members),
        len(non_members),
        model_accuracy,
    )


def tpr_at_fpr(member_scores: npt.ArrayLike, non_member_scores: npt.ArrayLike, fpr: float) -> float:
    """The share of members scored above a threshold that flags at most ``fpr`` of non-members."""
    if not 0.0 <= fpr < 1.0:
        raise ConfigError(f"fpr={fpr} is outside [0, 1); it is a false-positive rate")
    members = np.asarray(member_scores, dtype=np.float64)
    non_members = np.sort(np.asarray(non_member_scores, dtype=np.float64))[::-1]
    allowed = math.floor(fpr * len(non_members))
    # Flag scores strictly above the (allowed + 1)-th highest non-member score.
    threshold = non_members[allowed] if allowed < len(non_members) else -math.inf
    return float(np.mean(members > threshold))


def predict_logits(trainer: TorchTrainer, vector: Vector, x: npt.ArrayLike) -> FloatArray:
    """The class scores (logits) of the model ``vector`` on ``x``."""
    module = trainer.load(vector)
    module.eval()
    with torch.inference_mode():
        logits = module(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    return np.asarray(logits.numpy(), dtype=np.float64)


def per_example_losses(logits: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """Cross-entropy of each example: ``logsumexp(logits) - logits[label]``."""
    scores = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(labels, dtype=np.int64)
    top = scores.max(axis=1, keepdims=True)
    log_partition = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
    return np.asarray(log_partition - scores[np.arange(len(targets)), targets], dtype=np.float64)


def logit_confidence(logits: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """LiRA's logit-scaled confidence ``log(p_y) - log(1 - p_y)`` (Carlini et al. 2022, eq. 4).

    Computed from the losses, ``p_y = exp(-loss)``, with ``log(1 - p_y)`` as
    ``log(-expm1(-loss))`` so that confident predictions keep their precision.
    """
    losses = np.maximum(per_example_losses(logits, labels), _CONFIDENCE_FLOOR)
    return np.asarray(-losses - np.log(-np.expm1(-losses)), dtype=np.float64)


def loss_threshold_attack(
    trainer: TorchTrainer,
    vector: Vector,
    members: tuple[npt.ArrayLike, npt.ArrayLike],
    non_members: tuple[npt.ArrayLike, npt.ArrayLike],
    low_fpr: float = LOW_FALSE_POSITIVE_RATE,
) -> MembershipResult:
    """Yeom et al. 2018's attack: score each example by minus its loss under the model.

    ``members`` and ``non_members`` are ``(x, y)`` pairs: examples the model
    trained on, and examples from the same distribution it never saw.
    """
    member_losses = per_example_losses(predict_logits(trainer, vector, members[0]), members[1])
    outsider_logits = predict_logits(trainer, vector, non_members[0])
    outsider_labels = np.asarray(non_members[1])
    outsider_losses = per_example_losses(outsider_logits, outsider_labels)
    accuracy = float(np.mean(outsider_logits.argmax(axis=1) == outsider_labels))
    return membership_result("loss_threshold", -member_losses, -outsider_losses, low_fpr, accuracy)


def attack_global_model(
    config: RunConfig, runs_dir: Path | None = None, low_fpr: float = LOW_FALSE_POSITIVE_RATE
) -> MembershipResult:
    """Run ``config`` and attack its final global model with the loss-threshold attack.

    Members are every client's training examples; non-members are the central
    test set (held out from the same distribution before partitioning). The
    run writes its directory under ``runs_dir`` (a temporary folder by
    default) and the final model is read from its checkpoint.
    """
    if config.model.kind != "mlp":
        raise ConfigError(
            f"the membership attack reads a PyTorch model; model.kind is {config.model.kind!r}, "
            "set it to 'mlp'"
        )
    prepared = prepare(config)  # calibrates DP-SGD's noise once; the run reuses it
    trainer = prepared.trainer
    if not isinstance(trainer, TorchTrainer):
        raise ConfigError(f"the run's trainer is {type(trainer).__name__}, not a TorchTrainer")
    with tempfile.TemporaryDirectory(prefix="fedwarden-membership-") as scratch:
        folder = Path(scratch) if runs_dir is None else runs_dir
        result = run(prepared.config.model_copy(update={"runs_dir": folder}))
        assert result.run_dir is not None
        checkpoint = RunDirectory(Path(result.run_dir)).load_checkpoint()
    if checkpoint is None:
        raise ConfigError(
            f"run {config.name!r} completed no round, so there is no model to attack; "
            f"it stopped with: {result.stopped_early}"
        )
    members = pooled(list(prepared.dataset.clients.values()))
    non_members = (prepared.dataset.x_test, prepared.dataset.y_test)
    return loss_threshold_attack(trainer, checkpoint.vector, members, non_members, low_fpr)


def train_alone(
    trainer: TorchTrainer,
    data: ClientData,
    train: TrainConfig,
    rounds: int,
    seed: int,
    initial: Vector | None = None,
) -> Vector:
    """Train one silo on its own for ``rounds`` rounds of ``trainer.fit``; return the model.

    FedAvg over a cohort of one with server learning rate 1: each round's
    update is added to the model. The client's state (a DP-SGD accountant's
    history, optimizer moments) carries from round to round, as in a run.
    """
    vector = trainer.initial_vector(seed) if initial is None else initial.copy()
    state: dict[str, Any] = {}
    for round_index, rng in enumerate(np.random.default_rng(seed).spawn(rounds)):
        client = ClientContext(data.client_id, data, round_index, rng, state)
        vector = vector + trainer.fit(vector, client, train).update
    return vector


def lira_scores(
    target_confidence: npt.ArrayLike,
    shadow_confidence: npt.ArrayLike,
    shadow_membership: npt.ArrayLike,
) -> FloatArray:
    """LiRA's online log likelihood ratio per example (Carlini et al. 2022, Algorithm 1).

    ``shadow_confidence[k, i]`` is shadow model ``k``'s logit-scaled
    confidence on example ``i`` and ``shadow_membership[k, i]`` whether it
    trained on it. Each example's ``in`` and ``out`` means are those of its
    shadow models; the variances are global (pooled over examples), which the
    paper recommends below 64 shadow models. An example that no shadow model
    saw in (or out) takes the mean of all examples' ``in`` (``out``) means.
    """
    target = np.asarray(target_confidence, dtype=np.float64)
    confidence = np.asarray(shadow_confidence, dtype=np.float64)
    membership = np.asarray(shadow_membership, dtype=np.bool_)
    if confidence.shape != membership.shape or confidence.shape[1:] != target.shape:
        raise DataError(
            f"LiRA needs shadow confidences and memberships of shape (shadow models, examples) "
            f"matching the {target.shape[0]} target confidences; got {confidence.shape} and "
            f"{membership.shape}"
        )
    in_mean, in_variance = _side_gaussians(confidence, membership)
    out_mean, out_variance = _side_gaussians(confidence, ~membership)
    in_log_density = -0.5 * ((target - in_mean) ** 2 / in_variance + np.log(in_variance))
    out_log_density = -0.5 * ((target - out_mean) ** 2 / out_variance + np.log(out_variance))
    return np.asarray(in_log_density - out_log_density, dtype=np.float64)


def _side_gaussians(confidence: FloatArray, side: BoolArray) -> tuple[FloatArray, float]:
    """Per-example means of ``confidence`` where ``side`` holds, and their pooled variance."""
    counts = side.sum(axis=0)
    sums = np.where(side, confidence, 0.0).sum(axis=0)
    seen = counts > 0
    if not seen.any():
        raise DataError(
            "no shadow model has examples on one side (in or out); train at least two shadow "
            "models on different random halves"
        )
    means = np.where(seen, sums / np.maximum(counts, 1), 0.0)
    means[~seen] = means[seen].mean()
    residuals = np.where(side, confidence - means, 0.0)
    degrees = max(int(counts.sum()) - int(seen.sum()), 1)
    variance = max(float((residuals**2).sum()) / degrees, 1e-6)
    return means, variance


def lira_attack(
    trainer: TorchTrainer,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    train: TrainConfig,
    *,
    rounds: int,
    num_models: int,
    seed: int,
    low_fpr: float = LOW_FALSE_POSITIVE_RATE,
) -> MembershipResult:
    """LiRA over a population: ``num_models`` models, each trained on a random half.

    Each model in turn is the target and the other ``num_models - 1`` are its
    shadow models (the leave-one-out evaluation of Carlini et al.'s code); the
    scores of every target's members and non-members are pooled into one
    result, whose ``model_accuracy`` is the models' mean accuracy on the
    examples they did not train on. Every model trains as :func:`train_alone`
    does, from its own seed.
    """
    if num_models < 3:
        raise ConfigError(
            f"num_models={num_models}: LiRA needs a target and at least two shadow models "
            "(one in and one out per example, on average); use 3 or more"
        )
    features = np.asarray(x, dtype=np.float32)
    labels = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    membership = rng.random((num_models, len(labels))) < 0.5
    confidence = np.empty((num_models, len(labels)))
    accuracies = []
    for index, (inside, model_seed) in enumerate(
        zip(membership, rng.integers(2**31, size=num_models), strict=True)
    ):
        half = ClientData(
            f"shadow{index}", features[inside], labels[inside], features[:0], labels[:0]
        )
        vector = train_alone(trainer, half, train, rounds, int(model_seed))
        logits = predict_logits(trainer, vector, features)
        confidence[index] = logit_confidence(logits, labels)
        accuracies.append(float(np.mean(logits[~inside].argmax(axis=1) == labels[~inside])))
        logger.info("LiRA: trained model %d of %d", index + 1, num_models)
    member_scores: list[FloatArray] = []
    outsider_scores: list[FloatArray] = []
    for target in range(num_models):
        shadows = np.arange(num_models) != target
        scores = lira_scores(confidence[target], confidence[shadows], membership[shadows])
        member_scores.append(scores[membership[target]])
        outsider_scores.append(scores[~membership[target]])
    return membership_result(
        f"lira_{num_models}_models",
        np.concatenate(member_scores),
        np.concatenate(outsider_scores),
        low_fpr,
        float(np.mean(accuracies)),
    )


def pooled(clients: Sequence[ClientData]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Every client's training examples, concatenated: ``(x, y)``."""
    return (
        np.concatenate([client.x_train for client in clients]),
        np.concatenate([client.y_train for client in clients]),
    )
