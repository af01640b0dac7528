"""CKKS aggregation cost: n clients' d-parameter updates summed under encryption, against plain.

Times the three HE steps of ``fedwarden.secure.he`` (client encryption and
signing, the aggregation server's ciphertext sum, the key holder's check, which
recomputes the sum from the signed contributions, and decryption), the bytes
each client uploads, and the overhead against a plain float32 weighted sum of
the same vectors (``np.sum``). Printed next to NVIDIA FLARE's published ~2.7x
wall-clock overhead of HE for CIFAR-10, which is end-to-end training time
(local training dominates it), whereas ours is aggregation only: the two
ratios measure different things. Clients are encrypted one after another and
each upload is added as it arrives, so memory holds one upload plus the sum.
Run: ``python benchmarks/he_aggregation.py [--clients 10] [--dim 100000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.secure.he import HomomorphicSum, PublicContext, encrypt_update, sign_contribution
from fedwarden.secure.he_keyholder import CkksKeyHolder

FLARE_CIFAR10_OVERHEAD = 2.7
"""NVIDIA FLARE's published HE wall-clock overhead for CIFAR-10 training (issue 4)."""
PLAIN_REPEATS = 5
"""The plain sum takes milliseconds; its best of a few runs is the fair baseline."""


def _plain_weighted_mean(updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The plain float32 aggregation HE replaces: weighted np.sum, then divide."""
    pairs = zip(updates, weights, strict=True)
    stacked = np.stack([update * np.float32(weight) for update, weight in pairs])
    return np.sum(stacked, axis=0) / np.float32(sum(weights))


def main() -> None:
    """Print the per-step seconds, bytes and overhead ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--dim", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(args.dim, dtype=np.float32) for _ in range(args.clients)]
    weights = [float(rng.integers(10, 1000)) for _ in range(args.clients)]
    identities = {f"client-{index}": Ed25519PrivateKey.generate() for index in range(args.clients)}

    started = time.perf_counter()
    key_holder = CkksKeyHolder(clients={name: key.public_key() for name, key in identities.items()})
    public_bytes = key_holder.public_context()
    public = PublicContext.load(public_bytes)
    server = HomomorphicSum(public_bytes)
    setup_seconds = time.perf_counter() - started

    encrypt_seconds = aggregate_seconds = 0.0
    upload_bytes = 0
    server.start(args.dim, 0)
    for (name, identity), update, weight in zip(identities.items(), updates, weights, strict=True):
        started = time.perf_counter()
        message = encrypt_update(public, name, update, weight)
        contribution = sign_contribution(message, 0, identity)
        encrypt_seconds += time.perf_counter() - started
        upload_bytes += message.payload_bytes
        started = time.perf_counter()
        server.add(contribution)
        aggregate_seconds += time.perf_counter() - started
    started = time.perf_counter()
    request = server.result()
    aggregate_seconds += time.perf_counter() - started
    started = time.perf_counter()
    mean, total_weight, _ = key_holder.decrypt(request)
    decrypt_seconds = time.perf_counter() - started

    plain_timings = []
    for _ in range(PLAIN_REPEATS):
        started = time.perf_counter()
        plain_mean = _plain_weighted_mean(updates, weights)
        plain_timings.append(time.perf_counter() - started)
    plain_seconds = min(plain_timings)
    plain_bytes = args.clients * args.dim * 4
    he_seconds = encrypt_seconds + aggregate_seconds + decrypt_seconds
    max_error = float(np.max(np.abs(mean.astype(np.float64) - plain_mean)))

    print(f"CKKS aggregation: {args.clients} clients x {args.dim:,} parameters")
    print(f"  (N = 8192, primes 60/40/40/60, scale 2^40, {public.slot_count} slots per chunk)")
    rows = [
        ("key holder setup + public context", f"{setup_seconds:.3f} s"),
        ("client encryption + signing, per client", f"{encrypt_seconds / args.clients:.3f} s"),
        ("client encryption + signing, all clients", f"{encrypt_seconds:.3f} s"),
        ("server ciphertext sum", f"{aggregate_seconds:.3f} s"),
        ("key holder check (sum recomputed) + decryption", f"{decrypt_seconds:.3f} s"),
        ("key holder request size", f"{request.payload_bytes / 1e6:.2f} MB"),
        ("plain float32 weighted np.sum (best of 5)", f"{plain_seconds:.4f} s"),
        ("public context size", f"{len(public_bytes) / 1e6:.2f} MB"),
        ("upload per client, HE", f"{upload_bytes / args.clients / 1e6:.2f} MB"),
        ("upload per client, plain float32", f"{plain_bytes / args.clients / 1e6:.2f} MB"),
        ("upload ratio HE / plain", f"{upload_bytes / plain_bytes:.1f}x"),
        ("server sum ratio HE / plain", f"{aggregate_seconds / plain_seconds:.0f}x"),
        ("encrypt + sum + decrypt ratio HE / plain", f"{he_seconds / plain_seconds:.0f}x"),
        ("NVIDIA FLARE CIFAR-10 (end-to-end training)", f"~{FLARE_CIFAR10_OVERHEAD}x"),
        ("max |HE mean - plain mean|", f"{max_error:.2e}"),
        ("total weight (HE / exact)", f"{total_weight:.6f} / {sum(weights):.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>14}")
    print(
        "  FLARE's ratio is end-to-end training wall clock, where local training dominates;\n"
        "  ours is aggregation only against a bare np.sum, so it is far larger by construction."
    )


if __name__ == "__main__":
    main()
