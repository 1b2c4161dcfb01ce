"""The people and projects a scenario needs, made the way the product makes them.

Users are rows of `auth.users` (sign-up is the identity provider's business, not the
gateway's) with tokens signed by the deployment's secret. Projects, with their sitemap
and wireframes, are created by their owners through the gateway's own
`batch.create_project_structure` RPC, collaborators included, so a benchmark also
proves the write path it relies on.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from websockets.asyncio.client import ClientConnection, connect

from gateway.edge.tokens import mint_token
from loadtest.deployment import Deployment
from loadtest.options import LAYOUT_BYTES

RPC_TIMEOUT = 60.0
OWNER_SOCKETS = 8  # project creation runs over this many connections at once


@dataclass
class Project:
    id: str
    owner: uuid.UUID
    members: list[uuid.UUID]
    wireframes: list[str]


def layout(seq: int, size: int = LAYOUT_BYTES) -> dict[str, Any]:
    """A wireframe layout of about `size` bytes of JSON, numbered for the editors' checks."""
    return {"bench_seq": seq, "sections": sections(size)}


@functools.cache
def sections(size: int) -> list[dict[str, Any]]:
    """The layout's sections, built once per size: a 50 KB layout takes hundreds of
    sections, each measured, and every project and commit reuses them (read only)."""
    made: list[dict[str, Any]] = []
    while len(orjson.dumps(made)) < size - 40:
        index = len(made)
        made.append(
            {
                "id": f"section-{index}",
                "kind": ("hero", "features", "gallery", "testimonials", "footer")[index % 5],
                "columns": 1 + index % 3,
                "blocks": [{"type": "text", "text": "Fresh bread every morning"}],
            }
        )
    return made


async def create_users(database_url: str, count: int) -> list[uuid.UUID]:
    users = [uuid.uuid4() for _ in range(count)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
            [(user, f"bench-{user}@example.com") for user in users],
        )
    finally:
        await conn.close()
    return users


def tokens(deployment: Deployment, users: Sequence[uuid.UUID], ttl: int) -> dict[uuid.UUID, str]:
    return {
        user: mint_token(deployment.jwt_secret, user, audience=deployment.audience, ttl_seconds=ttl)
        for user in users
    }


class RpcConnection:
    """One owner's socket: authenticate, then call methods one at a time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.refs = itertools.count(1)

    async def call(self, frame: dict[str, Any]) -> dict[str, Any]:
        ref = str(next(self.refs))
        await self.ws.send(orjson.dumps({**frame, "ref": ref}).decode())
        async with asyncio.timeout(RPC_TIMEOUT):
            while True:
                reply = orjson.loads(await self.ws.recv())
                if reply.get("ref") != ref:
                    continue
                if reply["type"] == "error":
                    raise RuntimeError(
                        f"{frame['type']} failed: {reply['code']}: {reply['message']}"
                    )
                result: dict[str, Any] = reply
                return result


async def create_project(
    rpc: RpcConnection,
    owner: uuid.UUID,
    members: list[uuid.UUID],
    wireframes: int,
    name: str,
    layout_bytes: int = LAYOUT_BYTES,
) -> Project:
    collaborators = [str(member) for member in members if member != owner]
    reply = await rpc.call(
        {
            "type": "rpc",
            "method": "batch.create_project_structure",
            "params": {
                "project": {"name": name, "collaborators": collaborators},
                "sitemap": {"title": "Site map", "pages": {"home": {"title": "Home"}}},
                "wireframes": [
                    {"title": f"Page {n}", "layout": layout(0, layout_bytes)}
                    for n in range(wireframes)
                ],
            },
        }
    )
    created = reply["data"]
    return Project(
        id=created["project"]["id"],
        owner=owner,
        members=[owner, *(m for m in members if m != owner)],
        wireframes=[row["id"] for row in created["wireframes"]],
    )


async def create_projects(
    deployment: Deployment,
    tokens_by_user: dict[uuid.UUID, str],
    plans: list[tuple[uuid.UUID, list[uuid.UUID]]],
    wireframes: int,
    layout_bytes: int = LAYOUT_BYTES,
) -> list[Project]:
    """One project per (owner, members) plan, created by its owner, several owners at once;
    each wireframe's layout about `layout_bytes` of JSON."""
    projects: list[Project | None] = [None] * len(plans)
    by_owner: dict[uuid.UUID, list[int]] = {}
    for index, (owner, _members) in enumerate(plans):
        by_owner.setdefault(owner, []).append(index)
    owners = list(by_owner.items())

    async def worker() -> None:
        while owners:
            owner, indexes = owners.pop()
            async with connect(deployment.url, max_size=None, compression=None) as ws:
                rpc = RpcConnection(ws)
                await rpc.call({"type": "auth", "token": tokens_by_user[owner]})
                for index in indexes:
                    projects[index] = await create_project(
                        rpc,
                        owner,
                        plans[index][1],
                        wireframes,
                        f"Bench project {index}",
                        layout_bytes,
                    )

    await asyncio.gather(*(worker() for _ in range(min(OWNER_SOCKETS, len(owners)))))
    created = [project for project in projects if project is not None]
    await accept_invitations(deployment, tokens_by_user, created)
    return created


async def accept_invitations(
    deployment: Deployment, tokens_by_user: dict[uuid.UUID, str], projects: list[Project]
) -> None:
    """Sharing takes consent (migration 0016): the collaborators named at creation were
    invited; each accepts, over a socket of their own, several at once."""
    invited: dict[uuid.UUID, list[str]] = {}
    for project in projects:
        for member in project.members:
            if member != project.owner:
                invited.setdefault(member, []).append(project.id)
    members = list(invited.items())

    async def worker() -> None:
        while members:
            member, project_ids = members.pop()
            async with connect(deployment.url, max_size=None, compression=None) as ws:
                rpc = RpcConnection(ws)
                await rpc.call({"type": "auth", "token": tokens_by_user[member]})
                for project_id in project_ids:
                    await rpc.call(
                        {
                            "type": "rpc",
                            "method": "project.accept_invitation",
                            "params": {"project_id": project_id},
                        }
                    )

    await asyncio.gather(*(worker() for _ in range(min(OWNER_SOCKETS, len(members)))))
