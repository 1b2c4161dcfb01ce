// The client's reconnect, resume, reset, backoff and token refresh, against a real
// gateway process (see gateway.mjs). Run by tests/test_js_client.py.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { backoffDelay, connect, mergePatch, SitebuilderError } from "../../gateway/app/static/sitebuilder-client.js";
import { Gateway, notify, psql, waitFor } from "./gateway.mjs";

const gateway = new Gateway();
let demo;

before(async () => {
  await gateway.start();
  demo = await gateway.demo();
});

after(async () => {
  await gateway.kill();
});

function follow(client, projectId) {
  const seen = { changes: [], resets: [], presence: null, snapshot: null };
  const handle = client.project(projectId);
  handle.subscribe(
    (change) => {
      seen.changes.push(change);
      notify();
    },
    {
      onSnapshot: (snapshot) => {
        seen.snapshot = snapshot;
        notify();
      },
      onReset: (snapshot, state, reason) => {
        seen.resets.push({ snapshot, state, reason });
        notify();
      },
      onPresence: (users) => {
        seen.presence = users;
        notify();
      },
    },
  );
  return { handle, seen };
}

function statuses(client) {
  const log = [];
  client.onStatus((status, info) => {
    log.push({ status, ...info });
    notify();
  });
  return log;
}

test("backoff doubles per attempt up to the maximum, with jitter in the upper half", () => {
  const low = () => 0;
  const high = () => 1;
  assert.deepEqual(
    [0, 1, 2, 3].map((n) => backoffDelay(n, { baseDelayMs: 100, maxDelayMs: 1000, random: low })),
    [50, 100, 200, 400],
  );
  assert.equal(backoffDelay(3, { baseDelayMs: 100, maxDelayMs: 1000, random: high }), 800);
  assert.equal(backoffDelay(20, { baseDelayMs: 100, maxDelayMs: 1000, random: high }), 1000);
  for (let n = 0; n < 200; n++) {
    const delay = backoffDelay(5, { baseDelayMs: 100, maxDelayMs: 10_000 });
    assert.ok(delay >= 1600 && delay <= 3200, String(delay));
  }
});

/** A WebSocket that notes each message it receives in `received`: its type and bytes. */
function countingWebSocket(received) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) =>
        received.push({ type: JSON.parse(event.data).type, bytes: Buffer.byteLength(event.data) }),
      );
    }
  };
}

test("mergePatch is RFC 7396's", () => {
  // RFC 7396, Appendix A (a selection), and the nested case deltas use most.
  assert.deepEqual(mergePatch({ a: "b" }, { a: "c" }), { a: "c" });
  assert.deepEqual(mergePatch({ a: "b" }, { a: null }), {});
  assert.deepEqual(mergePatch({ a: ["b"] }, { a: "c" }), { a: "c" });
  assert.deepEqual(mergePatch({ a: { b: "c" } }, { a: { b: "d", c: null } }), { a: { b: "d" } });
  assert.deepEqual(mergePatch(["a", "b"], ["c", "d"]), ["c", "d"]);
  assert.deepEqual(mergePatch({ e: null }, { a: 1 }), { e: null, a: 1 });
  assert.deepEqual(mergePatch("string", { a: { bb: { ccc: null } } }), { a: { bb: {} } });
  const target = { s: { one: { t: 1 }, two: { t: 2 } } };
  const patched = mergePatch(target, { s: { two: { t: 3 } } });
  assert.deepEqual(patched, { s: { one: { t: 1 }, two: { t: 3 } } });
  assert.deepEqual(target, { s: { one: { t: 1 }, two: { t: 2 } } }, "the target is left as it was");
});

test("an edit reaches another editor's delta subscription in a few hundred bytes, and its callback gets the whole row", async () => {
  const received = [];
  const watcher = connect(gateway.wsUrl, { getToken: gateway.tokens("alice"), WebSocket: countingWebSocket(received) });
  const typist = connect(gateway.wsUrl, { getToken: gateway.tokens("bob"), delta: false });
  try {
    const a = follow(watcher, demo.project_id);
    const b = follow(typist, demo.project_id);
    const state = await a.handle.ready();
    await b.handle.ready();
    const wireframe = [...state.wireframes.values()][0];
    const notes = "x".repeat(4000); // a layout of some size
    await typist.rpc("wireframe.update", { id: wireframe.id, patch: { layout: { notes } } });
    const isUpdate = (c) => c.entity === "wireframe" && c.op === "update";
    const versions = (seen) => seen.changes.filter((c) => c.entity === "version").length;
    await waitFor(() => versions(a.seen) === 1 && versions(b.seen) === 1, 10_000, "the first edit");
    const before = structuredClone(a.handle.state.wireframes.get(wireframe.id));

    received.length = 0;
    const title = `Typed ${Date.now()}`;
    await typist.rpc("wireframe.update", { id: wireframe.id, patch: { layout: { title } } });
    const typed = (c) => isUpdate(c) && c.new.layout.title === title;
    const version = (c) => c.entity === "version" && c.new.version_number === before.version + 1;
    await waitFor(() => a.seen.changes.some(version) && b.seen.changes.some(typed), 10_000, "the keystroke");
    const seen = a.seen.changes.find(typed);
    const sent = b.seen.changes.find(typed);
    assert.deepEqual(seen.new, sent.new, "the delta rebuilt the row the whole frame carries");
    assert.deepEqual(seen.old, before);
    assert.deepEqual(sent.old, before);
    assert.equal(seen.new.layout.notes.length, 4000);
    assert.deepEqual(a.handle.state.wireframes.get(wireframe.id), sent.new);
    assert.equal(a.seen.changes.find(version).new.data, null, "versions come without data: version.get has it");
    // The delta and the version's metadata, against the 9 KB of the whole frames.
    const changes = received.filter((m) => m.type === "delta" || m.type === "change");
    assert.deepEqual(changes.map((m) => m.type), ["delta", "change"]);
    assert.ok(changes.every((m) => m.bytes < 700), JSON.stringify(changes));
  } finally {
    watcher.close();
    typist.close();
  }
});

test("a delta for a row the client does not hold at that version takes a fresh snapshot", async () => {
  const client = connect(gateway.wsUrl, { getToken: gateway.tokens("carol") });
  const { handle, seen } = follow(client, demo.project_id);
  try {
    const state = await handle.ready();
    const sitemap = [...state.sitemaps.values()][0];
    state.sitemaps.set(sitemap.id, { ...sitemap, version: sitemap.version - 1 }); // as if it missed one
    const done = await client.rpc("sitemap.update", { id: sitemap.id, set: { description: "after a gap" } });
    await waitFor(() => seen.resets.length === 1, 10_000, "the fresh snapshot");
    assert.equal(seen.resets[0].reason, "delta_mismatch");
    assert.equal(handle.state.sitemaps.get(sitemap.id).version, done.version);
    assert.equal(handle.state.sitemaps.get(sitemap.id).description, "after a gap");
    assert.ok(!seen.changes.some((c) => c.new?.description === "after a gap"), "the delta was not applied");
    await client.rpc("sitemap.update", { id: sitemap.id, set: { description: "and on" } });
    await waitFor(() => seen.changes.some((c) => c.new?.description === "and on"), 10_000, "live again");
  } finally {
    client.close();
  }
});

test("an rpc refused for a stale expected_version rejects with code conflict and the current row", async () => {
  const client = connect(gateway.wsUrl, { getToken: gateway.tokens("carol") });
  try {
    const { handle } = follow(client, demo.project_id);
    const state = await handle.ready();
    const sitemap = [...state.sitemaps.values()][0];
    const first = await client.rpc("sitemap.update", {
      id: sitemap.id,
      set: { description: "first" },
      expected_version: sitemap.version,
    });
    await assert.rejects(
      client.rpc("sitemap.update", { id: sitemap.id, set: { description: "second" }, expected_version: sitemap.version }),
      (error) => {
        assert.ok(error instanceof SitebuilderError);
        assert.equal(error.code, "conflict");
        assert.equal(error.details.current.version, first.version);
        return true;
      },
    );
  } finally {
    client.close();
  }
});

test("after a gateway crash the client reconnects with backoff, signs in again and resumes exactly where it was", async () => {
  const getToken = gateway.tokens("alice");
  const client = connect(gateway.wsUrl, { getToken, baseDelayMs: 100, maxDelayMs: 800 });
  const log = statuses(client);
  const { handle, seen } = follow(client, demo.project_id);
  try {
    const state = await handle.ready();
    const sitemap = [...state.sitemaps.values()][0];
    await client.rpc("sitemap.update", { id: sitemap.id, patch: { metadata: { before: 1 } } });
    await waitFor(() => seen.changes.some((c) => c.entity === "sitemap"), 10_000, "the change before the crash");
    const tokensBefore = getToken.calls;

    await gateway.kill();
    await waitFor(() => log.filter((s) => s.status === "reconnecting").length >= 3, 20_000, "three reconnect attempts");
    const attempts = log.filter((s) => s.status === "reconnecting");
    assert.deepEqual(attempts.slice(0, 3).map((s) => s.attempt), [1, 2, 3]);
    assert.ok(attempts.every((s) => s.delayMs <= 800), JSON.stringify(attempts));

    const changesBefore = seen.changes.length;
    for (const n of [1, 2, 3]) {
      await psql(`UPDATE sitemaps SET metadata = '{"while_down": ${n}}' WHERE id = '${sitemap.id}'`);
    }
    await gateway.start();
    await waitFor(
      () => seen.changes.filter((c) => c.entity === "sitemap").length >= 4,
      30_000,
      "the three updates made while the gateway was down",
    );
    const missed = seen.changes.slice(changesBefore).filter((c) => c.entity === "sitemap");
    assert.deepEqual(missed.map((c) => c.new.metadata.while_down), [1, 2, 3]);
    assert.equal(seen.resets.length, 0, "resumed, not reset");
    assert.ok(getToken.calls > tokensBefore, "a fresh token for every new connection");
    assert.equal(client.status, "connected");
    const positions = seen.changes.map((c) => c.position);
    assert.deepEqual([...positions].sort(), positions, "positions only grow");
    assert.equal(new Set(positions).size, positions.length, "nothing twice");
    assert.deepEqual(handle.state.sitemaps.get(sitemap.id).metadata, { while_down: 3 });
  } finally {
    client.close();
  }
});

test("when the gateway cannot replay, onReset hands over a fresh snapshot as the new state", async () => {
  const client = connect(gateway.wsUrl, { getToken: gateway.tokens("bob"), baseDelayMs: 50 });
  const { handle, seen } = follow(client, demo.project_id);
  try {
    await handle.ready();
    handle.state.position = "not-a-position"; // as if it came from a forgotten past
    const sitemap = [...handle.state.sitemaps.values()][0];
    handle.state.sitemaps.delete(sitemap.id);
    client.ws.close(); // the network drops
    await waitFor(() => seen.resets.length === 1, 20_000, "the reset");
    const [{ snapshot, state, reason }] = seen.resets;
    assert.equal(reason, "history_unavailable");
    assert.equal(snapshot.project_id, demo.project_id);
    assert.ok(state.sitemaps.has(sitemap.id), "the fresh snapshot replaced the local state");
    assert.notEqual(handle.state.position, "not-a-position");
  } finally {
    client.close();
  }
});

test("the token is refreshed before it expires, on the same connection", async () => {
  const getToken = gateway.tokens("carol", 5);
  const client = connect(gateway.wsUrl, { getToken, refreshMarginMs: 2_000 });
  const log = statuses(client);
  try {
    await client.ready();
    const firstExpiry = getToken.last.expires_at * 1000;
    await waitFor(() => getToken.calls >= 2 && Date.now() > firstExpiry + 1_000, 15_000, "past the first token's expiry");
    const reply = await client.rpc("analytics.get_user_analytics", { days: 1 });
    assert.equal(reply.days, 1);
    assert.deepEqual(log.map((s) => s.status), ["connected"], "never reconnected");
  } finally {
    client.close();
  }
});

test("presence follows who is subscribed, with the meta each set", async () => {
  const alice = connect(gateway.wsUrl, { getToken: gateway.tokens("alice") });
  const bob = connect(gateway.wsUrl, { getToken: gateway.tokens("bob") });
  try {
    const a = follow(alice, demo.project_id);
    follow(bob, demo.project_id);
    await bob.presence.update({ editing: "page home" });
    const bobId = demo.users.find((u) => u.key === "bob").id;
    await waitFor(
      () => a.seen.presence?.[bobId]?.metas.some((m) => m.meta.editing === "page home"),
      10_000,
      "bob's presence",
    );
    bob.close();
    await waitFor(() => a.seen.presence && !(bobId in a.seen.presence), 10_000, "bob leaving");
  } finally {
    alice.close();
    bob.close();
  }
});

test("sharing takes consent: an invitation is listed, then accepted or declined, and a project can be left", async () => {
  const alice = connect(gateway.wsUrl, { getToken: gateway.tokens("alice") });
  const bob = connect(gateway.wsUrl, { getToken: gateway.tokens("bob") });
  const bobId = demo.users.find((u) => u.key === "bob").id;
  try {
    const project = await alice.rpc("project.create", { name: "Shared with consent" });
    const invite = { project_id: project.id, email: "bob@demo.sitebuilder.test" };
    const asItIs = await alice.rpc("project.add_collaborator", invite);
    assert.deepEqual(asItIs.collaborators, [], "invited, not added");

    const [invitation] = (await bob.invitations()).filter((i) => i.project_id === project.id);
    assert.equal(invitation.project_name, "Shared with consent");
    assert.equal(invitation.invited_by_email, "alice@demo.sitebuilder.test");
    const joined = await bob.acceptInvitation(project.id);
    assert.deepEqual(joined.collaborators, [bobId]);
    await assert.rejects(alice.leaveProject(project.id), (error) => error.code === "forbidden");
    assert.deepEqual(await bob.leaveProject(project.id), { project_id: project.id });
    await assert.rejects(bob.acceptInvitation(project.id), (error) => error.code === "not_found");

    await alice.rpc("project.add_collaborator", invite);
    assert.deepEqual(await bob.declineInvitation(project.id), { project_id: project.id });
    assert.ok(!(await bob.invitations({ limit: 100 })).some((i) => i.project_id === project.id));
  } finally {
    alice.close();
    bob.close();
  }
});

test("a builder session started on one device is listed and resumed by id on another", async () => {
  const laptop = connect(gateway.wsUrl, { getToken: gateway.tokens("alice") });
  const phone = connect(gateway.wsUrl, { getToken: gateway.tokens("alice") });
  try {
    const project = await laptop.rpc("project.create", { name: "Two devices" });
    const started = await laptop.session.start(project.id, "sitemap-generation");
    const [listed] = await phone.session.list({ project_id: project.id });
    assert.equal(listed.id, started.id);
    assert.equal(listed.session_token, started.session_token);
    const resumed = await phone.session.resume({ id: started.id });
    assert.equal(resumed.status, "active");
    assert.ok(phone.sessions.has(started.id), "the phone now keeps it attached");
    await laptop.session.complete(started.id);
    await assert.rejects(phone.session.resume({ id: started.id }), (error) => error.code === "conflict");
  } finally {
    laptop.close();
    phone.close();
  }
});

test("subscribeToProjects follows the caller's project list: created, renamed, shared, deleted", async () => {
  const alice = connect(gateway.wsUrl, { getToken: gateway.tokens("alice") });
  const bob = connect(gateway.wsUrl, { getToken: gateway.tokens("bob") });
  const seen = { alice: [], bob: [] };
  const listen = (who) => (projects, event) => {
    seen[who].push({ names: projects.map((p) => p.name), event });
    notify();
  };
  const stopAlice = alice.subscribeToProjects(listen("alice"));
  const stopBob = bob.subscribeToProjects(listen("bob"));
  const last = (who) => seen[who].at(-1);
  try {
    await waitFor(() => seen.alice.length && seen.bob.length, 20_000, "the first lists");
    assert.equal(seen.alice[0].event.type, "snapshot");
    const project = await alice.rpc("project.create", { name: "Listed live" });
    await waitFor(() => last("alice")?.event.project?.id === project.id, 20_000, "insert");
    assert.equal(last("alice").event.type, "insert");
    assert.equal(last("alice").names[0], "Listed live", "newest first");

    await alice.rpc("project.update", { project_id: project.id, set: { name: "Renamed live" } });
    await waitFor(() => last("alice").event.type === "update", 20_000, "update");
    assert.ok(last("alice").names.includes("Renamed live"));
    assert.ok(!last("alice").names.includes("Listed live"));

    await alice.rpc("project.add_collaborator", { project_id: project.id, email: "bob@demo.sitebuilder.test" });
    await bob.acceptInvitation(project.id);
    await waitFor(() => last("bob")?.event.project?.id === project.id, 20_000, "bob's insert");
    assert.equal(last("bob").event.type, "insert");

    stopBob();
    await alice.rpc("project.delete", { project_id: project.id });
    await waitFor(() => last("alice").event.type === "delete", 20_000, "delete");
    assert.ok(!last("alice").names.includes("Renamed live"));
  } finally {
    stopAlice();
    alice.close();
    bob.close();
  }
});
