"""The served `.d.ts` is what the JSON Schema generates now, so it cannot go stale, and
TypeScript's own compiler checks a front end's use of it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from protocol.typescript import typescript_declarations
from tests.support import REPO_ROOT
from tests.test_supabase_js import NPM_TIMEOUT, node_and_npm, run

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


TYPES_SUITE = REPO_ROOT / "tests" / "js" / "types"
TSC_TIMEOUT = 120.0
# A result field the TypeScript front end reads, and a misspelling of it.
MISSPELLINGS = {
    "session.session_token": "session.sessionToken",
    "entry.deleted_by_name": "entry.deletedByName",
    "structure.project.name": "structure.project.title",
    "String(row.version)": "String(row.versoin)",
    "payload.commit_timestamp": "payload.commitTimestamp",
}


async def test_tsc_strict_accepts_the_client_as_typed_and_catches_misspelled_fields(
    tmp_path: Path,
) -> None:
    """`tsc --noEmit --strict` (TypeScript pinned by tests/js/types/package-lock.json)
    compiles tests/js/types/helpers.mts, which uses builderHelpers and `client.rpc`
    through the .d.ts alone, and fails a copy of it for each misspelled result field."""
    node, npm = node_and_npm()
    env = {**os.environ, "npm_config_update_notifier": "false"}
    status, report = await run(
        npm, "ci", "--prefer-offline", env=env, cwd=TYPES_SUITE, seconds=NPM_TIMEOUT
    )
    assert status == 0, f"npm ci failed in {TYPES_SUITE}:\n{report}"
    source = (TYPES_SUITE / "helpers.mts").read_text()
    client = (REPO_ROOT / "gateway" / "app" / "static" / "sitebuilder-client.js").as_posix()
    source = source.replace("../../../gateway/app/static/sitebuilder-client.js", client)
    assert client in source
    (tmp_path / "helpers.mts").write_text(source)
    for index, (right, wrong) in enumerate(MISSPELLINGS.items()):
        assert right in source, right
        (tmp_path / f"misspelled_{index}.mts").write_text(source.replace(right, wrong, 1))
    tsc = [node, str(TYPES_SUITE / "node_modules" / "typescript" / "bin" / "tsc"), "--noEmit"]
    tsc += ["--strict", "--target", "es2022", "--module", "nodenext"]

    copies = [f"misspelled_{index}.mts" for index in range(len(MISSPELLINGS))]
    # One compiler run for all (its start and the .d.ts's checking are most of its time):
    # each file is a module of its own, and every error names the file it is in.
    status, report = await run(
        *tsc, "helpers.mts", *copies, env=env, cwd=tmp_path, seconds=TSC_TIMEOUT
    )
    assert status != 0
    errors = [line for line in report.splitlines() if re.search(r"error TS\d+", line)]
    assert all(line.startswith("misspelled_") for line in errors), report  # none in helpers
    for copy, wrong in zip(copies, MISSPELLINGS.values(), strict=True):
        field = wrong.rsplit(".", 1)[1].rstrip(")")
        assert re.search(rf"^{copy}\(\d+,\d+\): error TS\d+: Property '{field}'", report, re.M), (
            f"{copy}: no error for {field}:\n{report}"
        )
