"""The served `.d.ts` is what the JSON Schema generates now, so it cannot go stale."""

from __future__ import annotations

from protocol.typescript import typescript_declarations
from tests.support import REPO_ROOT

DECLARATIONS = REPO_ROOT / "gateway" / "app" / "static" / "sitebuilder-client.d.ts"


def test_committed_declarations_match_the_protocol_schema() -> None:
    assert DECLARATIONS.read_text() == typescript_declarations(), (
        "gateway/app/static/sitebuilder-client.d.ts is stale: run "
        "`.venv/bin/python -m protocol.typescript > gateway/app/static/sitebuilder-client.d.ts`"
    )


def test_every_change_entity_and_rpc_method_has_a_type() -> None:
    text = DECLARATIONS.read_text()
    assert "export type Change = ProjectChange | SitemapChange" in text
    assert '"wireframe.update": WireframeUpdateParams;' in text
    assert "expected_version?: number | null;" in text
