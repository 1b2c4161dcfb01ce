// @supabase/realtime-js (and supabase-js), unchanged apart from URL, key and the `ws`
// transport Node 20 needs, against the gateway's /realtime/v1 endpoint. Run by
// tests/test_supabase_js.py, which also installs the pinned packages.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { createClient } from "@supabase/supabase-js";
import WebSocket from "ws";

import { connect } from "../../../gateway/app/static/sitebuilder-client.js";
import {
  DEMO,
  Gateway,
  RecordingWebSocket,
  closeAll,
  expiryOf,
  mintToken,
  notify,
  anonKey,
  ownProject,
  psql,
  randomUUID,
  realtime,
  recordChanges,
  subscribed,
  waitFor,
  watch,
} from "./support.mjs";

const gateway = new Gateway();

before(async () => {
  await gateway.start();
});

after(async () => {
  await gateway.kill();
  // What went wrong on the gateway's side, if anything, next to the failures.
  const problems = gateway.log.split("\n").filter((line) => / (WARNING|ERROR|CRITICAL) /.test(line));
  if (problems.length) console.log(`gateway warnings and errors:\n${problems.join("\n")}`);
});

test("a filtered binding receives INSERT, UPDATE and DELETE made with psql, values converted by column type", async () => {
  const client = realtime(gateway, mintToken(DEMO.alice));
  const otherSitemap = randomUUID();
  const [elsewhere, frame] = [randomUUID(), randomUUID()];
  try {
    await psql(`INSERT INTO sitemaps (id, project_id, title) VALUES ('${otherSitemap}', '${DEMO.projectId}', 'Other')`);
    const channel = client.channel("wireframes-of-one-sitemap");
    const seen = watch(channel);
    channel
      .on(
        "postgres_changes",
        { event: "*", schema: "public", table: "wireframes", filter: `sitemap_id=eq.${DEMO.sitemapId}` },
        recordChanges(seen, "wireframes"),
      )
      .on(
        "postgres_changes",
        { event: "UPDATE", schema: "public", table: "projects", filter: `id=eq.${DEMO.projectId}` },
        recordChanges(seen, "projects"),
      );
    seen.subscribe();
    await subscribed(seen);
    await waitFor(() => seen.system.some((s) => s.extension === "postgres_changes"), 10_000, "the postgres_changes system message");
    assert.deepEqual(
      seen.system.find((s) => s.extension === "postgres_changes"),
      { extension: "postgres_changes", status: "ok", message: "Subscribed to PostgreSQL", channel: "wireframes-of-one-sitemap" },
    );

    await psql(`INSERT INTO wireframes (id, sitemap_id, title) VALUES ('${elsewhere}', '${otherSitemap}', 'Not this sitemap')`);
    await psql(
      `INSERT INTO wireframes (id, sitemap_id, title, layout, components)
       VALUES ('${frame}', '${DEMO.sitemapId}', 'Landing', '{"columns": 2, "hero": {"title": "Hi"}}', '{hero,footer}')`,
    );
    await psql(`UPDATE wireframes SET title = 'Landing v2', layout = '{"columns": 3}' WHERE id = '${frame}'`);
    await psql(`DELETE FROM wireframes WHERE id = '${frame}'`);
    await psql(`UPDATE projects SET is_public = false, settings = '{"theme": "dark"}' WHERE id = '${DEMO.projectId}'`);
    await waitFor(() => seen.changes.some((c) => c.tag === "projects"), 10_000, "the project's update");

    const wireframes = seen.changes.filter((c) => c.tag === "wireframes");
    assert.deepEqual(
      wireframes.map((c) => [c.eventType, c.new.id ?? c.old.id]),
      [["INSERT", frame], ["UPDATE", frame], ["DELETE", frame]],
      "the other sitemap's wireframe is filtered out",
    );
    const [inserted, updated, deleted] = wireframes;
    for (const change of wireframes) {
      assert.equal(change.schema, "public");
      assert.equal(change.table, "wireframes");
      assert.equal(typeof change.commit_timestamp, "string");
      assert.ok(!Number.isNaN(Date.parse(change.commit_timestamp)), change.commit_timestamp);
      assert.equal(change.errors, null);
    }
    assert.deepEqual(inserted.old, {});
    assert.equal(inserted.new.title, "Landing");
    assert.equal(inserted.new.sitemap_id, DEMO.sitemapId);
    assert.equal(inserted.new.version, 1, "int4 is a number");
    assert.deepEqual(inserted.new.layout, { columns: 2, hero: { title: "Hi" } }, "jsonb is an object");
    assert.deepEqual(inserted.new.components, ["hero", "footer"], "text[] is an array");
    assert.equal(inserted.new.description, null);
    assert.equal(typeof inserted.new.created_at, "string", "timestamptz stays a string");
    assert.ok(!Number.isNaN(Date.parse(inserted.new.created_at)), inserted.new.created_at);

    assert.equal(updated.new.title, "Landing v2");
    assert.deepEqual(updated.new.layout, { columns: 3 });
    assert.equal(updated.new.version, 2);
    assert.equal(updated.old.title, "Landing", "the old row of an UPDATE");
    assert.equal(updated.old.version, 1);

    assert.deepEqual(deleted.new, {});
    assert.equal(deleted.old.title, "Landing v2", "the old row of a DELETE");

    const project = seen.changes.find((c) => c.tag === "projects");
    assert.equal(project.eventType, "UPDATE");
    assert.equal(project.new.is_public, false, "bool is a boolean");
    assert.deepEqual(project.new.settings, { theme: "dark" });
    assert.deepEqual(project.new.collaborators, [DEMO.bob, DEMO.carol], "uuid[] is an array");
  } finally {
    await psql(`DELETE FROM sitemaps WHERE id = '${otherSitemap}'`);
    await closeAll(client);
  }
});

test("an unfiltered binding delivers only the wireframes of projects the user can read", async () => {
  const secret = await ownProject();
  const alice = realtime(gateway, mintToken(DEMO.alice));
  const owner = realtime(gateway, mintToken(secret.user));
  try {
    const subscriptions = [alice, owner].map((client) => {
      const channel = client.channel("every-wireframe");
      const seen = watch(channel);
      channel.on("postgres_changes", { event: "UPDATE", schema: "public", table: "wireframes" }, recordChanges(seen, "w"));
      seen.subscribe();
      return seen;
    });
    const [aliceSeen, ownerSeen] = subscriptions;
    await Promise.all(subscriptions.map((seen) => subscribed(seen)));
    // One transaction: whoever is told of the second row has been given the first already.
    await psql(`
      BEGIN;
      UPDATE wireframes SET title = 'secret plan' WHERE id = '${secret.wireframe}';
      UPDATE wireframes SET title = 'Home, again' WHERE id = '${DEMO.wireframeId}';
      COMMIT;
    `);
    await waitFor(() => aliceSeen.changes.length > 0 && ownerSeen.changes.length > 0, 10_000, "both updates");
    assert.deepEqual(aliceSeen.changes.map((c) => c.new.id), [DEMO.wireframeId]);
    assert.deepEqual(ownerSeen.changes.map((c) => c.new.id), [secret.wireframe]);
  } finally {
    await closeAll(alice, owner);
  }
});

test("each filter operator routes a change to exactly the bindings it matches, by their numeric ids", async () => {
  const client = realtime(gateway, mintToken(DEMO.alice));
  const sitemap = randomUUID();
  const [x, y] = [randomUUID(), randomUUID()];
  await psql(`INSERT INTO sitemaps (id, project_id, title) VALUES ('${sitemap}', '${DEMO.projectId}', 'Operators')`);
  const bindings = {
    eq: { event: "INSERT", filter: `sitemap_id=eq.${sitemap}` },
    in: { event: "*", filter: `id=in.(${x},${y})` },
    neq: { event: "UPDATE", filter: "title=neq.Draft" },
    gte: { event: "UPDATE", filter: "version=gte.3" },
    lte: { event: "UPDATE", filter: "version=lte.2" },
    lt: { event: "DELETE", filter: "version=lt.3" },
    gt: { event: "DELETE", filter: "version=gt.2" },
  };
  try {
    const channel = client.channel("operators");
    const seen = watch(channel);
    for (const [tag, binding] of Object.entries(bindings)) {
      channel.on("postgres_changes", { schema: "public", table: "wireframes", ...binding }, recordChanges(seen, tag));
    }
    seen.subscribe();
    await subscribed(seen);
    await psql(`INSERT INTO wireframes (id, sitemap_id, title) VALUES ('${x}', '${sitemap}', 'Draft')`);
    await psql(`INSERT INTO wireframes (id, sitemap_id, title) VALUES ('${y}', '${sitemap}', 'Draft')`);
    await psql(`UPDATE wireframes SET title = 'Final' WHERE id = '${x}'`); // version 2
    await psql(`UPDATE wireframes SET title = 'Final 2' WHERE id = '${x}'`); // version 3
    await psql(`DELETE FROM wireframes WHERE id = '${y}'`); // version 1
    await psql(`DELETE FROM wireframes WHERE id = '${x}'`); // version 3
    await waitFor(() => seen.changes.filter((c) => c.tag === "in").length === 6, 10_000, "all six changes");

    const name = { [x]: "x", [y]: "y" };
    const got = (tag) =>
      seen.changes.filter((c) => c.tag === tag).map((c) => `${c.eventType} ${name[c.new.id ?? c.old.id]}`);
    assert.deepEqual(got("eq"), ["INSERT x", "INSERT y"]);
    assert.deepEqual(got("in"), ["INSERT x", "INSERT y", "UPDATE x", "UPDATE x", "DELETE y", "DELETE x"]);
    assert.deepEqual(got("neq"), ["UPDATE x", "UPDATE x"]);
    assert.deepEqual(got("gte"), ["UPDATE x"]);
    assert.deepEqual(got("lte"), ["UPDATE x"]);
    assert.deepEqual(got("lt"), ["DELETE y"], "a DELETE is filtered by its old row");
    assert.deepEqual(got("gt"), ["DELETE x"]);
    assert.equal(seen.changes.find((c) => c.tag === "gte").new.title, "Final 2");
    assert.equal(seen.changes.find((c) => c.tag === "lte").new.title, "Final");
  } finally {
    await psql(`DELETE FROM sitemaps WHERE id = '${sitemap}'`);
    await closeAll(client);
  }
});

test("an anon key connects, and sees the changes of public projects only", async () => {
  const open = await ownProject({ isPublic: true });
  const client = realtime(gateway, anonKey());
  try {
    const channel = client.channel("public-wireframes");
    const seen = watch(channel);
    channel.on("postgres_changes", { event: "UPDATE", schema: "public", table: "wireframes" }, recordChanges(seen, "w"));
    seen.subscribe();
    await subscribed(seen);
    await psql(`
      BEGIN;
      UPDATE wireframes SET title = 'members only' WHERE id = '${DEMO.wireframeId}';
      UPDATE wireframes SET title = 'for everyone' WHERE id = '${open.wireframe}';
      COMMIT;
    `);
    await waitFor(() => seen.changes.length > 0, 10_000, "the public project's update");
    assert.deepEqual(seen.changes.map((c) => c.new.title), ["for everyone"]);

    const closed = client.channel(`project:${DEMO.projectId}`);
    const refused = watch(closed);
    refused.subscribe();
    await waitFor(() => refused.statuses.length > 0, 10_000, "the private project's join");
    assert.equal(refused.statuses[0], "CHANNEL_ERROR");
  } finally {
    await closeAll(client);
  }
});

test("a collaborator removed from the project gets a system error and the project's channel is closed", async () => {
  const shared = await ownProject({ collaborators: [DEMO.carol] });
  const client = realtime(gateway, mintToken(DEMO.carol));
  try {
    const channel = client.channel(`project:${shared.project}`);
    const seen = watch(channel);
    channel.on(
      "postgres_changes",
      { event: "*", schema: "public", table: "wireframes", filter: `sitemap_id=eq.${shared.sitemap}` },
      recordChanges(seen, "w"),
    );
    seen.subscribe();
    await subscribed(seen);
    await psql(`UPDATE projects SET collaborators = '{}' WHERE id = '${shared.project}'`);
    await waitFor(() => seen.statuses.includes("CLOSED"), 10_000, "the channel closed");
    const errors = seen.system.filter((s) => s.status === "error");
    assert.equal(errors.length, 1, JSON.stringify(seen.system));
    assert.equal(errors[0].channel, `project:${shared.project}`);
    assert.deepEqual(seen.statuses, ["SUBSCRIBED", "CLOSED"]);
  } finally {
    await closeAll(client);
  }
});

test("presence is shared with native-protocol editors of the project: sync, join and leave", async () => {
  const bob = connect(gateway.wsUrl, { getToken: () => mintToken(DEMO.bob), WebSocket });
  const alice = realtime(gateway, mintToken(DEMO.alice));
  try {
    let nativePresence = {};
    bob.project(DEMO.projectId).subscribe(() => {}, {
      onPresence: (users) => {
        nativePresence = structuredClone(users);
        notify();
      },
    });
    await bob.presence.update({ editing: "page home" });

    const channel = alice.channel(`project:${DEMO.projectId}`);
    const seen = watch(channel);
    channel
      .on("presence", { event: "sync" }, () => {
        seen.presence.push({ event: "sync" });
        notify();
      })
      .on("presence", { event: "join" }, (payload) => {
        seen.presence.push(payload);
        notify();
      })
      .on("presence", { event: "leave" }, (payload) => {
        seen.presence.push(payload);
        notify();
      });
    seen.subscribe();
    await subscribed(seen);
    await waitFor(() => channel.presenceState()[DEMO.bob] !== undefined, 10_000, "bob in alice's presence state");
    assert.ok(seen.presence.some((p) => p.event === "sync"));
    assert.ok(seen.presence.some((p) => p.event === "join" && p.key === DEMO.bob));
    await waitFor(() => channel.presenceState()[DEMO.bob]?.[0].editing === "page home", 10_000, "bob's meta");
    const [bobMeta] = channel.presenceState()[DEMO.bob];
    assert.deepEqual(
      { ...bobMeta, presence_ref: typeof bobMeta.presence_ref, connection_id: typeof bobMeta.connection_id },
      { user_id: DEMO.bob, name: "Bob", connection_id: "string", editing: "page home", presence_ref: "string" },
    );

    assert.equal(await channel.track({ status: "online", page: "menu" }), "ok");
    await waitFor(
      () => nativePresence[DEMO.alice]?.metas.some((m) => m.meta.status === "online" && m.meta.page === "menu"),
      10_000,
      "alice's tracked state in bob's native presence",
    );
    assert.ok(nativePresence[DEMO.alice].metas.every((m) => m.name === "Alice"), "alice by her name");
    assert.equal(await channel.untrack(), "ok");
    await waitFor(() => nativePresence[DEMO.alice] === undefined, 10_000, "alice untracked, in bob's native presence");

    bob.close();
    await waitFor(() => channel.presenceState()[DEMO.bob] === undefined, 10_000, "bob leaving");
    assert.ok(seen.presence.some((p) => p.event === "leave" && p.key === DEMO.bob));
  } finally {
    bob.close();
    await closeAll(alice);
  }
});

test("broadcast reaches the other members, and the sender too with self; ack resolves send()", async () => {
  const alice = realtime(gateway, mintToken(DEMO.alice));
  const bob = realtime(gateway, mintToken(DEMO.bob));
  try {
    const topic = `project:${DEMO.projectId}`;
    const members = [
      [alice, { broadcast: { self: true, ack: true } }],
      [bob, { broadcast: { self: false, ack: true } }],
    ].map(([client, config]) => {
      const channel = client.channel(topic, { config });
      const seen = watch(channel);
      channel.on("broadcast", { event: "cursor" }, (message) => {
        seen.broadcasts.push(message);
        notify();
      });
      seen.subscribe();
      return { channel, seen };
    });
    const [a, b] = members;
    await Promise.all(members.map(({ seen }) => subscribed(seen)));

    assert.equal(await b.channel.send({ type: "broadcast", event: "cursor", payload: { x: 1, from: "bob" } }), "ok");
    assert.equal(await a.channel.send({ type: "broadcast", event: "cursor", payload: { x: 2, from: "alice" } }), "ok");
    await waitFor(() => a.seen.broadcasts.length >= 2 && b.seen.broadcasts.length >= 1, 10_000, "the broadcasts");
    assert.deepEqual(
      a.seen.broadcasts.map((m) => [m.type, m.event, m.payload]),
      [["broadcast", "cursor", { x: 1, from: "bob" }], ["broadcast", "cursor", { x: 2, from: "alice" }]],
      "alice (self) sees her own broadcast",
    );
    assert.deepEqual(
      b.seen.broadcasts.map((m) => m.payload),
      [{ x: 2, from: "alice" }],
      "bob (no self) gets alice's, not his own, which the server had handled before acknowledging it",
    );
  } finally {
    await closeAll(alice, bob);
  }
});

test("setAuth hands a fresh token to a joined channel, which outlives the first token", async () => {
  const first = mintToken(DEMO.alice, 2);
  const client = realtime(gateway, first, { accessToken: undefined });
  try {
    await client.setAuth(first);
    const channel = client.channel("token-refresh");
    const seen = watch(channel);
    channel.on(
      "postgres_changes",
      { event: "UPDATE", schema: "public", table: "wireframes", filter: `id=eq.${DEMO.wireframeId}` },
      recordChanges(seen, "w"),
    );
    seen.subscribe();
    await subscribed(seen);
    await client.setAuth(mintToken(DEMO.alice, 3600));
    await sleep(expiryOf(first) * 1000 + 1_000 - Date.now()); // the first token is now past its exp
    await psql(`UPDATE wireframes SET title = 'after the refresh' WHERE id = '${DEMO.wireframeId}'`);
    await waitFor(() => seen.changes.length === 1, 10_000, "the update after the first token expired");
    assert.equal(seen.changes[0].new.title, "after the refresh");
    assert.deepEqual(seen.statuses, ["SUBSCRIBED"]);
    assert.deepEqual(seen.system.filter((s) => s.status !== "ok"), []);
  } finally {
    await closeAll(client);
  }
});

test("when the token expires the channel gets a system error, then is closed", async () => {
  const token = mintToken(DEMO.alice, 2);
  const client = realtime(gateway, token);
  try {
    const channel = client.channel("expiring");
    const seen = watch(channel);
    channel.on("postgres_changes", { event: "*", schema: "public", table: "wireframes" }, recordChanges(seen, "w"));
    seen.subscribe();
    await subscribed(seen);
    await waitFor(() => seen.statuses.includes("CLOSED"), 15_000, "the channel closed");
    const errors = seen.system.filter((s) => s.status === "error");
    assert.equal(errors.length, 1, JSON.stringify(seen.system));
    assert.equal(errors[0].channel, "expiring");
    assert.match(errors[0].message, /expired/i);
    assert.deepEqual(seen.statuses, ["SUBSCRIBED", "CLOSED"]);
    assert.equal(channel.state, "closed");
  } finally {
    await closeAll(client);
  }
});

test("an invalid token handed over with setAuth gets a system error and the channel is closed", async () => {
  const client = realtime(gateway, mintToken(DEMO.alice), { accessToken: undefined });
  try {
    await client.setAuth(mintToken(DEMO.alice));
    const channel = client.channel("bad-refresh");
    const seen = watch(channel);
    seen.subscribe();
    await subscribed(seen);
    await client.setAuth(mintToken(DEMO.alice, 3600, { aud: "someone-else" }));
    await waitFor(() => seen.statuses.includes("CLOSED"), 10_000, "the channel closed");
    const errors = seen.system.filter((s) => s.status === "error");
    assert.equal(errors.length, 1, JSON.stringify(seen.system));
    assert.deepEqual(seen.statuses, ["SUBSCRIBED", "CLOSED"]);
  } finally {
    await closeAll(client);
  }
});

test("every heartbeat is answered, so the client never reconnects", async () => {
  const beats = [];
  const connections = [];
  const client = realtime(gateway, mintToken(DEMO.alice), {
    heartbeatIntervalMs: 100,
    heartbeatCallback: (status) => {
      beats.push(status);
      notify();
    },
    logger: (kind, message) => {
      if (kind === "transport" && message.startsWith("connected to")) connections.push(message);
    },
  });
  try {
    const channel = client.channel("heartbeats");
    const seen = watch(channel);
    seen.subscribe();
    await subscribed(seen);
    await waitFor(() => beats.filter((s) => s === "ok").length >= 5, 10_000, "five answered heartbeats");
    assert.deepEqual([...new Set(beats)].sort(), ["ok", "sent"]);
    assert.equal(connections.length, 1, "one connection, never re-established");
    assert.deepEqual(seen.statuses, ["SUBSCRIBED"]);
  } finally {
    await closeAll(client);
  }
});

for (const vsn of ["1.0.0", "2.0.0"]) {
  test(`vsn ${vsn}: the gateway answers in the version the client asked for`, async () => {
    RecordingWebSocket.sockets = [];
    const client = realtime(gateway, mintToken(DEMO.alice), { vsn, transport: RecordingWebSocket });
    try {
      const channel = client.channel(`project:${DEMO.projectId}`, { config: { broadcast: { self: true } } });
      const seen = watch(channel);
      channel
        .on("postgres_changes", { event: "UPDATE", schema: "public", table: "wireframes", filter: `id=eq.${DEMO.wireframeId}` }, recordChanges(seen, "w"))
        .on("broadcast", { event: "ping" }, (message) => {
          seen.broadcasts.push(message);
          notify();
        });
      seen.subscribe();
      await subscribed(seen);
      await psql(`UPDATE wireframes SET title = 'vsn ${vsn}' WHERE id = '${DEMO.wireframeId}'`);
      assert.equal(await channel.send({ type: "broadcast", event: "ping", payload: { vsn } }), "ok");
      await waitFor(() => seen.changes.length === 1 && seen.broadcasts.length === 1, 10_000, "the change and the broadcast");
      assert.equal(seen.changes[0].new.title, `vsn ${vsn}`);
      assert.deepEqual(seen.broadcasts[0].payload, { vsn });

      const [socket] = RecordingWebSocket.sockets;
      assert.equal(new URL(socket.url).searchParams.get("vsn"), vsn);
      const text = socket.received.filter((frame) => typeof frame === "string").map((frame) => JSON.parse(frame));
      const binary = socket.received.filter((frame) => typeof frame !== "string");
      if (vsn === "1.0.0") {
        assert.deepEqual(binary, []);
        assert.ok(text.every((frame) => !Array.isArray(frame) && typeof frame.topic === "string"), JSON.stringify(text));
        assert.ok(socket.sent.every((frame) => typeof frame === "string"), "1.0.0 clients send no binary frames");
      } else {
        assert.ok(text.every((frame) => Array.isArray(frame) && frame.length === 5), JSON.stringify(text));
        assert.ok(binary.length > 0, "the broadcast came back as a binary frame");
        assert.ok(binary.every((frame) => frame[0] === 4), "binary frames from the server are user broadcasts");
        assert.ok(socket.sent.some((frame) => typeof frame !== "string" && frame[0] === 3), "the broadcast went as a binary frame");
      }
    } finally {
      await closeAll(client);
    }
  });
}

test("a malformed join is refused as Supabase does: CHANNEL_ERROR with the server's reason", async () => {
  const client = realtime(gateway, mintToken(DEMO.alice));
  try {
    const channel = client.channel("malformed", { config: { presence: { key: { not: "a string" } } } });
    const seen = watch(channel);
    seen.subscribe();
    await waitFor(() => seen.statuses.length > 0, 10_000, "the join's answer");
    assert.equal(seen.statuses[0], "CHANNEL_ERROR");
    assert.match(seen.errors[0].message, /^bad phx_join payload: config\.presence\.key: /);
  } finally {
    await closeAll(client);
  }
});

test("joining the channel of a project one cannot read is refused with CHANNEL_ERROR", async () => {
  const secret = await ownProject();
  const client = realtime(gateway, mintToken(DEMO.alice));
  try {
    const channel = client.channel(`project:${secret.project}`);
    const seen = watch(channel);
    seen.subscribe();
    await waitFor(() => seen.statuses.length > 0, 10_000, "the join's answer");
    assert.equal(seen.statuses[0], "CHANNEL_ERROR");
    assert.equal(seen.errors[0].message, `project ${secret.project} does not exist or is not shared with you`);
  } finally {
    await closeAll(client);
  }
});

test("a filter with an unknown operator gets the postgres_changes system error", async () => {
  const client = realtime(gateway, mintToken(DEMO.alice));
  try {
    const channel = client.channel("bad-filter");
    const seen = watch(channel);
    channel.on(
      "postgres_changes",
      { event: "*", schema: "public", table: "wireframes", filter: `sitemap_id=like.${DEMO.sitemapId}` },
      recordChanges(seen, "w"),
    );
    seen.subscribe();
    await waitFor(() => seen.system.some((s) => s.status === "error"), 10_000, "the system error");
    const error = seen.system.find((s) => s.status === "error");
    assert.equal(error.extension, "postgres_changes");
    assert.equal(error.channel, "bad-filter");
    assert.equal(error.message, "Error parsing `filter` params: " + `["like", "${DEMO.sitemapId}"]`);
  } finally {
    await closeAll(client);
  }
});

test("a push on a topic that was never joined is answered `unmatched topic`, as Phoenix does", async () => {
  const ws = new WebSocket(`ws://127.0.0.1:${gateway.port}/realtime/v1/websocket?apikey=${mintToken(DEMO.alice)}&vsn=2.0.0`);
  const frames = [];
  ws.on("message", (data) => {
    frames.push(JSON.parse(data.toString()));
    notify();
  });
  ws.on("open", notify);
  try {
    await waitFor(() => ws.readyState === WebSocket.OPEN, 10_000, "the socket");
    ws.send(JSON.stringify(["1", "2", "realtime:never-joined", "presence", { type: "presence", event: "track", payload: {} }]));
    await waitFor(() => frames.length > 0, 10_000, "the reply");
    assert.deepEqual(frames[0], ["1", "2", "realtime:never-joined", "phx_reply", { status: "error", response: { reason: "unmatched topic" } }]);
  } finally {
    ws.close();
  }
});

test("without vsn in the URL the socket speaks 1.0.0, as Phoenix assumes", async () => {
  const ws = new WebSocket(`ws://127.0.0.1:${gateway.port}/realtime/v1/websocket?apikey=${mintToken(DEMO.alice)}`);
  const frames = [];
  ws.on("message", (data) => {
    frames.push(JSON.parse(data.toString()));
    notify();
  });
  ws.on("open", notify);
  try {
    await waitFor(() => ws.readyState === WebSocket.OPEN, 10_000, "the socket");
    ws.send(JSON.stringify({ topic: "phoenix", event: "heartbeat", payload: {}, ref: "7" }));
    await waitFor(() => frames.length > 0, 10_000, "the heartbeat's reply");
    assert.deepEqual(frames[0], {
      topic: "phoenix",
      event: "phx_reply",
      payload: { status: "ok", response: {} },
      ref: "7",
      join_ref: null,
    });
  } finally {
    ws.close();
  }
});

test("after a dropped connection realtime-js misses what changed meanwhile, unless it opts in to config.resume", async () => {
  let offline = false;
  // The network: while `offline`, connecting fails (nothing listens on port 1).
  class FlakyWebSocket extends WebSocket {
    constructor(url, ...rest) {
      super(offline ? String(url).replace(/:\d+\//, ":1/") : url, ...rest);
    }
  }
  const options = { transport: FlakyWebSocket, reconnectAfterMs: () => 100 };
  const plain = realtime(gateway, mintToken(DEMO.alice), options);
  let since = null;
  let resumingChannel = null;
  // The recipe of docs/supabase-compat.md: note each change's position, and have the
  // next join of the channel (a rejoin: the first is fresh) ask for what came after it.
  const resuming = realtime(gateway, mintToken(DEMO.alice), {
    ...options,
    decode: (raw, callback) =>
      resuming.serializer.decode(raw, (message) => {
        const position = message.event === "postgres_changes" ? message.payload?.data?.position : undefined;
        if (position) {
          since = position;
          const { config } = resumingChannel.joinPush.payload();
          resumingChannel.updateJoinPayload({ config: { ...config, resume: { since } } });
        }
        callback(message);
      }),
  });
  try {
    const members = [plain, resuming].map((client) => {
      const channel = client.channel(`project:${DEMO.projectId}`);
      const seen = watch(channel);
      channel.on(
        "postgres_changes",
        { event: "UPDATE", schema: "public", table: "wireframes", filter: `sitemap_id=eq.${DEMO.sitemapId}` },
        recordChanges(seen, "w"),
      );
      seen.subscribe();
      return { client, channel, seen };
    });
    resumingChannel = members[1].channel;
    await Promise.all(members.map(({ seen }) => subscribed(seen)));
    const titles = ({ seen }) => seen.changes.map((c) => c.new.title);
    await psql(`UPDATE wireframes SET title = 'before' WHERE id = '${DEMO.wireframeId}'`);
    await waitFor(() => members.every((m) => titles(m).length === 1), 10_000, "the first update");
    assert.ok(since, "the change carried its position");

    offline = true;
    for (const { client } of members) client.socketAdapter.getSocket().conn.terminate();
    await waitFor(() => members.every(({ client }) => !client.isConnected()), 10_000, "both disconnected");
    await psql(`UPDATE wireframes SET title = 'while away 1' WHERE id = '${DEMO.wireframeId}'`);
    await psql(`UPDATE wireframes SET title = 'while away 2' WHERE id = '${DEMO.wireframeId}'`);
    offline = false;
    await waitFor(() => members.every(({ channel }) => channel.state === "joined"), 15_000, "both joined again");
    await waitFor(() => members[1].seen.system.some((s) => s.extension === "resume"), 10_000, "the resume");
    await psql(`UPDATE wireframes SET title = 'after' WHERE id = '${DEMO.wireframeId}'`);
    await waitFor(() => members.every((m) => titles(m).at(-1) === "after"), 10_000, "the live update");

    assert.deepEqual(titles(members[0]), ["before", "after"], "without resume, the gap");
    assert.deepEqual(titles(members[1]), ["before", "while away 1", "while away 2", "after"]);
    const resumed = members[1].seen.system.find((s) => s.extension === "resume");
    assert.equal(resumed.status, "ok", JSON.stringify(resumed));
  } finally {
    offline = false;
    await closeAll(plain, resuming);
  }
});

test("supabase-js: the example of docs/supabase-compat.md, and an anon key with the user's token as accessToken", async () => {
  const options = { auth: { persistSession: false }, realtime: { transport: WebSocket } };
  const supabase = createClient(gateway.httpUrl, mintToken(DEMO.alice), options);
  const signedIn = createClient(gateway.httpUrl, anonKey(), {
    ...options,
    accessToken: async () => mintToken(DEMO.bob),
  });
  try {
    const changes = [];
    const statuses = [];
    let presence = {};
    const channel = supabase.channel(`project:${DEMO.projectId}`);
    channel
      .on(
        "postgres_changes",
        { event: "*", schema: "public", table: "wireframes", filter: `sitemap_id=eq.${DEMO.sitemapId}` },
        (change) => {
          changes.push(change);
          notify();
        },
      )
      .on("presence", { event: "sync" }, () => {
        presence = channel.presenceState();
        notify();
      })
      .subscribe(async (status) => {
        statuses.push(status);
        notify();
        if (status === "SUBSCRIBED") await channel.track({ page: "home" });
      });
    await waitFor(() => presence[DEMO.alice]?.[0].page === "home", 15_000, "alice's own presence");
    assert.deepEqual(statuses, ["SUBSCRIBED"]);

    // The project is private: the join must carry bob's token, so it is set first.
    await signedIn.realtime.setAuth();
    const bobChanges = [];
    const bobStatuses = [];
    signedIn
      .channel(`project:${DEMO.projectId}`)
      .on("postgres_changes", { event: "UPDATE", schema: "public", table: "wireframes" }, (change) => {
        bobChanges.push(change);
        notify();
      })
      .subscribe((status) => {
        bobStatuses.push(status);
        notify();
      });
    await waitFor(() => bobStatuses.length > 0, 15_000, "bob's subscribe()");
    assert.deepEqual(bobStatuses, ["SUBSCRIBED"]);

    await psql(`UPDATE wireframes SET layout = '{"from": "supabase-js"}' WHERE id = '${DEMO.wireframeId}'`);
    await waitFor(() => changes.length === 1 && bobChanges.length === 1, 10_000, "the update, at both");
    assert.equal(changes[0].eventType, "UPDATE");
    assert.deepEqual(changes[0].new.layout, { from: "supabase-js" });
    assert.deepEqual(bobChanges[0].new.layout, { from: "supabase-js" });
  } finally {
    await Promise.all([supabase.removeAllChannels(), signedIn.removeAllChannels()]);
  }
});

test("acceptance: a plain realtime-js script gets a psql UPDATE, sees a native editor, and is closed when its key expires", async (t) => {
  const bob = connect(gateway.wsUrl, { getToken: () => mintToken(DEMO.bob), WebSocket });
  const { stdout: key } = await promisify(execFile)(
    process.env.SB_PYTHON,
    ["-m", "gateway.app.cli", "token", DEMO.alice, "--ttl", "5"],
    { cwd: process.env.SB_REPO, env: process.env, timeout: 30_000 },
  );
  const script = spawn(
    process.execPath,
    ["acceptance.mjs", `ws://127.0.0.1:${gateway.port}/realtime/v1`, key.trim(), DEMO.sitemapId, DEMO.projectId],
    { cwd: fileURLToPath(new URL(".", import.meta.url)), stdio: ["ignore", "pipe", "pipe"] },
  );
  const lines = [];
  let stderr = "";
  let exitCode = null;
  script.stderr.on("data", (chunk) => (stderr += chunk));
  createInterface({ input: script.stdout }).on("line", (line) => {
    lines.push(JSON.parse(line));
    notify();
  });
  script.on("exit", (code) => {
    exitCode = code;
    notify();
  });
  const events = (name) => lines.filter((line) => line.event === name);
  try {
    bob.project(DEMO.projectId).subscribe(() => {});
    await bob.presence.update({ editing: "wireframe home" });
    await waitFor(() => events("status").length > 0, 15_000, "the script's subscription");
    assert.equal(events("status")[0].status, "SUBSCRIBED", stderr);

    await waitFor(
      () => events("presence").some((line) => line.state[DEMO.bob] !== undefined),
      10_000,
      "the native editor in the script's presence state",
    );
    const writing = Date.now();
    await psql(`UPDATE wireframes SET title = 'accepted' WHERE id = '${DEMO.wireframeId}'`);
    await waitFor(() => events("change").length > 0, 10_000, "the UPDATE");
    const [{ change, at }] = events("change");
    assert.equal(change.eventType, "UPDATE");
    assert.equal(change.new.title, "accepted");
    t.diagnostic(`the UPDATE reached the script ${at - writing} ms after psql was started`);

    await waitFor(() => exitCode !== null, 15_000, "the script to end when its key expired");
    assert.equal(exitCode, 0, stderr);
    const errors = events("system").filter((line) => line.payload.status === "error");
    assert.equal(errors.length, 1, JSON.stringify(lines));
    assert.match(errors[0].payload.message, /expired/i);
    assert.equal(events("status").at(-1).status, "CLOSED");
  } finally {
    bob.close();
    script.kill();
  }
});
