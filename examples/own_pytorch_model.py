"""Federate your own PyTorch model and your sites' ``Dataset`` objects with ``fedwarden.run``.

You already have an ``nn.Module`` and one ``torch.utils.data.Dataset`` per
site; fedwarden takes both as they are. The config says everything else:
rounds, who trains each round, and the privacy guarantee (here sample-level
DP-SGD through Opacus at every site, its noise calibrated so no site spends
more than ``--epsilon``). The data: scikit-learn's 8x8 digits (bundled, nothing
downloaded) as 1x8x8 images, dealt to the sites, with a held-out test set::

    python examples/own_pytorch_model.py                # 4 sites, 10 rounds, epsilon 8
    python examples/own_pytorch_model.py --rounds 3 --epsilon 2

It prints the test accuracy, the epsilon the privacy ledger charged and the
run directory, which holds what any run's does (config, ledger, checkpoint,
metrics, summary); its ``config.json`` records the model and data as handed
from Python (``model.kind = "api"``, ``data.source = "api"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

import fedwarden
from fedwarden import RunConfig


class DigitImages(Dataset[tuple[torch.Tensor, int]]):
    """One site's digits: items are ``(image, label)``, the image a 1x8x8 tensor in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        self.labels = [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]


class SmallConvNet(nn.Module):
    """A convolution, GroupNorm (DP-SGD refuses BatchNorm), pooling and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


def sites_and_test(num_sites: int, seed: int = 0) -> tuple[list[DigitImages], DigitImages]:
    """The digits dealt at random to ``num_sites`` sites, and a fifth held out for testing."""
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    test, train = order[: len(order) // 5], order[len(order) // 5 :]
    sites = [DigitImages(images[part], labels[part]) for part in np.array_split(train, num_sites)]
    return sites, DigitImages(images[test], labels[test])


def make_config(rounds: int, epsilon: float, runs_dir: Path) -> RunConfig:
    """Every site trains every round with DP-SGD; the model (``kind = "api"``) comes from Python."""
    return RunConfig.from_mapping(
        {
            "name": "own-pytorch-model",
            "rounds": rounds,
            "runs_dir": str(runs_dir),
            "model": {"kind": "api"},
            "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.5, "device": "cpu"},
            "sampling": {"cohort_size": 4},
            "privacy": {"mechanism": "dp_sgd", "epsilon": epsilon, "max_grad_norm": 1.0},
            "runtime": {"workers": 1},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=8.0, help="each site's DP-SGD budget")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args()
    sites, test = sites_and_test(args.sites)
    config = make_config(args.rounds, args.epsilon, args.runs_dir)
    config = config.model_copy(
        update={"sampling": config.sampling.model_copy(update={"cohort_size": args.sites})}
    )
    result = fedwarden.run(config, model=SmallConvNet, clients=sites, test=test)
    epsilon = result.to_json()["epsilon"]
    print(f"accuracy {result.accuracy:.3f}  epsilon {epsilon:.4f}  run {result.run_dir}")


if __name__ == "__main__":  # the local runtime spawns worker processes that import this file
    main()
