"""The CNN and the bag-of-embeddings text classifier: shapes, padding, DP-SGD, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedwarden.core.config import DataConfig, ModelConfig, RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import ClientData
from fedwarden.models.dp_sgd import DpSgdTrainer
from fedwarden.models.torch import ModuleFactory, TorchTrainer
from fedwarden.models.trainer import ClientContext
from fedwarden.models.zoo import BagOfEmbeddings, cnn, module_factory
from fedwarden.privacy.randomness import NoiseSource

GRAY_8x8 = DataConfig(image_shape=(8, 8), image_mode="L")
TEXT = ModelConfig(kind="text", vocabulary_size=20, embedding_dim=8)


def bright_half(num_examples: int = 96, seed: int = 0) -> ClientData:
    """8x8 grayscale images, label 1 when the right half is the bright one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, num_examples)
    images = rng.uniform(0.0, 0.3, size=(num_examples, 1, 8, 8)).astype(np.float32)
    for row, label in enumerate(y):
        images[row, 0, :, 4 * label : 4 * label + 4] += 0.7
    x = images.reshape(num_examples, -1)
    return ClientData("a", x, y, x[:32], y[:32])


def keyword_texts(num_examples: int = 96, seed: int = 0) -> ClientData:
    """Rows of 6 token ids padded with 0; label 1 when token 1 appears in the row."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, num_examples)
    x = rng.integers(2, 20, size=(num_examples, 6))
    x[y == 1, 0] = 1
    x[rng.integers(3, 7, num_examples)[:, None] <= np.arange(6)] = 0
    x = x.astype(np.float32)
    return ClientData("a", x, y, x[:32], y[:32])


def trained_accuracy(
    trainer: TorchTrainer, data: ClientData, learning_rate: float, rounds: int
) -> float:
    """Test-split accuracy after ``rounds`` fits of 2 local epochs from the initial vector."""
    train = TrainConfig(local_epochs=2, batch_size=16, learning_rate=learning_rate)
    vector = trainer.initial_vector(0)
    for round_index in range(rounds):
        client = ClientContext("a", data, round_index, np.random.default_rng(round_index))
        vector = vector + trainer.fit(vector, client, train).update
    return trainer.evaluate(vector, data.x_test, data.y_test)["accuracy"]


def private(factory: ModuleFactory) -> DpSgdTrainer:
    return DpSgdTrainer(
        factory,
        noise_multiplier=0.3,
        max_grad_norm=1.0,
        delta=1e-5,
        noise=NoiseSource.for_testing(0),
    )


@pytest.mark.parametrize(
    ("model", "data"),
    [(ModelConfig(kind="cnn"), GRAY_8x8), (TEXT, DataConfig())],
)
def test_opacus_accepts_the_models_as_they_are(model: ModelConfig, data: DataConfig) -> None:
    module = module_factory(model, data, 64, 2)()
    assert ModuleValidator.validate(module, strict=True) == []


def test_cnn_reads_flattened_channel_first_images_of_any_size() -> None:
    for channels, height, width in [(1, 8, 8), (3, 32, 24)]:
        module = cnn(channels, height, width, 5)
        assert module(torch.zeros(2, channels * height * width)).shape == (2, 5)


def test_cnn_refuses_data_of_another_shape_naming_the_settings() -> None:
    with pytest.raises(ConfigError, match=r"image_shape=\(32, 32\).*'RGB'.*3072.*64 features"):
        module_factory(ModelConfig(kind="cnn"), DataConfig(), 64, 2)


def test_text_model_needs_a_vocabulary_size() -> None:
    with pytest.raises(ConfigError, match=r"model\.vocabulary_size"):
        RunConfig.from_mapping({"model": {"kind": "text"}})


def test_padding_adds_nothing_to_a_bag_of_embeddings() -> None:
    module = BagOfEmbeddings(20, 8, 3)
    short = torch.tensor([[4.0, 7.0, 9.0]])
    padded = torch.tensor([[4.0, 7.0, 9.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(module(short), module(padded))
    assert torch.equal(module.embedding.weight[0], torch.zeros(8))


@pytest.mark.parametrize("dp_sgd", [False, True])
def test_cnn_learns_which_half_of_the_image_is_bright(dp_sgd: bool) -> None:
    factory = module_factory(ModelConfig(kind="cnn"), GRAY_8x8, 64, 2)
    trainer = private(factory) if dp_sgd else TorchTrainer(factory)
    assert trained_accuracy(trainer, bright_half(64), learning_rate=0.3, rounds=3) >= 0.9


@pytest.mark.parametrize("dp_sgd", [False, True])
def test_text_model_learns_a_keyword_and_still_ignores_padding(dp_sgd: bool) -> None:
    factory = module_factory(TEXT, DataConfig(), 6, 2)
    trainer = private(factory) if dp_sgd else TorchTrainer(factory)
    assert trained_accuracy(trainer, keyword_texts(), learning_rate=2.0, rounds=8) >= 0.9
    module = trainer.module
    with torch.no_grad():  # DP-SGD's noise moves the padding row; the mask still ignores it
        torch.testing.assert_close(
            module(torch.tensor([[4.0, 7.0]])), module(torch.tensor([[4.0, 7.0, 0.0, 0.0]]))
        )


@pytest.mark.parametrize("kind", ["cnn", "text"])
def test_config_accepts_dp_sgd_and_scaffold_for_the_new_models(kind: str) -> None:
    model = {"kind": kind, "vocabulary_size": 20}
    dp_sgd = {"model": model, "privacy": {"mechanism": "dp_sgd", "epsilon": 8.0}}
    assert RunConfig.from_mapping(dp_sgd).model.kind == kind
    scaffold = {"model": model, "strategy": {"name": "scaffold"}}
    assert RunConfig.from_mapping(scaffold).strategy.name == "scaffold"
