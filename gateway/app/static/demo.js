// The demo editor: the demo project's sitemap pages, wireframe layout and style guide
// colors as forms, live for everyone signed in, through sitebuilder-client.js only.
//
// Every edit is an rpc with `expected_version`: the version the form showed when its
// editor started changing it. If someone saved the row since, the gateway refuses it
// (`conflict`) and the form says so, offering their version or overwriting it.

import { connect } from "/sitebuilder-client.js";

const STEPS = ["sitemap-generation", "wireframe-design", "style-guide", "content", "publish"];
const SAVE_DELAY_MS = 150; // page titles save this long after the last keystroke
const $ = (selector) => document.querySelector(selector);

let client = null;
let project = null;
let me = null;
let usersById = new Map();
const lastActor = new Map(); // row id -> user id of the last change to it
const dirtyPages = new Set(); // sitemap pages edited here and not saved yet

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function nameOf(userId) {
  return usersById.get(userId)?.name ?? "someone";
}

function only(map) {
  return [...map.values()].sort((a, b) => (a.created_at < b.created_at ? -1 : 1))[0];
}

// Sign-in

async function start() {
  const demo = await (await fetch("/demo/users")).json();
  usersById = new Map(demo.users.map((u) => [u.id, u]));
  const wanted = new URLSearchParams(location.search).get("user");
  const chosen = demo.users.find((u) => u.key === wanted);
  if (chosen) {
    signIn(chosen, demo.project_id);
    return;
  }
  for (const user of demo.users) {
    const button = el("button", { onclick: () => signIn(user, demo.project_id) }, `Sign in as ${user.name}`);
    button.style.background = user.color;
    $("#users").append(button);
  }
}

function signIn(user, projectId) {
  me = user;
  history.replaceState(null, "", `?user=${user.key}`);
  $("#signin").hidden = true;
  $("#editor").hidden = false;
  $("#me").textContent = `signed in as ${user.name}`;
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  client = connect(wsUrl, {
    getToken: async () => {
      const reply = await fetch(`/demo/token?user=${user.key}`);
      if (!reply.ok) throw new Error(`token: HTTP ${reply.status}`);
      return (await reply.json()).token;
    },
    onStatus: (status, info) => showConnection(status, info),
  });
  project = client.project(projectId);
  project.subscribe(onChange, {
    onSnapshot: (_snapshot, state) => renderAll(state),
    onReset: (_snapshot, state) => {
      showConnection("reset", {});
      setTimeout(() => showConnection(client.status, {}), 3000);
      renderAll(state, { force: true });
    },
    onPresence: renderPresence,
    onUnsubscribed: (frame) => showConnection("closed", { message: frame.message }),
    onError: (error) => showConnection("closed", { message: error.message }),
  });
  client.presence.update({ editing: null });
}

function showConnection(status, info) {
  const badge = $("#connection");
  badge.dataset.state = status;
  badge.textContent = status === "reconnecting" && info.attempt > 1 ? `reconnecting (try ${info.attempt})` : status;
}

// Changes

function onChange(change, state) {
  if (change.new) lastActor.set(change.new.id, change.actor);
  if (change.entity === "project") $("#project-name").textContent = state.project.name;
  else if (change.entity === "sitemap") forms.sitemap.update(only(state.sitemaps));
  else if (change.entity === "wireframe") forms.wireframe.update(only(state.wireframes));
  else if (change.entity === "style-guide") forms.styleGuide.update(only(state.style_guides));
  else if (change.entity === "session") renderSession(state);
  else if (change.entity === "version") historyPanel.changed(change.new ?? change.old);
}

function renderAll(state, { force = false } = {}) {
  $("#project-name").textContent = state.project?.name ?? "";
  forms.sitemap.update(only(state.sitemaps), { force });
  forms.wireframe.update(only(state.wireframes), { force });
  forms.styleGuide.update(only(state.style_guides), { force });
  renderSession(state);
  historyPanel.fillChoices(state);
}

// Forms: one row each, saved with expected_version

class EntityForm {
  constructor({ name, method, entityType, statusId, versionId, fill, read, rebase, saved }) {
    Object.assign(this, { name, method, entityType, fill, read, rebase, saved });
    this.status = $(statusId);
    this.versionLabel = $(versionId);
    this.row = null;
    this.base = null; // the version the inputs were loaded from
    this.baseRow = null; // and that row
    this.dirty = false;
    this.edits = 0;
    this.saving = null;
    this.timer = null;
  }

  /** A newer row arrived: show it, unless the user is editing (then a save conflicts). */
  update(row, { force = false } = {}) {
    if (!row) return;
    const previous = this.row;
    const remote = previous !== null && row.version !== previous.version;
    this.row = row;
    this.versionLabel.textContent = `v${row.version}`;
    if (this.dirty && !force && remote && this.rebase?.(previous, row)) {
      // Someone changed other parts than those being edited here: no conflict.
      this.setBase(row);
      this.fill(row, remote);
      return;
    }
    if (this.dirty && !force) {
      if (remote && row.version !== this.base && lastActor.get(row.id) !== me.id) {
        this.say(`${nameOf(lastActor.get(row.id))} saved v${row.version} while you edit`);
      }
      return;
    }
    this.setBase(row);
    this.dirty = false;
    this.fill(row, remote);
  }

  edited({ autosave = false } = {}) {
    this.dirty = true;
    this.edits += 1;
    if (!autosave) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.save(), SAVE_DELAY_MS);
  }

  async save() {
    if (this.saving) {
      this.again = true; // one more save once this one is answered
      return;
    }
    const edits = this.edits;
    this.saving = client.rpc(this.method, {
      id: this.row.id,
      ...this.read(this.row),
      expected_version: this.base,
      message: `Edited by ${me.name}`,
    });
    try {
      const row = await this.saving;
      this.setBase(row);
      this.say(`saved v${row.version}`);
      if (this.edits === edits) {
        this.dirty = false;
        this.saved?.();
        this.update(row);
      }
    } catch (error) {
      const current = error.details?.current;
      if (error.code === "conflict" && this.rebase?.(this.baseRow, current)) {
        // Saved at the same moment as someone else, who changed other parts: the
        // patch touches only ours, so apply it on top of theirs.
        this.setBase(current);
        this.again = true;
      } else if (error.code === "conflict") {
        this.conflict(current);
        this.again = false;
      } else {
        this.say(`not saved: ${error.message}`);
        this.again = false;
      }
    } finally {
      this.saving = null;
    }
    if (this.again) {
      this.again = false;
      await this.save();
    }
  }

  conflict(current) {
    const who = nameOf(lastActor.get(current.id));
    this.status.replaceChildren(
      el(
        "div",
        { class: "conflict" },
        `Conflict: ${who} saved v${current.version} of this ${this.name} while you were editing; your change was not saved. `,
        el("button", { type: "button", onclick: () => this.takeTheirs(current) }, "Load theirs"),
        el("button", { type: "button", onclick: () => this.overwrite(current) }, "Overwrite with mine"),
      ),
    );
  }

  takeTheirs(current) {
    this.dirty = false;
    this.saved?.();
    this.say("");
    this.update(current.version >= (this.row?.version ?? 0) ? current : this.row, { force: true });
  }

  overwrite(current) {
    this.setBase(current);
    this.say("");
    this.save();
  }

  setBase(row) {
    this.base = row.version;
    this.baseRow = row;
  }

  say(text) {
    this.status.replaceChildren(text);
  }
}

function slug(title) {
  return title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "page";
}

function fillPages(row, remote) {
  const pages = row.pages ?? {};
  const box = $("#pages");
  const known = new Set();
  for (const [key, page] of Object.entries(pages)) {
    known.add(key);
    let line = box.querySelector(`[data-page="${key}"]`);
    if (!line) {
      line = el(
        "div",
        { class: "page", "data-page": key },
        el("input", { class: "page-title", "aria-label": `${key} title`, oninput: () => pageEdited(key), onfocus: () => editing(`page ${key}`) }),
        el("input", { class: "page-path", "aria-label": `${key} path`, oninput: () => pageEdited(key), onfocus: () => editing(`page ${key}`) }),
      );
      box.append(line);
    }
    if (dirtyPages.has(key)) continue; // being edited here: saving it decides
    const [title, path] = line.querySelectorAll("input");
    if (title.value !== (page.title ?? "") && document.activeElement !== title) title.value = page.title ?? "";
    if (path.value !== (page.path ?? "") && document.activeElement !== path) path.value = page.path ?? "";
    if (remote) {
      line.classList.remove("remote");
      void line.offsetWidth;
      line.classList.add("remote");
    }
  }
  for (const line of box.querySelectorAll(".page")) {
    if (!known.has(line.dataset.page)) line.remove();
  }
}

function pageEdited(key) {
  dirtyPages.add(key);
  forms.sitemap.edited({ autosave: true });
}

/** Whether a sitemap change left alone every page edited here. */
function otherPagesChanged(previous, row) {
  const before = previous.pages ?? {};
  const after = row.pages ?? {};
  return [...dirtyPages].every((key) => JSON.stringify(before[key]) === JSON.stringify(after[key]));
}

function readPages(row) {
  const pages = {};
  for (const line of $("#pages").querySelectorAll(".page")) {
    const [title, path] = line.querySelectorAll("input");
    const before = row.pages?.[line.dataset.page] ?? {};
    if (before.title !== title.value || before.path !== path.value) {
      pages[line.dataset.page] = { title: title.value, path: path.value };
    }
  }
  return { patch: { pages } };
}

function fillWireframe(row) {
  const layout = row.layout ?? {};
  $("#wireframe-panel h2").firstChild.textContent = `Wireframe: ${row.title} `;
  $("#hero-title").value = layout.hero?.title ?? "";
  $("#hero-subtitle").value = layout.hero?.subtitle ?? "";
  $("#columns").value = layout.columns ?? 1;
  $("#footer-text").value = layout.footer?.text ?? "";
}

function readWireframe() {
  return {
    patch: {
      layout: {
        hero: { title: $("#hero-title").value, subtitle: $("#hero-subtitle").value },
        columns: Number($("#columns").value),
        footer: { text: $("#footer-text").value },
      },
    },
  };
}

function fillColors(row) {
  const box = $("#colors");
  box.replaceChildren();
  for (const [name, value] of Object.entries(row.colors ?? {})) {
    const text = el("input", { class: "color-value", "data-color": name, value, "aria-label": `${name} color` });
    const swatch = el("input", { type: "color", value });
    swatch.addEventListener("input", () => {
      text.value = swatch.value;
      forms.styleGuide.edited();
    });
    text.addEventListener("input", () => {
      swatch.value = text.value;
      forms.styleGuide.edited();
    });
    text.addEventListener("focus", () => editing("colors"));
    box.append(el("label", { class: "color" }, name, swatch, text));
  }
}

function readColors() {
  const colors = {};
  for (const input of document.querySelectorAll(".color-value")) colors[input.dataset.color] = input.value;
  return { patch: { colors } };
}

const forms = {
  sitemap: new EntityForm({
    name: "sitemap",
    method: "sitemap.update",
    entityType: "sitemaps",
    statusId: "#sitemap-status",
    versionId: "#sitemap-version",
    fill: fillPages,
    read: readPages,
    rebase: otherPagesChanged,
    saved: () => dirtyPages.clear(),
  }),
  wireframe: new EntityForm({
    name: "wireframe",
    method: "wireframe.update",
    entityType: "wireframes",
    statusId: "#wireframe-status",
    versionId: "#wireframe-version",
    fill: fillWireframe,
    read: readWireframe,
  }),
  styleGuide: new EntityForm({
    name: "style guide",
    method: "style_guide.update",
    entityType: "style_guides",
    statusId: "#style-guide-status",
    versionId: "#style-guide-version",
    fill: fillColors,
    read: readColors,
  }),
};

$("#wireframe-form").addEventListener("input", () => forms.wireframe.edited());
$("#wireframe-form").addEventListener("focusin", () => editing("wireframe"));
$("#wireframe-form").addEventListener("submit", (event) => {
  event.preventDefault();
  forms.wireframe.save();
});
$("#colors-form").addEventListener("submit", (event) => {
  event.preventDefault();
  forms.styleGuide.save();
});
$("#add-page").addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = $("#new-page-title").value.trim();
  const form = forms.sitemap;
  try {
    const row = await client.rpc("sitemap.update", {
      id: form.row.id,
      patch: { pages: { [slug(title)]: { title, path: `/${slug(title)}` } } },
      expected_version: form.row.version,
      message: `${me.name} added ${title}`,
    });
    $("#new-page-title").value = "";
    form.update(row);
  } catch (error) {
    form.say(`not added: ${error.message}`);
  }
});

// Presence

function editing(what) {
  client?.presence.update({ editing: what });
}

function renderPresence(presence) {
  const bar = $("#presence");
  bar.replaceChildren();
  for (const [userId, { metas }] of Object.entries(presence)) {
    const user = usersById.get(userId) ?? { name: userId.slice(0, 8), color: "#888", key: userId };
    const latest = metas[metas.length - 1];
    const session = metas.find((m) => m.session)?.session;
    const doing = session ? `step: ${session.current_step}` : latest.meta.editing ? `editing ${latest.meta.editing}` : "viewing";
    const dot = el("span", { class: "dot" }, user.name[0]);
    dot.style.background = user.color;
    bar.append(el("span", { class: "avatar", "data-user": user.key, title: `${user.name}: ${doing}` }, dot, el("span", {}, user.name, " ", el("span", { class: "step" }, doing))));
  }
}

// Builder session

function renderSession(state) {
  const sessions = [...state.sessions.values()].filter((s) => s.status === "active" || s.status === "paused");
  sessions.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  const session = sessions.find((s) => s.user_id === me.id) ?? sessions[0];
  const mine = session && session.user_id === me.id;
  $("#session-start").hidden = Boolean(mine);
  $("#session-next").hidden = !mine;
  $("#session-complete").hidden = !mine;
  if (!session) {
    $("#session-label").textContent = "No builder session running.";
    $("#session-bar").style.width = "0";
    return;
  }
  const percent = Math.round(((session.progress?.completed ?? 0) / (session.progress?.total || 100)) * 100);
  $("#session-label").textContent = `${nameOf(session.user_id)}'s session: ${session.current_step} (${percent}%, ${session.status})`;
  $("#session-bar").style.width = `${percent}%`;
  $("#session-panel").dataset.session = session.id;
}

$("#session-start").addEventListener("click", async () => {
  const session = await client.session.start(project.id, STEPS[0], { demo: true });
  await client.session.progress(session.id, { progress: { completed: 20, total: 100 } });
});
$("#session-next").addEventListener("click", () => {
  const session = currentSession();
  const step = Math.min(STEPS.indexOf(session.current_step) + 1, STEPS.length - 1);
  client.session.progress(session.id, {
    current_step: STEPS[step],
    progress: { completed: Math.round(((step + 1) / STEPS.length) * 100), total: 100 },
  });
});
$("#session-complete").addEventListener("click", () => client.session.complete(currentSession().id));

function currentSession() {
  return [...project.state.sessions.values()].find((s) => s.user_id === me.id && s.status !== "completed" && s.status !== "cancelled");
}

// Version history

const historyPanel = {
  choice: null,
  timer: null,

  fillChoices(state) {
    const select = $("#history-entity");
    const options = [
      ["sitemaps", only(state.sitemaps)],
      ["wireframes", only(state.wireframes)],
      ["style_guides", only(state.style_guides)],
    ].filter(([, row]) => row);
    select.replaceChildren(...options.map(([type, row]) => el("option", { value: `${type}:${row.id}` }, `${type.replace("_", " ")}: ${row.title}`)));
    if (this.choice) select.value = this.choice;
    this.load();
  },

  changed(version) {
    if (`${version.entity_type}:${version.entity_id}` !== $("#history-entity").value) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 100);
  },

  async load() {
    const value = $("#history-entity").value;
    if (!value) return;
    this.choice = value;
    const [entityType, entityId] = value.split(":");
    const { versions } = await client.rpc("version.get_by_entity", { entity_type: entityType, entity_id: entityId, limit: 15 });
    $("#history").replaceChildren(
      ...versions.map((v, index) =>
        el(
          "li",
          { "data-version": v.version_number },
          `v${v.version_number} · ${nameOf(v.user_id)} · ${new Date(v.created_at).toLocaleTimeString()} · ${v.message ?? ""}`,
          index === 0 ? "" : el("button", { type: "button", onclick: () => this.revert(v) }, "Revert"),
        ),
      ),
    );
  },

  async revert(version) {
    await client.rpc("version.revert", { version_id: version.id, message: `${me.name} reverted to v${version.version_number}` });
  },
};
$("#history-entity").addEventListener("change", () => historyPanel.load());

start();
