// What the Supabase client tests share: the gateway (tests/js/gateway.mjs, `serve --demo`
// on the database tests/test_supabase_js.py prepared), tokens signed with its secret,
// rows written with psql, and realtime-js clients that record what they see.

import { createHmac, randomUUID } from "node:crypto";

import { RealtimeClient } from "@supabase/realtime-js";
import WebSocket from "ws";

import { Gateway, notify, psql, waitFor } from "../gateway.mjs";

export { Gateway, notify, psql, waitFor, randomUUID };

export const DEMO = {
  projectId: "d3e0d3e0-0000-4000-8000-000000000001",
  sitemapId: "d3e0d3e0-0000-4000-8000-000000000002",
  wireframeId: "d3e0d3e0-0000-4000-8000-000000000003",
  alice: "d3e0d3e0-0000-4000-8000-00000000a11c",
  bob: "d3e0d3e0-0000-4000-8000-00000000b0b0",
  carol: "d3e0d3e0-0000-4000-8000-00000000ca01",
};

const base64url = (value) => Buffer.from(value).toString("base64url");

/** An HS256 JWT in Supabase's shape, signed with the gateway's secret. */
export function mintToken(sub, ttlSeconds = 3600, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = {
    sub,
    aud: process.env.SITEBUILDER_JWT_AUDIENCE ?? "authenticated",
    role: "authenticated",
    iat: now,
    exp: now + ttlSeconds,
    ...claims,
  };
  const unsigned = `${base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${base64url(JSON.stringify(body))}`;
  const signature = createHmac("sha256", process.env.SITEBUILDER_JWT_SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/** A token's `exp` claim: when it expires, in seconds since the epoch. */
export const expiryOf = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url")).exp;

/** The `ws` WebSocket, keeping every frame each way (decoded as text when it is text). */
export class RecordingWebSocket extends WebSocket {
  static sockets = [];

  constructor(...args) {
    super(...args);
    this.sent = [];
    this.received = [];
    RecordingWebSocket.sockets.push(this);
    this.on("message", (data, isBinary) => {
      this.received.push(isBinary ? Buffer.from(data) : data.toString());
    });
  }

  send(data, ...rest) {
    this.sent.push(typeof data === "string" ? data : Buffer.from(data));
    super.send(data, ...rest);
  }
}

/**
 * A RealtimeClient as an application would make it, pointed at the gateway: Node 20 has
 * no global WebSocket, so `transport` is `ws` (that is all realtime-js ≥ 2.110 lacks there).
 */
export function realtime(gateway, token, options = {}) {
  return new RealtimeClient(`ws://127.0.0.1:${gateway.port}/realtime/v1`, {
    params: { apikey: token },
    accessToken: async () => token,
    transport: WebSocket,
    ...options,
  });
}

/** Everything a channel reports, for waitFor; `statuses` are subscribe()'s callbacks. */
export function watch(channel) {
  const seen = { statuses: [], errors: [], system: [], changes: [], broadcasts: [], presence: [] };
  channel.on("system", {}, (payload) => {
    seen.system.push(payload);
    notify();
  });
  seen.subscribe = () =>
    channel.subscribe((status, error) => {
      seen.statuses.push(status);
      seen.errors.push(error ?? null);
      notify();
    });
  return seen;
}

/** Resolves once subscribe() reported SUBSCRIBED; rejects with what it reported instead. */
export async function subscribed(seen, what = "SUBSCRIBED") {
  await waitFor(() => seen.statuses.length > 0, 15_000, what);
  const [status] = seen.statuses;
  if (status !== "SUBSCRIBED") {
    throw new Error(`${what}: ${status} ${seen.errors[0]?.message ?? ""}`);
  }
}

/** The channel's postgres_changes callback that records what arrives. */
export function recordChanges(seen, tag) {
  return (payload) => {
    seen.changes.push({ tag, ...payload });
    notify();
  };
}

/** A user of our own with a project (private unless `isPublic`), a sitemap and a wireframe. */
export async function ownProject({ isPublic = false, collaborators = [] } = {}) {
  const ids = { user: randomUUID(), project: randomUUID(), sitemap: randomUUID(), wireframe: randomUUID() };
  const shared = `ARRAY[${collaborators.map((id) => `'${id}'`).join(",")}]::uuid[]`;
  await psql(`
    INSERT INTO auth.users (id, email) VALUES ('${ids.user}', '${ids.user}@example.test');
    INSERT INTO projects (id, user_id, name, type, is_public, collaborators)
      VALUES ('${ids.project}', '${ids.user}', 'Own', 'website', ${isPublic}, ${shared});
    INSERT INTO sitemaps (id, project_id, title) VALUES ('${ids.sitemap}', '${ids.project}', 'Own map');
    INSERT INTO wireframes (id, sitemap_id, title) VALUES ('${ids.wireframe}', '${ids.sitemap}', 'Own frame');
  `);
  return ids;
}

/** A Supabase-style `anon` key: role anon, no user, signed with the gateway's secret. */
export const anonKey = (ttlSeconds = 3600) => mintToken(undefined, ttlSeconds, { role: "anon", aud: undefined, iss: "supabase" });

/** Close every client given, whatever state it is in. */
export async function closeAll(...clients) {
  await Promise.all(clients.map((client) => client?.disconnect?.() ?? client?.close?.()));
}
