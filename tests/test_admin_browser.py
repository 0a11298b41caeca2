"""The admin page in a real browser: Debian's chromium driven by Playwright, on the
same real hub as test_admin_page.py (MockHub, the real scaler service, the session's
real Spark master). Logs in through the hub's login form, follows the OAuth redirects,
and watches the page's own script refresh the tables without a reload: a sort chosen by
clicking a header, the page's scroll position and the rows themselves survive a refresh.

Needs /usr/bin/chromium (scripts/install-browser.sh) and playwright (the `test` extra).
With UPDATE_DOCS_SCREENSHOT=1 the 1280x900 screenshot also goes to docs/admin-page.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import warnings
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .real_hub import alive_workers, start_server, worker_records
from .test_admin_page import hub  # noqa: F401  (the fixture: hub + scaler + roles)
from .waiting import WaitTimeout, until, until_sync

try:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright
except ImportError:  # reported by the `browser` fixture, as a failure
    async_playwright = None

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = ROOT / "docs" / "admin-page.png"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WAIT_MS = 60_000  # bounded waits in the browser: a worker's JVM start is the slow part
ROWS = "document.querySelectorAll('#workers tr').length"


def missing(what: str) -> str:
    return f"{what}: run scripts/install-browser.sh and pip install -e '.[test]'"


@pytest.fixture
async def browser():
    """A headless chromium, closed (and Playwright's driver stopped) whatever happens; or,
    when it cannot start, the one-line reason, which the test fails with (never a skip)."""
    if async_playwright is None:
        yield missing("playwright is not installed")
        return
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        yield missing(f"{CHROMIUM} is missing")
        return
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        except PlaywrightError as e:
            yield missing(f"chromium did not start ({str(e).splitlines()[0]})")
            return
        try:
            yield browser
        finally:
            await browser.close()


def _processes_under(path: Path) -> list[int]:
    """Processes whose command line names `path` (the test's own tmp dir)."""
    needle, found = str(path).encode(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture
def reaper(tmp_path):
    """Torn down after `hub` (requested before it): kills any process still naming this
    test's tmp dir, e.g. a Spark worker the scaler spawned just before it was stopped
    (the hub fixture only kills workers that still have a state file)."""
    yield
    strays = _processes_under(tmp_path)
    for pid in strays:
        try:
            os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with contextlib.suppress(WaitTimeout):  # warned about below either way
        until_sync(lambda: not _processes_under(tmp_path), timeout=10, interval=0.1,
                   what="the killed processes to go")
    if strays:
        warnings.warn(f"killed {len(strays)} process(es) left after the hub and scaler stopped: {strays}")


def master_json(spark_master) -> dict:
    with urllib.request.urlopen(f"{spark_master.master_ui_url}/json/", timeout=10) as response:
        return json.load(response)


async def our_alive_workers(spark_master, state: Path) -> list[dict]:
    """Our workers (hosts the scaler's records name) ALIVE in the master's /json/."""
    hosts = {r["host"] for r in worker_records(state).values()}
    master = await asyncio.to_thread(master_json, spark_master)
    return [w for w in master["workers"] if w["host"] in hosts and w["state"] == "ALIVE"]


async def table_matches_master(page, spark_master, state: Path, n: int) -> None:
    """Wait for n of our workers ALIVE at the master and exactly n rows on the page, one
    per worker the scaler started (its handles)."""
    await until(lambda: _count_is(spark_master, state, n), timeout=90, what=f"{n} of our workers ALIVE")
    await page.wait_for_function(f"{ROWS} === {n}", timeout=WAIT_MS)
    shown = await page.eval_on_selector_all("#workers tr", "rows => rows.map(r => r.dataset.key)")
    assert sorted(shown) == sorted(worker_records(state)), (shown, list(worker_records(state)))
    assert len(await our_alive_workers(spark_master, state)) == n == len(shown)


ROW_BY_KEY = "k => [...document.querySelectorAll('#workers tr')].find(tr => tr.dataset.key === k)"


async def sorted_by_a_click_and_kept_over_a_refresh(page) -> None:
    """Workers sorted by handle, descending (a click, then Enter on the focused header
    button); a refresh (observed_at changes) keeps that order, the rows' elements and the
    page's scroll position."""
    header = "#workers-section th[data-col='handle']"
    keys = "[...document.querySelectorAll('#workers tr')].map(r => r.dataset.key)"
    await page.click(f"{header} button")
    await page.wait_for_function(
        f"document.querySelector(\"{header}\").getAttribute('aria-sort') === 'ascending'", timeout=WAIT_MS)
    await page.focus(f"{header} button")
    await page.keyboard.press("Enter")
    descending = f"JSON.stringify({keys}) === JSON.stringify({keys}.sort().reverse())"
    await page.wait_for_function(
        f"document.querySelector(\"{header}\").getAttribute('aria-sort') === 'descending' && {descending}",
        timeout=WAIT_MS)
    # a mark on each row element: gone if a refresh replaced the element
    marked = await page.evaluate(f"{keys}.map(k => (({ROW_BY_KEY})(k).scalerMark = 1, k))")
    await page.evaluate("window.scrollTo({top: 240, behavior: 'instant'})")  # the hub scrolls smoothly
    scrolled = await page.evaluate("window.scrollY")
    assert scrolled > 200, f"the page is too short to scroll: scrollY {scrolled}"
    observed = await page.inner_text("#observed")
    refreshes = await page.evaluate("window.scalerPool.refreshes")
    await page.wait_for_function(
        f"document.getElementById('observed').textContent !== {observed!r}"
        f" && window.scalerPool.refreshes > {refreshes}", timeout=WAIT_MS)
    assert await page.get_attribute(header, "aria-sort") == "descending"
    assert await page.evaluate(descending), await page.evaluate(keys)
    kept = await page.evaluate(
        f"marked => marked.map({ROW_BY_KEY}).filter(Boolean).every(tr => tr.scalerMark === 1)", marked)
    assert kept, "a refresh replaced rows it should have updated in place"
    after = await page.evaluate("window.scrollY")
    assert abs(after - scrolled) <= 3, f"a refresh moved the page: scrollY {scrolled} -> {after}"


async def _count_is(spark_master, state, n):
    return len(await our_alive_workers(spark_master, state)) == n


# reaper before hub: its teardown runs after the hub's
async def test_the_page_in_a_browser_updates_live(browser, reaper, hub, spark_master, tmp_path):  # noqa: F811
    if isinstance(browser, str):
        pytest.fail(browser, pytrace=False)
    app, state, url = hub
    hub_url = url.split("services/")[0] + "hub/"

    await start_server(app, "alice")  # pre-warms a real worker
    await until(lambda: alive_workers(spark_master, state), timeout=90, what="alice's pre-warm worker")

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    loads: list[str] = []
    page.on("load", lambda: loads.append(page.url))

    # anonymous: the service sends the browser to the hub's OAuth, the hub to its login form
    await page.goto(url)
    assert urlsplit(page.url).path == urlsplit(hub_url).path + "login", page.url
    await page.fill("#username_input", "admin")
    await page.fill("#password_input", "admin")  # MockPAMAuthenticator: password = username
    async with page.expect_navigation(url=url, timeout=WAIT_MS):
        await page.click("#login_submit")  # login, authorize, oauth_callback, the page
    assert page.url == url
    assert await page.title() == "Spark scaler - JupyterHub"
    await page.wait_for_selector("#pool")
    assert (await page.inner_text("#login_widget")).split()[0] == "admin"
    # the hub's own stylesheet loaded and applied (Bootstrap's navbar background)
    assert await page.evaluate(
        "[...document.styleSheets].some(s => s.href && s.href.endsWith('/hub/static/css/style.min.css')"
        " && s.cssRules.length > 100)")

    await table_matches_master(page, spark_master, state, 1)
    assert await page.inner_text("#status") == "healthy"

    # a marker the page's script cannot set: gone if the page were reloaded
    await page.evaluate("window.__beforeChange = 'still here'")
    loads_before = len(loads)

    # a second user's server: the scaler pre-warms one more worker, the page shows it by itself
    await start_server(app, "bob")
    await table_matches_master(page, spark_master, state, 2)
    await page.wait_for_function(
        "[...document.querySelectorAll('#servers tr td:first-child')].map(td => td.textContent).sort()"
        ".join() === 'alice,bob'", timeout=WAIT_MS)

    # the page's own form: an idle override, answered and rendered by its script
    await page.fill("#idle_workers", "1")
    await page.click("#idle-form button.btn-primary")
    await page.wait_for_function(
        "document.querySelector(\"#target [data-key='idle_workers']\").textContent"
        " === '1 (override by admin; configured 0)'", timeout=WAIT_MS)
    assert await page.is_hidden("#action-error")
    await page.wait_for_function(
        "[...document.querySelectorAll('#decisions tr td:nth-child(3)')]"
        ".some(td => td.textContent === 'idle-target')",
        timeout=WAIT_MS)

    assert page.url == url, "no navigation"
    assert len(loads) == loads_before, f"the page was loaded again: {loads[loads_before:]}"
    assert await page.evaluate("window.__beforeChange") == "still here", "the page was reloaded"
    assert not problems, problems

    await sorted_by_a_click_and_kept_over_a_refresh(page)
    # the hub's table-cell colours do not cover the state badges
    background = await page.evaluate(
        "getComputedStyle(document.querySelector('#workers tr .badge')).backgroundColor")
    assert background not in ("rgb(0, 0, 0)", "rgba(0, 0, 0, 0)", "transparent"), background
    # the header row sticks while its table scrolls (inside .table-responsive, bounded in height)
    assert await page.evaluate(
        "getComputedStyle(document.querySelector('#workers-section thead th')).position") == "sticky"
    # everything the page loads comes from the hub or the service: no CDN
    origins = await page.evaluate(
        "[...document.querySelectorAll('script[src], link[href]')].map(e => new URL(e.src || e.href).origin)")
    assert set(origins) == {f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"}, origins
    assert not problems, problems

    # for the picture (and the refresh once more): every worker's state caught up with the master
    await page.wait_for_function(
        "[...document.querySelectorAll('#workers tr td:nth-child(3)')]"
        ".every(td => td.textContent === 'idle')",
        timeout=WAIT_MS)
    shot = tmp_path / "admin-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # a phone: the body does not scroll sideways (tables scroll inside .table-responsive)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    await page.screenshot(path=str(tmp_path / "admin-page-phone.png"), full_page=True)
    width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1] + 1, f"horizontal overflow at 390 px: scrollWidth {width[0]} > {width[1]}"
    assert page.url == url and await page.evaluate("window.__beforeChange") == "still here"
    await context.close()
