"""Fuzzing a live gateway: `sitebuilder-gateway bench fuzz --minutes N` (also
`python -m loadtest fuzz`), and the pieces tests/test_fuzz.py drives in-process.

Sessions drawn by loadtest.fuzz are sent, each on a connection of its own, followed
by a sentinel (a `ping`, a `heartbeat`) whose answer shows everything before it was
handled. Beside them, normal clients keep working:

- bystanders, on a project the fuzzing user may not read: a native subscription and a
  Supabase channel with a `postgres_changes` binding, each counting the wireframe
  updates a writer commits there (every one must arrive, once, in order), and nothing
  else of that project may reach them;
- listeners, in the channels the fuzzers do reach (a project the fuzzing user edits,
  a broadcast room): what the fuzzers make them receive must be documented frames too.

Checked for every session: each message received is a documented frame, each close
is a documented code (never 1011 or a dropped connection), the sentinel is answered,
and no traceback or ERROR reached the gateway's log meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import re
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import asyncpg
import orjson
import psutil
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from loadtest.fuzz import (
    Known,
    NativeSession,
    Session,
    close_problem,
    native_problem,
    native_sessions,
    phoenix_message,
    phoenix_sessions,
    valid_token,
    wire_bytes,
    wire_size,
)
from protocol import phoenix as phx

LOG_LAG = 0.2  # seconds a logged error may take to reach the log file
REPLY_TIMEOUT = 15.0  # for the sentinel's answer: every frame before it was handled
OPEN_TIMEOUT = 10.0
# websockets answers 414 to a request line (the URL, with an apikey) longer than this.
MAX_REQUEST_LINE = 8192
SUPABASE_PATH = "realtime/v1/websocket"

# The world the fuzzers run in


@dataclass(frozen=True)
class World:
    """Users and projects made for a run (straight in SQL, as the tables' owner)."""

    fuzzer: uuid.UUID  # the fuzz sessions' user
    listener: uuid.UUID  # owns `shared` (the fuzzer collaborates) and `public`
    bystander: uuid.UUID  # owns `private`, shared with nobody
    shared: uuid.UUID
    own: uuid.UUID  # the fuzzer's own project
    public: uuid.UUID
    private: uuid.UUID
    private_sitemap: uuid.UUID
    private_wireframe: uuid.UUID  # the writer updates this one
    ids: tuple[uuid.UUID, ...]  # every sitemap and wireframe, and a user who does not exist

    def known(self, secret: str, audience: str, max_frame_bytes: int) -> Known:
        return Known(
            secret=secret,
            audience=audience,
            user=self.fuzzer,
            other_user=self.listener,
            projects=(self.shared, self.own, self.public, self.private),
            ids=self.ids,
            room=ROOM,
            max_frame_bytes=max_frame_bytes,
        )


ROOM = "fuzz-room"


async def create_world(conn: asyncpg.Connection) -> World:
    users = [uuid.uuid4() for _ in range(3)]
    await conn.executemany(
        "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
        [(user, f"fuzz-{user}@example.test") for user in users],
    )
    fuzzer, listener, bystander = users
    projects = {}
    for name, owner, collaborators, public in (
        ("shared", listener, [fuzzer], False),
        ("own", fuzzer, [], False),
        ("public", listener, [], True),
        ("private", bystander, [], False),
    ):
        projects[name] = await conn.fetchval(
            "INSERT INTO projects (user_id, name, type, collaborators, is_public) "
            "VALUES ($1, $2, 'website', $3, $4) RETURNING id",
            owner,
            f"fuzz {name}",
            collaborators,
            public,
        )
    ids: list[uuid.UUID] = []
    wireframes: dict[str, uuid.UUID] = {}
    sitemaps: dict[str, uuid.UUID] = {}
    for name, project in projects.items():
        sitemaps[name] = await conn.fetchval(
            "INSERT INTO sitemaps (project_id, title) VALUES ($1, 'Map') RETURNING id", project
        )
        wireframes[name] = await conn.fetchval(
            "INSERT INTO wireframes (sitemap_id, title) VALUES ($1, 'Frame') RETURNING id",
            sitemaps[name],
        )
        ids += [sitemaps[name], wireframes[name]]
    return World(
        fuzzer=fuzzer,
        listener=listener,
        bystander=bystander,
        shared=projects["shared"],
        own=projects["own"],
        public=projects["public"],
        private=projects["private"],
        private_sitemap=sitemaps["private"],
        private_wireframe=wireframes["private"],
        ids=(*ids, uuid.uuid4()),
    )


# The gateway's log


class LogWatch(Protocol):
    def take(self) -> list[str]:
        """What reached the log since the last call that is an error or a traceback."""
        ...


class CapturedLog(logging.Handler):
    """The log of a gateway in this process: records at ERROR or above, or with an
    exception attached (install() on the root logger, remove() after)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR and record.exc_info is None:
            return
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info is not None and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f" | Traceback: {type(error).__name__}: {error}"[:2000]
        with self._lock:
            self._lines.append(text)

    def take(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def install(self) -> None:
        logging.getLogger().addHandler(self)

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)


class LogFile:
    """The log file of a gateway process: records at ERROR or CRITICAL, and tracebacks
    (each with the lines that follow it, up to the next record)."""

    MARKS = (" ERROR ", " CRITICAL ", "Traceback (most recent call last)")
    RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0

    def take(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        data = data[: data.rfind(b"\n") + 1]  # a record being written: next time
        self._offset += len(data)
        records: list[list[str]] = []
        for line in data.decode(errors="replace").splitlines():
            if self.RECORD.match(line) or not records:
                records.append([line])
            else:
                records[-1].append(line)
        found = []
        for record in records:
            if any(mark in line for line in record for mark in self.MARKS):
                lines = [line.strip() for line in record if line.strip()]
                shown = lines if len(lines) <= 8 else [*lines[:2], "…", *lines[-5:]]
                found.append(" | ".join(shown)[:3000])
        return found


def gateway_log(pid: int | None) -> Path | None:
    """The log of a gateway this run started: `gateway.log` in its data directory
    (loadtest.deployment.started), found through the process's environment."""
    if pid is None:
        return None
    try:
        data_dir = psutil.Process(pid).environ().get("SITEBUILDER_DATA_DIR")
    except psutil.Error:
        return None
    return Path(data_dir) / "gateway.log" if data_dir else None


class NoLog:
    """An existing deployment whose log this run cannot read."""

    def take(self) -> list[str]:
        return []


# Sending sessions


@dataclass
class Outcome:
    """What one session got back."""

    session: Session
    received: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    problems: list[str] = field(default_factory=list)


def is_reply_to(ref: str) -> Callable[[str | bytes], bool]:
    """A native reply (any type) or a Phoenix message (either framing) with `ref`."""

    def matches(message: str | bytes) -> bool:
        if isinstance(message, bytes):
            return False
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            return False
        if isinstance(obj, list) and len(obj) == 5:
            return bool(obj[1] == ref)
        return isinstance(obj, dict) and obj.get("ref") == ref

    return matches


class Fuzzer:
    """Sends sessions to a gateway and checks what comes back."""

    def __init__(self, url: str, logs: LogWatch, max_frame_bytes: int) -> None:
        self.base = url.rstrip("/") + "/"
        self.logs = logs
        self.max_frame_bytes = max_frame_bytes
        self._sentinels = itertools.count(1)
        self.stats: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()

    def url_of(self, session: Session) -> str:
        if isinstance(session, NativeSession):
            return self.base
        query = {}
        if session.apikey is not None:
            query["apikey"] = session.apikey
        if session.vsn is not None:
            query["vsn"] = session.vsn
        return f"{self.base}{SUPABASE_PATH}?{urlencode(query)}"

    async def run(self, session: Session) -> Outcome:
        outcome = Outcome(session)
        sentinel_ref = f"fuzz-sentinel-{next(self._sentinels)}"
        if isinstance(session, NativeSession):
            sentinel: str = orjson.dumps({"type": "ping", "ref": sentinel_ref}).decode()
            vsn = None
        else:
            try:
                vsn = phx.parse_vsn(session.vsn)
            except phx.PhoenixError:
                vsn = phx.Vsn.V1  # the gateway closes with 1003 before any message
            heartbeat = phx.Message(phx.HEARTBEAT_TOPIC, phx.Event.HEARTBEAT, {}, sentinel_ref)
            sentinel = phx.encode(heartbeat, vsn).decode()
        url = self.url_of(session)
        try:
            ws = await asyncio.wait_for(
                connect(url, max_size=None, open_timeout=OPEN_TIMEOUT), OPEN_TIMEOUT
            )
        except InvalidStatus as error:
            if not (error.response.status_code == 414 and len(url) > MAX_REQUEST_LINE):
                outcome.problems.append(f"the websocket was refused: {error!r}")
            return outcome  # else the documented answer to a URL over the limit
        except (InvalidHandshake, OSError, TimeoutError) as error:
            outcome.problems.append(f"the websocket was refused: {error!r}")
            return outcome
        received: list[str | bytes] = []
        answered = asyncio.Event()
        matches = is_reply_to(sentinel_ref)

        async def read() -> None:
            try:
                async for message in ws:
                    if matches(message):
                        answered.set()
                    else:
                        received.append(message)
            except ConnectionClosed:
                pass
            finally:
                answered.set()

        reader = asyncio.create_task(read())
        try:
            for frame in session.frames:
                await ws.send(wire_bytes(frame))
                self.stats["frames sent"] += 1
            await ws.send(sentinel)
        except ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(answered.wait(), REPLY_TIMEOUT)
        except TimeoutError:
            outcome.problems.append(f"no answer to a ping within {REPLY_TIMEOUT:g} s: stuck?")
        await ws.close()
        await reader
        outcome.received = received
        self.stats["messages received"] += len(received)
        for message in received:
            if vsn is None:
                problem = native_problem(message)
            else:
                decoded = phoenix_message(message, vsn)
                problem = decoded if isinstance(decoded, str) else None
            if problem is not None:
                outcome.problems.append(problem)
        rcvd = ws.protocol.close_rcvd
        outcome.close_code = rcvd.code if rcvd is not None else None
        self.closes[outcome.close_code or 1006] += 1
        too_big = any(wire_size(f) > 4 * self.max_frame_bytes for f in session.frames)
        problem = close_problem(
            outcome.close_code, rcvd.reason if rcvd else "", sent_too_big=too_big
        )
        if problem is not None:
            outcome.problems.append(problem)
        outcome.problems += [f"gateway log: {line}" for line in self.logs.take()]
        self.stats["sessions"] += 1
        return outcome


# Normal clients beside the fuzzers


class Watch:
    """A normal client: reads everything it is sent and checks each message; counts
    the writer's updates of `wireframe` (`bench_seq`) when it has one."""

    def __init__(self, name: str, wireframe: uuid.UUID | None) -> None:
        self.name = name
        self.wireframe = str(wireframe) if wireframe else None
        self.seqs: list[int] = []
        self.problems: list[str] = []
        self.ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._pongs: dict[str, asyncio.Event] = {}
        self._refs = itertools.count(1)
        self.ready = asyncio.Event()
        self.closing = False
        self.received = 0

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.name}: {text}")

    async def open(self, url: str) -> None:
        self.ws = await asyncio.wait_for(connect(url, max_size=None), OPEN_TIMEOUT)
        self._task = asyncio.create_task(self._read())
        await self.start()
        await asyncio.wait_for(self.ready.wait(), OPEN_TIMEOUT)

    async def start(self) -> None:
        raise NotImplementedError

    def handle(self, message: str | bytes) -> None:
        raise NotImplementedError

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self.received += 1
                self.handle(message)
        except ConnectionClosed:
            pass
        finally:
            if not self.closing:
                rcvd = self.ws.protocol.close_rcvd
                self.problem(f"closed by the gateway: {rcvd.code if rcvd else 1006}")

    def reply_arrived(self, ref: str) -> None:
        event = self._pongs.get(ref)
        if event is not None:
            event.set()

    async def alive(self) -> bool:
        """Whether a ping sent now is answered."""
        ref = f"alive-{next(self._refs)}"
        event = self._pongs[ref] = asyncio.Event()
        try:
            await self.ping(ref)
            await asyncio.wait_for(event.wait(), REPLY_TIMEOUT)
        except (ConnectionClosed, TimeoutError):
            return False
        return True

    async def ping(self, ref: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            await self._task


class NativeWatch(Watch):
    """`auth`, `subscribe` (no snapshot), then everything the project sends."""

    def __init__(
        self,
        name: str,
        token: str,
        project: uuid.UUID,
        wireframe: uuid.UUID | None = None,
        only_user: uuid.UUID | None = None,
    ) -> None:
        super().__init__(name, wireframe)
        self.token = token
        self.project = str(project)
        self.positions: list[str] = []
        self.only_user = str(only_user) if only_user else None

    async def start(self) -> None:
        assert self.ws is not None
        await self.ws.send(orjson.dumps({"type": "auth", "token": self.token, "ref": "auth"}))
        await self.ws.send(
            orjson.dumps(
                {"type": "subscribe", "project_id": self.project, "snapshot": False, "ref": "sub"}
            )
        )

    async def ping(self, ref: str) -> None:
        assert self.ws is not None
        await self.ws.send(orjson.dumps({"type": "ping", "ref": ref}).decode())

    def handle(self, message: str | bytes) -> None:
        problem = native_problem(message)
        if problem is not None:
            self.problem(problem)
            return
        frame = orjson.loads(message)
        kind = frame["type"]
        if kind == "ok":
            if frame.get("ref") == "sub":
                self.ready.set()
            self.reply_arrived(str(frame.get("ref")))
        elif kind == "change":
            self._change(frame)
        elif kind in ("presence.state", "presence.diff"):
            if self.only_user is not None:
                users = set(frame.get("users", {}))
                users |= set(frame.get("joins", {})) | set(frame.get("leaves", {}))
                if users - {self.only_user}:
                    self.problem(f"someone else in the presence of a private project: {users}")
        else:
            self.problem(f"unexpected {kind}: {message[:300]!r}")

    def _change(self, frame: dict[str, Any]) -> None:
        self.positions.append(str(frame["position"]))
        if self.wireframe is None:
            return
        new = frame.get("new") or {}
        if frame["entity"] == "wireframe" and new.get("id") == self.wireframe:
            self.seqs.append(int(new["layout"]["bench_seq"]))
        elif frame["entity"] == "version" and new.get("entity_id") == self.wireframe:
            pass
        else:
            self.problem(f"a change nobody but the writer may make: {str(frame)[:300]}")


class PhoenixWatch(Watch):
    """A Supabase client: joins one channel, then reads everything."""

    def __init__(
        self,
        name: str,
        vsn: phx.Vsn,
        topic: str,
        config: dict[str, Any],
        wireframe: uuid.UUID | None = None,
        only_keys: set[str] | None = None,
    ) -> None:
        super().__init__(name, wireframe)
        self.vsn = vsn
        self.topic = topic
        self.config = config
        self.only_keys = only_keys

    def url(self, base: str, token: str) -> str:
        query = urlencode({"apikey": token, "vsn": self.vsn.value})
        return f"{base.rstrip('/')}/{SUPABASE_PATH}?{query}"

    async def start(self) -> None:
        assert self.ws is not None
        join = phx.Message(self.topic, phx.Event.JOIN, {"config": self.config}, "join", "join")
        await self.ws.send(phx.encode(join, self.vsn).decode())

    async def ping(self, ref: str) -> None:
        assert self.ws is not None
        message = phx.Message(phx.HEARTBEAT_TOPIC, phx.Event.HEARTBEAT, {}, ref)
        await self.ws.send(phx.encode(message, self.vsn).decode())

    def handle(self, message: str | bytes) -> None:
        decoded = phoenix_message(message, self.vsn)
        if isinstance(decoded, str):
            self.problem(decoded)
            return
        payload = decoded.payload
        if decoded.event == phx.Event.REPLY:
            if decoded.ref == "join":
                if payload["status"] != "ok":
                    self.problem(f"join refused: {payload}")
                self.ready.set()
            self.reply_arrived(str(decoded.ref))
        elif decoded.event == phx.Event.POSTGRES_CHANGES:
            record = payload["data"].get("record") or {}
            if self.wireframe is not None and record.get("id") == self.wireframe:
                self.seqs.append(int(record["layout"]["bench_seq"]))
            elif self.wireframe is not None:
                self.problem(f"a change nobody but the writer may make: {str(payload)[:300]}")
        elif decoded.event == phx.Event.SYSTEM:
            if payload["status"] != "ok":
                self.problem(f"system error: {payload}")
        elif decoded.event in (phx.Event.PRESENCE_STATE, phx.Event.PRESENCE_DIFF):
            if self.only_keys is not None:
                keys = set(payload) - {"joins", "leaves"}
                keys |= set(payload.get("joins", {})) | set(payload.get("leaves", {}))
                if keys - self.only_keys:
                    self.problem(f"someone else in the presence of a private project: {keys}")
        elif decoded.event == phx.Event.CLOSE:
            self.problem(f"channel closed: {message[:300]!r}")


@dataclass
class Watches:
    """The bystanders (counting) and the listeners (checking), all open."""

    bystanders: list[Watch]
    listeners: list[Watch]

    @property
    def all(self) -> list[Watch]:
        return [*self.bystanders, *self.listeners]

    def problems(self) -> list[str]:
        return [problem for watch in self.all for problem in watch.problems]


@contextlib.asynccontextmanager
async def watching(url: str, world: World, known: Known) -> AsyncIterator[Watches]:
    """Normal clients beside the fuzzers, opened and closed around the block."""
    bystander = valid_token(known, world.bystander, ttl=24 * 3600)
    listener = valid_token(known, world.listener, ttl=24 * 3600)
    binding = {
        "event": "UPDATE",
        "schema": "public",
        "table": "wireframes",
        "filter": f"sitemap_id=eq.{world.private_sitemap}",
    }
    presence_on = {"presence": {"key": "", "enabled": True}}
    only = {str(world.bystander)}
    bystander_phx = PhoenixWatch(
        "supabase bystander",
        phx.Vsn.V2,
        f"realtime:project:{world.private}",
        {"postgres_changes": [binding], **presence_on},
        world.private_wireframe,
        only,
    )
    listeners_phx = [
        PhoenixWatch(
            "supabase listener (room, vsn 1)",
            phx.Vsn.V1,
            f"realtime:{ROOM}",
            {**presence_on, "broadcast": {"self": False}},
        ),
        PhoenixWatch(
            "supabase listener (shared project, vsn 2)",
            phx.Vsn.V2,
            f"realtime:project:{world.shared}",
            {**presence_on, "postgres_changes": [{"event": "*", "schema": "public"}]},
        ),
        PhoenixWatch(
            "supabase listener (room, vsn 2)",
            phx.Vsn.V2,
            f"realtime:{ROOM}",
            {**presence_on, "broadcast": {"self": False}},
        ),
    ]
    watches = Watches(
        bystanders=[
            NativeWatch(
                "native bystander",
                bystander,
                world.private,
                world.private_wireframe,
                world.bystander,
            ),
            bystander_phx,
        ],
        listeners=[
            NativeWatch("native listener (shared project)", listener, world.shared),
            NativeWatch("native listener (public project)", listener, world.public),
            *listeners_phx,
        ],
    )
    try:
        for watch in watches.all:
            if isinstance(watch, PhoenixWatch):
                token = bystander if watch is bystander_phx else listener
                await watch.open(watch.url(url, token))
            else:
                await watch.open(url)
        yield watches
    finally:
        for watch in watches.all:
            with contextlib.suppress(ConnectionClosed, OSError):
                await watch.close()


async def learn_positions(database_url: str, world: World, watches: Watches, known: Known) -> Known:
    """`known` with positions of the shared project to resume from: a few changes made
    there (straight in SQL), as the native listener received them."""
    listener = next(
        w
        for w in watches.listeners
        if isinstance(w, NativeWatch) and w.project == str(world.shared)
    )
    assert isinstance(listener, NativeWatch)
    conn = await asyncpg.connect(database_url)
    try:
        for n in range(3):
            await conn.execute(
                "UPDATE projects SET description = $2 WHERE id = $1", world.shared, f"fuzz {n}"
            )
    finally:
        await conn.close()
    for _ in range(int(REPLY_TIMEOUT / 0.05)):
        if len(listener.positions) >= 3:
            break
        await asyncio.sleep(0.05)
    return replace(known, positions=tuple(listener.positions))


class ChangeWriter:
    """Updates one wireframe straight in PostgreSQL, numbering each (`bench_seq`)."""

    def __init__(self, database_url: str, wireframe: uuid.UUID) -> None:
        self.database_url = database_url
        self.wireframe = wireframe
        self.count = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        self._task = asyncio.create_task(self._run(interval))

    async def stop(self) -> None:
        """Stop writing (after the commit in flight, if any)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self, interval: float) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            while not self._stop.is_set():
                seq = self.count + 1
                await conn.execute(
                    "UPDATE wireframes SET layout = $2::jsonb WHERE id = $1",
                    self.wireframe,
                    orjson.dumps({"bench_seq": seq}).decode(),
                )
                self.count = seq
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), interval)
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def writing(
    database_url: str, wireframe: uuid.UUID, interval: float
) -> AsyncIterator[ChangeWriter]:
    """A writer committing every `interval` seconds while the block runs (stop() it
    inside the block to count deliveries before anything closes)."""
    writer = ChangeWriter(database_url, wireframe)
    writer.start(interval)
    try:
        yield writer
    finally:
        await writer.stop()


async def delivery_problems(watches: Watches, total: int, within: float = 30.0) -> list[str]:
    """Once the writer stopped at `total`: every bystander got 1…total, once, in order."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(len(set(w.seqs)) >= total for w in watches.bystanders):
            break
        await asyncio.sleep(0.05)
    problems = []
    expected = list(range(1, total + 1))
    for watch in watches.bystanders:
        if watch.seqs != expected:
            lost = sorted(set(expected) - set(watch.seqs))
            problems.append(
                f"{watch.name}: got {len(watch.seqs)} of {total} changes "
                f"(lost {len(lost)}: {lost[:10]}, duplicated "
                f"{len(watch.seqs) - len(set(watch.seqs))}, in order: "
                f"{watch.seqs == sorted(watch.seqs)})"
            )
    for watch in watches.all:
        if not await watch.alive():
            problems.append(f"{watch.name}: no longer answers a ping")
    return problems


# Driving hypothesis from a thread while the gateway and the clients run on the loop


def fuzz_settings(examples: int, *, derandomize: bool, shrink: bool) -> settings:
    phases = [Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])]
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def run_examples(
    strategy: st.SearchStrategy[Any],
    execute: Callable[[Any], None],
    config: settings,
    seed_value: int | None = None,
) -> None:
    """Run `execute` on each example of `strategy` (in this thread: call it through
    asyncio.to_thread); an exception in `execute` fails the example (and shrinks it)."""

    def example(value: Any) -> None:
        execute(value)

    test = config(given(strategy)(example))
    if seed_value is not None:
        test = seed(seed_value)(test)
    with warnings.catch_warnings():
        # The event loop's thread may use `random` while a strategy draws in this one.
        warnings.filterwarnings("ignore", "Do not use the `random` module", HypothesisWarning)
        test()


def on_loop(
    loop: asyncio.AbstractEventLoop, work: Callable[[Any], Any], timeout: float = 300.0
) -> Callable[[Any], Any]:
    """`work(value)` (a coroutine) run on `loop` from another thread, its result returned."""

    def run(value: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work(value), loop).result(timeout)

    return run


# `bench fuzz`


@dataclass(frozen=True)
class Batch:
    """Sessions sent at once, each on its own connection."""

    sessions: tuple[Session, ...]


def batches(known: Known, natives: int, phoenixes: int) -> st.SearchStrategy[Batch]:
    parts = [native_sessions(known)] * natives + [phoenix_sessions(known)] * phoenixes
    return st.tuples(*parts).map(Batch)


@dataclass
class Finding:
    problem: str
    count: int
    example: str
    known: bool = False  # explained by a --known pattern: not a failure of the run


def unexplained(problems: Sequence[str], known: Sequence[re.Pattern[str]]) -> list[str]:
    """The problems no `known` pattern explains; a 1011 close is explained along with
    the logged error that a known pattern matches (the gateway logs it, then closes)."""
    explained = [p for p in problems if any(pattern.search(p) for pattern in known)]
    rest = [p for p in problems if p not in explained]
    if explained:
        rest = [p for p in rest if not p.startswith("closed with 1011")]
    return rest


@dataclass
class FuzzOptions:
    minutes: float = 1.0
    seed: int = 0
    natives: int = 4
    phoenixes: int = 4
    examples_per_round: int = 50
    write_interval: float = 0.1
    max_frame_bytes: int = 65_536
    url: str | None = None
    database_url: str | None = None
    jwt_secret: str | None = None
    feed: str = "auto"
    gateway_env: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    known: list[str] = field(default_factory=list)  # regular expressions of known bugs


def signature(problem: str) -> str:
    """Problems of one kind, whatever their details (for counting): the text before its
    first quoted part; for a logged traceback, its last line and innermost frame."""
    if problem.startswith("gateway log:"):
        parts = [part.strip() for part in problem.split(" | ")]
        frames = [part for part in parts if part.startswith("File ")]
        text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", parts[-1])
        return f"gateway log: {text[:120]}" + (f" ({frames[-1][:160]})" if frames else "")
    head = re.split(r"[\'\"{\[(]| in ", problem, maxsplit=1)[0]
    return head.strip()[:160]


async def fuzz(options: FuzzOptions) -> tuple[dict[str, Any], list[Finding]]:
    from loadtest.options import Options
    from loadtest.scenarios import target

    env = {"SITEBUILDER_MAX_FRAME_BYTES": str(options.max_frame_bytes), **options.gateway_env}
    deployment_options = Options(
        url=options.url,
        database_url=options.database_url,
        jwt_secret=options.jwt_secret,
        feed=options.feed,
        gateway_env=env,
    )
    async with target(deployment_options) as deployment:
        conn = await asyncpg.connect(deployment.database_url)
        try:
            world = await create_world(conn)
        finally:
            await conn.close()
        known = world.known(deployment.jwt_secret, deployment.audience, options.max_frame_bytes)
        log_path = gateway_log(deployment.gateway_pid) if options.url is None else None
        logs: LogWatch = LogFile(log_path) if log_path is not None else NoLog()
        fuzzer = Fuzzer(deployment.url, NoLog(), options.max_frame_bytes)
        findings: dict[str, Finding] = {}
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + options.minutes * 60
        started = time.monotonic()

        patterns = [re.compile(pattern) for pattern in options.known]

        def record(problem: str, example: str, new: Sequence[str]) -> None:
            key = signature(problem)
            if key in findings:
                findings[key].count += 1
            else:
                findings[key] = Finding(problem[:3000], 1, example[:4000], problem not in new)

        async def execute(batch: Batch) -> None:
            if time.monotonic() > deadline:
                return
            outcomes = await asyncio.gather(*(fuzzer.run(s) for s in batch.sessions))
            suspects = [o.session for o in outcomes if o.problems] or list(batch.sessions)
            # Sessions run side by side: a logged error is one of theirs (one with a
            # problem of its own, if any).
            if any(o.problems for o in outcomes):
                await asyncio.sleep(LOG_LAG)  # for the gateway's log to have it all
            logged = [f"gateway log: {line}" for line in logs.take()]
            everything = [p for o in outcomes for p in o.problems] + logged
            new = unexplained(everything, patterns)
            for outcome in outcomes:
                for problem in outcome.problems:
                    record(problem, repr(outcome.session), new)
            for problem in logged:
                record(problem, f"one of: {suspects!r}", new)

        config = fuzz_settings(options.examples_per_round, derandomize=False, shrink=False)
        rounds = 0
        async with (
            watching(deployment.url, world, known) as watches,
            writing(
                deployment.database_url, world.private_wireframe, options.write_interval
            ) as writer,
        ):
            known = await learn_positions(deployment.database_url, world, watches, known)
            strategy = batches(known, options.natives, options.phoenixes)
            while time.monotonic() < deadline:
                await asyncio.to_thread(
                    run_examples, strategy, on_loop(loop, execute), config, options.seed + rounds
                )
                rounds += 1
            fuzzing_s = time.monotonic() - started
            await writer.stop()
            delivered = await delivery_problems(watches, writer.count)
        for problem in [*delivered, *watches.problems()]:
            findings.setdefault(signature(problem), Finding(problem, 1, "(beside the fuzzers)"))
        for line in logs.take():
            problem = f"gateway log: {line}"
            expected = not unexplained([problem], patterns)
            findings.setdefault(
                signature(problem), Finding(problem, 1, "(after the run)", expected)
            )
        figures: dict[str, Any] = {
            "seconds": round(fuzzing_s, 1),
            "rounds": rounds,
            "first seed": str(options.seed),
            "sessions": fuzzer.stats["sessions"],
            "sessions/s": round(fuzzer.stats["sessions"] / max(fuzzing_s, 1e-9), 1),
            "frames sent": fuzzer.stats["frames sent"],
            "messages received": fuzzer.stats["messages received"],
            "closes by code": dict(sorted(fuzzer.closes.items())),
            "changes written": writer.count,
            **{f"{watch.name} got": len(watch.seqs) for watch in watches.bystanders},
            "log checked": log_path is not None,
            "problems": sum(f.count for f in findings.values() if not f.known),
            "known problems": sum(f.count for f in findings.values() if f.known),
        }
    return figures, list(findings.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sitebuilder-gateway bench fuzz",
        description=(
            "Fuzz both protocols of a gateway (started for the run unless --url): random and "
            "mutated frames, topics, filters, tokens and RPC params, with normal clients "
            "beside the fuzzers that must keep getting every change. Exit status 1 when "
            "anything undocumented happened."
        ),
    )
    defaults = FuzzOptions()
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument(
        "--seed", type=int, default=None, help="first round's seed (default: random, printed)"
    )
    parser.add_argument(
        "--native", type=int, default=defaults.natives, help="native sessions sent at once"
    )
    parser.add_argument(
        "--supabase", type=int, default=defaults.phoenixes, help="Supabase sessions sent at once"
    )
    parser.add_argument("--examples-per-round", type=int, default=defaults.examples_per_round)
    parser.add_argument(
        "--write-interval",
        type=float,
        default=defaults.write_interval,
        help="seconds between the writer's commits (default %(default)s)",
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=int,
        default=defaults.max_frame_bytes,
        help="SITEBUILDER_MAX_FRAME_BYTES of a started gateway (and the sizes tried)",
    )
    parser.add_argument("--url", help="websocket URL of an existing gateway (its log is not read)")
    parser.add_argument("--database-url", help="its PostgreSQL (users and projects are made there)")
    parser.add_argument("--jwt-secret", help="HS256 secret of an existing gateway")
    parser.add_argument("--feed", default=defaults.feed, choices=["auto", "replication", "notify"])
    parser.add_argument(
        "--gateway-env", action="append", default=[], metavar="NAME=VALUE", help="a setting"
    )
    parser.add_argument(
        "--out", type=Path, help="write the summary as JSON here (default: bench-results/)"
    )
    parser.add_argument(
        "--known",
        action="append",
        default=[],
        metavar="REGEX",
        help="a known bug: problems (and logged errors) it matches are reported apart and "
        "do not make the exit status 1",
    )
    return parser


def summary(figures: dict[str, Any], findings: Sequence[Finding]) -> str:
    from loadtest.report import Report, Run, table

    report = Report("fuzz", {}, [Run("gateway", figures)])
    lines = [table(report)]
    if not any(not f.known for f in findings):
        lines.append("no problems found" + (" but known ones" if findings else ""))
    for finding in sorted(findings, key=lambda f: (f.known, -f.count)):
        kind = "known problem" if finding.known else "PROBLEM"
        lines.append(f"\n{kind} (x{finding.count}): {finding.problem}")
        lines.append(f"  e.g. {finding.example}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.url and not args.database_url:
        print("sitebuilder-gateway bench fuzz: --url needs --database-url", file=sys.stderr)
        return 1
    first_seed = args.seed if args.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4])
    options = FuzzOptions(
        minutes=args.minutes,
        seed=first_seed,
        natives=args.native,
        phoenixes=args.supabase,
        examples_per_round=args.examples_per_round,
        write_interval=args.write_interval,
        max_frame_bytes=args.max_frame_bytes,
        url=args.url,
        database_url=args.database_url,
        jwt_secret=args.jwt_secret,
        feed=args.feed,
        gateway_env=dict(item.split("=", 1) for item in args.gateway_env),
        known=args.known,
    )
    print(f"fuzzing for {options.minutes:g} min, first seed {first_seed}", file=sys.stderr)
    import uvloop

    from loadtest.deployment import DeploymentError

    try:
        figures, findings = uvloop.run(fuzz(options))
    except (DeploymentError, OSError, RuntimeError, TimeoutError) as error:
        print(f"\nsitebuilder-gateway bench fuzz: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nsitebuilder-gateway bench fuzz: interrupted", file=sys.stderr)
        return 130
    print(summary(figures, findings))
    out = args.out or Path("bench-results") / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "scenario": "fuzz",
        "config": {k: v for k, v in vars(args).items() if k != "jwt_secret"} | {"seed": first_seed},
        "figures": figures,
        "findings": [vars(f) for f in findings],
    }
    out.write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    )
    print(f"summary: {out}")
    problems = [f for f in findings if not f.known]
    for finding in problems:
        print(f"sitebuilder-gateway bench fuzz: {finding.problem[:500]}", file=sys.stderr)
    return 1 if problems else 0
