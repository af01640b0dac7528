"""Peer benchmarks: the same FedAvg workload run with Flower and with Apple's pfl.

Each peer module exposes one function, ``run_flower`` in
:mod:`benchmarks.peers.flower_sim` and ``run_pfl`` in
:mod:`benchmarks.peers.pfl_sim`, with the same signature and the same result
keys, so that a benchmark script can run fedwarden and its peers side by side
on identical data. The peers are optional dependencies (the ``bench`` extra)
and are imported only when their function is called.
"""
