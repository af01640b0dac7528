"""Write a folder of per-client .npz files: the bring-your-own-silos layout.

Splits scikit-learn's digits across hospitals with label skew, one
``<hospital>.npz`` each (arrays ``x``, ``y``), a central ``_test.npz``, and an
``attributes.json`` marking each hospital urban or rural. Usage::

    python examples/make_silos.py examples/silos
    fedwarden run examples/silos.toml --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def write_silos(folder: Path, hospitals: int = 12, seed: int = 0) -> None:
    """Write ``hospitals`` client files, ``_test.npz`` and ``attributes.json`` into ``folder``."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, train = order[:300], order[300:]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "_test.npz", x=x[test], y=y[test])
    shares = rng.dirichlet(np.full(hospitals, 1.0), size=10)
    by_label = [train[y[train] == label] for label in range(10)]
    assignment: list[list[int]] = [[] for _ in range(hospitals)]
    for label, members in enumerate(by_label):
        cuts = (np.cumsum(shares[label]) * len(members)).astype(int)[:-1]
        for hospital, part in enumerate(np.split(members, cuts)):
            assignment[hospital].extend(part.tolist())
    attributes = {}
    for hospital, rows in enumerate(assignment):
        name = f"hospital-{hospital:02d}"
        np.savez(folder / f"{name}.npz", x=x[rows], y=y[rows])
        attributes[name] = {"setting": "urban" if hospital % 3 else "rural"}
    (folder / "attributes.json").write_text(json.dumps(attributes, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--hospitals", type=int, default=12)
    args = parser.parse_args()
    write_silos(args.folder, args.hospitals)
    print(f"wrote {args.hospitals} hospital files to {args.folder}")
