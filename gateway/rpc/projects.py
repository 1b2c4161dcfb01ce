"""`project.*` methods: builderHelpers.project over the socket, as the calling user.

Every write is one statement run as the caller, so row-level security and the
owner-columns trigger decide what is allowed. When a write touches no row, a read
in the same transaction tells the client why: not visible (`not_found`), visible
but not theirs to change (`forbidden`), or a stale `expected_updated_at` (`conflict`).
Invitations (migration 0016) are kept by SECURITY DEFINER functions that check the
caller themselves: users cannot write them, and an invitee cannot read the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from db import queries
from db.acting_user import Conn
from gateway.rpc.call import Call, Handlers, RpcError
from protocol.errors import ErrorCode
from protocol.rows import ProjectRow
from protocol.rpc_projects import (
    ListCursor,
    ProjectCollaborator,
    ProjectCreate,
    ProjectDeleted,
    ProjectId,
    ProjectInvitation,
    ProjectInvitationList,
    ProjectInvitations,
    ProjectList,
    ProjectMember,
    ProjectMembers,
    ProjectPage,
    ProjectUpdate,
    ProjectWithRelations,
)

handles = Handlers()

_INSERT = """
    INSERT INTO public.projects
        (id, user_id, name, type, status, description, data, settings, collaborators, is_public)
    VALUES (coalesce($1, uuid_generate_v4()), coalesce($2, auth.uid()), $3, $4, $5, $6,
            $7::jsonb, $8::jsonb, $9, $10)
    RETURNING to_jsonb(projects.*)::text
"""


async def insert_project(conn: Conn, fields: ProjectCreate) -> ProjectRow:
    """The INSERT of project.create, for any transaction as the user (batch uses it)."""
    row = await conn.fetchval(
        _INSERT,
        fields.id,
        fields.user_id,
        fields.name,
        fields.type,
        fields.status,
        fields.description,
        orjson.dumps(fields.data).decode(),
        orjson.dumps(fields.settings).decode(),
        fields.collaborators,
        fields.is_public,
    )
    return ProjectRow.model_validate_json(row)


@handles("project.create")
async def create(call: Call, params: ProjectCreate) -> ProjectRow:
    async with call.as_user() as conn:
        return await insert_project(conn, params)


# The project and everything under it in one statement: one round trip, one snapshot.
# Each table is reached through its index by the ids above it (`= ANY (ARRAY(…))`,
# an uncorrelated subquery of $1 computed once), never joined: row-level security
# checks every row a scan reads, before any join, so a join could read every
# project's wireframes and style guides and call their policies' functions on each.
_SITEMAP_IDS = "ARRAY(SELECT s.id FROM public.sitemaps s WHERE s.project_id = $1)"
_WIREFRAME_IDS = (
    f"ARRAY(SELECT w.id FROM public.wireframes w WHERE w.sitemap_id = ANY ({_SITEMAP_IDS}))"
)
_WITH_RELATIONS = f"""
    SELECT jsonb_build_object(
        'project', to_jsonb(p),
        'sitemaps', (
            SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.created_at, s.id), '[]')
            FROM public.sitemaps s WHERE s.project_id = $1
        ),
        'wireframes', (
            SELECT coalesce(jsonb_agg(to_jsonb(w) ORDER BY w.created_at, w.id), '[]')
            FROM public.wireframes w WHERE w.sitemap_id = ANY ({_SITEMAP_IDS})
        ),
        'style_guides', (
            SELECT coalesce(jsonb_agg(to_jsonb(g) ORDER BY g.created_at, g.id), '[]')
            FROM public.style_guides g WHERE g.wireframe_id = ANY ({_WIREFRAME_IDS})
        )
    )::text
    FROM public.projects p WHERE p.id = $1
"""


@handles("project.get_with_relations", writes=False)
async def get_with_relations(call: Call, params: ProjectId) -> ProjectWithRelations:
    async with call.as_user() as conn:
        found = await conn.fetchval(_WITH_RELATIONS, params.project_id)
    if found is None:
        raise RpcError(ErrorCode.NOT_FOUND, f"no project {params.project_id} visible to you")
    return ProjectWithRelations.model_validate_json(found)


_MEMBERS = "SELECT user_id, collaborators FROM public.projects WHERE id = $1"


@handles("project.members", writes=False)
async def members(call: Call, params: ProjectId) -> ProjectMembers:
    """Whoever can read the project sees who edits it, by name (never by email)."""
    async with call.as_user() as conn:
        found = await conn.fetchrow(_MEMBERS, params.project_id)
    if found is None:
        raise RpcError(ErrorCode.NOT_FOUND, f"no project {params.project_id} visible to you")
    ids = [found["user_id"], *(found["collaborators"] or [])]
    async with call.pool.acquire() as conn:
        names = await queries.display_names(conn, ids)
    online = await call.online(params.project_id)
    return ProjectMembers(
        members=[
            ProjectMember(
                user_id=user_id,
                name=names.get(user_id, "user"),
                role="owner" if index == 0 else "collaborator",
                online=user_id in online,
            )
            for index, user_id in enumerate(dict.fromkeys(ids))
        ]
    )


# Why a write touched nothing


@dataclass(frozen=True)
class Standing:
    """The project as the caller sees it, and what they may do with it."""

    row: ProjectRow
    editable: bool
    owner: bool


_STANDING = """
    SELECT to_jsonb(p)::text AS row, public.can_edit_project(p.id) AS editable,
           p.user_id = (SELECT auth.uid()) AS owner
    FROM public.projects p WHERE p.id = $1
"""


async def _standing(conn: Conn, project_id: UUID) -> Standing:
    """The caller's standing on a project they can see; `not_found` if they cannot."""
    found = await conn.fetchrow(_STANDING, project_id)
    if found is None:
        raise RpcError(ErrorCode.NOT_FOUND, f"no project {project_id} visible to you")
    return Standing(ProjectRow.model_validate_json(found["row"]), found["editable"], found["owner"])


def _forbidden(project_id: UUID, who: str) -> RpcError:
    return RpcError(ErrorCode.FORBIDDEN, f"only {who} of project {project_id} may do this")


async def _owned(conn: Conn, project_id: UUID) -> ProjectRow:
    """The project, if the caller owns it; otherwise the reason they may not change it."""
    standing = await _standing(conn, project_id)
    if not standing.owner:
        raise _forbidden(project_id, "the owner")
    return standing.row


# project.update


def _assignments(params: ProjectUpdate, values: list[Any]) -> list[str]:
    """SET clauses for the sent keys, their values appended to `values` as parameters.

    Column names are the keys of the params' TypedDicts, which refuse any other key.
    A patch is merged into the column as the UPDATE finds it (after any concurrent
    writer committed), so editors changing different keys both keep their change.
    """
    clauses: list[str] = []
    for column, value in sorted(params.set.items()):
        values.append(value)
        clauses.append(f"{column} = ${len(values)}")
    for column, patch in sorted(params.patch.items()):
        values.append(orjson.dumps(patch).decode())
        clauses.append(f"{column} = public.jsonb_merge_patch({column}, ${len(values)}::jsonb)")
    return clauses


# Transaction-local, so the version this write produces carries them (migration 0009).
_VERSION_NOTE = """
    SELECT set_config('sitebuilder.version_message', coalesce($1, ''), true),
           set_config('sitebuilder.version_is_major', $2, true)
"""


@handles("project.update")
async def update(call: Call, params: ProjectUpdate) -> ProjectRow:
    values: list[Any] = [params.project_id, params.expected_updated_at]
    statement = f"""
        UPDATE public.projects SET {", ".join(_assignments(params, values))}
        WHERE id = $1 AND ($2::timestamptz IS NULL OR updated_at = $2)
        RETURNING to_jsonb(projects.*)::text
    """
    async with call.as_user() as conn:
        await conn.execute(_VERSION_NOTE, params.message, str(params.is_major).lower())
        row = await conn.fetchval(statement, *values)
        if row is None:
            raise await _update_refusal(conn, params.project_id)
    return ProjectRow.model_validate_json(row)


async def _update_refusal(conn: Conn, project_id: UUID) -> RpcError:
    """An update matched no row: hidden, not the caller's to edit, or changed meanwhile."""
    standing = await _standing(conn, project_id)
    if not standing.editable:
        return _forbidden(project_id, "the owner and collaborators")
    return RpcError(
        ErrorCode.CONFLICT,
        f"project {project_id} changed since expected_updated_at",
        {"current": standing.row.model_dump(mode="json")},
    )


# project.delete


@handles("project.delete")
async def delete(call: Call, params: ProjectId) -> ProjectDeleted:
    async with call.as_user() as conn:
        deleted = await conn.fetchval(
            "DELETE FROM public.projects WHERE id = $1 RETURNING id", params.project_id
        )
        if deleted is None:
            await _owned(conn, params.project_id)  # raises: hidden, or not the owner's
    return ProjectDeleted(id=params.project_id)


# project.list

_LIST = """
    SELECT to_jsonb(p)::text AS row, p.updated_at, p.id
    FROM public.projects p
    WHERE CASE $1
            WHEN 'mine' THEN p.user_id = (SELECT auth.uid())
            WHEN 'shared' THEN p.user_id <> (SELECT auth.uid())
                               AND (SELECT auth.uid()) = ANY (p.collaborators)
            WHEN 'public' THEN p.is_public
            ELSE true
          END
      AND ($3::uuid IS NULL
           OR (coalesce(p.updated_at, '-infinity'), p.id)
              < (coalesce($2::timestamptz, '-infinity'), $3))
    ORDER BY coalesce(p.updated_at, '-infinity') DESC, p.id DESC
    LIMIT $4
"""


@handles("project.list", writes=False)
async def list_projects(call: Call, params: ProjectList) -> ProjectPage:
    """Keyset pagination on (updated_at, id): stable under inserts, no OFFSET scans.

    Rows whose updated_at is NULL (only possible if written so directly) sort last.
    """
    after = params.after()
    async with call.as_user() as conn:
        found = await conn.fetch(
            _LIST,
            params.scope.value,
            after.updated_at if after else None,
            after.id if after else None,
            params.limit + 1,
        )
    page = found[: params.limit]
    more = len(found) > params.limit
    return ProjectPage(
        projects=[ProjectRow.model_validate_json(r["row"]) for r in page],
        next_cursor=ListCursor(page[-1]["updated_at"], page[-1]["id"]).encode() if more else None,
    )


# project.add_collaborator / project.remove_collaborator
#
# Sharing takes consent (migration 0016): adding someone records an invitation, which
# they accept or decline (below); until then the project is not theirs to see. The
# owner is answered alike whether or not the id or email has an account, is invited
# already, or is a collaborator already: with the project as it is.

_INVITE = "SELECT public.invite_to_project($1, $2, $3)"
_WITHDRAW = "SELECT public.withdraw_project_invitation($1, $2, $3)"
_REMOVE = """
    UPDATE public.projects SET collaborators = array_remove(collaborators, $2)
    WHERE id = $1 AND $2 = ANY (collaborators)
    RETURNING to_jsonb(projects.*)::text
"""


@handles("project.add_collaborator")
async def add_collaborator(call: Call, params: ProjectCollaborator) -> ProjectRow:
    async with call.as_user() as conn:
        row = await _owned(conn, params.project_id)
        await conn.execute(_INVITE, params.project_id, params.user_id, params.email)
    return row


@handles("project.remove_collaborator")
async def remove_collaborator(call: Call, params: ProjectCollaborator) -> ProjectRow:
    """Withdraws a pending invitation too. By id without a lookup: an id whose user is
    gone can still be removed. An email that names no collaborator (no account, or
    only invited) changes nothing, as for someone who is not a member."""
    async with call.as_user() as conn:
        row = await _owned(conn, params.project_id)
        member: UUID | None = await conn.fetchval(
            _WITHDRAW, params.project_id, params.user_id, params.email
        )
        if member is None:
            return row
        removed = await conn.fetchval(_REMOVE, params.project_id, member)
        if removed is None:
            return await _owned(conn, params.project_id)
    return ProjectRow.model_validate_json(removed)


# project.invitations / accept_invitation / decline_invitation / leave: the invitee's side


@handles("project.invitations", writes=False)
async def invitations(call: Call, params: ProjectInvitationList) -> ProjectInvitations:
    async with call.as_user() as conn:
        found = await conn.fetch(
            "SELECT project_id, project_name, invited_by, invited_by_email, invited_at"
            " FROM public.pending_project_invitations($1)",
            params.limit,
        )
    return ProjectInvitations(invitations=[ProjectInvitation(**dict(r)) for r in found])


@handles("project.accept_invitation")
async def accept_invitation(call: Call, params: ProjectId) -> ProjectRow:
    """The caller joins the collaborators; no invitation is `not_found`."""
    async with call.as_user() as conn:
        row = await conn.fetchval(
            "SELECT to_jsonb(p)::text FROM public.accept_project_invitation($1) p",
            params.project_id,
        )
    return ProjectRow.model_validate_json(row)


@handles("project.decline_invitation")
async def decline_invitation(call: Call, params: ProjectId) -> ProjectId:
    async with call.as_user() as conn:
        await conn.execute("SELECT public.decline_project_invitation($1)", params.project_id)
    return params


@handles("project.leave")
async def leave(call: Call, params: ProjectId) -> ProjectId:
    """A collaborator leaves; the owner may not (`forbidden`), anyone else `not_found`."""
    try:
        async with call.as_user() as conn:
            await conn.execute("SELECT public.leave_project($1)", params.project_id)
    except asyncpg.InsufficientPrivilegeError as error:
        raise RpcError(ErrorCode.FORBIDDEN, str(error)) from error
    return params
