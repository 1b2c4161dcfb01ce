"""A private cluster of Debian's PostgreSQL 15, shaped as a hosted Supabase database.

The embedded server runs every test as its superuser. Hosted Supabase gives the
gateway no superuser: its role has LOGIN, CREATEROLE, REPLICATION and BYPASSRLS and
owns the database, and `anon`, `authenticated`, `service_role`, the `auth` schema,
`auth.users` and `auth.uid()` already exist, owned by someone else. This module
starts Debian's `postgresql-15` (`apt-get install postgresql-15`) in a temporary
directory with `wal_level=logical`, prepares exactly that, and hands the tests the
non-superuser role's DSNs, so whatever needs more than that role has fails here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.support import server_directory

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
APP_ROLE = "sitebuilder_app"
APP_PASSWORD = "sitebuilder-app-password"
INSTALL_HINT = "install Debian's PostgreSQL 15: apt-get install -y postgresql-15"

# What the superuser prepares once per cluster: the gateway's role as hosted Supabase
# has it (not a member of anon or authenticated; the migrations see to that), and the
# API roles.
CLUSTER_SQL = f"""
CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}' CREATEROLE REPLICATION BYPASSRLS;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE supabase_auth_admin NOLOGIN NOINHERIT;
"""

# What the superuser prepares in each database: the auth schema of Supabase's auth
# server, owned by its admin role, readable and referenceable by the gateway's role.
DATABASE_SQL = f"""
CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
CREATE TABLE auth.users (
    instance_id uuid,
    id uuid PRIMARY KEY,
    aud varchar(255),
    role varchar(255),
    email varchar(255),
    encrypted_password varchar(255),
    email_confirmed_at timestamptz,
    raw_app_meta_data jsonb,
    raw_user_meta_data jsonb,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz,
    is_anonymous boolean NOT NULL DEFAULT false
);
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;
ALTER FUNCTION auth.uid() OWNER TO supabase_auth_admin;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, {APP_ROLE};
GRANT SELECT, INSERT, UPDATE, DELETE, REFERENCES ON auth.users TO {APP_ROLE};
"""


def available() -> bool:
    return (DEBIAN_BIN / "pg_ctl").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class HostedPostgres:
    """The running cluster: a superuser over its socket, the gateway's role over TCP."""

    directory: Path
    port: int

    @property
    def pgdata(self) -> Path:
        return self.directory / "data"

    def admin_dsn(self, database: str = "postgres") -> str:
        return (
            f"postgresql://postgres@/{database}?host={quote(str(self.directory))}&port={self.port}"
        )

    def app_dsn(self, database: str) -> str:
        return f"postgresql://{APP_ROLE}:{APP_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        _run_as_postgres(
            [str(DEBIAN_BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "stop"]
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def _run_as_postgres(command: list[str]) -> None:
    """Run a server program; PostgreSQL refuses root, so as root it runs as `postgres`."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def start() -> HostedPostgres:
    """initdb and start a cluster in a new directory in memory or under /tmp (a
    directory the `postgres` user can reach, unlike pytest's private temporary
    directories)."""
    directory = server_directory("sitebuilder-pg15-")
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    server = HostedPostgres(directory, free_port())
    _run_as_postgres(
        [
            str(DEBIAN_BIN / "initdb"),
            "-D",
            str(server.pgdata),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ]
    )
    options = " ".join(
        [
            "-c wal_level=logical",
            "-c max_replication_slots=20",
            "-c max_wal_senders=20",
            "-c max_connections=200",
            "-c fsync=off",
            "-c listen_addresses=127.0.0.1",
            f"-c port={server.port}",
            f"-c unix_socket_directories={directory}",
        ]
    )
    _run_as_postgres(
        [
            str(DEBIAN_BIN / "pg_ctl"),
            "-D",
            str(server.pgdata),
            "-o",
            options,
            "-l",
            str(directory / "server.log"),
            "-w",
            "start",
        ]
    )
    return server
