"""The served `.d.ts` is what the JSON Schema generates now, so it cannot go stale."""

from __future__ import annotations

import re

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


def test_every_rpc_method_has_a_result_type_and_nothing_is_any() -> None:
    """`client.rpc(method, …)` resolves with the method's declared result."""
    text = DECLARATIONS.read_text()
    results = text[text.index("export interface RpcResults {") :]
    results = results[: results.index("\n}\n")]
    params = text[text.index("export interface RpcParams {") :]
    params = params[: params.index("\n}\n")]
    methods = re.findall(r'^  "([a-z_.]+)":', params, re.MULTILINE)
    assert methods == re.findall(r'^  "([a-z_.]+)":', results, re.MULTILINE)
    assert '"session.list": Array<OwnedSession>;' in results
    assert '"project.get_with_relations": ProjectWithRelations;' in results
    assert "): Promise<RpcResults[M]>;" in text
    code = re.sub(r"/\*\*.*?\*/|//[^\n]*", "", text, flags=re.DOTALL)  # comments aside
    assert not re.search(r"\bany\b", code), "no `any` type in the declarations"
