"""`session.*` methods: builderHelpers.session over the socket, as the calling user.

Every write is one guarded statement under row-level security (a user manages their
own sessions, in projects they may edit); the guard `status IN ('active', 'paused')`
keeps a completed or cancelled session as it ended. When a statement matches nothing,
the same transaction tells why: not visible (`not_found`), someone else's (`forbidden`)
or ended (`conflict`). `ended_at` and `duration` are the trigger's
(update_session_duration). Sessions created or resumed are attached to the caller's
connection (gateway/presence/sessions.py pauses them when it is gone).

A session's `ip_address` and `user_agent` are its owner's (migration 0015 keeps them
in builder_session_clients, which only the owner can read): the results that carry the
token (`OwnedSession`) carry them too; every other row has them null.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from pydantic import TypeAdapter

from db.acting_user import Conn
from gateway.rpc.call import Call, Handlers, RpcError
from protocol.errors import ErrorCode
from protocol.rows import SessionRow
from protocol.rpc_sessions import (
    OwnedSession,
    SessionCreate,
    SessionId,
    SessionList,
    SessionProgress,
    SessionResume,
    SessionToken,
)

_OWNED_LIST = TypeAdapter(list[OwnedSession])

handles = Handlers()

_LIVE = "s.status IN ('active', 'paused')"

_CREATE = """
    INSERT INTO public.builder_sessions AS s
        (user_id, project_id, session_token, status, current_step, metadata, ip_address,
         user_agent)
    VALUES ($1, $2, $3, 'active', $4, $5::jsonb, $6::inet, $7)
    RETURNING s.session_token
"""
# A session as its owner sees it: its client from the table only the owner can read.
_OWNED = """
    SELECT (to_jsonb(s.*) || jsonb_build_object(
        'ip_address', c.ip_address, 'user_agent', c.user_agent))::text
    FROM public.builder_sessions s
    LEFT JOIN public.builder_session_clients c ON c.session_id = s.id
    WHERE s.session_token = $1
"""
_PROGRESS = f"""
    UPDATE public.builder_sessions AS s SET
        current_step = coalesce($2, s.current_step),
        progress = coalesce($3::jsonb, s.progress),
        step_data = coalesce($4::jsonb, s.step_data)
    WHERE s.id = $1 AND {_LIVE}
    RETURNING to_jsonb(s.*)::text
"""
_END = f"""
    UPDATE public.builder_sessions AS s SET status = $2, ended_at = now()
    WHERE s.id = $1 AND {_LIVE}
    RETURNING to_jsonb(s.*)::text
"""
_RESUME = f"""
    UPDATE public.builder_sessions AS s SET status = 'active'
    WHERE s.session_token = $1 AND {_LIVE}
    RETURNING s.session_token
"""
_RESUME_OWN = f"""
    UPDATE public.builder_sessions AS s SET status = 'active'
    WHERE s.id = $1 AND s.user_id = $2 AND {_LIVE}
    RETURNING s.session_token
"""
# The caller's sessions as their owner sees them, newest first.
_LIST = """
    SELECT coalesce(jsonb_agg(owned ORDER BY updated_at DESC, id), '[]'::jsonb)::text
    FROM (
        SELECT s.updated_at, s.id, to_jsonb(s.*) || jsonb_build_object(
            'ip_address', c.ip_address, 'user_agent', c.user_agent) AS owned
        FROM public.builder_sessions s
        LEFT JOIN public.builder_session_clients c ON c.session_id = s.id
        WHERE s.user_id = $1
          AND ($2::uuid IS NULL OR s.project_id = $2)
          AND ($3::text[] IS NULL OR s.status = ANY($3))
        ORDER BY s.updated_at DESC, s.id
        LIMIT $4
    ) mine
"""
# Why a write matched nothing: the row as the caller sees it, and whether it is theirs.
_SEEN = """
    SELECT to_jsonb(s.*)::text AS row, s.status, s.user_id = auth.uid() AS mine
    FROM public.builder_sessions s WHERE {where} = $1
"""


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def _refusal(conn: Conn, column: str, key: object, what: str) -> RpcError:
    seen = await conn.fetchrow(_SEEN.format(where=f"s.{column}"), key)
    if seen is None:
        return RpcError(ErrorCode.NOT_FOUND, f"no session {what} visible to you")
    if not seen["mine"]:
        return RpcError(ErrorCode.FORBIDDEN, f"session {what} is another user's")
    current = SessionRow.model_validate_json(seen["row"]).model_dump(mode="json")
    return RpcError(
        ErrorCode.CONFLICT,
        f"session {what} has ended ({seen['status']}): it can no longer change",
        {"status": seen["status"], "current": current},
    )


@handles("session.create")
async def create(call: Call, params: SessionCreate) -> OwnedSession:
    origin = call.origin
    async with call.as_user() as conn:
        token = await conn.fetchval(
            _CREATE,
            call.user_id,
            params.project_id,
            secrets.token_urlsafe(32),
            params.current_step,
            _json(params.metadata),
            origin.ip_address if origin else None,
            origin.user_agent if origin else None,
        )
        row = await conn.fetchval(_OWNED, token)
    session = OwnedSession.model_validate_json(row)
    if origin is not None:
        origin.attach(session.id)
        await origin.show_session(session.model_dump())
    return session


@handles("session.get_by_token", writes=False)
async def get_by_token(call: Call, params: SessionToken) -> OwnedSession:
    async with call.as_user() as conn:
        row = await conn.fetchval(_OWNED, params.session_token)
    if row is None:
        raise RpcError(ErrorCode.NOT_FOUND, "no session with this token visible to you")
    return OwnedSession.model_validate_json(row)


@handles("session.update_progress")
async def update_progress(call: Call, params: SessionProgress) -> SessionRow:
    async with call.as_user() as conn:
        row = await conn.fetchval(
            _PROGRESS,
            params.id,
            params.current_step,
            _json(params.progress),
            _json(params.step_data),
        )
        if row is None:
            raise await _refusal(conn, "id", params.id, str(params.id))
    session = SessionRow.model_validate_json(row)
    if call.origin is not None:
        await call.origin.show_session(session.model_dump())
    return session


async def _end(status: str, call: Call, params: SessionId) -> SessionRow:
    async with call.as_user() as conn:
        row = await conn.fetchval(_END, params.id, status)
        if row is None:
            raise await _refusal(conn, "id", params.id, str(params.id))
    session = SessionRow.model_validate_json(row)
    if call.origin is not None:
        call.origin.end(params.id)
        await call.origin.show_session(session.model_dump(), active=False)
    return session


@handles("session.complete")
async def complete(call: Call, params: SessionId) -> SessionRow:
    return await _end("completed", call, params)


@handles("session.cancel")
async def cancel(call: Call, params: SessionId) -> SessionRow:
    return await _end("cancelled", call, params)


@handles("session.list", writes=False)
async def list_sessions(call: Call, params: SessionList) -> list[OwnedSession]:
    async with call.as_user() as conn:
        rows = await conn.fetchval(
            _LIST, call.user_id, params.project_id, params.status, params.limit
        )
    return _OWNED_LIST.validate_json(rows)


@handles("session.resume")
async def resume(call: Call, params: SessionResume) -> OwnedSession:
    async with call.as_user() as conn:
        if params.id is not None:
            token = await conn.fetchval(_RESUME_OWN, params.id, call.user_id)
            if token is None:
                raise await _refusal(conn, "id", params.id, str(params.id))
        else:
            token = await conn.fetchval(_RESUME, params.session_token)
            if token is None:
                raise await _refusal(conn, "session_token", params.session_token, "of this token")
        row = await conn.fetchval(_OWNED, token)
    session = OwnedSession.model_validate_json(row)
    if call.origin is not None:
        call.origin.attach(session.id)
        await call.origin.show_session(session.model_dump())
    return session
