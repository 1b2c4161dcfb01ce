"""How fast db.pgoutput decodes a realistic change stream: `python -m loadtest.decode_bench`.

An embedded PostgreSQL in a temporary directory records a session-like workload
(projects, sitemaps, wireframes, style guides, sessions created and edited, with the
version history the triggers add) in a logical slot; its pgoutput messages are then
decoded again and again, in memory, and the rate printed: messages alone, and messages
plus conversion of every row to Python values.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import orjson

from db.embedded import EmbeddedPostgres
from db.migrations import Migrator, load_migrations
from db.pgoutput import Decoder, Delete, Insert, Relation, RelationCache, Update

PUBLICATION = "sitebuilder_realtime"
SLOT = "decode_bench"


def _layout(rng: random.Random) -> bytes:
    """A wireframe layout of the size editors produce: a few sections of components."""
    sections = [
        {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "kind": rng.choice(["hero", "features", "pricing", "footer", "gallery"]),
            "components": [
                {"type": rng.choice(["text", "image", "button"]), "w": rng.randint(1, 12)}
                for _ in range(rng.randint(2, 6))
            ],
        }
        for _ in range(rng.randint(2, 5))
    ]
    return orjson.dumps({"sections": sections})


async def _record(conn: asyncpg.Connection, projects: int, edits: int) -> None:
    rng = random.Random(7)
    owner = uuid.uuid4()
    await conn.execute(
        "INSERT INTO auth.users (id, email) VALUES ($1, 'bench@example.test')", owner
    )
    for number in range(projects):
        project = await conn.fetchval(
            "INSERT INTO projects (user_id, name, type, collaborators, data) "
            "VALUES ($1, $2, 'website', $3, $4::jsonb) RETURNING id",
            owner,
            f"Site {number}",
            [owner, uuid.uuid4()],
            '{"domain": "example.test", "pages": 5}',
        )
        sitemap = await conn.fetchval(
            "INSERT INTO sitemaps (project_id, title, pages) VALUES ($1, 'Map', $2::jsonb) "
            "RETURNING id",
            project,
            '{"home": {"children": ["about", "pricing", "blog"]}}',
        )
        wireframe = await conn.fetchval(
            "INSERT INTO wireframes (sitemap_id, title, components, layout) "
            "VALUES ($1, 'Home', $2, $3::jsonb) RETURNING id",
            sitemap,
            ["hero", "nav bar", "footer"],
            _layout(rng).decode(),
        )
        await conn.execute(
            "INSERT INTO style_guides (wireframe_id, title, colors) VALUES ($1, 'Style', $2)",
            wireframe,
            '{"primary": "#3355ff", "accent": "#ff8800"}',
        )
        session = await conn.fetchval(
            "INSERT INTO builder_sessions (user_id, project_id, session_token, ip_address, "
            "user_agent) VALUES ($1, $2, $3, '203.0.113.7', 'Mozilla/5.0') RETURNING id",
            owner,
            project,
            uuid.uuid4().hex,
        )
        for step in range(edits):
            await conn.execute(
                "UPDATE wireframes SET layout = $2::jsonb WHERE id = $1",
                wireframe,
                _layout(rng).decode(),
            )
            await conn.execute(
                "UPDATE builder_sessions SET current_step = $2, progress = $3::jsonb WHERE id = $1",
                session,
                f"step-{step}",
                f'{{"done": {step}, "total": {edits}}}',
            )
        await conn.execute("DELETE FROM builder_sessions WHERE id = $1", session)


async def capture(projects: int, edits: int) -> list[bytes]:
    """The pgoutput messages (protocol 4, text format) of the workload."""
    with tempfile.TemporaryDirectory(prefix="decode_bench_") as directory:
        server = EmbeddedPostgres(Path(directory) / "pgdata")
        dsn = await server.start()
        try:
            conn = await asyncpg.connect(dsn)
            try:
                migrations = load_migrations()
                await Migrator(conn, migrations, {"sitebuilder.publication": PUBLICATION}).up()
                await conn.execute(
                    f"SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')"
                )
                await _record(conn, projects, edits)
                rows = await conn.fetch(
                    "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, "
                    "'proto_version', '4', 'publication_names', $2)",
                    SLOT,
                    PUBLICATION,
                )
                await conn.execute(f"SELECT pg_drop_replication_slot('{SLOT}')")
            finally:
                await conn.close()
        finally:
            server.stop()
    return [row["data"] for row in rows]


def decode_all(messages: list[bytes]) -> None:
    decode = Decoder().decode
    for data in messages:
        decode(data)


def decode_rows(messages: list[bytes]) -> None:
    """What the replication feed does: messages, then every row as Python values."""
    decode = Decoder().decode
    relations = RelationCache()
    for data in messages:
        message = decode(data)
        if type(message) is Insert:
            relations.row(message.relation_id, message.new)
        elif type(message) is Update:
            if message.old is not None:
                relations.row(message.relation_id, message.old)
            relations.row(message.relation_id, message.new)
        elif type(message) is Delete and message.old is not None:
            relations.row(message.relation_id, message.old)
        elif type(message) is Relation:
            relations.add(message)


def rate(messages: list[bytes], run: Callable[[list[bytes]], None], seconds: float) -> float:
    """Messages per second over the best of repeated passes lasting `seconds` in all."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        run(messages)
        best = min(best, time.perf_counter() - started)
    return len(messages) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--edits", type=int, default=20, help="edits per project")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    messages = asyncio.run(capture(args.projects, args.edits))
    size = sum(map(len, messages)) / len(messages)
    print(f"captured {len(messages)} messages, {size:.0f} bytes on average")
    print(f"decode:          {rate(messages, decode_all, args.seconds):>10,.0f} messages/s")
    print(f"decode + rows:   {rate(messages, decode_rows, args.seconds):>10,.0f} messages/s")


if __name__ == "__main__":
    main()
