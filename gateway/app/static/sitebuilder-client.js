// sitebuilder-client.js: the browser (and Node ≥ 20) client of sitebuilder-realtime.
//
// One dependency-free ES module; the gateway serves it at /sitebuilder-client.js and its
// types at /sitebuilder-client.d.ts. The protocol it speaks is docs/protocol.md.
//
//   import { connect } from "/sitebuilder-client.js";
//   const client = connect("ws://127.0.0.1:8765/", { getToken: async () => myToken() });
//   const stop = client.project(projectId).subscribe((change, state) => render(state), {
//     onPresence: (users) => showAvatars(users),
//     onReset: (snapshot, state) => render(state),
//   });
//   await client.rpc("wireframe.update", { id, patch: { layout }, expected_version: 3 });
//
// A lost connection is reopened by itself, with exponential backoff and jitter: it
// authenticates again (asking getToken for a token), resumes every subscription from
// the last position it applied (subscribe {since}), so nothing is missed or applied
// twice, and when the gateway cannot replay (reset) the fresh snapshot replaces the
// local state and onReset says so. The token is refreshed before it expires.
//
// Updates arrive as deltas (subscribe {delta: true}: the changed columns and merge
// patches of JSON columns, a few hundred bytes for a keystroke in a large layout); the
// client applies them to its state and hands callbacks the full change, `new` and `old`
// rows whole, as if the gateway had sent them. A delta for a row it does not hold at
// that version takes a fresh snapshot instead (onReset, reason "delta_mismatch").
// Version-history changes then come without `data` and `changes`: `version.get` has them.
// connect(url, {delta: false}) asks for whole rows.

const DEFAULTS = {
  baseDelayMs: 250,
  maxDelayMs: 10_000,
  refreshMarginMs: 60_000,
  requestTimeoutMs: 15_000,
  heartbeatMs: 15_000,
  delta: true,
};
// Close codes after which reconnecting cannot help (a token for another audience…
// is still retried: getToken may return a better one).
const NORMAL_CLOSURE = 1000;

/** A refused request: `code` is the protocol's error code (docs/protocol.md), or
 * "disconnected" (the connection dropped before the reply) or "closed" (client closed). */
export class SitebuilderError extends Error {
  constructor(code, message, { details = null, retryAfterMs = null } = {}) {
    super(message);
    this.name = "SitebuilderError";
    this.code = code;
    this.details = details;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Delay before reconnect attempt `attempt` (0-based): base·2^attempt capped at max,
 * then "equal jitter" (half fixed, half random) so that many clients dropped by one
 * restart do not all come back in the same millisecond. */
export function backoffDelay(attempt, options = {}) {
  const base = options.baseDelayMs ?? DEFAULTS.baseDelayMs;
  const max = options.maxDelayMs ?? DEFAULTS.maxDelayMs;
  const random = options.random ?? Math.random;
  const ceiling = Math.min(max, base * 2 ** attempt);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

export function connect(url, options = {}) {
  return new Client(url, options);
}

function emptyState() {
  return {
    project: null,
    sitemaps: new Map(),
    wireframes: new Map(),
    style_guides: new Map(),
    sessions: new Map(),
    access: null,
    position: null,
  };
}

const COLLECTIONS = {
  sitemap: "sitemaps",
  wireframe: "wireframes",
  "style-guide": "style_guides",
  session: "sessions",
};

function stateFromSnapshot(snapshot) {
  const state = emptyState();
  state.project = snapshot.project;
  state.access = snapshot.access;
  state.position = snapshot.position;
  for (const key of Object.values(COLLECTIONS)) {
    for (const row of snapshot[key] ?? []) state[key].set(row.id, row);
  }
  return state;
}

function applyChange(state, change) {
  state.position = change.position;
  if (change.entity === "project") {
    state.project = change.new;
    return;
  }
  const key = COLLECTIONS[change.entity];
  if (key === undefined) return; // versions: history, not state
  if (change.op === "delete") state[key].delete(change.old.id);
  else state[key].set(change.new.id, change.new);
}

/** RFC 7396 MergePatch(target, patch): what a delta's `patch` does to a JSON column. */
export function mergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const isObject = target !== null && typeof target === "object" && !Array.isArray(target);
  const result = isObject ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

/** The full `change` a delta stands for, applied to `state`; null when the state does not
 * hold the row at the version the delta applies to (the caller takes a snapshot). */
function applyDelta(state, delta) {
  const previous = delta.entity === "project" ? state.project : state[COLLECTIONS[delta.entity]]?.get(delta.id);
  if (!previous || previous.id !== delta.id || (previous.version ?? null) !== delta.base_version) return null;
  const row = { ...previous, ...delta.set };
  for (const [column, patch] of Object.entries(delta.patch)) row[column] = mergePatch(previous[column], patch);
  if (delta.version !== null) row.version = delta.version;
  const change = {
    type: "change",
    entity: delta.entity,
    project_id: delta.project_id,
    op: "update",
    new: row,
    old: delta.old ?? previous,
    actor: delta.actor,
    committed_at: delta.committed_at,
    position: delta.position,
  };
  if ("ref" in delta) change.ref = delta.ref;
  applyChange(state, change);
  return change;
}

function applyPresence(presence, frame) {
  if (frame.type === "presence.state") {
    for (const key of Object.keys(presence)) delete presence[key];
    Object.assign(presence, structuredClone(frame.users));
    return;
  }
  for (const [userId, { metas }] of Object.entries(frame.leaves ?? {})) {
    const gone = new Set(metas.map((m) => m.connection_id));
    const user = presence[userId];
    if (!user) continue;
    user.metas = user.metas.filter((m) => !gone.has(m.connection_id));
    if (user.metas.length === 0) delete presence[userId];
  }
  // A join replaces the connection's entry: a diff may repeat what the state showed.
  for (const [userId, { metas }] of Object.entries(frame.joins ?? {})) {
    const user = (presence[userId] ??= { metas: [] });
    const fresh = new Set(metas.map((m) => m.connection_id));
    user.metas = user.metas.filter((m) => !fresh.has(m.connection_id));
    user.metas.push(...structuredClone(metas));
  }
}

/** One project followed over whatever connection the client has at the moment. */
class ProjectHandle {
  constructor(client, id) {
    this.client = client;
    this.id = id;
    this.state = emptyState();
    this.presence = {};
    this.listeners = new Set();
    this.subscribed = false; // the gateway confirmed it on the current connection
    this.hasSnapshot = false;
    this.snapshot = null;
    this.resetReason = null;
    this.resyncing = false; // a delta did not apply: changes wait for a fresh snapshot
    this._ready = null;
  }

  ready() {
    if (this.hasSnapshot) return Promise.resolve(this.state);
    this._ready ??= deferred();
    return this._ready.promise;
  }

  subscribe(onChange, options = {}) {
    const listener = { onChange, ...options };
    this.listeners.add(listener);
    if (this.listeners.size === 1) this.client._subscribe(this);
    else if (this.hasSnapshot) queueMicrotask(() => listener.onSnapshot?.(this.snapshot, this.state));
    return () => {
      if (!this.listeners.delete(listener) || this.listeners.size > 0) return;
      this.client._unsubscribe(this);
    };
  }

  /** Where a new connection resumes: the last change applied, else the snapshot. */
  get since() {
    return this.hasSnapshot && !this.resyncing ? this.state.position : null;
  }

  _emit(name, ...args) {
    for (const listener of [...this.listeners]) {
      try {
        listener[name]?.(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  _frame(frame) {
    switch (frame.type) {
      case "snapshot": {
        const fresh = !this.hasSnapshot;
        this.state = stateFromSnapshot(frame);
        this.snapshot = frame;
        this.hasSnapshot = true;
        if (fresh && this.resetReason === null) {
          this._emit("onSnapshot", frame, this.state);
          this._ready?.resolve(this.state);
          this._ready = null;
        } else {
          this._emit("onReset", frame, this.state, this.resetReason ?? "history_unavailable");
        }
        this.resetReason = null;
        this.resyncing = false;
        return;
      }
      case "change":
        if (!this.hasSnapshot || this.resyncing) return; // the gateway sends a snapshot first
        applyChange(this.state, frame);
        this._emit("onChange", frame, this.state);
        return;
      case "delta": {
        if (!this.hasSnapshot || this.resyncing) return;
        const change = applyDelta(this.state, frame);
        if (change === null) {
          this.resyncing = true;
          this.resetReason = "delta_mismatch";
          this.client._resync(this);
          return;
        }
        this._emit("onChange", change, this.state);
        return;
      }
      case "reset":
        this.resetReason = frame.reason;
        return;
      case "presence.state":
      case "presence.diff":
        applyPresence(this.presence, frame);
        this._emit("onPresence", this.presence);
        return;
      case "unsubscribed":
        this.subscribed = false;
        this.client._forget(this);
        this._emit("onUnsubscribed", frame);
        return;
    }
  }
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

class Client {
  constructor(url, options) {
    if (!options.token && !options.getToken) throw new TypeError("connect() needs token or getToken");
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.status = "connecting";
    this.userId = null;
    this.projects = new Map(); // id -> ProjectHandle, while it has listeners
    this.pending = new Map(); // ref -> {resolve, reject, frame, timer, resend}
    this.queue = []; // requests made while not authenticated
    this.statusListeners = new Set();
    if (options.onStatus) this.statusListeners.add(options.onStatus);
    this.meta = null; // the presence meta to set in every project
    this.sessions = new Map(); // builder sessions started or resumed here: id -> token
    this.projectList = { listeners: new Set(), projects: null }; // subscribeToProjects
    this.refs = 0;
    this.attempt = 0;
    this.ws = null;
    this.authed = false;
    this.closed = false;
    this.timers = { reconnect: null, refresh: null, heartbeat: null };
    this.minDelayMs = 0; // a `closing` frame's reconnect_after_ms
    this._ready = deferred();
    this.presence = { update: (meta) => this._updatePresence(meta) };
    this.session = {
      start: (projectId, currentStep, metadata) =>
        this.rpc("session.create", {
          project_id: projectId,
          current_step: currentStep,
          ...(metadata ? { metadata } : {}),
        }).then((row) => this._remember(row)),
      progress: (id, progress) =>
        this.rpc("session.update_progress", { id, ...progress }).then((row) => this._ended(row)),
      complete: (id) => this.rpc("session.complete", { id }).then((row) => this._ended(row)),
      cancel: (id) => this.rpc("session.cancel", { id }).then((row) => this._ended(row)),
      resume: (sessionTokenOrId) =>
        this.rpc(
          "session.resume",
          typeof sessionTokenOrId === "string" ? { session_token: sessionTokenOrId } : { id: sessionTokenOrId.id },
        ).then((row) => this._remember(row)),
      list: (filter = {}) => this.rpc("session.list", filter),
    };
    this._open();
  }

  ready() {
    return this._ready.promise;
  }

  onStatus(listener) {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /** The seed's builderHelpers over this client (see `builderHelpers` below). */
  get builderHelpers() {
    this._helpers ??= builderHelpers(this);
    return this._helpers;
  }

  project(id) {
    let handle = this.projects.get(id);
    if (!handle) {
      handle = new ProjectHandle(this, id);
      this.projects.set(id, handle);
    }
    return handle;
  }

  /** Call an RPC method; resolves with its result, rejects with a SitebuilderError.
   * Made while reconnecting, it is sent once the connection is back. With an
   * idempotencyKey it is also sent again if the connection drops before the reply. */
  rpc(method, params = {}, { idempotencyKey, timeoutMs } = {}) {
    const frame = { type: "rpc", method, params };
    if (idempotencyKey) frame.idempotency_key = idempotencyKey;
    return this._request(frame, { resend: Boolean(idempotencyKey), timeoutMs });
  }

  // Sharing takes consent: adding someone to a project invites them (docs/protocol.md).

  /** Follow the caller's project list (owned or shared with them, as accepted):
   * `onChange(projects, event)` gets the whole list, newest `updated_at` first, after
   * the first `project_list` (event `{type: "snapshot"}`), after each change
   * (`{type: "insert" | "update" | "delete", project}`: joined, changed, left) and after
   * a list sent again (`{type: "reset", reason}`; also after every reconnect). Returns
   * the unsubscribe function. */
  subscribeToProjects(onChange) {
    const list = this.projectList;
    list.listeners.add(onChange);
    if (list.listeners.size === 1 && this.authed) this._sendSubscribeProjects();
    return () => {
      if (!list.listeners.delete(onChange) || list.listeners.size) return;
      list.projects = null;
      if (this.authed) this._request({ type: "unsubscribe_projects" }).catch(() => {});
    };
  }

  /** The caller's pending invitations, newest first: [{project_id, project_name,
   * invited_by, invited_by_email, invited_at}]. */
  invitations({ limit } = {}) {
    return this.rpc("project.invitations", limit ? { limit } : {}).then((reply) => reply.invitations);
  }

  /** Join the project: resolves with its row; it then arrives on the project list. */
  acceptInvitation(projectId) {
    return this.rpc("project.accept_invitation", { project_id: projectId });
  }

  declineInvitation(projectId) {
    return this.rpc("project.decline_invitation", { project_id: projectId });
  }

  /** Stop collaborating on the project (not its owner's to do): the subscriptions to it
   * end with onUnsubscribed, unless it is public. */
  leaveProject(projectId) {
    return this.rpc("project.leave", { project_id: projectId });
  }

  close() {
    this.closed = true;
    this._setStatus("closed", {});
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this._failPending(new SitebuilderError("closed", "the client was closed"), true);
    if (this.ws) this.ws.close(NORMAL_CLOSURE);
  }

  // Connection

  async _open() {
    if (this.closed) return;
    let token;
    try {
      token = await this._token();
    } catch (error) {
      this._scheduleReconnect({ error: new SitebuilderError("invalid_token", String(error)) });
      return;
    }
    if (this.closed) return;
    const ws = new this.WebSocket(this.url);
    this.ws = ws;
    this.authed = false;
    ws.onopen = () => {
      // Sent outside `pending`: it must precede every queued request.
      this.authRef = this._ref();
      this._send({ type: "auth", token, ref: this.authRef });
    };
    ws.onmessage = (event) => this._message(ws, event.data);
    ws.onclose = (event) => this._closed(ws, event.code);
    ws.onerror = () => {}; // a close event always follows
  }

  async _token() {
    if (this.options.getToken) return await this.options.getToken();
    return this.options.token;
  }

  _closed(ws, code) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.authed = false;
    clearTimeout(this.timers.refresh);
    clearInterval(this.timers.heartbeat);
    for (const handle of this.projects.values()) handle.subscribed = false;
    this._failPending(new SitebuilderError("disconnected", "the connection was lost"), false);
    if (!this.closed) this._scheduleReconnect({ closeCode: code });
  }

  _scheduleReconnect(info) {
    const delayMs = Math.max(this.minDelayMs, backoffDelay(this.attempt, this.options));
    this.minDelayMs = 0;
    this.attempt += 1;
    this._setStatus("reconnecting", { ...info, attempt: this.attempt, delayMs });
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this._open(), delayMs);
  }

  _setStatus(status, info) {
    this.status = status;
    for (const listener of [...this.statusListeners]) listener(status, { attempt: this.attempt, ...info });
  }

  _authenticated(data) {
    this.authed = true;
    this.userId = data.user_id;
    this.attempt = 0;
    this._scheduleRefresh(data.expires_at);
    this._startHeartbeat();
    this._setStatus("connected", {});
    for (const handle of this.projects.values()) this._sendSubscribe(handle);
    if (this.projectList.listeners.size) this._sendSubscribeProjects();
    for (const [id, token] of this.sessions) {
      // Reattach our builder sessions to this connection before their pause grace ends.
      this.rpc("session.resume", { session_token: token }).catch(() => this.sessions.delete(id));
    }
    for (const entry of this.pending.values()) {
      if (entry.resend && !entry.sent) this._sendPending(entry);
    }
    const queued = this.queue.splice(0);
    for (const entry of queued) this._sendPending(entry);
    this._ready.resolve();
  }

  _scheduleRefresh(expiresAt) {
    clearTimeout(this.timers.refresh);
    if (!this.options.getToken || !expiresAt) return;
    const lifetime = expiresAt * 1000 - Date.now();
    const wait = Math.max(1000, Math.min(lifetime - this.options.refreshMarginMs, lifetime * 0.8));
    this.timers.refresh = setTimeout(() => this._refresh(), wait);
  }

  async _refresh() {
    try {
      const token = await this.options.getToken();
      const data = await this._request({ type: "auth.refresh", token });
      this._scheduleRefresh(data.expires_at);
    } catch {
      // Try again shortly; if the token expires meanwhile the gateway closes (4003)
      // and the reconnect asks getToken again.
      this.timers.refresh = setTimeout(() => this._refresh(), 5000);
    }
  }

  _startHeartbeat() {
    clearInterval(this.timers.heartbeat);
    const ws = this.ws;
    this.timers.heartbeat = setInterval(() => {
      this._request({ type: "ping" }, { timeoutMs: this.options.heartbeatMs }).catch((error) => {
        if (error.code === "timeout" && ws === this.ws) ws.close(4000, "heartbeat timeout");
      });
    }, this.options.heartbeatMs);
  }

  // Frames

  _ref() {
    this.refs += 1;
    return this.refs;
  }

  _send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  _request(frame, { resend = false, timeoutMs } = {}) {
    const entry = { frame, resend, sent: false, ...deferred() };
    const timeout = timeoutMs ?? this.options.requestTimeoutMs;
    entry.timer = setTimeout(() => {
      this.pending.delete(entry.frame.ref);
      this.queue = this.queue.filter((e) => e !== entry);
      entry.reject(new SitebuilderError("timeout", `no reply to ${frame.type} within ${timeout} ms`));
    }, timeout);
    if (this.closed) {
      clearTimeout(entry.timer);
      entry.reject(new SitebuilderError("closed", "the client was closed"));
    } else if (this.authed) this._sendPending(entry);
    else this.queue.push(entry);
    return entry.promise;
  }

  _sendPending(entry) {
    this.pending.delete(entry.frame.ref);
    entry.frame = { ...entry.frame, ref: this._ref() };
    entry.sent = true;
    this.pending.set(entry.frame.ref, entry);
    this._send(entry.frame);
  }

  _failPending(error, all) {
    for (const [ref, entry] of [...this.pending]) {
      if (entry.resend && !all) {
        entry.sent = false; // sent again after the reconnect, same idempotency key
        continue;
      }
      this.pending.delete(ref);
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    if (all) {
      for (const entry of this.queue.splice(0)) {
        clearTimeout(entry.timer);
        entry.reject(error);
      }
    }
  }

  _message(ws, data) {
    if (ws !== this.ws) return;
    const frame = JSON.parse(data);
    switch (frame.type) {
      case "ok":
      case "result":
      case "error":
        this._reply(frame);
        return;
      case "closing":
        this.minDelayMs = frame.reconnect_after_ms ?? 0;
        return;
      case "project_list":
        this._projectList(frame);
        return;
      default: {
        if (frame.type === "change" && frame.list) {
          this._projectListChange(frame);
          return;
        }
        const handle = this.projects.get(frame.project_id);
        if (handle) handle._frame(frame);
      }
    }
  }

  _reply(frame) {
    if (frame.ref === this.authRef && !this.authed) {
      // An auth error is followed by a close (4003); the reconnect asks for a new token.
      if (frame.type === "ok") this._authenticated(frame.data);
      return;
    }
    const entry = this.pending.get(frame.ref);
    if (!entry) return; // no ref: e.g. token_expired, and a close follows
    this.pending.delete(frame.ref);
    clearTimeout(entry.timer);
    if (frame.type === "error") {
      entry.reject(
        new SitebuilderError(frame.code, frame.message, {
          details: frame.details ?? null,
          retryAfterMs: frame.retry_after_ms ?? null,
        }),
      );
    } else entry.resolve(frame.data);
  }

  // The project list

  _sendSubscribeProjects() {
    this._request({ type: "subscribe_projects" }).catch((error) => {
      if (error.code === "disconnected" || error.code === "closed") return;
      setTimeout(() => {
        if (this.authed && this.projectList.listeners.size) this._sendSubscribeProjects();
      }, backoffDelay(1, this.options));
    });
  }

  _projectList(frame) {
    const list = this.projectList;
    if (!list.listeners.size) return;
    list.projects = new Map(frame.projects.map((row) => [row.id, row]));
    this._emitProjects(frame.reset ? { type: "reset", reason: frame.reset } : { type: "snapshot" });
  }

  _projectListChange(frame) {
    const list = this.projectList;
    if (!list.projects) return;
    const row = frame.new ?? frame.old;
    if (frame.op === "delete") list.projects.delete(row.id);
    else list.projects.set(row.id, frame.new);
    this._emitProjects({ type: frame.op, project: row });
  }

  _emitProjects(event) {
    const projects = [...this.projectList.projects.values()].sort((a, b) =>
      a.updated_at < b.updated_at ? 1 : a.updated_at > b.updated_at ? -1 : 0,
    );
    for (const listener of [...this.projectList.listeners]) listener(projects, event);
  }

  // Subscriptions

  _subscribe(handle) {
    this.projects.set(handle.id, handle);
    if (this.authed) this._sendSubscribe(handle);
  }

  _sendSubscribe(handle) {
    const frame = { type: "subscribe", project_id: handle.id };
    if (this.options.delta) frame.delta = true;
    const since = handle.since;
    if (since) frame.since = since;
    this._request(frame)
      .then(() => {
        handle.subscribed = true;
        if (this.projects.get(handle.id) !== handle) {
          this._unsubscribe(handle); // unsubscribed while the subscribe was under way
          return;
        }
        if (this.meta) return this._request({ type: "presence.update", project_id: handle.id, meta: this.meta });
      })
      .catch((error) => {
        handle.subscribed = false;
        if (error.code === "disconnected" || error.code === "closed") return;
        if (error.code === "unavailable" || error.code === "timeout" || error.code === "rate_limited") {
          setTimeout(() => {
            if (this.authed && !handle.subscribed && this.projects.get(handle.id) === handle) {
              this._sendSubscribe(handle);
            }
          }, backoffDelay(1, this.options));
          return;
        }
        handle._emit("onError", error);
      });
  }

  _unsubscribe(handle) {
    this._forget(handle);
    if (this.authed && handle.subscribed) {
      handle.subscribed = false;
      this._request({ type: "unsubscribe", project_id: handle.id }).catch(() => {});
    }
  }

  /** Follow the project again from a fresh snapshot (a delta did not apply). */
  _resync(handle) {
    if (!this.authed || !handle.subscribed) return; // the next subscribe takes a snapshot
    handle.subscribed = false;
    this._request({ type: "unsubscribe", project_id: handle.id }).catch(() => {});
    this._sendSubscribe(handle);
  }

  _forget(handle) {
    if (this.projects.get(handle.id) === handle) this.projects.delete(handle.id);
  }

  // Presence and builder sessions

  async _updatePresence(meta) {
    this.meta = meta;
    if (!this.authed) return;
    await Promise.all(
      [...this.projects.values()]
        .filter((handle) => handle.subscribed)
        .map((handle) => this._request({ type: "presence.update", project_id: handle.id, meta })),
    );
  }

  _remember(row) {
    if (row.session_token) this.sessions.set(row.id, row.session_token);
    return row;
  }

  _ended(row) {
    if (row.status === "completed" || row.status === "cancelled") this.sessions.delete(row.id);
    return row;
  }
}

// The seed's builderHelpers (its "Builder Helpers" and "Usage Examples"), over the one
// socket: each call resolves with `{data, error}` as the seed's code destructures it
// (`error` a SitebuilderError, never a rejection), and reconnects and resumes as the
// client does. What the seed passes that the server decides itself is accepted and
// documented: a `user_id` / `userId` must be the signed-in user's (the server takes the
// caller from the token; another user's id is `forbidden`), a client-made
// `session_token` is replaced by the server's (the returned row carries it).

const CHANGE_TYPES = { insert: "INSERT", update: "UPDATE", delete: "DELETE" };
const CONTENT = new Set(["project", "sitemap", "wireframe", "style-guide"]);
const PROJECT_COLUMNS = ["name", "description", "type", "status", "is_public"];
const PROJECT_JSON = ["data", "settings"];

async function outcome(promise) {
  try {
    return { data: await promise, error: null };
  } catch (error) {
    return { data: null, error };
  }
}

/** A change frame as the seed's callbacks read it: `type` (the entity: 'project',
 * 'sitemap', 'wireframe', 'style-guide', 'session'), `eventType` ('INSERT', 'UPDATE',
 * 'DELETE'), `new` and `old` rows (as Supabase's payloads carry them), and the frame. */
function payloadOf(change) {
  return {
    type: change.entity,
    eventType: CHANGE_TYPES[change.op],
    new: change.new ?? {},
    old: change.old ?? {},
    commit_timestamp: change.committed_at,
    change,
  };
}

export function builderHelpers(client) {
  const notYou = (userId) =>
    userId != null && client.userId != null && userId !== client.userId
      ? new SitebuilderError("forbidden", "user_id must be the signed-in user's: the server acts as the token's user")
      : null;
  const refuse = (error) => Promise.resolve({ data: null, error });
  const follow = (projectId, accept, callback) => {
    const stop = client.project(projectId).subscribe((change) => {
      if (accept(change)) callback(payloadOf(change));
    });
    return { unsubscribe: stop };
  };
  return {
    session: {
      /** `{project_id, current_step, metadata}`; `user_id` must be the caller's and a
       * `session_token` is replaced by the server's (in the returned row). */
      create: ({ user_id, project_id, session_token: _clientToken, current_step, metadata } = {}) =>
        notYou(user_id) ? refuse(notYou(user_id)) : outcome(client.session.start(project_id, current_step, metadata)),
      getByToken: (token) => outcome(client.rpc("session.get_by_token", { session_token: token })),
      updateProgress: (id, updates) => outcome(client.session.progress(id, updates)),
      complete: (id) => outcome(client.session.complete(id)),
      cancel: (id) => outcome(client.session.cancel(id)),
      /** Changes of one of the caller's sessions: `callback({eventType, new, old})`. */
      subscribe: (id, callback) => {
        let stop = null;
        let stopped = false;
        client.session.list({ limit: 200 }).then((sessions) => {
          const session = sessions.find((row) => row.id === id);
          if (!session || stopped) return;
          stop = follow(session.project_id, (c) => c.entity === "session" && (c.new ?? c.old).id === id, callback);
        }, () => {});
        return {
          unsubscribe: () => {
            stopped = true;
            stop?.unsubscribe();
          },
        };
      },
    },
    project: {
      create: (project) => outcome(client.rpc("project.create", project)),
      getWithRelations: (id) => outcome(client.rpc("project.get_with_relations", { project_id: id })),
      /** Plain columns are replaced; `data` and `settings` are merged into (RFC 7396:
       * a null removes a key), so two editors' changes to different keys both stay. */
      update: (id, updates = {}, userId) => {
        if (notYou(userId)) return refuse(notYou(userId));
        const set = {};
        const patch = {};
        for (const [key, value] of Object.entries(updates)) {
          if (PROJECT_COLUMNS.includes(key)) set[key] = value;
          else if (PROJECT_JSON.includes(key)) patch[key] = value;
          else return refuse(new SitebuilderError("invalid_params", `project.update cannot change ${key}`));
        }
        return outcome(client.rpc("project.update", { project_id: id, set, patch }));
      },
      delete: (id) => outcome(client.rpc("project.delete", { project_id: id })),
    },
    version: {
      /** The newest versions first (up to 100); `type` is the table: 'projects',
       * 'sitemaps', 'wireframes', 'style_guides'. */
      getByEntity: (type, id) =>
        outcome(
          client
            .rpc("version.get_by_entity", { entity_type: type, entity_id: id, limit: 100 })
            .then((page) => page.versions),
        ),
      /** The new version the revert made is the caller's (`userId` must be theirs). */
      revert: (versionId, userId) =>
        notYou(userId) ? refuse(notYou(userId)) : outcome(client.rpc("version.revert", { version_id: versionId })),
    },
    collaboration: {
      /** Project, sitemap, wireframe and style guide changes of the project. */
      subscribeToProject: (projectId, callback) => follow(projectId, (c) => CONTENT.has(c.entity), callback),
      /** Builder session changes of the project (`payload.new.user_id`, `.status`). */
      subscribeToSessions: (projectId, callback) => follow(projectId, (c) => c.entity === "session", callback),
      /** The caller's project list: `callback(projects, event)` (subscribeToProjects). */
      subscribeToProjects: (callback) => ({ unsubscribe: client.subscribeToProjects(callback) }),
    },
    analytics: {
      getProjectStats: (projectId) => outcome(client.rpc("analytics.get_project_stats", { project_id: projectId })),
      /** The caller's own sessions over `days` (`userId` must be the caller's). */
      getUserAnalytics: (userId, days = 30) =>
        notYou(userId) ? refuse(notYou(userId)) : outcome(client.rpc("analytics.get_user_analytics", { days })),
    },
    batch: {
      createProjectStructure: (structure) => outcome(client.rpc("batch.create_project_structure", structure)),
    },
    trash: {
      list: (projectId, { limit, before } = {}) =>
        outcome(client.rpc("trash.list", { project_id: projectId, ...(limit ? { limit } : {}), ...(before ? { before } : {}) })),
      restore: (entryId) => outcome(client.rpc("trash.restore", { id: entryId })),
    },
  };
}
