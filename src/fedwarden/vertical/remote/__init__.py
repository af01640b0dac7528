"""Vertical federated learning over gRPC with mutual TLS: each feature party in its own process.

Modules: :mod:`~fedwarden.vertical.remote.codecs` (the wire),
:mod:`~fedwarden.vertical.remote.server` (a feature party serving),
:mod:`~fedwarden.vertical.remote.client` (the label party's handle on one),
:mod:`~fedwarden.vertical.remote.tables` (a party's ``.npz`` table) and
:mod:`~fedwarden.vertical.remote.driver` (the label party's whole run).

A feature party runs :class:`FeaturePartyServer` (``fedwarden vertical
party``): it holds its entity ids, its columns, its bottom model and its
:class:`~fedwarden.vertical.release.GaussianRelease`, and serves the
``FeatureParty`` service of ``vertical.proto``. The label party drives: it
holds the labels and the top model and reaches each feature party through a
:class:`RemoteFeatureParty`, which has the interface
(:class:`~fedwarden.vertical.split.BottomParty`) that
:class:`~fedwarden.vertical.split.SplitLearning` uses from a local
:class:`~fedwarden.vertical.split.FeatureParty`; the training loop is the same
one, and this module only carries its messages.

- **Alignment**: :func:`~fedwarden.vertical.alignment.align_as_leader` with
  each :class:`RemoteFeatureParty` as an
  :class:`~fedwarden.vertical.alignment.AlignmentPeer`; the server side is an
  :class:`~fedwarden.vertical.alignment.AlignmentFollower`. Only 32-byte
  blinded points cross, and each party's receipt (row count, SHA-256 of the
  agreed order).
- **Training**: ``Prepare`` sends the public :class:`ArchitectureSpec` and the
  party's position; the party builds its bottom from its own seed (a secret
  one unless it was started with one), never the proposed one, and without a
  DP release refuses a bottom with as many cut columns as it has columns
  (whoever knows its weights would invert the activations to the raw rows);
  then ``Start``, ``Forward`` and ``Backward`` carry exactly the
  :class:`CutActivation` and :class:`CutGradient` arrays, as raw float32 bytes.
- **Wire checks**: every array must be two-dimensional with both dimensions
  at least 1, its bytes must match its shape, and its values must be finite;
  the driver also checks that an activation has its architecture's cut width;
  row indices must be distinct int64 within the aligned table; messages are
  capped at :data:`MAX_MESSAGE_BYTES`; the protocol version is checked at
  ``Describe``. A refused ``Prepare``, ``Start``, ``Forward`` or ``Backward``
  changes nothing at the receiving party (a refused ``Forward`` releases and
  counts nothing). A refused PSI step does change it: the step's PSI state is
  consumed, so the driver restarts the alignment from ``Offer`` (phase 1) or
  ``RequestFinal`` (phase 2). Nothing is pickled.
- **Privacy accounting**: a party applies its own release before sending and
  declares it at ``Describe`` (again at ``Start``); the driver's
  :class:`~fedwarden.privacy.ledger.PrivacyLedger` charges the declared
  releases, exactly as for in-process parties, and refuses before training a
  plan that exceeds the driver's budget.
- **The party's own budget**: a party with a release does not trust the
  driver's accounting. It keeps its own
  :class:`~fedwarden.privacy.ledger.PrivacyLedger`, with one per-row entry
  per pass it released (:meth:`~fedwarden.privacy.ledger.PrivacyLedger.charge_rows`;
  :func:`~fedwarden.vertical.release.release_events`: a training pass is the
  message and the DP-SGD bottom update, a predict pass the message), and
  refuses with ``FAILED_PRECONDITION``, before releasing anything, a
  ``Forward`` that would take any requested row's composed epsilon past its
  :class:`~fedwarden.privacy.ledger.PrivacyBudget`. The rows of one
  ``Forward`` must be distinct, so a driver cannot average one row's noise
  away by asking for it many times, in one call or in many. Entries are kept
  by table row, so aligning again does not reset them; the ledger lives as
  long as the server process (a restarted party starts a fresh budget).
- **The labels**: the driver trains on labels randomized under label DP
  (:mod:`fedwarden.vertical.label_dp`, on by default in
  :func:`~fedwarden.vertical.remote.driver.train_label_party`), so the cut
  gradients it sends do not give the feature parties its labels.
- **Bounds**: the party's gRPC server admits a few calls in progress per peer
  and in all (:mod:`fedwarden.runtime.grpc.limits`), and messages up to
  :data:`~fedwarden.vertical.remote.codecs.MAX_MESSAGE_BYTES`; an excess call
  is refused with ``RESOURCE_EXHAUSTED``.
- **Authentication**: mutual TLS with the startup kits of ``fedwarden pki``:
  a certificate from another CA is refused in the handshake, and a party
  served with TLS must name its ``driver``: it answers only the label party
  whose certificate bears that name (``PERMISSION_DENIED`` to any other
  certificate of the same CA).
"""

from fedwarden.vertical.remote.client import CALL_TIMEOUT_S, RemoteFeatureParty
from fedwarden.vertical.remote.codecs import (
    MAX_MESSAGE_BYTES,
    SERVICE,
    channel_options,
    decode_rows,
    decode_tensor,
    encode_rows,
    encode_tensor,
)
from fedwarden.vertical.remote.driver import VerticalResult, train_label_party
from fedwarden.vertical.remote.server import FeaturePartyServer
from fedwarden.vertical.remote.tables import PartyTable, load_party_table

__all__ = [
    "CALL_TIMEOUT_S",
    "MAX_MESSAGE_BYTES",
    "SERVICE",
    "FeaturePartyServer",
    "PartyTable",
    "RemoteFeatureParty",
    "VerticalResult",
    "channel_options",
    "decode_rows",
    "decode_tensor",
    "encode_rows",
    "encode_tensor",
    "load_party_table",
    "train_label_party",
]
