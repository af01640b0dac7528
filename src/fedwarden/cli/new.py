"""``fedwarden new NAME``: a starter project that runs at once with ``fedwarden run``.

The project is a folder of four things a user edits: ``config.toml`` (a short federated run),
``model.py`` (the PyTorch model, behind the factory the config names), ``data/`` (one CSV
table per site and a central test table, written here from scikit-learn's breast cancer set)
and a ``README.md`` saying what each is. The files are written from the strings below, so
the command needs no package data.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

from fedwarden.cli.common import error_exit
from fedwarden.core.errors import FedwardenError

SITES = ("clinic_a", "clinic_b", "clinic_c", "clinic_d")
TEST_SHARE = 0.2
CLASSES = ("malignant", "benign")  # scikit-learn's target 0 and 1
RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # the pattern of the config's name

CONFIG = """\
# A federated run over the sites in data/: each trains model.py on its own table and
# only model updates leave it. Every setting: the config reference in the docs.
name = "{name}"
seed = 0
rounds = 10

[data]
source = "npz_folder"   # one client per file in the folder: .npz, .csv, .parquet, ...
path = "data"           # relative to this file
target = "label"        # the label column of each table
classes = ["malignant", "benign"]

[model]
kind = "custom"
factory = "model:build"  # the function build in model.py

[train]
local_epochs = 2
batch_size = 16
learning_rate = 0.05

[sampling]
cohort_size = {sites}

[runtime]
workers = 1
"""

MODEL = '''\
"""The model every site trains. fedwarden calls build(num_features, num_classes)."""

from functools import partial

from torch import nn

from fedwarden.models.torch import TorchTrainer


def network(num_features: int, num_classes: int) -> nn.Module:
    """A small multilayer perceptron over the table's feature columns."""
    return nn.Sequential(
        nn.Linear(num_features, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def build(num_features: int, num_classes: int) -> TorchTrainer:
    """The trainer config.toml names (model.factory = "model:build")."""
    # A partial of a module-level function: the trainer is pickled to the worker processes.
    return TorchTrainer(partial(network, num_features, num_classes))
'''

DATA_README = """\
# data

One file per site; the file's stem is the site's client id:

{sites}

`_test.csv` is the central test set the server scores the global model on.

Each table has one row per patient: the feature columns (scikit-learn's breast cancer
measurements, standardised to z-scores) and `label`, `malignant` or `benign`. Replace
the files with your sites' tables: keep the same columns at every site, name the label
column in `data.target` and its values, in order, in `data.classes` of config.toml.
Text feature columns need their categories listed in `data.categories`. Scale numeric
features alike at every site, as here. Parquet tables, image folders and Hugging Face
data sets work too: see "Your own data" in the docs.
"""

README = """\
# {name}

A federated learning project made by `fedwarden new`: {count} sites, each holding a table
of patients, train one PyTorch model together; only model updates leave a site.

## Run it

PyTorch and the table readers are extras: `pip install 'fedwarden[torch,data]'`. Then, in
this folder:

```console
fedwarden run config.toml
```

It trains for 10 rounds on this machine (one worker process per site, simulated), prints
a row per round and the final central accuracy (about 95%), and writes the run directory
under `runs/`.

## What to edit

- `model.py`: the model. `network` builds the `nn.Module`; `build` wraps it in a
  `TorchTrainer` (its loss, optimizer and other options are in the API reference).
- `data/`: the sites' tables; see `data/README.md`.
- `config.toml`: rounds, local training, the strategy, differential privacy, secure
  aggregation, the runtime. Try `[privacy] mechanism = "user_level"` with an `epsilon`.

When the sites run on their own machines, each starts `fedwarden client --data
clinic_a.csv ...` against a `fedwarden server`: see "Deploy" in the docs.
"""

GITIGNORE = "runs/\n"


def new_command(
    name: Annotated[Path, typer.Argument(help="Folder to create; its name names the run.")],
) -> None:
    """Write a starter project into NAME: config, model.py, per-site data and a README."""
    console = Console()
    try:
        write_project(name)
    except FedwardenError as error:
        raise error_exit(error) from None
    folder = escape(str(name))
    console.print(f"wrote a starter project into {folder}; run it with")
    console.print(f"  cd {folder} && fedwarden run config.toml", soft_wrap=True)


def write_project(folder: Path) -> None:
    """Write the starter project into ``folder``, which must be new or empty."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FedwardenError(
            f"{folder} already exists and is not an empty folder: choose another NAME or "
            "move it away; fedwarden new never overwrites files"
        )
    name = folder.resolve().name
    if not RUN_NAME.fullmatch(name):
        raise FedwardenError(
            f"NAME {name!r} also names the run: use only letters, digits, '_', '.' and '-'"
        )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(CONFIG.format(name=name, sites=len(SITES)))
    (folder / "model.py").write_text(MODEL)
    (folder / "README.md").write_text(README.format(name=name, count=len(SITES)))
    (folder / ".gitignore").write_text(GITIGNORE)
    sites = "\n".join(f"- `{site}.csv`" for site in SITES)
    (folder / "data" / "README.md").write_text(DATA_README.format(sites=sites))
    write_site_tables(folder / "data")


def write_site_tables(folder: Path, seed: int = 0) -> None:
    """Split scikit-learn's breast cancer set into one CSV per site and ``_test.csv``.

    The features are standardised with the whole set's mean and deviation, so a small model
    trains in a few rounds; the rows are shuffled and dealt evenly to the sites.
    """
    # Not at the top: scikit-learn would slow every start-up, `fedwarden --help` included.
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    features = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    labels = np.asarray(CLASSES)[bunch.target]
    columns = [column.replace(" ", "_") for column in bunch.feature_names]
    order = np.random.default_rng(seed).permutation(len(labels))
    test_size = round(TEST_SHARE * len(order))
    parts = {"_test": order[:test_size]}
    parts.update(zip(SITES, np.array_split(order[test_size:], len(SITES)), strict=True))
    for part, rows in parts.items():
        with (folder / f"{part}.csv").open("w", newline="") as table:
            writer = csv.writer(table)
            writer.writerow([*columns, "label"])
            for row in rows:
                writer.writerow([*(f"{value:.4f}" for value in features[row]), labels[row]])
