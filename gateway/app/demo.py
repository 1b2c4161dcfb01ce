"""Demo mode (`serve --demo`): demo users, a demo project, and tokens for anyone who asks.

Someone evaluating the gateway opens the demo editor in two windows and watches two
users collaborate; for that the editor must be able to sign in without an identity
provider. So in demo mode the gateway seeds a few users and one shared project with
fixed ids (a restart keeps the same project and every edit), and answers
`GET /demo/token?user=alice` with a short-lived token for that user. Anyone who
reaches the port can then act as a demo user, which is why this is off unless
`--demo` is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import asyncpg
import orjson

from gateway.edge.tokens import mint_anon_key, mint_token

DEMO_PROJECT_ID = UUID("d3e0d3e0-0000-4000-8000-000000000001")
DEMO_SITEMAP_ID = UUID("d3e0d3e0-0000-4000-8000-000000000002")
DEMO_WIREFRAME_ID = UUID("d3e0d3e0-0000-4000-8000-000000000003")
DEMO_STYLE_GUIDE_ID = UUID("d3e0d3e0-0000-4000-8000-000000000004")

# Short, so the editor's token refresh runs during a demo; `ttl` may ask for less.
TOKEN_TTL_SECONDS = 600
MIN_TOKEN_TTL_SECONDS = 5


@dataclass(frozen=True)
class DemoUser:
    key: str
    name: str
    color: str
    id: UUID

    @property
    def email(self) -> str:
        return f"{self.key}@demo.sitebuilder.test"


DEMO_USERS = (
    DemoUser("alice", "Alice", "#e5484d", UUID("d3e0d3e0-0000-4000-8000-00000000a11c")),
    DemoUser("bob", "Bob", "#3e63dd", UUID("d3e0d3e0-0000-4000-8000-00000000b0b0")),
    DemoUser("carol", "Carol", "#30a46c", UUID("d3e0d3e0-0000-4000-8000-00000000ca01")),
)

DEMO_PAGES = {
    "home": {"title": "Home", "path": "/"},
    "menu": {"title": "Our bread", "path": "/menu"},
    "about": {"title": "About us", "path": "/about"},
    "contact": {"title": "Contact", "path": "/contact"},
}
DEMO_LAYOUT = {
    "hero": {"title": "Fresh bread every morning", "subtitle": "Since 1923"},
    "columns": 3,
    "footer": {"text": "Open daily 7 to 19"},
}
DEMO_COLORS = {
    "primary": "#c0392b",
    "secondary": "#f39c12",
    "background": "#fdf6ec",
    "text": "#2d2a26",
}


# A demo row deleted since is in the project's trash (restore it from the demo page),
# and its id may not be used again: it is not created anew.
NEVER_DELETED = "WHERE NOT EXISTS (SELECT 1 FROM version_history v WHERE v.entity_id = $1)"


async def seed_demo(pool: asyncpg.Pool) -> None:
    """Create the demo users and project where absent; existing rows (and their edits)
    are left alone, so restarting `serve --demo` continues the same demo."""
    owner, *others = DEMO_USERS
    async with pool.acquire() as conn, conn.transaction():
        for user in DEMO_USERS:
            await conn.execute(
                "INSERT INTO auth.users (id, email, raw_user_meta_data)"
                " VALUES ($1, $2, jsonb_build_object('full_name', $3::text))"
                " ON CONFLICT DO NOTHING",
                user.id,
                user.email,
                user.name,
            )
        await conn.execute(
            "INSERT INTO projects"
            " (id, user_id, name, description, type, status, collaborators, is_public)"
            " VALUES ($1, $2, 'Corner Bakery', 'The demo project', 'website', 'draft', $3, true)"
            " ON CONFLICT DO NOTHING",
            DEMO_PROJECT_ID,
            owner.id,
            [user.id for user in others],
        )
        await conn.execute(
            "INSERT INTO sitemaps (id, project_id, title, pages) SELECT $1, $2, $3, $4"
            f" {NEVER_DELETED} ON CONFLICT DO NOTHING",
            DEMO_SITEMAP_ID,
            DEMO_PROJECT_ID,
            "Main site structure",
            orjson.dumps(DEMO_PAGES).decode(),
        )
        await conn.execute(
            "INSERT INTO wireframes (id, sitemap_id, title, layout, components)"
            f" SELECT $1, $2, 'Home page', $3, $4 {NEVER_DELETED} ON CONFLICT DO NOTHING",
            DEMO_WIREFRAME_ID,
            DEMO_SITEMAP_ID,
            orjson.dumps(DEMO_LAYOUT).decode(),
            ["hero", "columns", "footer"],
        )
        await conn.execute(
            "INSERT INTO style_guides (id, wireframe_id, title, colors) SELECT $1, $2, $3, $4"
            f" {NEVER_DELETED} ON CONFLICT DO NOTHING",
            DEMO_STYLE_GUIDE_ID,
            DEMO_WIREFRAME_ID,
            "Bakery brand",
            orjson.dumps(DEMO_COLORS).decode(),
        )


@dataclass(frozen=True)
class DemoReply:
    """What an HTTP route of the demo answers: a status and a JSON body."""

    status: int
    body: bytes


class Demo:
    """The demo-only HTTP routes: who can sign in, and their tokens."""

    def __init__(self, secret: str, audience: str) -> None:
        self._secret = secret
        self._audience = audience

    def users(self) -> DemoReply:
        """`GET /demo/users`: the users to sign in as, the project they share (public),
        and an anon key for looking at it signed out (as Supabase hands its anon key to
        every page; fresh for TOKEN_TTL_SECONDS)."""
        users = [
            {"key": u.key, "name": u.name, "color": u.color, "id": str(u.id)} for u in DEMO_USERS
        ]
        anon_key = mint_anon_key(self._secret, ttl_seconds=TOKEN_TTL_SECONDS)
        body = {"project_id": DEMO_PROJECT_ID, "users": users, "anon_key": anon_key}
        return DemoReply(200, orjson.dumps(body))

    def token(self, target: str) -> DemoReply:
        """`GET /demo/token?user=alice[&ttl=SECONDS]`: a fresh token for a demo user."""
        query = parse_qs(urlsplit(target).query)
        key = query.get("user", [""])[0]
        user = next((u for u in DEMO_USERS if u.key == key), None)
        if user is None:
            names = ", ".join(u.key for u in DEMO_USERS)
            return DemoReply(404, orjson.dumps({"error": f"no demo user {key!r} (try {names})"}))
        try:
            ttl = int(query.get("ttl", [str(TOKEN_TTL_SECONDS)])[0])
        except ValueError:
            return DemoReply(400, orjson.dumps({"error": "ttl must be a number of seconds"}))
        ttl = max(MIN_TOKEN_TTL_SECONDS, min(ttl, TOKEN_TTL_SECONDS))
        token = mint_token(
            self._secret, user.id, audience=self._audience, ttl_seconds=ttl, email=user.email
        )
        body = {
            "token": token,
            "user_id": user.id,
            "name": user.name,
            "color": user.color,
            "expires_at": int(time.time()) + ttl,
            "project_id": DEMO_PROJECT_ID,
        }
        return DemoReply(200, orjson.dumps(body))
