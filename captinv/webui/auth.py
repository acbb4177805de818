"""HTTP Basic auth for captinv's routes, matching the WebUI's own `--api-auth` handling."""

from __future__ import annotations

from secrets import compare_digest

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials


def parse_credentials(api_auth: str | None) -> dict[str, str]:
    """`--api-auth "user:pass,user2:pass2"` -> {user: pass}, split as modules/api/api.py splits it."""
    return dict(item.split(":", 1) for item in (api_auth or "").split(",") if item)


def basic_auth(credentials: dict[str, str]):
    """A FastAPI dependency that accepts exactly the given users."""

    def check(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password, expected):
            return True
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    return check
