"""Supabase's own JavaScript client against the gateway (tests/js/supabase, `node --test`).

The point of the `/realtime/v1` endpoint is that code written for Supabase keeps
working, so it is tested with the real `@supabase/realtime-js` (and `supabase-js`) from
npm, pinned by tests/js/supabase/package-lock.json: `npm ci` installs exactly those
(from npm's cache when it has them), then node drives a `sitebuilder-gateway serve
--demo` on a fresh database and writes with psql. Fails with node's report when any of
its tests fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.gateway_fixtures import SECRET, slot_for
from tests.support import REPO_ROOT, cli_env
from tests.test_js_client import bundled_psql

SUITE = REPO_ROOT / "tests" / "js" / "supabase"
NODE_TESTS = sorted(SUITE.glob("*.test.mjs"))
NPM_TIMEOUT = 300.0
NODE_TIMEOUT = 240.0
MIN_NODE_MAJOR = 20


def node_and_npm() -> tuple[str, str]:
    """node and npm, or a failure that says what to install."""
    missing = "Node.js 20 or newer, with npm, is needed for the Supabase client tests"
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node, missing
    assert npm, missing
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = re.match(r"v(\d+)\.", version.stdout)
    assert major, f"{missing}; `node --version` says {version.stdout!r}"
    assert int(major[1]) >= MIN_NODE_MAJOR, f"{missing}; found {version.stdout.strip()}"
    return node, npm


async def run(*command: str, env: dict[str, str], cwd: Path, seconds: float) -> tuple[int, str]:
    """Run to completion; returns (status, stdout and stderr interleaved). It runs in a
    process group of its own, so that on a timeout the gateways node started go down
    with it; what it printed so far is then the failure's message."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = await asyncio.wait_for(process.communicate(), 10)
        raise AssertionError(f"{command[0]} ran over {seconds} s:\n{out.decode()}") from None
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), 10)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_supabase_realtime_js_works_against_the_gateway(
    tmp_path: Path, database_dsn: str
) -> None:
    node, npm = node_and_npm()
    assert NODE_TESTS
    env = cli_env(
        database_url=database_dsn,
        data_dir=str(tmp_path),
        jwt_secret=SECRET,
        feed="replication",
        replication_slot=slot_for(database_dsn),
    )
    env.update(
        SB_PYTHON=sys.executable,
        SB_REPO=str(REPO_ROOT),
        SB_DSN=database_dsn,
        SB_PSQL=bundled_psql(),
    )
    status, report = await run(
        npm,
        "ci",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        env=env,
        cwd=SUITE,
        seconds=NPM_TIMEOUT,
    )
    assert status == 0, f"npm ci failed in {SUITE}:\n{report}"
    status, report = await run(
        node,
        "--test",
        "--test-reporter=tap",
        *map(str, NODE_TESTS),
        env=env,
        cwd=SUITE,
        seconds=NODE_TIMEOUT,
    )
    assert status == 0, report
    counts = dict(re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", report, re.M))
    declared = sum(len(re.findall(r"^\s*test\(", p.read_text(), re.M)) for p in NODE_TESTS)
    assert int(counts["tests"]) >= declared, report
    assert counts["pass"] == counts["tests"], report
