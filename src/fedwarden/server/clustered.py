"""Clustered federated learning: group clients by update similarity, train one model per group.

When clients' data disagree (urban and rural hospitals whose patients differ,
or clients whose labels mean different things), one global model fits none of
them well. Following the FL+HC procedure of Briggs, Fan & Andras 2020
("Federated learning with hierarchical clustering of local updates to improve
training on non-IID data", IJCNN), a global model is first trained for a few
warm-up rounds; then every client trains once from it (the probing round), the
clients are grouped by the cosine similarity of their updates with
agglomerative clustering, and each group continues from the warm-up model with
its own server. Sattler, Mueller & Samek 2020 ("Clustered Federated
Learning", IEEE TNNLS) justify the criterion: clients whose data share a
distribution have updates pointing the same way (their Sec. III, eq. 14-17
separate clusters by the cosine similarity of updates).

The probing round sees every client's update in the clear and publishes which
clients resemble which; no privacy accountant covers that, so clustering is
refused under central differential privacy and under secure aggregation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError, RuntimeFailure, UpdateRejected
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientUpdate,
    EvaluateInstruction,
)
from fedwarden.core.params import Vector
from fedwarden.core.records import RoundRecord, RunResult
from fedwarden.runtime.base import Runtime
from fedwarden.server.rundir import RunDirectory
from fedwarden.server.server import Server
from fedwarden.server.traffic import weighted_client_metrics

logger = logging.getLogger(__name__)

Cluster = tuple[str, ...]

ServerFactory = Callable[[Sequence[str], Vector, int, RunDirectory | None], Server]
"""``make_server(client_ids, initial_vector, rounds, run_dir)``: a server over the started runtime.

It samples only among ``client_ids``, starts from ``initial_vector`` (set
``server.vector``), plans ``rounds`` rounds in total, counting the rounds of
history it is given (see :meth:`ClusteredTraining.run`), and checkpoints into
``run_dir``, the cluster's own run directory (or none). It must not start the
runtime again."""


def cluster_by_update_similarity(
    updates: Mapping[str, npt.NDArray[np.floating[Any]]],
    *,
    max_clusters: int,
    min_cluster_size: int = 2,
    distance_threshold: float | None = None,
) -> list[Cluster]:
    """Group clients whose updates point the same way (average-linkage on cosine distance).

    Briggs et al. 2020, Sec. III (FL+HC): agglomerative clustering of the
    clients' updates with average linkage; the cosine distance
    ``1 - <u_i, u_j> / (|u_i| |u_j|)`` is Sattler et al. 2020's similarity
    (eq. 14). The tree is cut at ``distance_threshold`` when given (clusters
    whose members are on average within that distance), and never into more
    than ``max_clusters`` clusters; without a threshold the tree is cut into
    ``max_clusters`` clusters whatever the data say, so give a threshold to let
    the data decide how many. A cluster with fewer than ``min_cluster_size``
    clients then joins the cluster whose centroid (mean unit update) is
    nearest to its own by cosine, the smallest cluster first (of equal sizes,
    the one holding the smallest client id), until none is too small.

    Returns the clusters as tuples of sorted client ids, ordered by their
    smallest id; the result does not depend on the mapping's order.
    """
    if max_clusters < 1:
        raise ConfigError(
            f"clustering: max_clusters={max_clusters}; at least one cluster is needed"
        )
    if min_cluster_size < 1:
        raise ConfigError(f"clustering: min_cluster_size={min_cluster_size}; it must be at least 1")
    if distance_threshold is not None and not 0.0 <= distance_threshold <= 2.0:
        raise ConfigError(
            f"clustering: distance_threshold={distance_threshold}; a cosine distance lies "
            "in [0, 2] (0: same direction, 1: orthogonal, 2: opposite)"
        )
    if not updates:
        raise ConfigError("clustering: no client updates were given; there is nothing to group")
    client_ids = sorted(updates)
    directions = _unit_rows(client_ids, updates)
    if len(client_ids) == 1:
        return [(client_ids[0],)]
    # scipy.cluster and scipy.spatial cost ~0.45 s to import: only a clustered run loads them.
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distances = np.clip(1.0 - directions @ directions.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="average")
    if distance_threshold is None:
        labels = fcluster(tree, t=max_clusters, criterion="maxclust")
    else:
        labels = fcluster(tree, t=distance_threshold, criterion="distance")
        if labels.max() > max_clusters:
            labels = fcluster(tree, t=max_clusters, criterion="maxclust")
    members = _merge_small_clusters(_groups(labels), directions, min_cluster_size)
    return sorted(tuple(client_ids[i] for i in sorted(group)) for group in members)


def _unit_rows(
    client_ids: Sequence[str], updates: Mapping[str, npt.NDArray[np.floating[Any]]]
) -> npt.NDArray[np.float64]:
    """The updates as rows of unit length (float64), refusing those without a direction."""
    sizes = {np.shape(updates[cid]) for cid in client_ids}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ConfigError(
            f"clustering: updates must be flat vectors of one length; got shapes {sorted(sizes)}"
        )
    matrix = np.stack([np.asarray(updates[cid], dtype=np.float64) for cid in client_ids])
    norms = np.linalg.norm(matrix, axis=1)
    for cid, norm in zip(client_ids, norms, strict=True):
        if not np.isfinite(norm) or norm == 0.0:
            raise UpdateRejected(
                "no_direction",
                f"clustering: the update of client {cid!r} has norm {norm}; a zero or "
                "non-finite update has no direction to compare; leave it out of the clustering",
            )
    unit: npt.NDArray[np.float64] = matrix / norms[:, None]
    return unit


def _groups(labels: npt.NDArray[np.integer[Any]]) -> list[list[int]]:
    """Row indices per cluster label."""
    return [np.flatnonzero(labels == label).tolist() for label in np.unique(labels)]


def _merge_small_clusters(
    groups: list[list[int]], directions: npt.NDArray[np.float64], min_cluster_size: int
) -> list[list[int]]:
    """Fold each cluster below ``min_cluster_size`` into the cluster with the nearest centroid."""
    groups = sorted(groups, key=min)
    while len(groups) > 1:
        sizes = [len(group) for group in groups]
        smallest = int(np.argmin(sizes))
        if sizes[smallest] >= min_cluster_size:
            break
        centroids = np.stack([directions[group].mean(axis=0) for group in groups])
        lengths = np.linalg.norm(centroids, axis=1)
        centroids /= np.where(lengths > 0.0, lengths, 1.0)[:, None]
        similarity = centroids @ centroids[smallest]
        similarity[smallest] = -np.inf
        nearest = int(np.argmax(similarity))
        merged = groups[nearest] + groups[smallest]
        rest = [group for i, group in enumerate(groups) if i not in (smallest, nearest)]
        groups = sorted([*rest, merged], key=min)
    return groups


@dataclass(frozen=True)
class ClusteredResult:
    """What clustered training produced, and how it compares with the single global model.

    ``warmup`` is the global model's run (its ``client_accuracy``: the warm-up
    model on every client's test split); ``probe`` the probing round, in which
    every client trained once and nothing was aggregated; ``clusters[i]`` the
    clients whose model ``cluster_results[i]`` describes (its history starts
    with the warm-up rounds and the probe). ``global_evaluations`` and
    ``clustered_evaluations`` hold each client's metrics under the warm-up
    model and under its own cluster's final model.
    """

    warmup: RunResult
    probe: RoundRecord
    clusters: tuple[Cluster, ...]
    cluster_results: tuple[RunResult, ...]
    global_evaluations: Mapping[str, ClientEvaluation]
    clustered_evaluations: Mapping[str, ClientEvaluation]

    @property
    def global_metrics(self) -> dict[str, float]:
        """Example-weighted client metrics of the single global (warm-up) model."""
        return weighted_client_metrics(self.global_evaluations.values())

    @property
    def clustered_metrics(self) -> dict[str, float]:
        """Example-weighted client metrics, each client scored by its own cluster's model."""
        return weighted_client_metrics(self.clustered_evaluations.values())

    def to_json(self) -> dict[str, Any]:
        """The run summary entry: clusters, both client-level metrics, each cluster's run."""
        return {
            "clusters": [list(cluster) for cluster in self.clusters],
            "global_client_metrics": self.global_metrics,
            "clustered_client_metrics": self.clustered_metrics,
            "warmup": self.warmup.to_json(),
            "probe": self.probe.to_json(),
            "cluster_runs": [result.to_json() for result in self.cluster_results],
        }


@dataclass(frozen=True)
class ClusteredTraining:
    """FL+HC (Briggs et al. 2020, Sec. III): warm up, probe, cluster, train one model per cluster.

    :meth:`run` takes the warm-up server, whose ``rounds`` are the warm-up
    rounds, over a runtime already started with every client's data.
    ``make_server`` builds each cluster's server (see :data:`ServerFactory`),
    which trains ``cluster_rounds`` rounds after the probe; the clustering
    settings are those of :func:`cluster_by_update_similarity`.
    """

    make_server: ServerFactory
    cluster_rounds: int
    max_clusters: int
    min_cluster_size: int = 2
    distance_threshold: float | None = None

    def run(self, server: Server) -> ClusteredResult:
        """Warm up the global model, probe every client, cluster, then train each cluster.

        1. ``server.run()``: the global model's warm-up rounds and its
           evaluation on every client.
        2. The probing round (index ``server.settings.rounds``): every client trains
           once from the warm-up model; the pipeline's server halves check
           and decode each update; nothing is aggregated. Clients that fail,
           are rejected or return an update without direction (zero norm)
           join the largest cluster (the first of equal ones): with no update
           to compare, the model most clients share is the best guess.
        3. Each cluster's server resumes the warm-up run restricted to its
           clients: the warm-up vector, the history (so round numbers, and
           with them the clients' seeds and persistent state, continue after
           the probe) and the training time; its server optimizer starts
           afresh. It runs ``cluster_rounds`` rounds and evaluates its clients.

        With a run directory the run resumes bit for bit: ``server`` is the
        warm-up server restored from its checkpoint; the clusters and the
        probing round are kept in ``clustering.json`` (a resumed run does not
        probe again), and each cluster's server checkpoints every round into
        its own ``clusters/<i>/`` and continues from there.
        """
        self._check_usable(server)
        warmup = server.run()
        if warmup.stopped_early is not None:
            raise RuntimeFailure(
                f"clustering: the warm-up stopped early ({warmup.stopped_early}); "
                "there is no warm-up model to probe from"
            )
        clusters, probe = self._clusters(server)
        history = [*server.history, probe]
        results: list[RunResult] = []
        clustered_evaluations: dict[str, ClientEvaluation] = {}
        for index, cluster in enumerate(clusters):
            run_dir = None if server.run_dir is None else server.run_dir.cluster_dir(index)
            cluster_server = self.make_server(
                cluster, server.vector.copy(), len(history) + self.cluster_rounds, run_dir
            )
            checkpoint = None if run_dir is None else run_dir.load_checkpoint()
            if checkpoint is None:
                cluster_server.history = list(history)
                cluster_server.train_seconds = server.train_seconds + probe.round_seconds
            else:
                cluster_server.restore(checkpoint)
            results.append(cluster_server.run())
            clustered_evaluations.update(
                evaluate_each_client(
                    cluster_server.runtime,
                    cluster_server.vector,
                    cluster,
                    cluster_server.settings.rounds,
                )
            )
        return ClusteredResult(
            warmup=warmup,
            probe=probe,
            clusters=tuple(clusters),
            cluster_results=tuple(results),
            global_evaluations=evaluate_each_client(
                server.runtime, server.vector, server.client_ids, server.settings.rounds
            ),
            clustered_evaluations=clustered_evaluations,
        )

    def _clusters(self, server: Server) -> tuple[list[Cluster], RoundRecord]:
        """The clusters and the probing round: kept by an earlier run of this one, or probed now."""
        kept = None if server.run_dir is None else server.run_dir.load_clustering()
        if kept is not None:
            return kept
        updates, probe = probing_round(server)
        clusters = cluster_by_update_similarity(
            updates,
            max_clusters=self.max_clusters,
            min_cluster_size=self.min_cluster_size,
            distance_threshold=self.distance_threshold,
        )
        clusters = _place_unclustered(clusters, [c for c in server.client_ids if c not in updates])
        logger.info(
            "clustering: %d cluster(s) of sizes %s", len(clusters), [len(c) for c in clusters]
        )
        if server.run_dir is not None:
            server.run_dir.save_clustering(clusters, probe)
        return clusters, probe

    def _check_usable(self, server: Server) -> None:
        """Refuse settings under which clustering is wrong or not private, before any training."""
        if self.cluster_rounds < 1:
            raise ConfigError(
                f"clustering: cluster_rounds={self.cluster_rounds}; each cluster needs at least "
                "one round of its own"
            )
        if server.privacy is not None:
            raise ConfigError(
                "clustering: the probing round groups clients by their individual updates and "
                "the clusters are published, which the privacy accountant does not cover; "
                "turn off clustering or central differential privacy"
            )
        hiding = server.pipeline.hiding_individual_updates()
        if hiding:
            raise ConfigError(
                f"clustering compares each client's update, but {hiding[0]} hides individual "
                "updates from the server; turn off clustering or secure aggregation"
            )


def probing_round(server: Server) -> tuple[dict[str, Vector], RoundRecord]:
    """Every client of ``server`` trains once from its vector; return the updates, unaggregated.

    The round's index is ``server.next_round``. Each reply passes the
    pipeline's server halves (validation, decoding) as in
    :meth:`Server.run_round`; failures and rejections are counted and left
    out, and so are updates of zero norm (nothing to compare). The record has
    ``applied=False``: the global vector is unchanged.
    """
    started = time.perf_counter()
    round_index = server.next_round
    updates: dict[str, Vector] = {}

    def keep(update: ClientUpdate) -> None:
        if not np.linalg.norm(update.update) > 0.0:
            raise UpdateRejected("no_direction", f"client {update.client_id!r} sent a zero update")
        updates[update.client_id] = update.update

    traffic = server.collect_updates(round_index, server.client_ids, keep)
    if not updates:
        raise RuntimeFailure(
            f"clustering: no client delivered a usable update in the probing round "
            f"(failures {dict(traffic.failures)}, rejections {dict(traffic.rejections)}); "
            "check the clients' logs and the deadline"
        )
    record = RoundRecord(
        round_index=round_index,
        **traffic.record_fields(),
        applied=False,
        loss=None,
        accuracy=None,
        train_loss=None,
        round_seconds=time.perf_counter() - started,
        note="probing round: every client trained once; updates clustered, not aggregated",
    )
    return updates, record


def _place_unclustered(clusters: list[Cluster], unclustered: Sequence[str]) -> list[Cluster]:
    """Add clients without a usable probing update to the largest cluster (first of equals)."""
    if not unclustered:
        return clusters
    largest = max(range(len(clusters)), key=lambda i: (len(clusters[i]), -i))
    placed = list(clusters)
    placed[largest] = tuple(sorted((*clusters[largest], *unclustered)))
    return sorted(placed)


def evaluate_each_client(
    runtime: Runtime, vector: Vector, client_ids: Sequence[str], round_index: int
) -> dict[str, ClientEvaluation]:
    """Each client's metrics of ``vector`` on its test split (clients that fail are left out)."""
    instructions = [EvaluateInstruction(round_index, cid) for cid in client_ids]
    return {
        reply.client_id: reply
        for reply in runtime.evaluate(vector, instructions)
        if isinstance(reply, ClientEvaluation) and reply.num_examples > 0
    }
