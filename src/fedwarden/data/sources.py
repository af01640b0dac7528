"""Data sources: build a :class:`FederatedDataset` from the ``[data]`` section of a run.

Three kinds of source:

- scikit-learn's bundled data sets (``digits``, ``breast_cancer``, ``wine``;
  nothing is downloaded), with a stratified central test set held out and the
  rest dealt to clients by :func:`fedwarden.data.partitioners.partition`;
- the Synthetic(alpha, beta) generator of FedProx (Li et al. 2020), naturally
  federated with one model and one feature distribution per device, each
  device generated on demand (:mod:`fedwarden.data.synthetic`);
- a folder with one entry per client (``.npz``, CSV or Parquet table, image
  folder or Hugging Face ``save_to_disk`` folder), for real federated data.

Every client's examples are split into train and test by
``client_test_fraction`` unless the client's file brings its own test split,
and every client gets the attribute ``size_quartile`` (``"q1"`` smallest to
``"q4"`` largest, by training-set size) for stratified sampling.

Randomness comes from independent streams spawned from ``seed`` (holdout,
partition, generator, train/test splits), so changing one setting does not
reshuffle what the others produced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, assert_never

import numpy as np
import numpy.typing as npt

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data.client_files import (
    CLIENT_ARRAYS,
    central_test_entry,
    check_same_columns,
    check_same_features,
    client_entries,
    client_name,
    encode_labels,
    infer_num_classes,
    read_arrays,
)
from fedwarden.data.dataset import Array, ClientData, FederatedDataset, OnDemandClients
from fedwarden.data.handed import HandedExamples, client_examples, examples_of
from fedwarden.data.partitioners import partition, shuffled_by_class
from fedwarden.data.synthetic import SyntheticPopulation, num_test_examples

CENTRAL_TEST_DEVICES = 1_000
"""How many synthetic devices' test splits make the central test set.

A thousand devices give about 60,000 test examples (a fifth of about 350
examples each); pooling every device of a 100,000-device population would
hold about 1.7 GB in the server for no better estimate.
"""

ATTRIBUTES_FILE = "attributes.json"
"""Optional file in a per-client folder mapping client id to ``{attribute: value}`` strings."""

DIGITS_MAX_PIXEL = 16.0
"""Largest pixel value of scikit-learn's 8x8 digits (the scale needs no statistics)."""

logger = logging.getLogger(__name__)


ROOT_DATA_ID = "_root"
"""The id the server's root data set trains under (no client has it: ``_`` names are skipped)."""


def load_dataset(config: DataConfig, seed: int) -> FederatedDataset:
    """Build the federated data set ``config`` describes; the same seed gives the same data."""
    match config.source:
        case "digits" | "breast_cancer" | "wine":
            dataset = _load_bundled(config, seed)
        case "synthetic":
            dataset = _generate_synthetic(config, seed)
        case "npz_folder":
            dataset = _load_npz_folder(config, seed)
        case "api" if config.fingerprint is None:
            raise DataError(
                "data.source 'api' reads the clients handed to fedwarden.run(config, clients=...) "
                "in Python; hand them there, or name a data.source this config can read"
            )
        case "api":
            raise DataError(
                f"this run's clients were handed to fedwarden.run in Python ({config.fingerprint}) "
                "and nothing else holds them; resume it from Python with fedwarden.run(config, "
                "clients=<the same clients>, resume=RUN_DIR)"
            )
        case _:
            assert_never(config.source)
    logger.info(
        "loaded %s: %d clients, %d central test examples",
        dataset.name,
        len(dataset.clients),
        len(dataset.y_test),
    )
    return dataset


def _load_bundled(config: DataConfig, seed: int) -> FederatedDataset:
    """A scikit-learn bundled data set: stratified central holdout, partition, client splits.

    Digits are scaled by their fixed pixel range (no statistics). Breast
    cancer and wine are standardized with the mean and standard deviation of
    the pooled training portion (everything outside the central test set).
    Real clients could not pool their data to compute these; the shortcut is a
    simulation convenience that only fixes the features' units.
    """
    holdout_rng, partition_rng, split_rng = np.random.default_rng(seed).spawn(3)
    from sklearn import datasets  # imported here: worker processes never load bundled sets

    loader: Callable[..., Any] = getattr(datasets, f"load_{config.source}")
    features, labels = loader(return_X_y=True)
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    held_out = _stratified_holdout(y, config.central_test_fraction, holdout_rng)
    x_pool, y_pool = x[~held_out], y[~held_out]
    x_test, y_test = x[held_out], y[held_out]
    if config.source == "digits":
        x_pool, x_test = x_pool / DIGITS_MAX_PIXEL, x_test / DIGITS_MAX_PIXEL
    else:
        mean = x_pool.mean(axis=0)
        std = np.where(x_pool.std(axis=0) > 0, x_pool.std(axis=0), 1.0)
        x_pool, x_test = (x_pool - mean) / std, (x_test - mean) / std
    x_pool, x_test = x_pool.astype(np.float32), x_test.astype(np.float32)
    client_indices = partition(y_pool, config.partition, config.num_clients, partition_rng)
    clients = [
        _split_client(client_id, x_pool[indices], y_pool[indices], config, split_rng)
        for client_id, indices in zip(_client_ids(len(client_indices)), client_indices, strict=True)
    ]
    return _assemble(config.source, clients, x_test, y_test, int(y.max()) + 1, {})


def _generate_synthetic(config: DataConfig, seed: int) -> FederatedDataset:
    """FedProx's Synthetic(alpha, beta), each device generated when it is looked up.

    See :mod:`fedwarden.data.synthetic`. ``partition`` and
    ``central_test_fraction`` are not used: devices are the clients, and the
    central test set is the concatenation of the test splits of the first
    :data:`CENTRAL_TEST_DEVICES` devices (all of them in smaller
    populations), generated once here.
    """
    population = SyntheticPopulation.draw(config, seed)
    client_ids = _client_ids(config.num_clients)
    num_train = [int(size) for size in population.num_train]
    quartiles = _size_quartiles(num_train)
    clients = OnDemandClients(
        population,
        {cid: index for index, cid in enumerate(client_ids)},
        dict(zip(client_ids, num_train, strict=True)),
        {
            cid: {"size_quartile": quartile}
            for cid, quartile in zip(client_ids, quartiles, strict=True)
        },
    )
    x_test, y_test = _pooled_test_splits(
        [clients[cid] for cid in client_ids[:CENTRAL_TEST_DEVICES]]
    )
    return FederatedDataset(
        name=f"synthetic_{config.synthetic_alpha:g}_{config.synthetic_beta:g}",
        clients=clients,
        x_test=x_test,
        y_test=y_test,
        num_features=config.synthetic_features,
        num_classes=config.synthetic_classes,
    )


def _load_npz_folder(config: DataConfig, seed: int) -> FederatedDataset:
    """One client per entry of ``config.path``, in sorted order, in any client format.

    A client is ``<client_id>.npz`` (``x``, ``y`` and optionally its own
    ``x_test`` and ``y_test``), ``<client_id>.csv`` or ``.parquet`` (a table),
    or a ``<client_id>/`` folder (one subfolder of images per class, or a
    Hugging Face ``save_to_disk`` folder): see
    :mod:`fedwarden.data.client_files`. Without its own test split,
    ``client_test_fraction`` of a client's examples are held out. Entries
    whose names start with ``_`` are not clients; ``_test`` (in any format)
    is the central test set, which otherwise is the concatenation of the
    clients' test splits. ``attributes.json`` may map client ids to string
    attributes. Integer labels make a classification task with ``max label +
    1`` classes, text labels one with a class per name; float labels make a
    regression task. Files are read without pickle.
    """
    folder = config.path
    if folder is None or not folder.is_dir():
        raise DataError(
            f"data.path {folder} is not a folder; point data.path at the folder that holds one "
            "<client_id>.npz (or .csv, .parquet, image or save_to_disk folder) per client"
        )
    client_paths = client_entries(folder)
    if not client_paths:
        raise DataError(
            f"{folder} holds no clients; save one <client_id>.npz per client with "
            "numpy.savez(path, x=features, y=labels), or a .csv, .parquet, image folder or "
            "save_to_disk folder per client (names starting with '_' are skipped)"
        )
    read = {path: read_arrays(path, config, CLIENT_ARRAYS) for path in client_paths}
    central_path = central_test_entry(folder)
    if central_path is not None:
        read[central_path] = read_arrays(central_path, config, ("x", "y"))
    check_same_columns({path: columns for path, (_, columns) in read.items()})
    every_file, num_text_classes = encode_labels(
        {path: arrays for path, (arrays, _) in read.items()}, config.classes
    )
    check_same_features(every_file)
    num_classes = num_text_classes or infer_num_classes(every_file)
    label_dtype = np.int64 if num_classes is not None else np.float32
    split_rng = np.random.default_rng(seed)
    clients = []
    for path in client_paths:
        arrays = every_file[path]
        x, y = arrays["x"].astype(np.float32), arrays["y"].astype(label_dtype)
        if "x_test" in arrays:
            clients.append(
                ClientData(
                    client_name(path),
                    x,
                    y,
                    arrays["x_test"].astype(np.float32),
                    arrays["y_test"].astype(label_dtype),
                )
            )
        else:
            clients.append(_split_client(client_name(path), x, y, config, split_rng))
    x_test: Array
    y_test: Array
    if central_path is not None:
        x_test = every_file[central_path]["x"].astype(np.float32)
        y_test = every_file[central_path]["y"].astype(label_dtype)
    else:
        x_test, y_test = _pooled_test_splits(clients)
    attributes = _read_attributes(
        folder / ATTRIBUTES_FILE, [client_name(path) for path in client_paths]
    )
    return _assemble(folder.name, clients, x_test, y_test, num_classes, attributes)


@dataclass(frozen=True)
class HandedData:
    """Clients' data handed in Python, as a data set, with what a run records of it."""

    dataset: FederatedDataset
    example_shape: tuple[int, ...]
    """The shape of one example before it was flattened to a row."""
    fingerprint: str
    """Clients and their sizes, the example shape and the central test set's size."""


def load_handed(clients: object, test: object | None, config: DataConfig, seed: int) -> HandedData:
    """The data set of clients handed to :func:`fedwarden.run` (see :mod:`fedwarden.data.handed`).

    A client without its own test split keeps ``client_test_fraction`` of its
    examples as one, drawn from ``seed``. ``test`` is the central test set
    (the same kinds of data as a client's); without it, the clients' test
    splits make it. Every client and the test set must share one example shape.
    """
    named = client_examples(clients)
    handed = [
        examples_of(f"client {client_id!r}", data, config) for client_id, data in named.items()
    ]
    central = None if test is None else examples_of("the test set", test, config)
    every = [*handed, *([] if central is None else [central])]
    first = every[0]
    for examples in every[1:]:
        if examples.example_shape != first.example_shape:
            raise DataError(
                f"{examples.name} has examples of shape {examples.example_shape} but "
                f"{first.name} has {first.example_shape}; every client and the test set need "
                "examples of one shape"
            )
    kinds = {examples.y.dtype.kind for examples in every}
    if len(kinds) > 1:
        raise DataError(
            "some clients have integer labels and others float labels; label every client's "
            "examples as class indices (classification) or all as floats (regression)"
        )
    num_classes = None
    if kinds == {"i"}:
        labels = [examples.y for examples in every] + [
            examples.y_test for examples in every if examples.y_test is not None
        ]
        if min(int(y.min()) for y in labels) < 0:
            raise DataError("a label is negative; number the classes from 0")
        num_classes = max(int(y.max()) for y in labels) + 1
    split_rng = np.random.default_rng(seed)
    client_data = [
        _split_client(client_id, examples.x, examples.y, config, split_rng)
        if examples.x_test is None or examples.y_test is None
        else ClientData(client_id, examples.x, examples.y, examples.x_test, examples.y_test)
        for client_id, examples in zip(named, handed, strict=True)
    ]
    x_test, y_test = _pooled_test_splits(client_data) if central is None else (central.x, central.y)
    dataset = _assemble("api", client_data, x_test, y_test, num_classes, {})
    return HandedData(dataset, first.example_shape, _fingerprint(handed, central, first))


def _fingerprint(
    handed: Sequence[HandedExamples], central: HandedExamples | None, first: HandedExamples
) -> str:
    """What a run records of handed data: each client's size, the example shape, the test set."""
    sizes = ", ".join(
        f"{examples.name.removeprefix('client ')}: {len(examples.y)}" for examples in handed
    )
    test = "the clients' test splits" if central is None else f"{len(central.y)} examples"
    return (
        f"{len(handed)} clients ({sizes}); examples of shape {first.example_shape}, labels "
        f"{first.y.dtype}; central test set: {test}"
    )


def save_client_file(client: ClientData, path: Path) -> None:
    """Write one client's data as the ``.npz`` a deployed client reads (no pickle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        np.savez(
            file, x=client.x_train, y=client.y_train, x_test=client.x_test, y_test=client.y_test
        )


def load_client_file(
    path: Path, client_id: str, config: DataConfig, seed: int, num_classes: int | None
) -> ClientData:
    """A deployed client's own data: an ``.npz``, a table or a folder, as in a per-client folder.

    The format comes from the suffix or the folder's contents (see
    :mod:`fedwarden.data.client_files`). Without its own test split,
    ``client_test_fraction`` of its examples are held out at random (seeded
    by the run seed). Labels are class indices below ``num_classes`` (text
    labels numbered by ``data.classes``), or floats for regression
    (``num_classes`` None).
    """
    arrays = _read_own_file(path, config, num_classes, CLIENT_ARRAYS)
    x, y = arrays["x"], arrays["y"]
    if "x_test" in arrays:
        return ClientData(
            client_id,
            x,
            y,
            arrays["x_test"],
            arrays["y_test"],
        )
    return _split_client(client_id, x, y, config, np.random.default_rng(seed))


def load_root_file(path: Path, config: DataConfig, num_classes: int | None) -> ClientData:
    """The server's root data set (FLTrust), read like a deployed client's file, all for training.

    Any client format (see :func:`load_client_file`); a test split is refused,
    since every root example trains the server's update.
    """
    if not path.exists():
        raise DataError(
            f"pipeline.root_data {path} does not exist; point it at the server's clean root "
            "data set (.npz, .csv, .parquet, an image folder or a save_to_disk folder)"
        )
    arrays = _read_own_file(path, config, num_classes, CLIENT_ARRAYS)
    if "x_test" in arrays:
        raise DataError(
            f"pipeline.root_data {path} brings a test split (x_test, y_test); the root set has "
            "none, since all of it trains the server's update: save x and y only"
        )
    empty = slice(0, 0)
    return ClientData(
        ROOT_DATA_ID, arrays["x"], arrays["y"], arrays["x"][empty], arrays["y"][empty]
    )


def _read_own_file(
    path: Path, config: DataConfig, num_classes: int | None, allowed: Sequence[str]
) -> dict[str, Array]:
    """One site's file: float32 features, labels checked against ``num_classes`` (see above)."""
    own_arrays, _ = read_arrays(path, config, allowed)
    files, _ = encode_labels({path: own_arrays}, config.classes, num_classes)
    label_dtype = np.int64 if num_classes is not None else np.float32
    arrays = {
        name: array.astype(np.float32 if name.startswith("x") else label_dtype)
        for name, array in files[path].items()
    }
    y = arrays["y"]
    if num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{path}: labels must be class indices 0..{num_classes - 1} for this run's model, "
            f"found {int(y.min())}..{int(y.max())}"
        )
    return arrays


def _stratified_holdout(
    labels: Array, fraction: float, rng: np.random.Generator
) -> npt.NDArray[np.bool_]:
    """Boolean mask of a random ``fraction`` of each class (rounded per class)."""
    class_of_example = np.unique(labels, return_inverse=True)[1]
    order = shuffled_by_class(class_of_example, rng)
    class_sizes = np.bincount(class_of_example)
    class_of_position = class_of_example[order]
    rank_in_class = (
        np.arange(len(order)) - (np.cumsum(class_sizes) - class_sizes)[class_of_position]
    )
    quota = np.rint(fraction * class_sizes).astype(np.int64)
    held_out = np.zeros(len(labels), dtype=bool)
    held_out[order] = rank_in_class < quota[class_of_position]
    return held_out


def _split_client(
    client_id: str, x: Array, y: Array, config: DataConfig, rng: np.random.Generator
) -> ClientData:
    """A client whose examples are split at random into train and test by client_test_fraction.

    The test split gets ``round(fraction * n)`` examples, but never all of
    them: every client keeps at least one training example.
    """
    num_test = int(num_test_examples(np.array([len(y)]), config.client_test_fraction)[0])
    order = rng.permutation(len(y))
    test, train = np.sort(order[:num_test]), np.sort(order[num_test:])
    return ClientData(client_id, x[train], y[train], x[test], y[test])


def _pooled_test_splits(clients: Sequence[ClientData]) -> tuple[Array, Array]:
    """The central test set as the concatenation of every client's test split."""
    return (
        np.concatenate([client.x_test for client in clients]),
        np.concatenate([client.y_test for client in clients]),
    )


def _client_ids(count: int) -> list[str]:
    """``client_0`` .. ``client_{count-1}``, zero-padded so that sorting keeps the order."""
    width = len(str(count - 1))
    return [f"client_{index:0{width}d}" for index in range(count)]


def _assemble(
    name: str,
    clients: Sequence[ClientData],
    x_test: Array,
    y_test: Array,
    num_classes: int | None,
    attributes: Mapping[str, Mapping[str, str]],
) -> FederatedDataset:
    """The data set, with each client's ``size_quartile`` merged under its given attributes."""
    quartiles = _size_quartiles([client.num_train for client in clients])
    return FederatedDataset(
        name=name,
        clients={
            client.client_id: replace(
                client,
                attributes={"size_quartile": quartile, **attributes.get(client.client_id, {})},
            )
            for client, quartile in zip(clients, quartiles, strict=True)
        },
        x_test=x_test,
        y_test=y_test,
        num_features=clients[0].x_train.shape[1],
        num_classes=num_classes,
    )


def _size_quartiles(sizes: Sequence[int]) -> list[str]:
    """``"q1"`` (smallest) to ``"q4"`` (largest) by the share of clients that are smaller.

    A client with ``s`` examples is in quartile ``1 + floor(4 * smaller / count)``
    where ``smaller`` counts the clients with fewer than ``s``: distinct sizes
    fill the quartiles evenly, and clients of equal size share a quartile.
    """
    ordered = np.sort(np.asarray(sizes))
    smaller = np.searchsorted(ordered, sizes, side="left")
    quartiles = np.floor(4 * smaller / len(sizes)).astype(np.int64) + 1
    return [f"q{quartile}" for quartile in quartiles]


def _read_attributes(path: Path, client_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Client attributes from ``attributes.json``, or none when the file is absent."""
    if not path.exists():
        return {}
    try:
        attributes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not readable JSON ({error}); fix or remove it") from None
    shape_hint = 'it must map client ids to {"attribute": "value"} objects of strings'
    if not isinstance(attributes, dict):
        raise DataError(f"{path} holds a {type(attributes).__name__}; {shape_hint}")
    unknown = sorted(set(attributes) - set(client_ids))
    if unknown:
        raise DataError(
            f"{path} names clients {unknown[:5]} that are not in the folder; known clients start "
            f"{list(client_ids)[:5]}"
        )
    for client_id, values in attributes.items():
        if not isinstance(values, dict) or not all(
            isinstance(value, str) for value in values.values()
        ):
            raise DataError(f"{path}: the entry for {client_id!r} is {values!r}; {shape_hint}")
    return attributes
