"""The native `snapshot` frame of a shared view (gateway.core.snapshots), its rows
validated and encoded once for everyone who shares it.

Joiners of one window differ only in their frame's head: the position each resumes
from (gateway.core.hub.snapshot_position: just before the first change it holds that
the snapshot lacks). The rows that follow are the same bytes for all: a joiner's frame
is its head written by orjson and the shared rest, cut from the first frame pydantic
wrote. Should the head orjson writes ever not be the one pydantic wrote, each frame is
written whole by pydantic from the model validated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import orjson

from gateway.core.snapshots import SharedView
from protocol.codec import encode_frame
from protocol.frames import Access, Snapshot
from protocol.rows import ProjectRow, SessionRow, SitemapRow, StyleGuideRow, WireframeRow

# The key of the native encoding among a shared view's encodings.
_NATIVE = "native snapshot"


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A view's frame model, and its bytes after the position (None: not cut)."""

    model: Snapshot
    rest: bytes | None

    @classmethod
    def of(cls, shared: SharedView, project_id: UUID, position: str) -> _Encoded:
        view = shared.view
        model = Snapshot(
            project_id=project_id,
            access=Access.of(view.editable),
            position=position,
            project=ProjectRow.model_validate(view.project),
            sitemaps=[SitemapRow.model_validate(r) for r in view.sitemaps],
            wireframes=[WireframeRow.model_validate(r) for r in view.wireframes],
            style_guides=[StyleGuideRow.model_validate(r) for r in view.style_guides],
            sessions=[SessionRow.model_validate(r) for r in view.sessions],
        )
        whole = encode_frame(model)
        head = _head(model, position)
        return cls(model, whole[len(head) :] if whole.startswith(head) else None)

    def frame(self, position: str) -> bytes:
        if self.rest is not None:
            return _head(self.model, position) + self.rest
        return encode_frame(self.model.model_copy(update={"position": position}))


def snapshot_frame(shared: SharedView, project_id: UUID, position: str) -> bytes:
    """The `snapshot` frame of `shared` for a joiner resuming from `position`."""
    encoded = shared.encoded.get(_NATIVE)
    if not isinstance(encoded, _Encoded):
        encoded = shared.encoded[_NATIVE] = _Encoded.of(shared, project_id, position)
    return encoded.frame(position)


def _head(model: Snapshot, position: str) -> bytes:
    """The frame's JSON up to its rows: `{"type":…,"project_id":…,"access":…,"position":…,`."""
    head = {
        "type": model.type,
        "project_id": str(model.project_id),
        "access": model.access.value,
        "position": position,
    }
    return orjson.dumps(head)[:-1] + b","
