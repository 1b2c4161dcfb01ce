"""The code style and type checks are part of the suite, so CI enforces them."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO_ROOT

PACKAGES = ["gateway", "protocol", "db", "loadtest", "tests", "migrations"]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", *PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = _run("ruff", "format", "--check", *PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_strict_on_protocol_and_db() -> None:
    result = _run("mypy", "gateway", "protocol", "db", "loadtest")
    assert result.returncode == 0, result.stdout + result.stderr
