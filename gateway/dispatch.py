"""From the change feed to the hub: route, authorize, encode once, publish.

Runs as one task, in commit order. When a project's owner, collaborators or
visibility change, its subscribers' access is decided from the committed row
(gateway.authorization) before anything later is delivered, so a user who lost access
receives nothing after it. A deleted project's subscribers receive the deletes of its
transaction (the project's and its children's), then their subscriptions end. A
project change also goes, as the users concerned see it, to their live project lists
(`_publish_list`).

A change made by an rpc of one of this gateway's connections (its request tag,
migration 0013) is encoded a second time, with the rpc's `ref`, for that connection
alone, if it is subscribed and signed in as the change's actor; everyone else, and
the history (replays), get the shared bytes without it.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import ValidationError

from db.feed import (
    ChangeFeed,
    ChangeOp,
    FeedInterrupted,
    FeedResumed,
    FenceReached,
    RowChange,
    TransactionEnd,
)
from gateway.authorization import AclChange
from gateway.history import Entry
from gateway.hub import Event
from gateway.rpc import parse_request_tag
from gateway.table_watch import TableDelivery, to_table_change
from protocol.codec import encode_frame
from protocol.frames import CHANGE_FRAMES, ChangeBase, Op, ProjectChange, Ref, ResetReason
from protocol.rows import ENTITY_ROWS, TABLE_ENTITIES, Entity, ProjectRow

if TYPE_CHECKING:
    from gateway.server import Gateway

logger = logging.getLogger(__name__)

# What row-level security shows to project members only, never to public readers.
MEMBERS_ONLY = frozenset({Entity.SESSION, Entity.VERSION})


class Dispatcher:
    def __init__(self, gateway: Gateway, feed: ChangeFeed) -> None:
        self._gateway = gateway
        self._feed = feed
        self._history = gateway.history
        self._deleted_projects: list[UUID] = []

    async def run(self) -> None:
        """Frames wait in the outbox while a transaction is handled, so each connection
        gets all of its frames in one write; it is flushed before anything else may run
        (see gateway.wire): at the transaction's end, before every await that can yield
        to the loop, and after every change when the feed itself may yield between them."""
        metrics = self._gateway.metrics
        outbox = self._gateway.outbox
        async with aclosing(self._feed.events()) as events:
            async for event in events:
                if isinstance(event, RowChange):
                    metrics.feed_backlog.set(getattr(self._feed, "backlog", 0))
                    await self._on_change(event)
                    if not self._feed.whole_transactions:
                        outbox.flush()
                    continue
                outbox.flush()
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
                    seen = self._gateway.fences.reached(event.token)
                    if seen is not None:
                        self._gateway.access_lists.fence_passed(seen)

    def _on_resumed(self, event: FeedResumed) -> None:
        if event.lossless and self._history.started:
            logger.info("change feed resumed where it stopped: nothing was missed")
            return
        first = not self._history.started
        self._history.start(event.floor)
        self._feed.retain_from(self._history.oldest())
        if not first:
            logger.warning(
                "change feed resumed (%s): resynchronising every subscriber", event.reason
            )
            self._gateway.resync_all(ResetReason.FEED_INTERRUPTED, event.reason)

    async def _on_change(self, change: RowChange) -> None:
        self._history.advance(change.position)
        # From its first change on, a transaction counts as dispatched: a row it wrote
        # is as of this position (gateway.authorization.AccessLists).
        self._gateway.access_lists.dispatched(change.xid)
        self._gateway.metrics.feed_lag.set(
            max(0.0, (datetime.now(UTC) - change.committed_at).total_seconds())
        )
        if change.op is ChangeOp.TRUNCATE:
            # Nothing before a truncation can be replayed on top of what is left.
            self._gateway.outbox.flush()
            self._history.start(change.position)
            self._gateway.resync_all(ResetReason.TRUNCATED, f"table {change.table} was truncated")
            return
        if change.table not in TABLE_ENTITIES:
            return
        router = self._gateway.router
        # Old first: routing also teaches the router parents, and the new row's must win.
        old_project = await router.project_of(change.table, change.old) if change.old else None
        new_project = await router.project_of(change.table, change.new) if change.new else None
        acl = None
        if change.table == "projects":
            acl = AclChange.of(change.old, change.new)
            self._authorize(change, acl)
        if change.op is ChangeOp.INSERT:
            await self._publish(change, new_project, Op.INSERT, change.new, None, acl)
        elif change.op is ChangeOp.DELETE:
            await self._publish(change, old_project, Op.DELETE, None, change.old, acl)
        elif old_project == new_project:
            await self._publish(change, new_project, Op.UPDATE, change.new, change.old, acl)
        else:
            await self._publish(change, old_project, Op.DELETE, None, change.old)
            await self._publish(change, new_project, Op.INSERT, change.new, None)
        if change.table == "projects":
            self._publish_list(change)

    def _authorize(self, change: RowChange, acl: AclChange | None) -> None:
        """`acl`: what the project-row change did to access (None: nothing; without
        the old row, REPLICA IDENTITY not FULL, any update may have changed it)."""
        if change.op is ChangeOp.DELETE and change.old is not None:
            self._deleted_projects.append(UUID(str(change.old["id"])))
        elif change.op is ChangeOp.UPDATE and acl is not None and acl.after is not None:
            assert change.new is not None
            self._gateway.apply_access(UUID(str(change.new["id"])), acl.after)

    def _publish_list(self, change: RowChange) -> None:
        """To the project lists of its members (owner and collaborators), old and new:
        `insert` for those it was added to, `update` for those it stays with, `delete`
        (the old row) for those it was removed from. One encoding per op."""
        lists = self._gateway.project_lists
        if not lists.active:
            return
        try:
            new = ProjectRow.model_validate(change.new) if change.new is not None else None
            old = ProjectRow.model_validate(change.old) if change.old is not None else None
        except ValidationError:
            return  # logged by _publish
        now_in = _members(new)
        # An update without its old row (REPLICA IDENTITY not FULL): membership unknown.
        was_in = now_in if change.op is ChangeOp.UPDATE and old is None else _members(old)
        origin = self._origin(change)
        for op, users, new_row, old_row in (
            (Op.INSERT, now_in - was_in, new, None),
            (Op.UPDATE, now_in & was_in, new, old),
            (Op.DELETE, was_in - now_in, None, old),
        ):
            followers = lists.following(users)
            row = new_row or old_row
            if not followers or row is None:
                continue
            frame = ProjectChange(
                project_id=row.id,
                op=op,
                new=new_row,
                old=old_row,
                actor=change.actor,
                committed_at=change.committed_at,
                position=str(change.position),
                list=True,
            )
            own = None
            if (
                origin is not None
                and change.actor in followers
                and lists.subscription(change.actor, origin[0]) is not None
            ):
                own = _with_ref(frame, origin)
            event = Event(
                row.id,
                change.xid,
                change.position,
                encode_frame(frame),
                change.committed_at,
                own=own,
            )
            lists.publish(followers, event)

    def _origin(self, change: RowChange) -> tuple[int, Ref] | None:
        """(connection id, ref) of the rpc on this gateway that made `change`, if any."""
        if change.request is None or change.actor is None:
            return None
        tag = parse_request_tag(change.request)
        if tag is None or tag[0] != self._gateway.instance:
            return None
        return tag[1], tag[2]

    def _end_transaction(self) -> None:
        # A durable feed may now forget what the history no longer keeps.
        self._history.expire()
        self._feed.retain_from(self._history.oldest())
        self._gateway.metrics.history_bytes.set(self._history.size_bytes)
        deleted, self._deleted_projects = self._deleted_projects, []
        for project_id in deleted:
            self._gateway.revoke_all(project_id, "the project was deleted")

    async def _publish(
        self,
        change: RowChange,
        project_id: UUID | None,
        op: Op,
        new: dict[str, Any] | None,
        old: dict[str, Any] | None,
        acl: AclChange | None = None,
    ) -> None:
        """`acl`: for a project-row change, what it did to access (history keeps it)."""
        if project_id is None:
            return
        entity = TABLE_ENTITIES[change.table]
        row_model = ENTITY_ROWS[entity]
        try:
            frame = CHANGE_FRAMES[entity](
                project_id=project_id,
                op=op,
                new=row_model.model_validate(new) if new is not None else None,
                old=row_model.model_validate(old) if old is not None else None,
                actor=change.actor,
                committed_at=change.committed_at,
                position=str(change.position),
            )
        except ValidationError as error:
            logger.error("dropping malformed %s row from the feed: %s", change.table, error)
            return
        data = encode_frame(frame)
        members_only = entity in MEMBERS_ONLY
        self._history.record(
            project_id, Entry(change.position, data, members_only, change.xid, acl)
        )
        access_lists = self._gateway.access_lists
        if acl is not None:
            access_lists.changed(project_id, acl)
        hub = self._gateway.hub
        table_change = None
        if hub.tables.watching(change.table):
            table_change = TableDelivery(
                to_table_change(change.table, frame),
                await access_lists.at(project_id, self._gateway.outbox.flush),
            )
        origin = self._origin(change)
        own = None
        if origin is not None:
            subscription = hub.subscription(project_id, origin[0])
            if subscription is not None and subscription.subscriber.user_id == change.actor:
                own = _with_ref(frame, origin)
        delivered = hub.publish(
            Event(
                project_id,
                change.xid,
                change.position,
                data,
                change.committed_at,
                members_only=members_only,
                own=own,
                change=table_change,
            )
        )
        if delivered:
            lag = (datetime.now(UTC) - change.committed_at).total_seconds()
            self._gateway.metrics.delivery_lag.observe(max(0.0, lag))


def _with_ref(frame: ChangeBase[Any], origin: tuple[int, Ref]) -> tuple[int, bytes]:
    """The frame for the connection whose rpc made the change: with the rpc's ref."""
    connection_id, ref = origin
    return connection_id, encode_frame(frame.model_copy(update={"ref": ref}))


def _members(row: ProjectRow | None) -> set[UUID]:
    """Whose project list `row` is on: its owner's and its collaborators'."""
    if row is None:
        return set()
    return {row.user_id, *(row.collaborators or ())}
