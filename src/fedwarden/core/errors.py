"""The one error hierarchy of fedwarden.

Every error a user can meet derives from :class:`FedwardenError`. Its message
says what was wrong, where, and what to do about it.
"""

from __future__ import annotations


class FedwardenError(Exception):
    """Base class of every fedwarden error."""


class ConfigError(FedwardenError):
    """A run configuration (file, dict or keyword) holds a bad value or key."""


class DataError(FedwardenError):
    """A data set, partition or client data file cannot be used as given."""


class SpecMismatchError(FedwardenError):
    """A vector or set of tensors does not match the ParamSpec it is read with."""


class UpdateRejected(FedwardenError):
    """A client update failed a server-side check and will not be aggregated.

    ``reason`` is a short machine-readable tag (``"shape"``, ``"dtype"``,
    ``"non_finite"``, ``"norm_bound"``, ...) counted per round; the message is
    the sentence shown to the operator.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PipelineError(FedwardenError):
    """A pipeline was built from stages that cannot work together."""


class RoundAborted(FedwardenError):
    """A round's aggregate cannot be released; the model stays unchanged and nothing is revealed.

    Raised when secure aggregation has fewer than its threshold of survivors,
    or a key holder refuses to decrypt a sum of too few updates.
    """


class RuntimeFailure(FedwardenError):
    """A runtime lost a worker or could not deliver a message."""
