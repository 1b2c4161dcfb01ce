"""From the change feed to the hub: resolve, then publish and flush, in commit order.

Each row change is first *resolved*, which may ask the database: which project it
belongs to (gateway.core.router), its rows validated into typed values, what it does
to access, and, when anyone watches its table, the project's access list as of it
(gateway.core.authorization.AccessLists). Resolved changes wait as protocol-neutral
events (gateway.core.events) until the transaction ends (or, from a feed that may
yield inside a transaction, after each change); then they are *published* in one
synchronous step: recorded in the history, access applied, handed to the hub, which
encodes them once per protocol variant into the outbox, and the outbox flushed.

Resolving usually needs no database (the parents are remembered, nobody watches the
table), so a change is resolved synchronously when it can be, and awaits only when
the database must be asked: a feed hands a transaction's changes in batches
(db.feed.RowChanges), and a batch costs one step of the feed's iterator, not one
coroutine, closure and iterator step per change.

Nothing can overtake a transaction's frames by construction: the outbox is filled
and flushed only inside that step, which never awaits, so whatever a connection is
sent from elsewhere (a reply, `unsubscribed`, a presence diff) goes either before all
of them or after all of them.

When a project's owner, collaborators or visibility change, its subscribers' access is
decided from the committed row (gateway.core.authorization) before anything later is
delivered, so a user who lost access receives nothing after it. A deleted project's
subscribers receive the deletes of its transaction (the project's and its children's),
then their subscriptions end. A project change also goes, as the users concerned see
it, to their project lists. A change made by an RPC of one of this gateway's
connections carries its origin (gateway.core.origin), so that connection's copy can
carry the RPC's ref.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from db.feed import (
    ChangeFeed,
    ChangeOp,
    FeedInterrupted,
    FeedResumed,
    FenceReached,
    RowChange,
    RowChanges,
    TransactionEnd,
)
from gateway.core.authorization import AccessLists, Acl, AclChange, Undetermined
from gateway.core.channels import ProjectListChannel, table_channel
from gateway.core.events import Change, Loss, Op, RowSource, TypedRow
from gateway.core.fences import Fences
from gateway.core.history import History
from gateway.core.hub import Hub
from gateway.core.origin import Origin, origin_of
from gateway.core.outbox import Outbox
from gateway.core.router import UNKNOWN, Router
from gateway.metrics import Metrics
from protocol.rows import ENTITY_ROWS, TABLE_ENTITIES, Entity

logger = logging.getLogger(__name__)

# At most this many resolved changes wait for their transaction's end: a bigger
# transaction is published in parts (each flushed before the next is resolved).
MAX_RESOLVED = 1000

# Enum members read on every change, as module constants: reading one from its class
# goes through EnumType's attribute lookup (~0.2 µs here, several per change).
_TRUNCATE, _INSERT, _DELETE = ChangeOp.TRUNCATE, ChangeOp.INSERT, ChangeOp.DELETE
_OP_INSERT, _OP_UPDATE, _OP_DELETE = Op.INSERT, Op.UPDATE, Op.DELETE
_PROJECT = Entity.PROJECT

# What publishing a resolved change runs: a method and its arguments (a tuple, not a
# closure: one is made per change).
Step = tuple[Callable[..., None], tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Core:
    """What the dispatcher works on (the gateway owns them all)."""

    hub: Hub
    history: History
    router: Router
    access_lists: AccessLists
    fences: Fences
    outbox: Outbox
    metrics: Metrics
    # This gateway process, as request tags name it (gateway.core.origin).
    instance: str


class Dispatcher:
    def __init__(self, core: Core, feed: ChangeFeed) -> None:
        self._core = core
        self._feed = feed
        self._resolved: list[Step] = []
        self._deleted_projects: list[UUID] = []
        # The transaction whose changes are being resolved (None between transactions).
        self._xid: int | None = None
        # The commit of the first change `_publish` handed to anyone (delivery lag).
        self._delivered: datetime | None = None

    async def run(self) -> None:
        metrics = self._core.metrics
        async with aclosing(self._feed.events()) as events:
            async for event in events:
                kind = type(event)
                if kind is RowChanges:
                    assert isinstance(event, RowChanges)
                    await self._row_changes(event.changes)
                    continue
                if kind is RowChange:
                    assert isinstance(event, RowChange)
                    await self._row_changes((event,))
                    continue
                self._publish()
                if isinstance(event, TransactionEnd):
                    self._end_transaction()
                    # A backlog must not starve requests (subscribes, resumes) on this loop.
                    await asyncio.sleep(0)
                elif isinstance(event, FeedInterrupted):
                    logger.warning("change feed interrupted: %s", event.reason)
                    self._end_transaction()
                    metrics.feed_up.set(0)
                elif isinstance(event, FeedResumed):
                    metrics.feed_up.set(1)
                    self._on_resumed(event)
                elif isinstance(event, FenceReached):
                    seen = self._core.fences.reached(event.token)
                    if seen is not None:
                        self._core.access_lists.fence_passed(seen)

    async def _row_changes(self, batch: Sequence[RowChange]) -> None:
        """Resolve a batch of one transaction's changes in order, each without awaiting
        when nothing must be read, and publish as the feed allows (module docstring)."""
        whole = self._feed.whole_transactions
        for row_change in batch:
            if row_change.xid != self._xid:
                self._begin(row_change)
            if not self._resolve_known(row_change):
                await self._resolve(row_change)
            if not whole or len(self._resolved) >= MAX_RESOLVED:
                self._publish()

    def _publish(self) -> None:
        """Run the resolved changes' steps and write what they queued: synchronous, so
        the outbox is empty again before the dispatcher next awaits. The metrics are
        updated once for all of them."""
        core = self._core
        steps, self._resolved = self._resolved, []
        for publish, args in steps:
            publish(*args)
        core.outbox.flush()
        core.hub.write_counts()
        if self._delivered is not None:
            lag = (datetime.now(UTC) - self._delivered).total_seconds()
            core.metrics.delivery_lag.observe(max(0.0, lag))
            self._delivered = None

    def _on_resumed(self, event: FeedResumed) -> None:
        history = self._core.history
        if event.lossless and history.started:
            logger.info("change feed resumed where it stopped: nothing was missed")
            return
        first = not history.started
        history.start(event.floor)
        self._feed.retain_from(history.oldest())
        if not first:
            logger.warning(
                "change feed resumed (%s): resynchronising every subscriber", event.reason
            )
            self._lose_all(Loss.FEED_INTERRUPTED, event.reason)

    def _lose_all(self, loss: Loss, message: str) -> None:
        self._core.metrics.feed_resets.inc()
        self._core.hub.lose_all(loss, message)

    # Resolving

    def _begin(self, first: RowChange) -> None:
        """A transaction's first change: what holds for all of its changes is done once
        (its changes share their commit, and a gauge set takes a lock)."""
        core = self._core
        self._xid = first.xid
        # From its first change on, a transaction counts as dispatched: a row it wrote
        # is as of this position (gateway.core.authorization.AccessLists).
        core.access_lists.dispatched(first.xid)
        core.metrics.feed_backlog.set(getattr(self._feed, "backlog", 0))
        core.metrics.feed_lag.set(
            max(0.0, (datetime.now(UTC) - first.committed_at).total_seconds())
        )

    def _resolve_known(self, row_change: RowChange) -> bool:
        """Resolve the change without awaiting, when neither routing it nor a table
        watch needs the database; False (and nothing done) when it does."""
        core = self._core
        table = row_change.table
        if row_change.op is _TRUNCATE:
            self._resolved.append((self._truncated, (row_change,)))
            return True
        if table not in TABLE_ENTITIES:
            self._resolved.append((core.history.advance, (row_change.position,)))
            return True
        if core.hub.has(table_channel(table)):
            return False  # the project's access list as of the change may need a read
        router = core.router
        # Old first: routing also teaches the router parents, and the new row's must win.
        old_project = router.known_project_of(table, row_change.old) if row_change.old else None
        new_project = router.known_project_of(table, row_change.new) if row_change.new else None
        if old_project is UNKNOWN or new_project is UNKNOWN:
            return False
        for change in self._changes(row_change, old_project, new_project):
            if change.acl is not None:
                core.access_lists.changed(change.project_id, change.acl)
            self._resolved.append((self._publish_change, (change, None)))
        if table == "projects":
            self._resolved.append((self._publish_listed, (row_change,)))
        return True

    async def _resolve(self, row_change: RowChange) -> None:
        """Resolve a change of an entity's table, reading what the database must tell:
        a parent not remembered, the project's access list for a table watch."""
        core = self._core
        router = core.router
        table = row_change.table
        old_project = await router.project_of(table, row_change.old) if row_change.old else None
        new_project = await router.project_of(table, row_change.new) if row_change.new else None
        for change in self._changes(row_change, old_project, new_project):
            table_acl: Acl | Undetermined | None = None
            if change.acl is not None:
                core.access_lists.changed(change.project_id, change.acl)
            if core.hub.has(table_channel(change.table)):
                table_acl = await core.access_lists.at(change.project_id)
            self._resolved.append((self._publish_change, (change, table_acl)))
        if table == "projects":
            self._resolved.append((self._publish_listed, (row_change,)))

    def _changes(
        self, row_change: RowChange, old_project: UUID | None, new_project: UUID | None
    ) -> list[Change]:
        """The events of a row change routed to these projects: one, or a delete and an
        insert when it moved from one project to another."""
        table = row_change.table
        acl = AclChange.of(row_change.old, row_change.new) if table == "projects" else None
        origin = origin_of(row_change.request, self._core.instance)
        op = row_change.op
        parts: list[_Part]
        if op is _INSERT:
            parts = [(new_project, _OP_INSERT, row_change.new, None, acl)]
        elif op is _DELETE:
            parts = [(old_project, _OP_DELETE, None, row_change.old, acl)]
        elif old_project == new_project:
            parts = [(new_project, _OP_UPDATE, row_change.new, row_change.old, acl)]
        else:
            parts = [
                (old_project, _OP_DELETE, None, row_change.old, None),
                (new_project, _OP_INSERT, row_change.new, None, None),
            ]
        changes = []
        for project_id, part_op, new, old, part_acl in parts:
            if project_id is None:
                continue
            change = _event(row_change, project_id, part_op, new, old, part_acl, origin)
            if change is not None:
                changes.append(change)
        return changes

    # Publishing (synchronous: see the module's docstring)

    def _publish_change(self, change: Change, table_acl: Acl | Undetermined | None) -> None:
        core = self._core
        if change.entity is _PROJECT:
            self._apply_access(change)
        core.history.record(change)
        if core.hub.publish(change, table_acl) and self._delivered is None:
            self._delivered = change.committed_at
        change.settle()

    def _apply_access(self, change: Change) -> None:
        """Before the project-row change itself is sent: those it takes access from
        get nothing more (a deleted project's subscriptions end with its transaction,
        once its children's deletes are sent)."""
        if change.op is Op.DELETE:
            self._deleted_projects.append(change.project_id)
        elif change.op is Op.UPDATE and change.acl is not None and change.acl.after is not None:
            self._core.hub.apply_access(change.project_id, change.acl.after)

    def _publish_listed(self, row_change: RowChange) -> None:
        """To the project lists of its members (owner and collaborators), old and new:
        `insert` for those it was added to, `update` for those it stays with, `delete`
        (the old row) for those it was removed from."""
        hub = self._core.hub
        new_members = _members(row_change.new)
        # An update without its old row (REPLICA IDENTITY not FULL): membership unknown.
        if row_change.op is ChangeOp.UPDATE and row_change.old is None:
            old_members = new_members
        else:
            old_members = _members(row_change.old)
        if not any(hub.has(ProjectListChannel(u)) for u in new_members | old_members):
            return
        origin = origin_of(row_change.request, self._core.instance)
        for op, users, new, old in (
            (Op.INSERT, new_members - old_members, row_change.new, None),
            (Op.UPDATE, new_members & old_members, row_change.new, row_change.old),
            (Op.DELETE, old_members - new_members, None, row_change.old),
        ):
            row = new or old
            if not users or row is None:
                continue
            change = _event(row_change, UUID(str(row["id"])), op, new, old, None, origin)
            if change is not None:
                change.listed = True
                hub.publish_listed(users, change)

    def _truncated(self, row_change: RowChange) -> None:
        # Nothing before a truncation can be replayed on top of what is left.
        self._core.history.start(row_change.position)
        self._lose_all(Loss.TRUNCATED, f"table {row_change.table} was truncated")

    def _end_transaction(self) -> None:
        core = self._core
        self._xid = None
        # A durable feed may now forget what the history no longer keeps.
        core.history.expire()
        self._feed.retain_from(core.history.oldest())
        core.metrics.history_bytes.set(core.history.size_bytes)
        deleted, self._deleted_projects = self._deleted_projects, []
        for project_id in deleted:
            core.hub.end_all(project_id, "the project was deleted")
        core.outbox.flush()


# (project, op, new row, old row, what it did to access) of one event of a row change.
_Part = tuple[UUID | None, Op, dict[str, Any] | None, dict[str, Any] | None, AclChange | None]


def _event(
    row_change: RowChange,
    project_id: UUID,
    op: Op,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    acl: AclChange | None,
    origin: Origin | None,
) -> Change | None:
    """The protocol-neutral event, its rows validated (None, logged, for a malformed
    row: one bad row must not stop the feed). Rows the decoder typed are taken as they
    are (validating a 2 KB layout's JSON tree costs ten times building the model), and
    built when published."""
    entity = TABLE_ENTITIES[row_change.table]
    row_model = ENTITY_ROWS[entity]
    new_row: RowSource | None = None
    old_row: RowSource | None = None
    if row_change.typed:
        new_row = TypedRow(row_model, new) if new is not None else None
        old_row = TypedRow(row_model, old) if old is not None else None
    else:
        try:
            new_row = row_model.model_validate(new) if new is not None else None
            old_row = row_model.model_validate(old) if old is not None else None
        except ValidationError as error:
            logger.error("dropping malformed %s row from the feed: %s", row_change.table, error)
            return None
    return Change(
        project_id=project_id,
        entity=entity,
        table=row_change.table,
        op=op,
        new=new_row,
        old=old_row,
        actor=row_change.actor,
        committed_at=row_change.committed_at,
        position=row_change.position,
        xid=row_change.xid,
        origin=origin,
        acl=acl,
    )


def _members(row: dict[str, Any] | None) -> frozenset[UUID]:
    """Whose project list a project row is on: its members'."""
    acl = Acl.of(row)
    return acl.members if acl is not None else frozenset()
