"""Model adapters: the Trainer protocol, NumPy functions, PyTorch and scikit-learn.

The PyTorch adapter lives in :mod:`fedwarden.models.torch` (extra ``torch``), its
built-in CNN and text classifier in :mod:`fedwarden.models.zoo`, and the
scikit-learn adapter in :mod:`fedwarden.models.sklearn`; import them from there.
"""

from fedwarden.models.numpy import NumpyTrainer, softmax_regression
from fedwarden.models.trainer import ClientContext, ClientState, Trainer

__all__ = ["ClientContext", "ClientState", "NumpyTrainer", "Trainer", "softmax_regression"]
