"""`serve --workers N` as a user runs it: one port, N real worker processes, a supervisor.

Clients connect through the one port and land on different workers (the auth reply
names the worker). Each worker reads its own replication slot, so every client must
still receive every committed change exactly once, in order; when a worker is killed
its clients reconnect to the same port, land wherever the kernel sends them, and
resume from their last position with nothing lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import asyncpg
import psutil

from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    WsClient,
    make_project,
    make_sitemap,
    node_slot,
    open_client,
    slot_for,
)
from tests.support import http_get, run_cli
from tests.test_presence import View
from tests.test_resume_processes import (
    DELIVERY_TIMEOUT,
    Gateway,
    Ledger,
    Tab,
    _follow_all,
    _gather,
    assert_exactly_the_commits,
    discard,
    expect_reset_and_snapshot,
    is_change,
    kill_gateway,
    project_named,
    retitle,
    serve_env,
    start_gateway,
    stop_following,
    stop_gateway,
    write,
)

WORKERS = 3
TABS = 12  # on 3 workers, all on one would happen once in 177,000 runs
SITEMAPS = 4
WRITERS = 3
BURST = 1500
TAIL = 30
STOP_AT = 150
POLL_SECONDS = 0.05
STARTED = re.compile(r"worker (?P<index>\d+) started \(pid (?P<pid>\d+)\)")


@dataclass
class WorkerTab(Tab):
    """A tab that remembers which worker each of its connections landed on."""

    nodes: list[str] = field(default_factory=list)

    async def open(self, url: str) -> WsClient:
        self.client = await open_client(url)
        reply = await self.client.auth(self.user)
        self.nodes.append(reply["data"]["node"])
        return self.client


def worker_pids(gateway: Gateway) -> dict[int, int]:
    """The latest pid of each worker index, from the supervisor's log."""
    return {int(m["index"]): int(m["pid"]) for m in STARTED.finditer(gateway.log())}


async def logged(gateway: Gateway, pattern: str) -> str:
    """The first line of the gateway's log matching `pattern`, once it is there (the
    log is read by a background task: this watches what it collected)."""
    for _ in range(int(TIMEOUT / POLL_SECONDS)):
        for line in gateway.serving.log:
            if re.search(pattern, line):
                return line
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"not logged: {pattern!r}\n{gateway.log()}")


async def metric(port: int, name: str) -> float:
    body = (await http_get(port, "/metrics")).body
    match = re.search(rf"^{name} (\S+)$", body, re.MULTILINE)
    assert match is not None, body
    return float(match[1])


async def slots(conn: asyncpg.Connection) -> dict[str, bool]:
    rows = await asyncio.wait_for(
        conn.fetch(
            "SELECT slot_name, active FROM pg_replication_slots WHERE database = current_database()"
        ),
        TIMEOUT,
    )
    return {row["slot_name"]: row["active"] for row in rows}


async def until_inactive(conn: asyncpg.Connection, names: list[str]) -> dict[str, bool]:
    """The slots once none is active: a stopped worker's walsender exits just after it."""
    for _ in range(int(TIMEOUT / POLL_SECONDS)):
        found = await slots(conn)
        if not any(found.values()):
            break
        await asyncio.sleep(POLL_SECONDS)
    return found


async def test_clients_on_three_workers_get_every_change_once_across_a_killed_worker(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner, name="Bakery")
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(SITEMAPS)]
    env = serve_env(tmp_path, database_dsn, workers=str(WORKERS))
    tabs = [WorkerTab(f"tab-{n}", owner, project) for n in range(TABS)]
    ledger = Ledger(stop_at=STOP_AT)
    gateway: Gateway | None = None
    writers: asyncio.Future[list[None]] | None = None
    readers: list[asyncio.Task[str]] = []
    try:
        gateway = await start_gateway(env)
        for tab in tabs:
            await tab.subscribe(gateway.url)
        landed = Counter(tab.nodes[0] for tab in tabs)
        assert len(landed) > 1, landed
        assert await slots(conn) == {node_slot(database_dsn): True}
        assert await walsenders(conn) == 1
        assert set(landed) <= {f"gateway_{i}" for i in range(WORKERS)}
        assert await metric(gateway.serving.port, "sitebuilder_connections") == TABS
        snapshot_versions = {s["id"]: s["version"] for s in tabs[0].snapshot["sitemaps"]}  # type: ignore[index]

        readers = _follow_all(tabs, project_named("marker"), DELIVERY_TIMEOUT)
        writers = asyncio.gather(
            *(write(database_dsn, sitemaps, w, BURST // WRITERS, ledger) for w in range(WRITERS))
        )
        waits = [ledger.reached.wait(), *(t.enough.wait() for t in tabs)]
        await asyncio.wait_for(asyncio.gather(*waits), 30)
        victim_node, _ = landed.most_common(1)[0]
        victim = int(victim_node.rsplit("_", 1)[1])
        victim_pid = worker_pids(gateway)[victim]
        os.kill(victim_pid, signal.SIGKILL)
        on_victim = [n for n, tab in enumerate(tabs) if tab.nodes[0] == victim_node]
        lost = await _gather([readers[n] for n in on_victim], TIMEOUT)
        assert lost == ["closed"] * len(on_victim)
        assert len(ledger) < BURST, "the writers were done before the worker went"
        before_restart = tabs[on_victim[0]].position
        for n in on_victim:
            tab = tabs[n]
            tab.updates_before_stop = tab.updates
            reply = await tab.resume(gateway.url, ledger.__len__)
            assert reply["data"]["resumed"] is True, (tab.name, tab.position, gateway.log())
            assert tab.committed_at_resume > tab.updates_before_stop  # it did miss some
            readers[n] = asyncio.create_task(tab.follow(project_named("marker"), DELIVERY_TIMEOUT))

        await asyncio.wait_for(writers, DELIVERY_TIMEOUT)
        for n in range(TAIL):
            await retitle(conn, sitemaps[n % SITEMAPS], f"tail-{n}", ledger)
        await asyncio.wait_for(
            conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", project), TIMEOUT
        )
        assert await _gather(readers, DELIVERY_TIMEOUT) == ["done"] * TABS

        await logged(gateway, rf"worker {victim} \(pid {victim_pid}\) exited")
        await logged(gateway, rf"worker {victim} listens again")
        assert worker_pids(gateway)[victim] != victim_pid
        # Every worker's connections, the dead one's gone: the kernel balanced the
        # reconnections, the merged gauge counts each tab once.
        assert await metric(gateway.serving.port, "sitebuilder_connections") == TABS
        # The replacement caught up from the node's feed: it replays from before it started.
        late = await client_on(gateway, victim_node, owner)
        reply = await late.request(
            {"type": "subscribe", "project_id": str(project), "since": before_restart}
        )
        assert reply["data"]["resumed"] is True, gateway.log()
        await late.close()

        pids = list(worker_pids(gateway).values())
        assert await stop_gateway(gateway) == 0, gateway.log()
        assert not any(psutil.pid_exists(pid) for pid in pids)
        assert gateway.log().count("gateway.app.serve: stopped") == WORKERS
        assert "gateway.app.supervisor: stopped" in gateway.log()
    finally:
        await stop_following(readers, writers, tabs)
        await discard(gateway)

    assert len(ledger) == BURST + TAIL
    for tab in tabs:
        assert tab.others == []  # no reset, no second snapshot, no error
        assert_exactly_the_commits(tab, ledger, snapshot_versions)


async def client_on(gateway: Gateway, node: str, user: UUID) -> WsClient:
    """A client signed in on worker `node` (the kernel spreads connections: try again)."""
    for _ in range(100):
        client = await open_client(gateway.url)
        if (await client.auth(user))["data"]["node"] == node:
            return client
        await client.close()
    raise AssertionError(f"no connection landed on {node}")


async def users_seen(client: WsClient, view: View, expected: set[str]) -> None:
    """Apply the client's presence diffs until it shows exactly `expected` users."""

    async def read() -> None:
        while set(view.users.values()) != expected:
            view.apply(await client.recv_type("presence.diff"))

    await asyncio.wait_for(read(), TIMEOUT)


async def test_every_worker_shows_the_union_of_presence_and_drops_a_killed_workers_clients(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Then the supervisor is killed: every worker stops, letting go of the node's slot
    (checked here rather than on a gateway of its own: one start of the processes fewer)."""
    users = [await make_user() for _ in range(WORKERS)]
    project = await make_project(conn, users[0], collaborators=users[1:])
    env = serve_env(tmp_path, database_dsn, workers=str(WORKERS), presence_node_timeout_seconds="2")
    gateway: Gateway | None = None
    opened: list[WsClient] = []
    on_worker: dict[str, tuple[WsClient, str]] = {}
    try:
        gateway = await start_gateway(env)
        for _ in range(WORKERS * 20):  # until the kernel put one client on each worker
            if len(on_worker) == WORKERS:
                break
            user = users[len(on_worker)]
            client = await open_client(gateway.url)
            opened.append(client)
            node = (await client.auth(user))["data"]["node"]
            on_worker.setdefault(node, (client, str(user)))
        assert len(on_worker) == WORKERS, on_worker.keys()
        views: dict[str, View] = {}
        for node, (client, _) in on_worker.items():
            client.presence = True
            await client.subscribe(project, snapshot=False)
            views[node] = View(await client.recv_type("presence.state"))

        everyone = {user for _, user in on_worker.values()}
        for node, (client, _) in on_worker.items():
            await users_seen(client, views[node], everyone)

        victim = sorted(on_worker)[0]
        os.kill(worker_pids(gateway)[int(victim.rsplit("_", 1)[1])], signal.SIGKILL)
        survivors = everyone - {on_worker[victim][1]}
        for node, (client, _) in on_worker.items():
            if node != victim:
                await users_seen(client, views[node], survivors)

        workers = psutil.Process(gateway.serving.process.pid).children()
        assert len(workers) >= WORKERS - 1
        gateway.serving.kill()
        _, alive = await asyncio.to_thread(psutil.wait_procs, workers, TIMEOUT)
        assert alive == []
        # They shut down gracefully: their slot is let go, ready for the next start.
        names = [node_slot(database_dsn)]
        assert await until_inactive(conn, names) == dict.fromkeys(names, False)
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(), TIMEOUT)
        await discard(gateway)


async def legacy_slots(conn: asyncpg.Connection, dsn: str, indexes: range) -> list[str]:
    """Per-worker slots as earlier versions left them (`<prefix>_<node>_<index>`)."""
    names = [node_slot(dsn).removesuffix("_0") + f"_{index}" for index in indexes]
    for name in names:
        await asyncio.wait_for(
            conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name),
            TIMEOUT,
        )
    return names


async def walsenders(conn: asyncpg.Connection) -> int:
    """Walsenders streaming from this database's slots."""
    count: int = await asyncio.wait_for(
        conn.fetchval(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s "
            "ON s.active_pid = r.pid WHERE s.database = current_database()"
        ),
        TIMEOUT,
    )
    return count


async def test_a_node_of_three_workers_reads_one_slot_and_drops_earlier_per_worker_ones(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection
) -> None:
    """A second `serve` with the node's name, started while the node runs, exits naming
    the clash and leaves the node serving (checked on this node rather than on a
    gateway of its own: one start of the heavy processes fewer)."""
    env = serve_env(tmp_path, database_dsn, workers="3")
    mine = node_slot(database_dsn)
    old = await legacy_slots(conn, database_dsn, range(1, 3))
    gateway: Gateway | None = None
    try:
        gateway = await start_gateway(env)
        for name in old:
            assert f"dropped replication slot {name}: the node reads one slot now" in gateway.log()
        assert await slots(conn) == {mine: True}
        assert await walsenders(conn) == 1
        status, out, _ = await run_cli("slot", "status", env=env)
        assert status == 0
        assert re.findall(r"^slot +(\S+)$", out, re.MULTILINE) == [mine]

        second = {**env, "SITEBUILDER_WORKERS": "1", "SITEBUILDER_SLOT_WAIT_SECONDS": "0.5"}
        status, _, err = await run_cli("serve", "--port", "0", env=second)
        assert status == 1
        assert f"replication slot {mine} is in use" in err
        assert "SITEBUILDER_NODE_NAME=gateway" in err
        assert "Traceback" not in err
        assert (await http_get(gateway.serving.port, "/readyz")).status == 200
        assert await walsenders(conn) == 1

        assert await stop_gateway(gateway) == 0, gateway.log()
    finally:
        await discard(gateway)

    assert await until_inactive(conn, [mine]) == {mine: False}  # kept: the node resumes from it
    (again,) = await legacy_slots(conn, database_dsn, range(1, 2))
    status, out, err = await run_cli("slot", "prune", env=env)
    assert (status, out.strip()) == (0, f"dropped slot {again}"), err
    assert await slots(conn) == {mine: False}
    status, out, _ = await run_cli("slot", "prune", env=env)
    assert (status, out.strip()) == (0, f"no slots of node gateway but its own, {mine}")


async def test_sigttin_adds_a_worker_and_sigttou_removes_it(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user = await make_user()
    env = serve_env(tmp_path, database_dsn, workers="2")
    gateway: Gateway | None = None
    try:
        gateway = await start_gateway(env)
        supervisor = gateway.serving.process
        supervisor.send_signal(signal.SIGTTIN)
        await logged(gateway, r"worker gateway_2 ready")
        assert await slots(conn) == {node_slot(database_dsn): True}
        assert await metric(gateway.serving.port, "sitebuilder_feed_up") == 1

        supervisor.send_signal(signal.SIGTTOU)
        await logged(gateway, r"\[worker 2\] .*gateway\.app\.serve: stopped")
        assert await slots(conn) == {node_slot(database_dsn): True}
        nodes = set()
        for _ in range(8):  # whichever worker the kernel picks, never the removed one
            client = await open_client(gateway.url)
            nodes.add((await client.auth(user))["data"]["node"])
            await client.close()
        assert nodes <= {"gateway_0", "gateway_1"}
        assert await stop_gateway(gateway) == 0, gateway.log()
    finally:
        await discard(gateway)


async def test_a_client_of_a_killed_node_resumes_on_another_node_with_exactly_the_commits(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(2)]
    alpha_env = serve_env(tmp_path / "alpha", database_dsn, node_name="alpha")
    beta_env = serve_env(tmp_path / "beta", database_dsn, node_name="beta")
    tab = WorkerTab("tab", owner, project)
    ledger = Ledger(stop_at=BURST)
    alpha: Gateway | None = None
    beta: Gateway | None = None
    try:
        alpha = await start_gateway(alpha_env)
        beta = await start_gateway(beta_env)
        prefix = slot_for(database_dsn)
        assert await slots(conn) == {f"{prefix}_alpha_0": True, f"{prefix}_beta_0": True}
        await tab.subscribe(alpha.url)
        assert tab.snapshot is not None
        snapshot_versions = {s["id"]: s["version"] for s in tab.snapshot["sitemaps"]}
        for n in range(20):
            await retitle(conn, sitemaps[n % 2], f"before-{n}", ledger)
        assert await tab.follow(lambda f: len(tab.sitemap_updates()) == 20, TIMEOUT) == "done"

        assert await kill_gateway(alpha) == -signal.SIGKILL
        assert await tab.follow(lambda f: False, TIMEOUT) == "closed"
        for n in range(30):  # while the tab is away
            await retitle(conn, sitemaps[n % 2], f"away-{n}", ledger)
        reply = await tab.resume(beta.url, ledger.__len__)
        assert reply["data"]["resumed"] is True, beta.log()
        for n in range(10):
            await retitle(conn, sitemaps[n % 2], f"after-{n}", ledger)
        await asyncio.wait_for(
            conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", project), TIMEOUT
        )
        assert await tab.follow(project_named("marker"), DELIVERY_TIMEOUT) == "done"
    finally:
        await tab.close()
        await discard(alpha)
        await discard(beta)

    assert tab.nodes == ["alpha_0", "beta_0"]
    assert tab.others == []
    assert_exactly_the_commits(tab, ledger, snapshot_versions)


async def test_with_the_notify_feed_a_client_moving_node_gets_reset_and_a_true_snapshot(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Positions of the NOTIFY feed belong to one feed connection: another node cannot
    vouch for them, and says so (docs/deployment.md)."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    ledger = Ledger(stop_at=BURST)
    tab = WorkerTab("tab", owner, project)
    nodes: list[Gateway] = []
    try:
        for name in ("alpha", "beta"):
            env = serve_env(tmp_path / name, database_dsn, node_name=name)
            nodes.append(await start_gateway({**env, "SITEBUILDER_FEED": "notify"}))
        alpha, beta = nodes
        await tab.subscribe(alpha.url)
        await retitle(conn, sitemap, "seen", ledger)
        assert await tab.follow(lambda f: is_change(f, "version"), TIMEOUT) == "done"
        assert await kill_gateway(alpha) == -signal.SIGKILL
        await retitle(conn, sitemap, "missed", ledger)
        snapshot = await expect_reset_and_snapshot(tab, beta.url, conn, tab.position)
        assert snapshot["sitemaps"][0]["title"] == "missed"
    finally:
        await tab.close()
        for node in nodes:
            await discard(node)


async def test_a_worker_count_out_of_range_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    env = serve_env(tmp_path, "postgresql://nobody@/nowhere")
    counts = ("0", "1000", "many")
    # Side by side: each is a process of its own, most of its time spent importing.
    runs = await asyncio.gather(*(run_cli("serve", "--workers", n, env=env) for n in counts))
    for status, _, err in runs:
        assert status == 2
        assert "a number from 1 to 999, or auto" in err
