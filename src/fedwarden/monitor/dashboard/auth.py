"""The dashboard token: long enough, and compared in constant time on every request."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedwarden.monitor.dashboard.views import DashboardError

MIN_TOKEN_CHARACTERS = 16
BEARER = HTTPBearer(auto_error=False, description="The dashboard token.")


def check_token(token: str) -> None:
    """Refuse a token too short to resist guessing (DashboardError)."""
    if len(token) < MIN_TOKEN_CHARACTERS:
        raise DashboardError(
            f"the dashboard token has {len(token)} characters; give at least "
            f"{MIN_TOKEN_CHARACTERS}, e.g. from `python -c 'import secrets; "
            "print(secrets.token_urlsafe())'`"
        )


def bearer_check(token: str) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    """A FastAPI dependency refusing (403) a request whose bearer token is not ``token``."""

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        """Refuse a request without the bearer token (403): reads show client ids and payloads."""
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), token.encode()
        ):
            raise HTTPException(
                403, "the dashboard's data needs its token: Authorization: Bearer <token>"
            )

    return require_token
