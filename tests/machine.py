"""What a test needs from the machine, and what happens when the machine lacks it.

Outside CI a missing system package (Chromium, PostgreSQL, podman) or privilege (root for
network namespaces and image builds) skips the test with what to install. Under CI
(``CI=true``), where .ci/run installs all of them as root, the same lack fails the test: a
capability the project claims is never left unchecked by a skip there.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip for ``reason``; under CI, fail with it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must provide it (.ci/run installs it as root)")
    pytest.skip(reason)
