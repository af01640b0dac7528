"""Models users train: a small CNN for image folders and a bag-of-embeddings text classifier.

Both take the rows :class:`~fedwarden.models.torch.TorchTrainer` hands a module
(one flat float32 row per example) and both train under DP-SGD: they have no
BatchNorm (the CNN normalises with GroupNorm, which sees one example at a
time) and every layer has an Opacus per-sample gradient, so Opacus's
``ModuleValidator`` accepts them. They are module level, so
``functools.partial(cnn, ...)`` is a picklable module factory.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from fedwarden.core.config import DataConfig, ModelConfig
from fedwarden.core.errors import ConfigError
from fedwarden.models.torch import ModuleFactory, mlp

__all__ = ["TORCH_KINDS", "BagOfEmbeddings", "cnn", "image_channels", "module_factory"]

TORCH_KINDS = ("mlp", "cnn", "text")
"""The ``model.kind`` values that build a PyTorch module."""

PADDING_ID = 0
"""The token id that pads a text row to its fixed length; it adds nothing to the bag."""


def image_channels(mode: str) -> int:
    """Channels of a Pillow image mode the image folder reader converts to: L 1, RGB 3."""
    return {"L": 1, "RGB": 3}[mode]


def cnn(channels: int, height: int, width: int, num_classes: int) -> nn.Sequential:
    """Two 3x3 convolution blocks (16 and 32 filters, GroupNorm, ReLU, 2x2 max pooling) and a
    linear head on a 4x4 average pool, for flattened channel-first ``C x H x W`` images.

    The average pool makes the head's size independent of the image size.
    """
    return nn.Sequential(
        nn.Unflatten(1, (channels, height, width)),
        nn.Conv2d(channels, 16, kernel_size=3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.GroupNorm(8, 32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, num_classes),
    )


class BagOfEmbeddings(nn.Module):
    """A text classifier: the mean embedding of a row's tokens, then a linear layer.

    Each row holds token ids (``0`` pads it; ids at most ``vocabulary_size - 1``),
    as floats because every input reaches a trainer as float32, which holds
    integers exactly below 2**24. The mean is over the row's tokens other than
    padding, which is masked out (DP-SGD's noise moves the padding row of the
    embedding too, so its zero initial value alone would not do); Joulin et
    al. 2017, "Bag of Tricks for Efficient Text Classification".
    """

    def __init__(self, vocabulary_size: int, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim, padding_idx=PADDING_ID)
        self.head = nn.Linear(embedding_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of rows of token ids."""
        ids = tokens.long()
        present = (ids != PADDING_ID).unsqueeze(-1).to(self.head.weight.dtype)
        total = (self.embedding(ids) * present).sum(dim=1)
        return self.head(total / present.sum(dim=1).clamp(min=1.0))


def module_factory(
    model: ModelConfig, data: DataConfig, num_features: int, num_classes: int
) -> ModuleFactory:
    """The picklable factory of the PyTorch module ``model.kind`` names, for this data's shape.

    ``cnn`` reads its input shape from ``data.image_shape`` and ``data.image_mode``
    (the image folder reader's layout) and refuses rows of another length.
    """
    if model.kind == "mlp":
        return partial(mlp, num_features, num_classes, model.hidden)
    if model.kind == "cnn":
        height, width = data.image_shape
        channels = image_channels(data.image_mode)
        if channels * height * width != num_features:
            raise ConfigError(
                f"model.kind 'cnn' reads images of data.image_shape={data.image_shape} in "
                f"data.image_mode={data.image_mode!r} ({channels} x {height} x {width} = "
                f"{channels * height * width} features), but the data has {num_features} "
                "features per example; set image_shape and image_mode to the images' shape"
            )
        return partial(cnn, channels, height, width, num_classes)
    if model.kind == "text":
        assert model.vocabulary_size is not None
        return partial(BagOfEmbeddings, model.vocabulary_size, model.embedding_dim, num_classes)
    raise ConfigError(f"model.kind {model.kind!r} is not one of {', '.join(TORCH_KINDS)}")
