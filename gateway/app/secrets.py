"""The HS256 secret that signs user tokens.

An operator sets `SITEBUILDER_JWT_SECRET` in production. For a developer who set
nothing, one secret is generated per data directory and kept there, readable by
the owner only, so `serve` and `token` agree and tokens survive restarts.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from gateway.settings import Settings

logger = logging.getLogger(__name__)

SECRET_BYTES = 32


def jwt_secret(settings: Settings) -> str:
    """The configured secret, else the data directory's one (generated if absent)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    return _stored_secret(settings.jwt_secret_file)


def _stored_secret(path: Path) -> str:
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(SECRET_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)  # another process generated it first
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")
    logger.info(
        "SITEBUILDER_JWT_SECRET is not set: generated a new signing secret in %s (mode 0600)",
        path,
    )
    return value


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        logger.warning("%s was readable by others (mode %o): set it to 0600", path, mode)
    if not value:
        raise ValueError(f"{path} is empty: delete it to generate a new secret")
    logger.info("SITEBUILDER_JWT_SECRET is not set: using the signing secret in %s", path)
    return value
