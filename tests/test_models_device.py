"""Where PyTorch trainers train: ``train.device`` resolved on each machine, CPU and CUDA fits."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import ClientData
from fedwarden.models.dp_sgd import DpSgdTrainer
from fedwarden.models.torch import TorchTrainer, resolve_device
from fedwarden.models.trainer import ClientContext, ClientState
from fedwarden.privacy.randomness import NoiseSource

TRAIN = TrainConfig(local_epochs=2, batch_size=16, learning_rate=0.1)
NO_CUDA = "no CUDA device on this machine: GPU path untested here"


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def blobs(num_examples: int = 64) -> ClientData:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, num_examples)
    x = (rng.normal(size=(num_examples, 8)) + 2.0 * np.eye(3, 8)[y]).astype(np.float32)
    return ClientData("a", x, y, x[:16], y[:16])


def cuda_present(monkeypatch: pytest.MonkeyPatch, available: bool, count: int = 1) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)


def test_auto_falls_back_to_the_cpu_with_one_log_line_without_cuda(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cuda_present(monkeypatch, False)
    with caplog.at_level(logging.INFO, logger="fedwarden.models.torch"):
        assert resolve_device("auto") == torch.device("cpu")
    assert [record.getMessage() for record in caplog.records] == [
        "train.device='auto': no CUDA device on this machine, training on the CPU"
    ]


def test_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_present(monkeypatch, True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cpu_never_asks_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> bool:
        raise AssertionError("train.device='cpu' must not probe CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", refuse)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("setting", "index"), [("cuda", None), ("cuda:0", 0), ("cuda:3", 3)])
def test_cuda_settings_name_the_device_index(
    monkeypatch: pytest.MonkeyPatch, setting: str, index: int | None
) -> None:
    cuda_present(monkeypatch, True, count=4)
    device = resolve_device(setting)
    assert (device.type, device.index) == ("cuda", index)


@pytest.mark.parametrize("setting", ["cuda", "cuda:1"])
def test_cuda_is_refused_without_cuda_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    cuda_present(monkeypatch, False)
    with pytest.raises(ConfigError, match="sees no CUDA device") as error:
        resolve_device(setting)
    assert "set train.device to 'auto' or 'cpu'" in str(error.value)


def test_a_cuda_index_past_the_last_device_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_present(monkeypatch, True, count=2)
    with pytest.raises(ConfigError, match=r"names CUDA device 2, but this machine has 2"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("setting", ["gpu", "cuda:", "cuda:x", "CPU", "mps"])
def test_config_refuses_an_unknown_device_naming_field_and_allowed_values(setting: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"train": {"device": setting}})
    message = str(error.value)
    assert "train.device" in message
    assert "'auto', 'cpu', 'cuda' or 'cuda:N'" in message
    assert repr(setting) in message


def test_config_device_defaults_to_auto() -> None:
    assert RunConfig().train.device == "auto"
    assert RunConfig.from_mapping({"train": {"device": "cuda:1"}}).train.device == "cuda:1"


def test_trainer_built_for_cuda_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_present(monkeypatch, False)
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        TorchTrainer(small_net, device="cuda")


def test_auto_without_cuda_trains_exactly_as_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_present(monkeypatch, False)
    data = blobs()
    cpu, auto = TorchTrainer(small_net, device="cpu"), TorchTrainer(small_net, device="auto")
    vector = cpu.initial_vector(0)
    first = cpu.fit(vector, ClientContext("a", data, 0, np.random.default_rng(1)), TRAIN)
    second = auto.fit(vector, ClientContext("a", data, 0, np.random.default_rng(1)), TRAIN)
    assert np.array_equal(first.update, second.update)


def _fits_on(device: str, build: Callable[[str], TorchTrainer]) -> tuple[np.ndarray, float]:
    trainer = build(device)
    data = blobs()
    vector = trainer.initial_vector(0)
    result = trainer.fit(vector, ClientContext("a", data, 0, np.random.default_rng(1)), TRAIN)
    accuracy = trainer.evaluate(vector + result.update, data.x_test, data.y_test)["accuracy"]
    assert result.update.dtype == np.float32
    assert result.num_examples == len(data.y_train)
    return result.update, accuracy


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_one_fit_on_cuda_matches_the_cpu_fit() -> None:
    def plain(device: str) -> TorchTrainer:
        return TorchTrainer(small_net, device=device)

    def private(device: str) -> TorchTrainer:
        return DpSgdTrainer(
            small_net,
            noise_multiplier=0.5,
            max_grad_norm=1.0,
            delta=1e-5,
            noise=NoiseSource.for_testing(0),
            device=device,
        )

    for build in (plain, private):
        trainer = build("cuda")
        assert all(p.device.type == "cuda" for p in trainer.module.parameters())
        on_cuda, cuda_accuracy = _fits_on("cuda", build)
        on_cpu, cpu_accuracy = _fits_on("cpu", build)
        np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-4)
        assert cuda_accuracy == pytest.approx(cpu_accuracy, abs=1 / 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_client_state_kept_on_cuda_matches_the_cpu() -> None:
    """Adam's moments and a personal layer go to the client's state and back, from the GPU."""

    def two_fits(device: str) -> tuple[np.ndarray, ClientState]:
        trainer = TorchTrainer(
            small_net,
            optimizer="adam",
            keep_optimizer_state=True,
            personal_layers=("2",),
            device=device,
        )
        data = blobs()
        state: ClientState = {}
        vector = trainer.initial_vector(0)
        for round_index in range(2):
            client = ClientContext("a", data, round_index, np.random.default_rng(1), state)
            update = trainer.fit(vector, client, TRAIN).update
        return update, state

    on_cuda, cuda_state = two_fits("cuda")
    on_cpu, cpu_state = two_fits("cpu")
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-4)
    assert cuda_state.keys() == cpu_state.keys()
    assert any(key.startswith("personal/2.") for key in cuda_state)
    for key, value in cpu_state.items():
        np.testing.assert_allclose(
            np.asarray(cuda_state[key], dtype=float),
            np.asarray(value, dtype=float),
            rtol=1e-3,
            atol=1e-4,
        )
