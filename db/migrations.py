"""Forward and backward schema migrations from `migrations/NNNN_name.{up,down}.sql`.

Each migration runs in its own transaction together with its bookkeeping row, so a
failure leaves the database at the previous version. A session-level advisory lock
serialises runners across processes and nodes: the second one waits, then finds the
work done. Applied files are checksummed; an edited one is refused rather than
silently diverging from what the database actually holds.

Migrations read their parameters (the publication name, say) with
`current_setting('sitebuilder.<name>')`, so the SQL files stay constant and their
checksums stable whatever the deployment's settings.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.abc import Traversable

import asyncpg

MIGRATIONS_TABLE = "public.schema_migrations"
# Any constant shared by every runner; chosen once, never change it.
ADVISORY_LOCK_KEY = 0x5B17E_2EA1
# Earlier texts of a migration that leave the same schema behind, so databases that
# applied them are not refused. Add one only when a file must change for databases
# that cannot apply it as it was, never to change what a migration does.
EQUIVALENT_CHECKSUMS: Mapping[int, frozenset[str]] = {
    # 0011 set custom settings in a function's SET clause, which needs a superuser;
    # the same function now sets and restores them in its body.
    # 0001 now explains what to grant where the login role cannot grant itself a role.
    1: frozenset({"37e325c973c0eae3ca2500354e0a1676460ca20618d1ce5d6820415ff96cba6a"}),
    11: frozenset({"29d3cb199685c2c4882246b891f7f5be7fe58882a41818d671451f851ebd31d1"}),
}
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.(?P<direction>up|down)\.sql$")


def _explained(error: asyncpg.PostgresError) -> str:
    """The server's message with its detail and hint, which often say what to do."""
    parts = [str(error)]
    parts += [text for text in (error.detail, error.hint) if text]
    return " ".join(part.rstrip(".") + "." for part in parts)


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree, or a file is malformed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up_sql: str
    down_sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the up file: what was applied is what must not change."""
        return hashlib.sha256(self.up_sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def matches(self, applied_checksum: str) -> bool:
        """Whether the database's record of this migration is this file or an equivalent."""
        return applied_checksum == self.checksum or applied_checksum in EQUIVALENT_CHECKSUMS.get(
            self.version, frozenset()
        )


@dataclass(frozen=True)
class MigrationState:
    """One line of `migrate status`."""

    version: int
    name: str
    checksum: str
    applied_at: datetime | None
    state: str  # applied | pending | modified | unknown

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read and validate the migration files, ordered by version."""
    folder = directory if directory is not None else resources.files("migrations")
    files: dict[tuple[int, str], dict[str, str]] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_name.up.sql / NNNN_name.down.sql"
            )
        key = (int(match["version"]), match["name"])
        files.setdefault(key, {})[match["direction"]] = entry.read_text(encoding="utf-8")

    migrations: list[Migration] = []
    for (version, name), parts in sorted(files.items()):
        if set(parts) != {"up", "down"}:
            missing = ({"up", "down"} - set(parts)).pop()
            raise MigrationError(f"migration {version:04d}_{name} has no {missing} file")
        migrations.append(Migration(version, name, parts["up"], parts["down"]))

    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must run 1, 2, 3 … without gaps: {versions}")
    return migrations


class Migrator:
    """Applies and rolls back migrations on one connection."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        migrations: Sequence[Migration],
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        self._conn = conn
        self._migrations = list(migrations)
        self._parameters = dict(parameters or {})

    @property
    def latest_version(self) -> int:
        return self._migrations[-1].version if self._migrations else 0

    async def status(self) -> list[MigrationState]:
        """Every known migration and every applied one, with where each stands."""
        async with self._locked():
            applied = await self._applied()
        states: list[MigrationState] = []
        for migration in self._migrations:
            row = applied.pop(migration.version, None)
            if row is None:
                state = "pending"
            elif not migration.matches(row["checksum"]):
                state = "modified"
            else:
                state = "applied"
            states.append(
                MigrationState(
                    migration.version,
                    migration.name,
                    migration.checksum,
                    row["applied_at"] if row else None,
                    state,
                )
            )
        for version, row in sorted(applied.items()):
            states.append(
                MigrationState(version, row["name"], row["checksum"], row["applied_at"], "unknown")
            )
        return states

    async def current_version(self) -> int:
        async with self._locked():
            version = await self._conn.fetchval(
                f"SELECT coalesce(max(version), 0) FROM {MIGRATIONS_TABLE}"
            )
        return int(version)

    async def up(self, to: int | None = None) -> list[Migration]:
        """Apply pending migrations up to and including version `to` (default: all)."""
        target = self.latest_version if to is None else to
        if not 0 <= target <= self.latest_version:
            raise MigrationError(f"no migration {target}: the latest is {self.latest_version}")
        async with self._locked():
            applied = await self._verified_applied()
            pending = [m for m in self._migrations if m.version not in applied]
            done: list[Migration] = []
            for migration in pending:
                if migration.version > target:
                    break
                await self._run(migration, migration.up_sql, record=True)
                done.append(migration)
            return done

    async def down(self, to: int | None = None) -> list[Migration]:
        """Roll back applied migrations above version `to` (default: the last one only)."""
        async with self._locked():
            applied = await self._verified_applied()
            current = max(applied, default=0)
            target = max(current - 1, 0) if to is None else to
            if target < 0:
                raise MigrationError("--to must be 0 or more")
            by_version = {m.version: m for m in self._migrations}
            done: list[Migration] = []
            for version in sorted(applied, reverse=True):
                if version <= target:
                    break
                migration = by_version[version]
                await self._run(migration, migration.down_sql, record=False)
                done.append(migration)
            return done

    async def _run(self, migration: Migration, sql: str, *, record: bool) -> None:
        async with self._conn.transaction():
            for name, value in self._parameters.items():
                await self._conn.execute("SELECT set_config($1, $2, true)", name, value)
            try:
                await self._conn.execute(sql)
            except asyncpg.PostgresError as error:
                direction = "up" if record else "down"
                raise MigrationError(
                    f"migration {migration.label} ({direction}) failed: {_explained(error)}"
                ) from error
            if record:
                await self._conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            else:
                await self._conn.execute(
                    f"DELETE FROM {MIGRATIONS_TABLE} WHERE version = $1", migration.version
                )

    async def _verified_applied(self) -> dict[int, asyncpg.Record]:
        """Applied migrations, refusing any the files on disk no longer match."""
        applied = await self._applied()
        by_version = {m.version: m for m in self._migrations}
        for version, row in sorted(applied.items()):
            migration = by_version.get(version)
            if migration is None:
                raise MigrationError(
                    f"the database has migration {version:04d}_{row['name']} applied, which "
                    "this version of sitebuilder-realtime does not know: run a newer version"
                )
            if not migration.matches(row["checksum"]):
                raise MigrationError(
                    f"migration {migration.label} was edited after it was applied "
                    f"(checksum in database {row['checksum'][:12]}…, on disk "
                    f"{migration.checksum[:12]}…): restore the file and put the change "
                    "in a new migration"
                )
        return applied

    async def _applied(self) -> dict[int, asyncpg.Record]:
        rows = await self._conn.fetch(
            f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} ORDER BY version"
        )
        return {row["version"]: row for row in rows}

    async def _create_table(self) -> None:
        if await self._conn.fetchval("SELECT to_regclass($1) IS NOT NULL", MIGRATIONS_TABLE):
            return
        await self._conn.execute(
            f"""
            CREATE TABLE {MIGRATIONS_TABLE} (
                version integer PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """Hold the runners' advisory lock; the bookkeeping table exists inside it."""
        await self._conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            await self._create_table()
            yield
        finally:
            await self._conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
