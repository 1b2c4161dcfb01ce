"""Every knob of the gateway, read from `SITEBUILDER_*` environment variables.

Each field's description is the documentation: the README's settings table is
generated from this class (`python -m gateway.settings`), so the two cannot drift.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.jsontext import DEFAULT_MAX_DEPTH, DEPTH_CEILING

APP_NAME = "sitebuilder-realtime"
# Worker indexes end slot names, which PostgreSQL limits to 63 characters.
MAX_WORKERS = 999
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME)


class Settings(BaseSettings):
    """The gateway's configuration; see the README for the table of defaults."""

    model_config = SettingsConfigDict(env_prefix="SITEBUILDER_", extra="ignore")

    database_url: Annotated[
        str | None,
        Field(
            description=(
                "PostgreSQL to use (`postgresql://user:pass@host:5432/db`). Unset: start an "
                "embedded PostgreSQL in `SITEBUILDER_DATA_DIR/postgres`."
            )
        ),
    ] = None
    host: Annotated[str, Field(description="Address the websocket and HTTP port binds to.")] = (
        "127.0.0.1"
    )
    port: Annotated[
        int, Field(ge=0, le=65535, description="Port for websockets and HTTP; 0 picks a free one.")
    ] = 8765
    jwt_secret: Annotated[
        SecretStr | None,
        Field(
            description=(
                "HS256 secret that signs user tokens. Unset: one is generated on first use, "
                "stored in `SITEBUILDER_DATA_DIR/jwt_secret` (mode 0600) and reused."
            )
        ),
    ] = None
    jwt_audience: Annotated[
        str, Field(description="Required `aud` claim of user tokens (Supabase's value).")
    ] = "authenticated"
    data_dir: Annotated[
        Path,
        Field(
            default_factory=default_data_dir,
            description=(
                "Where the embedded PostgreSQL and the generated JWT secret live "
                "(default: the user's data directory, e.g. `~/.local/share/sitebuilder-realtime`)."
            ),
        ),
    ]
    log_level: Annotated[LogLevel, Field(description="Log verbosity.")] = "INFO"
    publication: Annotated[
        str,
        Field(
            pattern=r"^[a-z_][a-z0-9_]*$",
            description="Name of the PostgreSQL publication the migrations create for the feed.",
        ),
    ] = "sitebuilder_realtime"
    migrate_on_start: Annotated[
        bool, Field(description="Apply pending migrations when `serve` starts.")
    ] = True

    jwt_public_key_file: Annotated[
        Path | None,
        Field(
            description=(
                "PEM public key for RS256/ES256 tokens (instead of the HS256 secret), "
                "e.g. an identity provider's signing key."
            )
        ),
    ] = None
    jwt_jwks_file: Annotated[
        Path | None,
        Field(description="JWKS file of RS256/ES256 keys, chosen by the token's `kid`."),
    ] = None
    auth_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "A new connection must authenticate within this (4001); it is closed up to "
                "a quarter later, at random, so that connections opened together are not "
                "closed (and back) together."
            ),
        ),
    ] = 5.0
    max_unauthenticated_connections: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Connections not signed in yet, in all; more are closed at once with 4009 "
                "(each may wait SITEBUILDER_AUTH_TIMEOUT_SECONDS for its token)."
            ),
        ),
    ] = 5000
    max_unauthenticated_per_address: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Connections not signed in yet from one client address (behind a trusted "
                "proxy: its X-Forwarded-For; without one, a load balancer's address is every "
                "client's); more are closed at once with 4009."
            ),
        ),
    ] = 500
    max_frame_bytes: Annotated[
        int,
        Field(gt=0, description="Largest client frame accepted; larger: `frame_too_large`."),
    ] = 1_048_576
    fragment_bytes: Annotated[
        int,
        Field(
            ge=0,
            description=(
                "Messages the gateway sends that are longer than this go out as frames of "
                "this size (RFC 6455 fragments, which every websocket client reassembles), "
                "for proxies or clients that hold a frame whole (e.g. a frame size limit); "
                "0: every message in one frame."
            ),
        ),
    ] = 0
    messages_per_second: Annotated[
        float,
        Field(gt=0, description="Sustained client frames per second per connection."),
    ] = 50.0
    message_burst: Annotated[
        int,
        Field(gt=0, description="Client frames a connection may send at once above the rate."),
    ] = 100
    max_bytes_per_second: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Sustained bytes of client frames per second per connection. Past it (and "
                "SITEBUILDER_BYTE_BURST) the gateway stops reading the connection until the "
                "budget refills: TCP slows the client; nothing is refused, closed or lost."
            ),
        ),
    ] = 1_048_576
    byte_burst: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Bytes of client frames a connection may send at once above "
                "SITEBUILDER_MAX_BYTES_PER_SECOND."
            ),
        ),
    ] = 4_194_304
    max_subscriptions: Annotated[
        int, Field(gt=0, description="Projects one connection may follow at once.")
    ] = 100
    joins_per_second: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "Sustained subscribes (native `subscribe`, Supabase `phx_join`) per second "
                "per connection, each a snapshot or access check in PostgreSQL; beyond "
                "SITEBUILDER_JOIN_BURST at once they are refused (`rate_limited`). A "
                "Supabase join counts once per `postgres_changes` binding (at least once): "
                "each is a filter to parse and a table subscription."
            ),
        ),
    ] = 10.0
    join_burst: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Subscribes a connection may make at once above the rate (as many as "
                "SITEBUILDER_MAX_SUBSCRIPTIONS by default, so a reconnecting client may "
                "subscribe to all it followed at once)."
            ),
        ),
    ] = 100
    rpcs_per_second: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "Sustained `rpc` frames per second per connection, each a transaction in "
                "PostgreSQL; beyond SITEBUILDER_RPC_BURST at once they are refused "
                "(`rate_limited`, with `retry_after_ms`)."
            ),
        ),
    ] = 20.0
    rpc_burst: Annotated[
        int,
        Field(gt=0, description="`rpc` frames a connection may send at once above the rate."),
    ] = 50
    max_bindings_per_join: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "`postgres_changes` bindings one Supabase `phx_join` may carry; more: the "
                "join is refused."
            ),
        ),
    ] = 32
    max_bindings_per_connection: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "`postgres_changes` bindings of all of one connection's Supabase channels "
                "together (each is checked on every change of its table that no index "
                "rules out); a join that would pass it is refused."
            ),
        ),
    ] = 100
    max_filter_chars: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Longest `filter` of a Supabase binding; longer: the binding is refused "
                "(a `system` error, as for any bad filter). The default holds an `in` list "
                "of 100 ids."
            ),
        ),
    ] = 4096
    max_filter_conditions: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Conditions of one Supabase filter, joined by commas (Supabase's own "
                "server takes one); more: the binding is refused."
            ),
        ),
    ] = 4
    max_filter_in_values: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Values of one `in.(…)` filter (Supabase's own limit is 100); more: the "
                "binding is refused."
            ),
        ),
    ] = 100
    presence_updates_per_second: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "`presence.update` frames applied per second per connection (as many at "
                "once); the excess is coalesced to the latest meta and applied when allowed."
            ),
        ),
    ] = 20.0
    presence_diff_interval_seconds: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "Presence changes of a project are sent as one `presence.diff` at most this "
                "often (a mass reconnect otherwise costs a diff per joiner to every "
                "subscriber); 0: each change at once."
            ),
        ),
    ] = 0.05
    supabase_presence_default: Annotated[
        bool,
        Field(
            description=(
                "Whether a Supabase join that does not say (no `config.presence.enabled`: "
                "@supabase/realtime-js before 2.15) gets the channel's `presence_state` on "
                "joining, as Supabase's server gave it to those clients; off: only joins "
                "with `enabled: true` do, like Supabase's per-project presence switch. "
                "Presence diffs reach every member of a channel either way."
            )
        ),
    ] = True
    max_presence_meta_bytes: Annotated[
        int,
        Field(
            gt=0,
            le=4096,
            description=(
                "Largest presence `meta` (as JSON) a `presence.update` may set (at most 4096: "
                "a change must fit one NOTIFY of the presence bus)."
            ),
        ),
    ] = 2048
    max_presence_key_chars: Annotated[
        int,
        Field(
            gt=0,
            le=512,
            description=(
                "Longest Supabase `config.presence.key` (at most 512: with the meta, a "
                "change must fit one NOTIFY of the presence bus); longer: the join is "
                "refused."
            ),
        ),
    ] = 256
    max_json_depth: Annotated[
        int,
        Field(
            ge=4,
            le=DEPTH_CEILING,
            description=(
                "Deepest nesting of arrays and objects in a client's frame (at most "
                f"{DEPTH_CEILING}: JSON much deeper cannot be written back or stored); "
                "deeper: the frame is refused (`bad_json`, or Supabase's error reply)."
            ),
        ),
    ] = DEFAULT_MAX_DEPTH
    presence_backend: Annotated[
        Literal["postgres", "redis", "memory"],
        Field(
            description=(
                "Where gateway processes share presence. `postgres`: LISTEN/NOTIFY on the "
                "database (nothing else to run). `redis`: Redis pub/sub and a hash per node "
                "(`SITEBUILDER_REDIS_URL`), for clusters whose presence traffic would weigh on "
                "PostgreSQL. `memory`: this process only; right for a single gateway process, "
                "wrong as soon as there are two (each would show only its own clients)."
            )
        ),
    ] = "postgres"
    presence_node_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "A gateway node (process) that sent nothing on the presence bus for this long "
                "is taken for dead: its connections leave every other node's presence and its "
                "builder sessions are paused after the grace period."
            ),
        ),
    ] = 10.0
    presence_heartbeat_seconds: Annotated[
        float | None,
        Field(
            gt=0,
            description=(
                "How often a node tells the presence bus it is alive; must be shorter than "
                "the node timeout. Unset: a fifth of `SITEBUILDER_PRESENCE_NODE_TIMEOUT_SECONDS`."
            ),
        ),
    ] = None
    presence_channel: Annotated[
        str,
        Field(
            pattern=r"^[a-z_][a-z0-9_]{0,62}$",
            description=(
                "NOTIFY channel of the presence bus, and prefix of its Redis keys and channel: "
                "deployments sharing one Redis need different ones."
            ),
        ),
    ] = "sitebuilder_presence"
    redis_url: Annotated[
        str | None,
        Field(
            description=(
                "Redis for `SITEBUILDER_PRESENCE_BACKEND=redis` (`redis://host:6379/0`; "
                "`rediss://` for TLS); required then, and checked when `serve` starts."
            )
        ),
    ] = None
    max_connections_per_user: Annotated[
        int, Field(gt=0, description="Open connections per user on this gateway (4009).")
    ] = 20
    max_anonymous_connections: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Open connections signed in with the `anon` key (signed-out visitors, "
                "native or Supabase protocol), all together, on this gateway (4009)."
            ),
        ),
    ] = 1000
    max_outbound_bytes: Annotated[
        int,
        Field(
            gt=0,
            description="Unsent bytes a connection may have queued before it is closed (4008).",
        ),
    ] = 8_388_608
    max_pending_events: Annotated[
        int,
        Field(
            gt=0,
            description="Changes held for a connection, over all its subscriptions, while "
            "their snapshots or replays are read; past it the connection is closed as a "
            "slow consumer.",
        ),
    ] = 10_000
    ping_interval_seconds: Annotated[float, Field(gt=0, description="Websocket ping interval.")] = (
        20.0
    )
    ping_timeout_seconds: Annotated[
        float,
        Field(gt=0, description="A connection that does not answer a ping in time is closed."),
    ] = 20.0
    compression: Annotated[
        bool,
        Field(
            description=(
                "Enable permessage-deflate. Off: every connection would compress each event "
                "again (no encode-once) and hold ~32 KiB of state."
            )
        ),
    ] = False
    listen_backlog: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Connections the kernel queues before the gateway accepts them (capped by "
                "`net.core.somaxconn`). Too small for a reconnect storm: the kernel drops "
                "the excess and clients retry after 1 s, then 3 s."
            ),
        ),
    ] = 4096
    route_cache_size: Annotated[
        int, Field(gt=0, description="Parent ids remembered per table for routing changes.")
    ] = 100_000
    access_cache_size: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Projects whose access lists (owner, collaborators, public) are kept as of "
                "the change feed's position, for Supabase `postgres_changes` bindings."
            ),
        ),
    ] = 10_000
    shutdown_grace_seconds: Annotated[
        float,
        Field(gt=0, description="On SIGTERM, how long in-flight requests may take to finish."),
    ] = 10.0

    rpc_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "Longest an RPC may run or wait for a lock in the database; past it: error "
                "`timeout`, nothing written."
            ),
        ),
    ] = 10.0
    node_name: Annotated[
        str,
        Field(
            pattern=r"^[a-z0-9_]{1,24}$",
            description=(
                "Name of this gateway node, unique among the nodes sharing one database: it "
                "names the node's replication slot and its presence on the shared bus."
            ),
        ),
    ] = "gateway"
    workers: Annotated[
        Annotated[int, Field(ge=1, le=MAX_WORKERS)] | Literal["auto"],
        Field(
            description=(
                "Worker processes `serve` starts on one port (SO_REUSEPORT), each a full "
                "gateway with its own connections and history; `auto`: one per core. Above 1, "
                "a supervisor reads the node's change feed once and hands every worker its "
                "events, restarts crashed workers (they catch up from it), stops them on "
                "SIGTERM, adds one on SIGTTIN and removes one on SIGTTOU."
            ),
        ),
    ] = 1
    feed: Annotated[
        Literal["auto", "replication", "notify"],
        Field(
            description=(
                "Change feed. `replication`: logical replication (pgoutput) from a persistent "
                "slot, lossless across restarts, costs writers nothing beyond WAL. `notify`: "
                "LISTEN/NOTIFY triggers, works on any server, slows writers and forgets on "
                "restart. `auto`: replication when the server and role allow it."
            )
        ),
    ] = "auto"
    replication_slot: Annotated[
        str,
        Field(
            pattern=r"^[a-z0-9_]{1,32}$",
            description=(
                "Prefix of the replication slot: node N streams from slot `<prefix>_<N>_0` "
                "(`sitebuilder_gateway_0` by default), whatever its worker count. The "
                "per-worker slots earlier versions made (`_1`, `_2`…) are dropped at start "
                "(`slot prune` drops them by hand); a slot no gateway reads keeps WAL on the "
                "server."
            ),
        ),
    ] = "sitebuilder"
    slot_wait_seconds: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "At start, how long this node's replication slot may stay in use by another "
                "process (a killed gateway's connection can outlive it briefly); past it, "
                "another node runs with the same `SITEBUILDER_NODE_NAME`: exit with an error."
            ),
        ),
    ] = 10.0
    replication_status_interval_seconds: Annotated[
        float,
        Field(gt=0, description="How often the replication feed reports its position."),
    ] = 10.0
    embedded_max_slot_wal_keep_size: Annotated[
        str,
        Field(
            pattern=r"^(-1|\d+ ?(kB|MB|GB|TB)?)$",
            description=(
                "Embedded server only: WAL a replication slot may hold back before the server "
                "invalidates it (then subscribers get `reset`). Set it on external servers."
            ),
        ),
    ] = "4GB"
    history_max_per_project: Annotated[
        int, Field(gt=0, description="Recent changes kept per project for resuming clients.")
    ] = 5000
    history_max_bytes: Annotated[
        int, Field(gt=0, description="Memory for recent changes of all projects together.")
    ] = 67_108_864
    history_max_age_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "How long a change stays resumable; also how far back the replication slot "
                "is held (WAL kept: write rate times this), so a restarted gateway can still "
                "serve it."
            ),
        ),
    ] = 60.0
    resume_fence_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "How long a resume waits for the change feed to reach the moment it read "
                "the project's access (a marker it commits); past it the client gets a "
                "`reset` and a fresh snapshot instead of a replay."
            ),
        ),
    ] = 5.0
    rpc_idempotency_ttl_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "How long an RPC `idempotency_key` is remembered (a repeat is answered with "
                "the first result); the gateway deletes older keys about once a minute."
            ),
        ),
    ] = 86_400.0
    rpc_idempotency_max_keys_per_user: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Idempotency keys one user may have remembered at once; a write with a new "
                "key past it is refused (`rate_limited`). Reads ignore their keys."
            ),
        ),
    ] = 1000
    rpc_idempotency_max_result_bytes: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Largest result (as JSON) remembered for an idempotency key; a larger one "
                "is not kept, and a repeat of its key is answered `conflict` (applied, "
                "result unknown)."
            ),
        ),
    ] = 65_536
    trash_retention_days: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "How long a deleted sitemap, wireframe or style guide stays in its "
                "project's trash (`trash.list`, `trash.restore`); the gateway deletes older "
                "entries about once a minute. A deleted project is gone at once, trash "
                "included."
            ),
        ),
    ] = 30.0
    metrics_token: Annotated[
        SecretStr | None,
        Field(
            description=(
                "Bearer token that opens `/metrics` and the details of `/readyz` to "
                "requests from anywhere (`Authorization: Bearer <token>`); without it, and "
                "always from loopback, only loopback sees them (others: 403, bare status)."
            )
        ),
    ] = None
    trust_proxy_headers: Annotated[
        bool,
        Field(
            description=(
                "Behind a reverse proxy: take a client's address (a builder session's "
                "`ip_address`, the limit of connections not signed in per address) from the "
                "last address of `X-Forwarded-For` (the one the proxy appended), not the "
                "socket's peer. Off: the header is ignored (a client could write anything "
                "in it)."
            )
        ),
    ] = False
    session_pause_grace_seconds: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "A builder session whose last connection closed becomes `paused` after this, "
                "unless `session.resume` reattaches it first; also the idleness after which "
                "the start-up and minutely sweeps pause `active` sessions nobody holds."
            ),
        ),
    ] = 30.0
    session_cleanup_interval_seconds: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "How often `cleanup_old_sessions()` deletes completed and cancelled sessions "
                "older than 30 days (count in `sitebuilder_sessions_cleaned_total`); 0: never."
            ),
        ),
    ] = 3600.0
    demo: Annotated[
        bool,
        Field(
            description=(
                "Demo mode (`serve --demo`): seed demo users and a shared demo project, serve "
                "the demo editor at `/` and hand out their tokens at `/demo/token` to anyone "
                "who reaches the port. Never on a server others can reach."
            )
        ),
    ] = False

    @model_validator(mode="after")
    def _presence_bus_is_consistent(self) -> Settings:
        if self.presence_heartbeat_interval >= self.presence_node_timeout_seconds:
            raise ValueError(
                "SITEBUILDER_PRESENCE_HEARTBEAT_SECONDS must be shorter than "
                "SITEBUILDER_PRESENCE_NODE_TIMEOUT_SECONDS"
            )
        if self.presence_backend == "redis" and not self.redis_url:
            raise ValueError(
                "SITEBUILDER_PRESENCE_BACKEND=redis needs SITEBUILDER_REDIS_URL "
                "(e.g. redis://127.0.0.1:6379/0)"
            )
        return self

    @property
    def presence_heartbeat_interval(self) -> float:
        """The heartbeat setting, or its default: a fifth of the node timeout."""
        if self.presence_heartbeat_seconds is not None:
            return self.presence_heartbeat_seconds
        return self.presence_node_timeout_seconds / 5

    @property
    def pgdata(self) -> Path:
        """Data directory of the embedded PostgreSQL."""
        return self.data_dir / "postgres"

    @property
    def worker_count(self) -> int:
        """`workers` with `auto` resolved to the number of cores."""
        if self.workers == "auto":
            return os.cpu_count() or 1
        return self.workers

    @property
    def node_slot(self) -> str:
        """This node's replication slot (the `_0` of the days when each worker had one,
        kept so that an upgraded node resumes from it)."""
        return f"{self.replication_slot}_{self.node_name}_0"

    @property
    def jwt_secret_file(self) -> Path:
        return self.data_dir / "jwt_secret"

    @property
    def migration_parameters(self) -> dict[str, str]:
        """Values the migrations read with current_setting('sitebuilder.*')."""
        return {"sitebuilder.publication": self.publication}

    @property
    def log_level_number(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level]


def settings_table() -> str:
    """The README's settings table, in Markdown."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "see meaning"
        elif field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`"
        lines.append(f"| `SITEBUILDER_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
