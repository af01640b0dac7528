"""Data poisoning: malicious clients train honestly on corrupted data.

Each function returns a new :class:`FederatedDataset` in which only the
malicious clients' training splits differ; the input is never mutated, the
clients' local test splits and the central test set stay clean. Label
flipping follows Tolpegin et al. 2020 (ESORICS); the backdoor follows
Bagdasaryan et al. 2020 (AISTATS), whose malicious clients train on a mix of
clean and triggered examples relabelled to the attacker's target and then
boost their update (:class:`fedwarden.attacks.ModelReplacement`).

Which clients are malicious, and which of their examples carry the trigger,
come from seeded NumPy generators: attack simulations are meant to be
replayed exactly, so their randomness is deliberately reproducible (unlike
privacy noise and masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Literal, assert_never

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError, DataError
from fedwarden.data.dataset import Array, ClientData, FederatedDataset

MALICIOUS_STREAM = 0x4D414C
"""Seed stream separating the choice of malicious clients from other uses of the run seed."""

BACKDOOR_STREAM = 0x424B44
"""Seed stream of the choice of triggered examples."""


def choose_malicious(client_ids: Sequence[str], fraction: float, seed: int) -> tuple[str, ...]:
    """``round(fraction * len(client_ids))`` clients drawn without replacement, in input order.

    The same ids, fraction and seed always choose the same clients. A
    positive fraction too small to choose any client is refused rather than
    silently running a clean simulation.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"malicious fraction must lie in [0, 1], got {fraction!r}")
    count = math.floor(fraction * len(client_ids) + 0.5)
    if fraction > 0 and count == 0:
        raise ConfigError(
            f"malicious fraction {fraction} of {len(client_ids)} clients rounds to no malicious "
            "client; raise the fraction or simulate more clients"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, MALICIOUS_STREAM]))
    chosen = set(rng.choice(len(client_ids), size=count, replace=False).tolist())
    return tuple(client_id for index, client_id in enumerate(client_ids) if index in chosen)


def _check_malicious(dataset: FederatedDataset, malicious: Collection[str]) -> None:
    unknown = sorted(set(malicious) - set(dataset.clients))
    if unknown:
        raise DataError(
            f"malicious client(s) {unknown} are not in data set {dataset.name!r}; choose them "
            "from its client_ids"
        )


def _with_clients(dataset: FederatedDataset, changed: dict[str, ClientData]) -> FederatedDataset:
    """``dataset`` with some clients replaced, keeping the client order."""
    clients = {cid: changed.get(cid, client) for cid, client in dataset.clients.items()}
    return replace(dataset, clients=clients)


def _class_count(dataset: FederatedDataset, num_classes: int | None, attack: str) -> int:
    classes = dataset.num_classes if num_classes is None else num_classes
    if classes is None or classes < 2:
        raise DataError(
            f"{attack} needs a classification data set with at least 2 classes; "
            f"{dataset.name!r} has num_classes={classes}"
        )
    return classes


def flip_labels(
    dataset: FederatedDataset,
    malicious: Collection[str],
    num_classes: int | None = None,
    mapping: Literal["shift", "reverse"] = "shift",
) -> FederatedDataset:
    """Relabel every training example of the malicious clients (Tolpegin et al. 2020).

    ``"shift"`` maps ``y -> (y + 1) mod C``, so every class moves and none
    maps to itself; ``"reverse"`` maps ``y -> C - 1 - y``, the flip of
    Karimireddy et al. 2022 (ICLR, bucketing), under which the middle class
    of an odd ``C`` keeps its label. ``num_classes`` defaults to the data
    set's.
    """
    _check_malicious(dataset, malicious)
    classes = _class_count(dataset, num_classes, "label flipping")
    changed: dict[str, ClientData] = {}
    for client_id in malicious:
        client = dataset.clients[client_id]
        labels = client.y_train
        match mapping:
            case "shift":
                flipped = (labels + 1) % classes
            case "reverse":
                flipped = classes - 1 - labels
            case _:
                assert_never(mapping)
        changed[client_id] = replace(client, y_train=flipped.astype(labels.dtype))
    return _with_clients(dataset, changed)


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger on flat features: set the features at ``indices`` to ``value``."""

    indices: tuple[int, ...]
    value: float

    def __post_init__(self) -> None:
        if not self.indices or min(self.indices) < 0:
            raise ConfigError(
                f"a trigger needs at least one non-negative feature index, got {self.indices}"
            )
        if not math.isfinite(self.value):
            raise ConfigError(f"a trigger's value must be finite, got {self.value!r}")

    @classmethod
    def corner_patch(cls, image_side: int = 8, patch_side: int = 2, value: float = 1.0) -> Trigger:
        """A ``patch_side`` square in the bottom-right corner of a flat row-major square image.

        The defaults suit fedwarden's digits: 8x8 pixels scaled to [0, 1], so
        the 2x2 patch is set to the maximum pixel value.
        """
        if not 1 <= patch_side <= image_side:
            raise ConfigError(
                f"a corner patch needs 1 <= patch_side <= image_side, got "
                f"patch_side={patch_side}, image_side={image_side}"
            )
        first = image_side - patch_side
        return cls(
            tuple(
                row * image_side + column
                for row in range(first, image_side)
                for column in range(first, image_side)
            ),
            value,
        )

    def stamp(self, x: Array) -> Array:
        """A copy of the examples ``x`` (rows) with the trigger applied to each."""
        if x.ndim != 2 or max(self.indices) >= x.shape[1]:
            raise DataError(
                f"trigger indices up to {max(self.indices)} do not fit examples of shape "
                f"{x.shape}; a trigger applies to 2-D (examples, features) arrays"
            )
        stamped = x.copy()
        stamped[:, list(self.indices)] = self.value
        return stamped


def add_backdoor(
    dataset: FederatedDataset,
    malicious: Collection[str],
    trigger: Trigger,
    target_label: int,
    fraction: float,
    seed: int,
) -> FederatedDataset:
    """Stamp ``trigger`` on a fraction of each malicious client's training examples.

    Bagdasaryan et al. 2020, Sec. 4: the attacker trains on clean examples
    mixed with triggered ones relabelled ``target_label``, so its model keeps
    the main task and learns the backdoor. ``round(fraction * num_train)``
    examples per malicious client are chosen without replacement (seeded by
    ``seed`` and the client id) and replaced by their triggered copies.
    """
    _check_malicious(dataset, malicious)
    classes = _class_count(dataset, None, "a backdoor")
    if not 0 <= target_label < classes:
        raise ConfigError(f"backdoor target_label must lie in [0, {classes}), got {target_label}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"backdoor fraction must lie in (0, 1], got {fraction!r}")
    changed: dict[str, ClientData] = {}
    for client_id in malicious:
        client = dataset.clients[client_id]
        count = math.floor(fraction * client.num_train + 0.5)
        key = list(client_id.encode())
        rng = np.random.default_rng(np.random.SeedSequence([seed, BACKDOOR_STREAM, len(key), *key]))
        chosen = rng.choice(client.num_train, size=count, replace=False)
        x_train, y_train = client.x_train.copy(), client.y_train.copy()
        x_train[chosen] = trigger.stamp(client.x_train[chosen])
        y_train[chosen] = target_label
        changed[client_id] = replace(client, x_train=x_train, y_train=y_train)
    return _with_clients(dataset, changed)


@dataclass(frozen=True)
class BackdoorTestSet:
    """Triggered central test examples whose true label is not the target.

    ``trainer.evaluate(vector, x, target_labels)["accuracy"]`` is the backdoor
    success rate: the fraction of triggered examples classified as the target.
    """

    x: Array
    true_labels: Array
    target_label: int

    @property
    def target_labels(self) -> npt.NDArray[np.int64]:
        """The target label repeated for every example."""
        return np.full(len(self.true_labels), self.target_label, dtype=np.int64)


def backdoor_test_set(
    x_test: Array, y_test: Array, trigger: Trigger, target_label: int
) -> BackdoorTestSet:
    """The central test examples not labelled ``target_label``, with the trigger stamped on."""
    keep = y_test != target_label
    if not np.any(keep):
        raise DataError(
            f"every central test example is labelled {target_label}; a backdoor success rate "
            "needs examples of other classes"
        )
    return BackdoorTestSet(trigger.stamp(x_test[keep]), y_test[keep], target_label)


def backdoor_success_rate(predict: Callable[[Array], Array], x: Array, target_label: int) -> float:
    """Fraction of ``x`` that ``predict`` classifies as ``target_label`` (Bagdasaryan et al. 2020).

    ``predict`` returns labels, or per-class scores whose row-wise argmax is
    the label.
    """
    if len(x) == 0:
        raise DataError("the backdoor success rate needs at least one triggered example")
    predictions = np.asarray(predict(x))
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    if predictions.shape != (len(x),):
        raise DataError(
            f"predict returned shape {predictions.shape} for {len(x)} examples; it must return "
            "one label (or one row of class scores) per example"
        )
    return float(np.mean(predictions == target_label))
