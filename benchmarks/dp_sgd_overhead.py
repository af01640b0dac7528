"""DP-SGD's cost per round: plain local training, fedwarden's DpSgdTrainer, Opacus used directly.

Workload (issue 3): one client of 320 digits (pixels / 16, so 64 features),
an MLP 64 -> 64 -> 10, SGD with learning rate 0.1, batch 32, one local epoch,
noise multiplier 1.0 and clipping norm 1.0, PyTorch on one thread (as a
worker runs). With 320 = 10 x 32 examples both DP paths sample at rate
``q = 0.1`` for 10 steps per epoch with expected batch 32, so their math is the
same. Each round starts from the same global model and reports the client's ε.

Rows:

- ``plain``: :class:`~fedwarden.models.torch.TorchTrainer` (no privacy).
- ``fedwarden``: :class:`~fedwarden.models.dp_sgd.DpSgdTrainer`, secure noise
  (the default); also with test-mode noise, to show what secure noise costs.
- ``opacus, make_private per round``: what a federated client that uses
  Opacus directly does each round, as its tutorials and Flower's Opacus example
  do: build the model, load the global weights, an optimizer, a
  ``DataLoader``, ``PrivacyEngine.make_private`` (Poisson sampling), train,
  ``get_epsilon`` (the engine, and so the accountant, persists across rounds).
- ``opacus, wrapped once``: the best case for Opacus: ``make_private`` once,
  then each round only loads the weights into the wrapped model and trains.

It also measures the setup that Opacus adds to a round (``GradSampleModule``
plus ``DPOptimizer`` construction) on the same model: DpSgdTrainer builds those
wrappers once and reuses them for every client and round; "before" is its
round plus that setup, as if it wrapped per round. Times are medians over the
rounds. Run: ``python -m benchmarks.dp_sgd_overhead [--rounds 30 --epochs 1]``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import Vector
from fedwarden.data.dataset import ClientData
from fedwarden.models.dp_sgd import DpSgdTrainer
from fedwarden.models.torch import TorchTrainer, mlp
from fedwarden.models.trainer import ClientContext, Trainer
from fedwarden.privacy.dp_sgd import NoiseSourceDPOptimizer
from fedwarden.privacy.randomness import NoiseSource

NUM_EXAMPLES = 320
BATCH_SIZE = 32
LEARNING_RATE = 0.1
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
DELTA = 1e-5
model_factory = functools.partial(mlp, 64, 10, (64,))


def _client() -> ClientData:
    digits = load_digits()
    x = (digits.data[:NUM_EXAMPLES] / 16).astype(np.float32)
    y = digits.target[:NUM_EXAMPLES].astype(np.int64)
    return ClientData("client", x, y, x[:1], y[:1])


def _median_ms(rounds: int, paths: dict[str, Callable[[int], Any]]) -> dict[str, float]:
    """Median wall time in ms of each path's ``one_round(round_index)``, after a warm-up round.

    The paths take turns round by round, so load from other processes on a
    shared machine falls on all of them alike.
    """
    timings: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(-1, rounds):
        for name, one_round in paths.items():
            started = time.perf_counter()
            one_round(round_index)
            if round_index >= 0:
                timings[name].append(time.perf_counter() - started)
    return {name: 1e3 * statistics.median(times) for name, times in timings.items()}


def fedwarden_round(
    trainer: Trainer, vector: Vector, data: ClientData, train: TrainConfig
) -> Callable[[int], Any]:
    """One round of a fedwarden trainer for one client whose state persists across rounds."""
    state: dict[str, np.ndarray] = {}

    def one_round(round_index: int) -> Any:
        rng = np.random.default_rng([round_index + 1])
        client = ClientContext(data.client_id, data, round_index, rng, state)
        return trainer.fit(vector, client, train)

    return one_round


def _opacus_train(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any], epochs: int
) -> None:
    """The training loop of Opacus's tutorials."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for x_batch, y_batch in loader:
            optimizer.zero_grad()
            loss = criterion(model(x_batch), y_batch)
            loss.backward()
            optimizer.step()


def opacus_per_round(
    global_state: dict[str, torch.Tensor], data: ClientData, epochs: int
) -> Callable[[int], Any]:
    """Opacus used directly by a federated client: ``make_private`` again every round."""
    dataset = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    engine = PrivacyEngine(accountant="rdp")

    def one_round(_: int) -> float:
        model = model_factory()
        model.load_state_dict(global_state)
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        loader = DataLoader(dataset, batch_size=BATCH_SIZE)
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
            poisson_sampling=True,
        )
        _opacus_train(model, optimizer, loader, epochs)
        return float(engine.get_epsilon(DELTA))

    return one_round


def opacus_wrapped_once(
    global_state: dict[str, torch.Tensor], data: ClientData, epochs: int, *, epsilon: bool = True
) -> Callable[[int], Any]:
    """Opacus's best case: ``make_private`` once; each round loads the weights and trains.

    With ``epsilon=False`` the round leaves out ``get_epsilon``: training alone.
    """
    dataset = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    engine = PrivacyEngine(accountant="rdp")
    model = model_factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    private_model, private_optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(dataset, batch_size=BATCH_SIZE),
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        poisson_sampling=True,
    )

    def one_round(_: int) -> float | None:
        model.load_state_dict(global_state)
        _opacus_train(private_model, private_optimizer, loader, epochs)
        return float(engine.get_epsilon(DELTA)) if epsilon else None

    return one_round


def wrapper_setup() -> Callable[[int], Any]:
    """What wrapping the module costs a round: GradSampleModule and DPOptimizer (then unwrap)."""
    model = model_factory()
    noise = NoiseSource.secure()

    def one_round(_: int) -> None:
        module = GradSampleModule(model, loss_reduction="mean")
        NoiseSourceDPOptimizer(
            torch.optim.SGD(model.parameters(), lr=LEARNING_RATE),
            noise_source=noise,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
            expected_batch_size=BATCH_SIZE,
        )
        module._close()

    return one_round


def main() -> None:
    """Time each path and print the table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("fedwarden.privacy").setLevel(logging.ERROR)  # test-mode warnings
    warnings.filterwarnings("ignore", category=UserWarning)  # Opacus's and PyTorch's notices
    started = time.perf_counter()
    wrapper_setup()(0)  # the first wrapping in a process pays Opacus's one-time initialization
    first_setup = 1e3 * (time.perf_counter() - started)
    data = _client()
    train = TrainConfig(args.epochs, BATCH_SIZE, LEARNING_RATE)
    plain = TorchTrainer(model_factory)
    vector = plain.initial_vector(0)
    global_state = {
        name: torch.from_numpy(v.copy()) for name, v in plain.spec.views(vector).items()
    }
    dp_options: dict[str, Any] = {
        "noise_multiplier": NOISE_MULTIPLIER,
        "max_grad_norm": MAX_GRAD_NORM,
        "delta": DELTA,
    }
    ours = DpSgdTrainer(model_factory, **dp_options)
    ours_test = DpSgdTrainer(model_factory, noise=NoiseSource.for_testing(0), **dp_options)
    steps = args.epochs * NUM_EXAMPLES // BATCH_SIZE
    rows = _median_ms(
        args.rounds,
        {
            "plain (TorchTrainer)": fedwarden_round(plain, vector, data, train),
            "fedwarden DpSgdTrainer": fedwarden_round(ours, vector, data, train),
            "fedwarden, test-mode noise": fedwarden_round(ours_test, vector, data, train),
            "opacus, make_private per round": opacus_per_round(global_state, data, args.epochs),
            "opacus, wrapped once": opacus_wrapped_once(global_state, data, args.epochs),
            "opacus, wrapped once, no epsilon": opacus_wrapped_once(
                global_state, data, args.epochs, epsilon=False
            ),
            "wrapper setup": wrapper_setup(),
        },
    )
    setup = rows.pop("wrapper setup")
    plain_ms = rows["plain (TorchTrainer)"]
    print(
        f"one client, {NUM_EXAMPLES} examples, MLP 64-64-10, batch {BATCH_SIZE}, "
        f"{args.epochs} epoch(s) = {steps} steps, z = {NOISE_MULTIPLIER}, C = {MAX_GRAD_NORM}, "
        f"median of {args.rounds} rounds, 1 thread"
    )
    print(f"  {'path':<34} {'ms/round':>9} {'ms/step':>8} {'DP overhead ms':>15} {'x plain':>8}")
    for name, ms in rows.items():
        print(
            f"  {name:<34} {ms:>9.2f} {ms / steps:>8.3f} {ms - plain_ms:>15.2f} "
            f"{ms / plain_ms:>8.1f}"
        )
    ours_ms = rows["fedwarden DpSgdTrainer"]
    for peer in (
        "opacus, make_private per round",
        "opacus, wrapped once",
        "opacus, wrapped once, no epsilon",
    ):
        peer_ms = rows[peer]
        print(
            f"  fedwarden / {peer:<32} round {ours_ms / peer_ms:.2f}x, DP overhead "
            f"{(ours_ms - plain_ms) / (peer_ms - plain_ms):.2f}x  (target <= 1)"
        )
    print(
        f"  Opacus wrapper setup (GradSampleModule + DPOptimizer): {setup:.2f} ms, "
        f"{setup / ours_ms:.0%} of a DpSgdTrainer round; the first in a process: "
        f"{first_setup:.0f} ms (once per worker)"
    )
    print(
        f"  DpSgdTrainer round before (wrap every round): {ours_ms + setup:.2f} ms, "
        f"after (wrappers reused): {ours_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
