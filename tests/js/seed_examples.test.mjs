// The seed's "Usage Examples" (tests/js/seed_usage_examples.md, copied verbatim from
// the schema document), each code block run as written against a real gateway with the
// client's builderHelpers. The test provides what the examples assume: `user`,
// `project`, `projectId`, `versionId`, `sitemap`, `generateToken` and `navigator`.
// Run by tests/test_js_client.py.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { connect } from "../../gateway/app/static/sitebuilder-client.js";
import { Gateway, notify, waitFor } from "./gateway.mjs";

const gateway = new Gateway();
const AsyncFunction = (async () => {}).constructor;

/** The code blocks of the examples, by their `###` heading. */
function examples() {
  const text = readFileSync(new URL("./seed_usage_examples.md", import.meta.url), "utf8");
  const blocks = new Map();
  for (const section of text.split(/^### /m).slice(1)) {
    const title = section.slice(0, section.indexOf("\n"));
    const code = [...section.matchAll(/```typescript\n([\s\S]*?)```/g)].map((m) => m[1]).join("\n");
    blocks.set(title, code);
  }
  return blocks;
}

/** Run one example as written, with `scope` as its free variables; what it logged. */
async function run(code, scope) {
  const logged = [];
  const console = {
    log: (...args) => {
      logged.push(args.join(" "));
      notify();
    },
  };
  const names = [...Object.keys(scope), "console"];
  await new AsyncFunction(...names, code)(...Object.values(scope), console);
  return logged;
}

before(async () => {
  await gateway.start();
});

after(async () => {
  await gateway.kill();
});

test("the seed's usage examples run as written with the client's builderHelpers", async () => {
  const blocks = examples();
  assert.deepEqual(
    [...blocks.keys()],
    ["Creating a New Project", "Tracking User Sessions", "Real-time Collaboration", "Version History", "Analytics"],
  );
  const alice = connect(gateway.wsUrl, { getToken: gateway.tokens("alice") });
  const bob = connect(gateway.wsUrl, { getToken: gateway.tokens("bob") });
  try {
    await Promise.all([alice.ready(), bob.ready()]);
    const user = { id: alice.userId };
    const project = await alice.rpc("project.create", { name: "Seed examples", collaborators: [] });
    await alice.rpc("project.add_collaborator", { project_id: project.id, email: "bob@demo.sitebuilder.test" });
    await bob.acceptInvitation(project.id);
    const scope = {
      builderHelpers: alice.builderHelpers,
      user,
      project,
      projectId: project.id,
      sitemap: { pages: { home: { title: "Home", path: "/" } } },
      generateToken: () => "made-by-the-client",
      navigator: { userAgent: "node --test" },
    };

    // Creating a New Project: one commit, the seed's structure.
    await run(blocks.get("Creating a New Project"), scope);
    const mine = await alice.rpc("project.list", {});
    assert.ok(mine.projects.some((p) => p.name === "My New Website"), "the batch created the project");

    // Real-time Collaboration, as Bob (a collaborator) would keep it open, its
    // callbacks observed; then the session example, as Alice, drives it.
    const observed = [];
    const helpers = bob.builderHelpers;
    const watched = {
      ...helpers,
      collaboration: {
        ...helpers.collaboration,
        subscribeToProject: (id, callback) =>
          helpers.collaboration.subscribeToProject(id, (payload) => {
            observed.push(payload.type);
            notify();
            callback(payload);
          }),
      },
    };
    const bobLog = await run(blocks.get("Real-time Collaboration"), { ...scope, builderHelpers: watched });
    await bob.project(project.id).ready();

    assert.deepEqual(await run(blocks.get("Tracking User Sessions"), scope), []);
    const said = (status) => bobLog.includes(`User ${user.id} is ${status}`);
    await waitFor(() => said("completed"), 20_000, "the session's end, logged");
    assert.ok(said("active"), bobLog.join("\n"));

    await alice.rpc("project.update", { project_id: project.id, set: { name: "Seed examples 2" } });
    await waitFor(() => observed.includes("project"), 20_000, "the project's update in subscribeToProject");

    // Version History: the project's versions, then a revert to the first.
    const { data: versions, error } = await alice.builderHelpers.version.getByEntity("projects", project.id);
    assert.equal(error, null);
    const first = versions.at(-1);
    await run(blocks.get("Version History"), { ...scope, versionId: first.id });
    const { data: reverted } = await alice.builderHelpers.project.getWithRelations(project.id);
    assert.equal(reverted.project.name, "Seed examples", "reverted to the first version");

    // Analytics: the caller's own.
    await run(blocks.get("Analytics"), scope);
    const { data: stats, error: statsError } = await alice.builderHelpers.analytics.getProjectStats(project.id);
    assert.equal(statsError, null);
    assert.equal(stats.project_id, project.id);
    const { data: usage } = await alice.builderHelpers.analytics.getUserAnalytics(user.id, 30);
    assert.ok(usage.total_sessions >= 1);
  } finally {
    alice.close();
    bob.close();
  }
});

test("what the seed passes that the server decides itself is accepted, another user's id is not", async () => {
  const alice = connect(gateway.wsUrl, { getToken: gateway.tokens("alice") });
  const bob = connect(gateway.wsUrl, { getToken: gateway.tokens("bob") });
  try {
    await Promise.all([alice.ready(), bob.ready()]);
    const helpers = alice.builderHelpers;
    const { data: project } = await helpers.project.create({ user_id: alice.userId, name: "Helpers" });
    const { data: session, error } = await helpers.session.create({
      user_id: alice.userId,
      project_id: project.id,
      session_token: "client-made",
      current_step: "sitemap-generation",
      metadata: {},
    });
    assert.equal(error, null);
    assert.notEqual(session.session_token, "client-made", "the server's token");
    const { data: byToken } = await helpers.session.getByToken(session.session_token);
    assert.equal(byToken.id, session.id);
    const { data: updated } = await helpers.project.update(project.id, { name: "Helpers 2", data: { a: 1 } }, alice.userId);
    assert.equal(updated.name, "Helpers 2");
    assert.deepEqual(updated.data, { a: 1 });
    const refused = await helpers.project.update(project.id, { name: "x" }, bob.userId);
    assert.equal(refused.error.code, "forbidden");
    const notYours = await helpers.analytics.getUserAnalytics(bob.userId, 30);
    assert.equal(notYours.error.code, "forbidden");
    const missing = await helpers.project.getWithRelations("00000000-0000-4000-8000-000000000000");
    assert.equal(missing.data, null);
    assert.equal(missing.error.code, "not_found");
  } finally {
    alice.close();
    bob.close();
  }
});
