"""examples/cnn_images.py: the image folders it draws, and the run it prints, small."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from torch import nn

from fedwarden.build.run import prepare
from fedwarden.core.config import DataConfig
from fedwarden.data.images import read_image_folder
from fedwarden.models.dp_sgd import DpSgdTrainer
from fedwarden.models.torch import TorchTrainer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "cnn_images.py"
LINE = re.compile(
    r"(plain|dp-sgd) +accuracy (\d\.\d{3})  (\d+\.\d\d) s/round over 1 rounds(  epsilon (\S+))?"
)


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cnn_images", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_draws_one_image_folder_per_client_and_a_central_test_set(
    tmp_path: Path,
) -> None:
    example().write_image_folders(tmp_path, clients=2, per_class=3, size=12)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["_test", "site_0", "site_1"]
    arrays = read_image_folder(
        tmp_path / "site_0", DataConfig(image_shape=(12, 12), image_mode="L")
    )
    assert arrays["x"].shape == (9, 144)
    assert sorted(arrays["y"]) == sorted(["circle", "square", "triangle"] * 3)
    assert arrays["x"].min() >= 0.0 and arrays["x"].max() <= 1.0
    assert len({row.tobytes() for row in np.asarray(arrays["x"])}) == 9


@pytest.mark.parametrize("dp_sgd", [False, True])
def test_example_config_builds_the_cnn_for_the_images_shape(tmp_path: Path, dp_sgd: bool) -> None:
    script = example()
    script.write_image_folders(tmp_path, clients=2, per_class=3, size=12)
    args = argparse.Namespace(rounds=1, size=12, device="cpu", clients=2, epsilon=4.0)
    config = script.config(tmp_path, args, dp_sgd)
    trainer = prepare(config).trainer
    assert type(trainer) is (DpSgdTrainer if dp_sgd else TorchTrainer)
    layers = list(trainer.module.modules())
    assert any(isinstance(layer, nn.Conv2d) and layer.in_channels == 1 for layer in layers)
    unflatten = next(layer for layer in layers if isinstance(layer, nn.Unflatten))
    assert tuple(unflatten.unflattened_size) == (1, 12, 12)


@pytest.mark.slow
def test_example_trains_plainly_and_with_dp_sgd_and_prints_both(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--folder", str(tmp_path / "shapes")]
    command += ["--clients", "2", "--per-class", "6", "--size", "12", "--rounds", "1"]
    command += ["--epsilon", "4", "--device", "cpu"]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [LINE.fullmatch(line) for line in done.stdout.splitlines()]
    assert all(lines), done.stdout
    plain, private = (match for match in lines if match is not None)
    assert (plain[1], plain[4], private[1]) == ("plain", None, "dp-sgd")
    assert all(0.0 <= float(match[2]) <= 1.0 for match in (plain, private))
    assert 0.0 < float(private[5]) <= 4.0
