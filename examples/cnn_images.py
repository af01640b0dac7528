"""Train the built-in CNN (``model.kind = "cnn"``) on an image folder, with and without DP-SGD.

Draws its own data set with Pillow, nothing downloaded: grayscale circles,
squares and triangles of random size, place and shade on a noisy background,
one image folder per client (``<client>/<class>/<n>.png``) and a central
``_test`` folder, the layout ``fedwarden client --data`` and ``data.source =
"npz_folder"`` read. Then it trains the same federation twice, plainly and with
sample-level DP-SGD at every client (Opacus; each client's epsilon capped by
``--epsilon``), and prints the test accuracy and seconds per round of each::

    python examples/cnn_images.py                 # 4 clients, 20 rounds
    python examples/cnn_images.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fedwarden import RunConfig, RunResult, run

SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` grayscale image of ``shape`` on a noisy background."""
    background = rng.normal(60.0, 25.0, size=(size, size)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background, mode="L")
    radius = rng.uniform(0.2, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    shade = int(rng.integers(150, 256))
    canvas = ImageDraw.Draw(image)
    if shape == "circle":
        canvas.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=shade)
    elif shape == "square":
        canvas.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=shade)
    else:
        canvas.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=shade
        )
    return image


def write_image_folders(
    folder: Path, clients: int, per_class: int, size: int, seed: int = 0
) -> None:
    """``clients`` image folders of ``per_class`` images per shape, and a central ``_test``."""
    rng = np.random.default_rng(seed)
    for site in [f"site_{index}" for index in range(clients)] + ["_test"]:
        for shape in SHAPES:
            (folder / site / shape).mkdir(parents=True, exist_ok=True)
            for number in range(per_class):
                draw_shape(shape, size, rng).save(folder / site / shape / f"{number:03}.png")


def config(folder: Path, args: argparse.Namespace, dp_sgd: bool) -> RunConfig:
    """The federation: every client each round, the CNN, plain or DP-SGD training."""
    values: dict[str, Any] = {
        "name": "cnn-images-dp-sgd" if dp_sgd else "cnn-images",
        "rounds": args.rounds,
        "seed": 0,
        "data": {
            "source": "npz_folder",
            "path": str(folder),
            "classes": list(SHAPES),
            "image_shape": [args.size, args.size],
            "image_mode": "L",
        },
        "model": {"kind": "cnn"},
        "train": {
            "local_epochs": 2,
            "batch_size": 16,
            "learning_rate": 0.1,
            "device": args.device,
        },
        "sampling": {"cohort_size": args.clients},
        "runtime": {"workers": 1},
    }
    if dp_sgd:
        values["privacy"] = {"mechanism": "dp_sgd", "epsilon": args.epsilon, "max_grad_norm": 1.0}
    return RunConfig.from_mapping(values)


def report(label: str, result: RunResult) -> str:
    """One line: accuracy, seconds per round and, under DP-SGD, the largest client epsilon."""
    line = (
        f"{label:<8} accuracy {result.accuracy:.3f}  "
        f"{result.wall_s / result.rounds:.2f} s/round over {result.rounds} rounds"
    )
    epsilon = result.history[-1].epsilon if result.history else None
    return line if epsilon is None else f"{line}  epsilon {epsilon:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where to write the images (default: temp)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=40, help="images per shape and client")
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epsilon", type=float, default=8.0, help="each client's DP-SGD budget")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch) / "shapes"
        write_image_folders(folder, args.clients, args.per_class, args.size)
        for label, dp_sgd in (("plain", False), ("dp-sgd", True)):
            print(report(label, run(config(folder, args, dp_sgd))), flush=True)


if __name__ == "__main__":  # the local runtime spawns worker processes
    main()
