// The demo editor: the demo project's sitemap pages, wireframe layout and style guide
// colors as forms, live for everyone signed in, through sitebuilder-client.js only,
// with a preview of the home page as saved, where everyone's selection shows (their
// presence meta's `field`), and the version history and trash of the project.
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
let visitor = false; // signed out, with the anon key: reads the public project only
const ANONYMOUS = "00000000-0000-0000-0000-000000000000"; // presence's key for visitors
let usersById = new Map();
const lastActor = new Map(); // row id -> user id of the last change to it
let presenceNow = {}; // the project's presence, as last received
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
  if (chosen || wanted === "visitor") {
    signIn(chosen ?? VISITOR, demo.project_id);
    return;
  }
  for (const user of demo.users) {
    const button = el("button", { onclick: () => signIn(user, demo.project_id) }, `Sign in as ${user.name}`);
    button.style.background = user.color;
    $("#users").append(button);
  }
  const look = el("button", { onclick: () => signIn(VISITOR, demo.project_id) }, "Look as a signed-out visitor");
  look.style.background = VISITOR.color;
  $("#users").append(look);
}

const VISITOR = { key: "visitor", name: "a signed-out visitor", color: "#868e96", id: ANONYMOUS };

/** A demo user's token, or for the visitor the public anon key (a fresh one each time). */
async function tokenFor(user) {
  const reply = await fetch(user === VISITOR ? "/demo/users" : `/demo/token?user=${user.key}`);
  if (!reply.ok) throw new Error(`token: HTTP ${reply.status}`);
  const body = await reply.json();
  return user === VISITOR ? body.anon_key : body.token;
}

function signIn(user, projectId) {
  me = user;
  visitor = user === VISITOR;
  history.replaceState(null, "", `?user=${user.key}`);
  $("#signin").hidden = true;
  $("#editor").hidden = false;
  $("#me").textContent = visitor ? "not signed in: read-only" : `signed in as ${user.name}`;
  document.body.classList.toggle("visitor", visitor);
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  client = connect(wsUrl, {
    getToken: () => tokenFor(user),
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
    onPresence: (presence) => {
      presenceNow = presence;
      renderPresence(presence);
      renderSelections();
    },
    onUnsubscribed: (frame) => showConnection("closed", { message: frame.message }),
    onError: (error) => showConnection("closed", { message: error.message }),
  });
  if (visitor) {
    readOnly();
    $("#history").replaceChildren(el("li", { class: "hint" }, "Version history and the trash are for the project's members."));
    return;
  }
  client.presence.update({ editing: null, field: null });
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
  readOnly();
  if (CONTENT.has(change.entity)) {
    renderPreview(state);
    if (change.op !== "update") {
      // Deleted or back from the trash: the history's choices and the trash change.
      historyPanel.fillChoices(state);
      trashPanel.soon();
    }
  }
}

const CONTENT = new Set(["sitemap", "wireframe", "style-guide"]);

function renderAll(state, { force = false } = {}) {
  $("#project-name").textContent = state.project?.name ?? "";
  forms.sitemap.update(only(state.sitemaps), { force });
  forms.wireframe.update(only(state.wireframes), { force });
  forms.styleGuide.update(only(state.style_guides), { force });
  renderSession(state);
  renderPreview(state);
  historyPanel.fillChoices(state);
  trashPanel.soon();
  readOnly();
}

/** A visitor's page: every control off, including those a change just drew. */
function readOnly() {
  if (!visitor) return;
  for (const control of $("#editor").querySelectorAll("input, button, select")) control.disabled = true;
}

// Forms: one row each, saved with expected_version

class EntityForm {
  constructor({ name, method, entityType, formId, statusId, versionId, fill, read, rebase, saved }) {
    Object.assign(this, { name, method, entityType, fill, read, rebase, saved });
    this.form = $(formId);
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
    if (!row) {
      this.gone();
      return;
    }
    if (this.form.classList.contains("gone")) this.back();
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

  /** The row was deleted: nothing to edit until it is restored from the trash. */
  gone() {
    if (!this.row) return;
    this.row = null;
    this.dirty = false;
    this.saved?.();
    this.form.classList.add("gone");
    for (const control of this.form.querySelectorAll("input, button")) control.disabled = true;
    this.versionLabel.textContent = "deleted";
    this.say(`This ${this.name} was deleted: restore it from the trash.`);
  }

  back() {
    this.form.classList.remove("gone");
    for (const control of this.form.querySelectorAll("input, button")) control.disabled = visitor;
    this.say("");
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
        el("input", { class: "page-title", "aria-label": `${key} title`, oninput: () => pageEdited(key), onfocus: () => editing(`page ${key}`, `page:${key}`) }),
        el("input", { class: "page-path", "aria-label": `${key} path`, oninput: () => pageEdited(key), onfocus: () => editing(`page ${key}`, `page:${key}`) }),
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
    text.addEventListener("focus", () => editing("colors", "colors"));
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
    formId: "#pages-panel",
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
    formId: "#wireframe-form",
    statusId: "#wireframe-status",
    versionId: "#wireframe-version",
    fill: fillWireframe,
    read: readWireframe,
  }),
  styleGuide: new EntityForm({
    name: "style guide",
    method: "style_guide.update",
    entityType: "style_guides",
    formId: "#colors-form",
    statusId: "#style-guide-status",
    versionId: "#style-guide-version",
    fill: fillColors,
    read: readColors,
  }),
};

$("#wireframe-form").addEventListener("input", () => forms.wireframe.edited());
$("#wireframe-form").addEventListener("focusin", (event) => editing("wireframe", event.target.name || null));
$("#wireframe-delete").addEventListener("click", async () => {
  try {
    await client.rpc("wireframe.delete", { id: forms.wireframe.row.id });
  } catch (error) {
    forms.wireframe.say(`not deleted: ${error.message}`);
  }
});
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

/** Tell the others what this editor is on: `what` for the header, `field` for the
 * preview's outlines. */
function editing(what, field = null) {
  if (!visitor) client?.presence.update({ editing: what, field });
}

function renderPresence(presence) {
  const bar = $("#presence");
  bar.replaceChildren();
  for (const [userId, { metas }] of Object.entries(presence)) {
    if (userId === ANONYMOUS) {
      const count = `${metas.length} visitor${metas.length > 1 ? "s" : ""}`;
      const dot = el("span", { class: "dot" }, "?");
      dot.style.background = VISITOR.color;
      bar.append(el("span", { class: "avatar", "data-user": "visitors", title: `${count}, not signed in, reading` }, dot, el("span", {}, count, " ", el("span", { class: "step" }, "viewing"))));
      continue;
    }
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

  fillChoices(state) {
    const select = $("#history-entity");
    const options = [
      ["sitemaps", only(state.sitemaps)],
      ["wireframes", only(state.wireframes)],
      ["style_guides", only(state.style_guides)],
    ].filter(([, row]) => row);
    select.replaceChildren(...options.map(([type, row]) => el("option", { value: `${type}:${row.id}` }, `${type.replace("_", " ")}: ${row.title}`)));
    if (options.some(([type, row]) => `${type}:${row.id}` === this.choice)) select.value = this.choice;
    this.load();
  },

  versions: [],

  /** A version committed now: listed from the change's metadata (its data stays on
   * the server until someone asks to see it). */
  changed(version) {
    if (`${version.entity_type}:${version.entity_id}` !== $("#history-entity").value) return;
    if (this.versions.some((v) => v.id === version.id)) return;
    this.versions = [version, ...this.versions].slice(0, 15);
    this.render();
  },

  async load() {
    const value = $("#history-entity").value;
    if (!value || visitor) return;
    this.choice = value;
    const [entityType, entityId] = value.split(":");
    const { versions } = await client.rpc("version.get_by_entity", { entity_type: entityType, entity_id: entityId, limit: 15 });
    if ($("#history-entity").value !== value) return;
    // Versions that arrived live while the page was read stay on top.
    const top = versions[0]?.version_number ?? 0;
    const newer = this.versions.filter((v) => `${v.entity_type}:${v.entity_id}` === value && v.version_number > top);
    this.versions = [...newer, ...versions.map(({ data, changes, ...metadata }) => metadata)].slice(0, 15);
    this.render();
  },

  render() {
    $("#history").replaceChildren(
      ...this.versions.map((v, index) =>
        el(
          "li",
          { "data-version": v.version_number },
          `v${v.version_number} · ${nameOf(v.user_id)} · ${new Date(v.created_at).toLocaleTimeString()} · ${v.message ?? ""}`,
          el("button", { type: "button", onclick: () => this.show(v) }, "Show"),
          index === 0 ? "" : el("button", { type: "button", onclick: () => this.revert(v) }, "Revert"),
        ),
      ),
    );
  },

  /** What a version changed, fetched on demand with version.get. */
  async show(version) {
    const full = await client.rpc("version.get", { version_id: version.id });
    const what = full.changes && Object.keys(full.changes).length ? full.changes : full.data;
    $("#version-detail").textContent = `v${full.version_number}: ${JSON.stringify(what, null, 2)}`;
  },

  async revert(version) {
    await client.rpc("version.revert", { version_id: version.id, message: `${me.name} reverted to v${version.version_number}` });
  },
};
$("#history-entity").addEventListener("change", () => historyPanel.load());

// The trash: deleted wireframes (with their style guides) and sitemaps, back on a click.

const trashPanel = {
  timer: null,

  soon() {
    if (visitor) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 100);
  },

  async load() {
    const { entries } = await client.rpc("trash.list", { project_id: project.id, limit: 10 });
    $("#trash").replaceChildren(
      ...entries.map((entry) => {
        const more = entry.with_style_guides ? ` (with ${entry.with_style_guides} style guide${entry.with_style_guides > 1 ? "s" : ""})` : "";
        const when = new Date(entry.deleted_at).toLocaleTimeString();
        return el(
          "li",
          { "data-entry": entry.id },
          `${entry.entity_type.replace("_", " ").replace(/s$/, "")} ${entry.title}${more} · deleted by ${entry.deleted_by_name ?? "someone"} · ${when}`,
          el("button", { type: "button", onclick: () => this.restore(entry) }, "Restore"),
        );
      }),
    );
    if (!entries.length) $("#trash").replaceChildren(el("li", { class: "hint" }, "Nothing deleted."));
  },

  async restore(entry) {
    try {
      await client.rpc("trash.restore", { id: entry.id });
    } catch (error) {
      this.soon();
      alertIn("#trash", `not restored: ${error.message}`);
    }
  },
};

function alertIn(selector, text) {
  $(selector).prepend(el("li", { class: "conflict" }, text));
}

// The preview: the home page as saved, from the sitemap's pages, the wireframe's layout
// and the style guide's colors; everyone else's selection outlined in their color.

const FIELD_INPUTS = {
  hero_title: "#hero-title",
  hero_subtitle: "#hero-subtitle",
  columns: "#columns",
  footer_text: "#footer-text",
  colors: ".color-value",
};

function renderPreview(state) {
  const wireframe = only(state.wireframes);
  const box = $("#preview");
  if (!wireframe) {
    box.replaceChildren(el("div", { class: "empty" }, "The home page has no wireframe: restore it from the trash."));
    return;
  }
  const layout = wireframe.layout ?? {};
  const colors = only(state.style_guides)?.colors ?? {};
  const pages = Object.entries(only(state.sitemaps)?.pages ?? {});
  const field = (name, tag, attributes, ...children) => el(tag, { "data-field": name, ...attributes }, ...children);
  const columns = Math.max(1, Math.min(6, Number(layout.columns) || 1));
  const site = field(
    "colors",
    "div",
    { class: "site" },
    el("nav", {}, ...pages.map(([key, page]) => field(`page:${key}`, "span", {}, page.title ?? key))),
    el(
      "div",
      { class: "hero" },
      field("hero_title", "h3", {}, layout.hero?.title ?? ""),
      field("hero_subtitle", "p", {}, layout.hero?.subtitle ?? ""),
    ),
    field("columns", "div", { class: "columns" }, ...Array.from({ length: columns }, () => el("div", { class: "column" }))),
    field("footer_text", "footer", {}, layout.footer?.text ?? ""),
  );
  site.style.background = colors.background ?? "#fff";
  site.style.color = colors.text ?? "#222";
  site.querySelector("nav").style.color = colors.primary ?? "inherit";
  site.querySelector(".hero").style.background = colors.primary ?? "#555";
  site.querySelector(".columns").style.gridTemplateColumns = `repeat(${columns}, 1fr)`;
  for (const column of site.querySelectorAll(".column")) column.style.background = colors.secondary ?? "#999";
  site.querySelector("footer").style.borderTop = `3px solid ${colors.secondary ?? "#999"}`;
  site.addEventListener("click", (event) => select(event.target.closest("[data-field]")?.dataset.field));
  box.replaceChildren(site);
  renderSelections();
}

/** A click on the preview: edit that part (its input takes the focus). */
function select(name) {
  if (!name) return;
  const input = name.startsWith("page:")
    ? $(`[data-page="${name.slice(5)}"] .page-title`)
    : $(FIELD_INPUTS[name] ?? "#hero-title");
  input?.focus();
}

function renderSelections() {
  const preview = $("#preview");
  for (const node of preview.querySelectorAll(".selected")) node.classList.remove("selected");
  for (const node of preview.querySelectorAll(".who")) node.remove();
  for (const [userId, { metas }] of Object.entries(presenceNow)) {
    if (userId === me?.id) continue;
    const name = metas.at(-1)?.meta?.field;
    const target = name && preview.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (!target) continue;
    const user = usersById.get(userId) ?? { name: metas.at(-1).name ?? "someone", color: "#888", key: userId };
    target.classList.add("selected");
    target.style.setProperty("--who", user.color);
    let labels = target.querySelector(":scope > .who");
    if (!labels) {
      labels = el("div", { class: "who" });
      target.append(labels);
    }
    const label = el("span", { "data-user": user.key }, user.name);
    label.style.background = user.color;
    labels.append(label);
  }
}

start();
