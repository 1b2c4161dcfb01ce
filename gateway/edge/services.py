"""What a connection of either protocol uses of its gateway.

The protocol adapters (gateway.native, gateway.supabase) depend on this interface,
not on the gateway that implements it (gateway.app.server), so the process lifecycle
stays above them and nothing imports in a circle.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

import asyncpg

from gateway.core.fences import Fences
from gateway.core.history import History
from gateway.core.hub import Hub
from gateway.core.outbox import Outbox
from gateway.core.router import Router
from gateway.core.snapshots import SnapshotReads
from gateway.edge.expiries import Expiries
from gateway.edge.limits import Unauthenticated
from gateway.edge.names import NameLookups
from gateway.edge.tokens import TokenVerifier
from gateway.metrics import Metrics
from gateway.presence.model import Presence
from gateway.presence.sessions import LiveSessions
from gateway.presence.states import PresenceStates
from gateway.settings import Settings


class Admitted(Protocol):
    """A connection, as the per-user connection limit counts it."""

    user_id: UUID


class Services(Protocol):
    settings: Settings
    metrics: Metrics
    pool: asyncpg.Pool
    verifier: TokenVerifier
    hub: Hub
    history: History
    fences: Fences
    router: Router
    outbox: Outbox
    presence: Presence
    presence_states: PresenceStates
    # Snapshot reads shared by a project's joiners of one window.
    snapshots: SnapshotReads
    # Display names of users signing in, looked up together.
    names: NameLookups
    sessions: LiveSessions
    unauthenticated: Unauthenticated
    # Every connection's token expiry, on one timer.
    expiries: Expiries
    # This gateway process, as request tags name it (gateway.core.origin).
    instance: str

    @property
    def node_id(self) -> str: ...

    @property
    def feed_connected(self) -> bool: ...

    def admit(self, connection: Admitted, user_id: UUID) -> bool:
        """Count the connection against its user's limit; False when over it."""
        ...

    def forget(self, connection: Admitted) -> None: ...

    def connection_limit(self, user_id: UUID) -> int: ...

    async def online_users(self, project_id: UUID) -> set[UUID]:
        """Users in the project's presence on any gateway node."""
        ...
