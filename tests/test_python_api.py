"""fedwarden.run(config, model=..., clients=..., test=...): a user's own model and data."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from sklearn.linear_model import SGDClassifier
from torch import nn
from torch.utils.data import Dataset

import fedwarden
from fedwarden.build.handed import Handed
from fedwarden.build.run import prepare, resumed
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, DataError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.sources import load_handed
from fedwarden.models.sklearn import SklearnTrainer
from fedwarden.models.torch import TorchTrainer
from test_e2e import dp_sgd_silo_event

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "own_pytorch_model.py"
LINE = re.compile(r"accuracy (\d\.\d{3})  epsilon (\S+)  run (\S+)")


class Images(Dataset[tuple[torch.Tensor, int]]):
    """``count`` random 1x4x4 images, labelled by whether their mean is above one half."""

    def __init__(self, count: int, seed: int) -> None:
        self.images = torch.rand(count, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        self.reads = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.images[index], int(self.images[index].mean() > 0.5)


class ImagesWithoutLabels(Images):
    def __getitem__(self, index: int) -> Any:
        return self.images[index]


class ConvOnImages(nn.Module):
    """Reads 1x4x4 images (a convolution would refuse flat rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)
        self.head = nn.Linear(2 * 4 * 4, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(images).flatten(1))


class WiderConv(ConvOnImages):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 2)


def config(**values: Any) -> RunConfig:
    return RunConfig.from_mapping({"rounds": 1, "train": {"device": "cpu"}, **values})


def test_datasets_are_read_once_into_rows_and_a_module_gets_its_images_back() -> None:
    sites = [Images(30, seed=1), Images(20, seed=2)]
    handed = Handed.of(config(), ConvOnImages, sites, Images(10, seed=3))
    assert [site.reads for site in sites] == [30, 20]  # every item read exactly once
    prepared = prepare(handed.stamp(config()), handed)
    dataset, trainer = prepared.dataset, prepared.trainer
    assert dataset.num_features == 16 and dataset.num_classes == 2
    assert dict(dataset.train_sizes) == {"client_0": 24, "client_1": 16}
    # the central test set is the one handed: its rows are its images, flattened
    test = Images(10, seed=3)
    assert len(dataset.y_test) == 10
    np.testing.assert_array_equal(dataset.x_test, test.images.numpy().reshape(10, 16))
    # the module trains on rows and sees 1x4x4 images: its scores are the module's own
    assert isinstance(trainer, TorchTrainer)
    vector = trainer.initial_vector(0)
    module = trainer.load(vector)
    with torch.no_grad():
        expected = module(test.images).argmax(1).numpy()
    labels = np.array([test[i][1] for i in range(10)])
    accuracy = trainer.evaluate(vector, dataset.x_test, dataset.y_test)["accuracy"]
    assert accuracy == pytest.approx(np.mean(expected == labels))


def test_a_module_instance_is_copied_with_its_weights() -> None:
    instance = ConvOnImages()
    handed = Handed.of(config(), instance, [Images(10, seed=1)], None)
    trainer = prepare(handed.stamp(config()), handed).trainer
    weights = np.concatenate([tensor.detach().numpy().ravel() for tensor in instance.parameters()])
    np.testing.assert_array_equal(trainer.initial_vector(7), weights)


def test_the_recorded_config_names_the_handed_model_and_data() -> None:
    handed = Handed.of(config(), ConvOnImages, {"north": Images(8, 1), "south": Images(5, 2)}, None)
    stamped = handed.stamp(config())
    assert stamped.model.kind == "api" and stamped.data.source == "api"
    assert stamped.model.fingerprint is not None
    assert stamped.model.fingerprint.startswith(
        "torch module ConvOnImages: 4 tensors, 86 parameters"
    )
    assert stamped.data.fingerprint == (
        "2 clients ('north': 8, 'south': 5); examples of shape (1, 4, 4), labels int64; "
        "central test set: the clients' test splits"
    )
    assert stamped.data.num_clients == 2


def test_resuming_with_another_model_or_without_the_data_is_refused() -> None:
    sites = [Images(8, 1)]
    stored = Handed.of(config(), ConvOnImages, sites, None).stamp(config())
    Handed.of(config(), ConvOnImages, [Images(8, 1)], None).require_resumes(stored, "runs/r")
    with pytest.raises(ConfigError, match=r"trained with model 'torch module .*ConvOnImages"):
        Handed.of(config(), WiderConv, sites, None).require_resumes(stored, "runs/r")
    with pytest.raises(ConfigError, match=r"hands \"no clients= \(the config's data\)\""):
        Handed.of(config(), ConvOnImages, None, None).require_resumes(stored, "runs/r")
    with pytest.raises(DataError, match=r"resume it from Python with fedwarden\.run"):
        prepare(stored)


def test_a_dataset_item_that_is_not_a_pair_is_refused() -> None:
    with pytest.raises(DataError) as refused:
        fedwarden.run(config(), model=ConvOnImages, clients=[ImagesWithoutLabels(4, 1)])
    assert str(refused.value) == (
        "client 'client_0': item 0 is a Tensor, not an (x, y) pair; make the Dataset's "
        "__getitem__ return (features, label)"
    )


def test_clients_whose_examples_differ_in_shape_are_refused() -> None:
    rows = (np.zeros((5, 16), np.float32), np.zeros(5, np.int64))
    with pytest.raises(DataError) as refused:
        fedwarden.run(config(), clients={"a": Images(5, 1), "b": rows})
    assert str(refused.value) == (
        "client 'b' has examples of shape (16,) but client 'a' has (1, 4, 4); every client and "
        "the test set need examples of one shape"
    )


def test_a_model_that_cannot_read_the_examples_is_refused_before_any_round() -> None:
    handed = Handed.of(config(), ConvOnImages, [(np.zeros((4, 9)), np.zeros(4, np.int64))], None)
    with pytest.raises(ConfigError, match=r"cannot read the clients' examples of shape \(9,\)"):
        prepare(handed.stamp(config()), handed)


def test_a_model_worker_processes_cannot_import_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"<lambda> cannot be sent to the runtime's worker"):
        fedwarden.run(config(), model=lambda: nn.Linear(64, 10))

    class Local(ConvOnImages):
        pass

    with pytest.raises(ConfigError, match=r"model test_python_api\.test_a_model_worker.*\.Local "):
        fedwarden.run(config(), model=Local())  # an instance: its class is named


def test_the_inprocess_runtime_trains_a_model_no_worker_process_could_import(
    tmp_path: Path,
) -> None:
    class Local(ConvOnImages):
        pass

    inprocess = config(runtime={"kind": "inprocess"}, runs_dir=str(tmp_path))
    result = fedwarden.run(inprocess, model=Local(), clients=[Images(30, 1), Images(20, 2)])
    assert result.rounds == 1
    assert result.run_dir is not None
    recorded = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert recorded["runtime"]["kind"] == "inprocess"


def test_the_grpc_runtime_refuses_handed_objects() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.kind 'grpc' starts each client"):
        fedwarden.run(config(runtime={"kind": "grpc"}), model=ConvOnImages)


def test_a_scikit_learn_estimator_keeps_the_parameters_set_on_it() -> None:
    trainer = SklearnTrainer.from_estimator(
        SGDClassifier(alpha=0.01), num_features=4, num_classes=3
    )
    assert trainer.estimator == "sgd_classifier"
    assert trainer.estimator_params["alpha"] == 0.01
    assert trainer.estimator_params["loss"] == "log_loss"  # fedwarden's default, not hinge
    with pytest.raises(ConfigError, match="sgd_classifier does not take max_iter"):
        SklearnTrainer.from_estimator(SGDClassifier(max_iter=5), num_features=4, num_classes=3)
    dp_sgd = config(privacy={"mechanism": "dp_sgd", "epsilon": 1.0}, model={"kind": "api"})
    handed = Handed.of(dp_sgd, SGDClassifier(), [Images(8, 1)], None)
    with pytest.raises(ConfigError, match="'dp_sgd' trains PyTorch modules with Opacus"):
        prepare(handed.stamp(dp_sgd), handed)


@pytest.mark.slow
def test_example_trains_its_own_module_on_its_datasets_under_dp_sgd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    printed = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "2", "--runs-dir", str(runs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    found = LINE.search(printed)
    assert found is not None, printed
    accuracy, epsilon, run_dir = float(found[1]), float(found[2]), Path(found[3])
    assert accuracy >= 0.4  # ten classes: chance is 0.1
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["model"]["kind"] == "api" and recorded["data"]["source"] == "api"
    assert "SmallConvNet: 6 tensors" in recorded["model"]["fingerprint"]
    assert "examples of shape (1, 8, 8)" in recorded["data"]["fingerprint"]
    # epsilon: dp-accounting's PLD accountant for the DP-SGD steps of the largest spender
    summary = json.loads((run_dir / "summary.json").read_text())
    stored, _ = resumed(run_dir)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    example = importlib.import_module("own_pytorch_model")
    sites, test = example.sites_and_test(4)
    dataset = load_handed(sites, test, stored.data, stored.seed).dataset
    train = TrainConfig(stored.train.local_epochs, stored.train.batch_size, 0.0)
    spent = [
        pld_privacy_accountant.PLDAccountant()
        .compose(dp_sgd_silo_event(size, train, 2, summary["noise_multiplier"]))
        .get_epsilon(stored.privacy.delta)
        for size in dataset.train_sizes.values()
    ]
    assert epsilon == pytest.approx(max(spent), rel=1e-3)
    assert summary["epsilon"] == pytest.approx(epsilon, abs=1e-4)
    # resuming needs the same module and the same sites
    with pytest.raises(
        ConfigError, match=r"trained with model 'torch module SmallConvNet: 6 tensors"
    ):
        fedwarden.run(stored, model=WiderConv, clients=sites, test=test, resume=run_dir)
    with pytest.raises(DataError, match="resume it from Python"):
        fedwarden.run(stored, resume=run_dir)
