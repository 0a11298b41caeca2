"""The admin page at fleet scale in a real browser (Debian chromium via Playwright), over a
synthetic pool with a stand-in for the hub's OAuth.

tests/admin_harness.py serves the page's real handlers, template, script and stylesheet, and the
hub's real stylesheet, in a subprocess; the pool is tests/synthetic_pool.py's (2,000 workers,
1,000 apps, 1,000 decisions, 500 servers; 40 held). Stand-ins, named in the test's name: the hub
auth (every request is an admin; the real OAuth is tests/test_admin_browser.py's, on a real hub)
and the reconciler (never cycles: the synthetic pool is its last snapshot, plan and decisions).

With UPDATE_DOCS_SCREENSHOT=1 two 1280x900 screenshots also go to docs/: admin-page-fleet.png,
the top of the page as it loads (the problems strip, status, counts, chart; the workers table
starts below, about 1,100 px down), and admin-page-fleet-held.png, after a click on the strip's
held badge (the filters and the workers table showing only the held workers, in red).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from .admin_harness import HUB_STATIC, harness_process
from .test_admin_browser import browser  # noqa: F401  (the fixture: headless Debian chromium)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HUB_CSS = HUB_STATIC / "css" / "style.min.css"
SIZES = {"workers": 2000, "apps": 1000, "decisions": 1000, "servers": 500}
WAIT_MS = 15_000
#: Bootstrap's danger colour as the hub's theme sets it (--bs-danger #d7191c, not Bootstrap's #dc3545)
DANGER = "rgb({})".format(re.search(r"--bs-danger-rgb: *([0-9, ]+)", HUB_CSS.read_text()).group(1).strip())
KEYS = "[...document.querySelectorAll('#workers tr')].map(tr => tr.dataset.key)"
STATES = "[...document.querySelectorAll('#workers tr td:nth-child(3)')].map(td => td.textContent)"
RANGE = "document.querySelector('#workers-section .scaler-range').textContent"


def get_json(url: str, *, data: bytes | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
        return json.load(response)


async def api(harness: dict, query: str) -> dict:
    return await asyncio.to_thread(get_json, harness["url"] + "api/pool?" + query)


async def shows(page, keys: list[str]) -> None:
    """Wait until the workers table shows exactly `keys`, in that order."""
    wanted = json.dumps(json.dumps(keys, separators=(",", ":")))
    await page.wait_for_function(f"JSON.stringify({KEYS}) === {wanted}", timeout=WAIT_MS)


@pytest.mark.timeout(120)
async def test_fleet_page_problems_sort_filter_page_refresh_synthetic_pool_standin_auth(
        browser, tmp_path):  # noqa: F811
    if isinstance(browser, str):
        pytest.fail(browser, pytrace=False)
    async with harness_process(ROOT, log=tmp_path / "harness.log", **SIZES) as harness:
        workers = (await asyncio.to_thread(get_json, harness["base"] + "/harness/workers"))["workers"]
        held = sorted(w["handle"] for w in workers if w["state"] == "held")
        assert len(held) == 40, len(held)
        # reduced motion: the hub's Bootstrap scrolls smoothly otherwise, and a scroll position
        # read during the animation would not be the one the admin ends up at
        context = await browser.new_context(viewport={"width": 1280, "height": 900}, reduced_motion="reduce")
        try:
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            await page.goto(harness["url"], wait_until="load")
            # the hub's own stylesheet is the one applied
            assert await page.evaluate(
                "[...document.styleSheets].some(s => s.href"
                " && s.href.endsWith('/hub/static/css/style.min.css')"
                " && s.cssRules.length > 100)")
            await screenshot_for_docs(page, tmp_path, "admin-page-fleet.png")

            # the summary strip names the held workers; its badge shows only them
            badge = page.locator("#problem-list .scaler-problem[data-kind='held']")
            assert "40" in await badge.inner_text(), await badge.inner_text()
            await badge.click()
            shown = [w["key"] for w in (await api(harness, "limit=50&state=held"))["workers"]]
            assert sorted(shown) == held
            await shows(page, shown)
            assert set(await page.evaluate(STATES)) == {"held"}
            assert await page.evaluate(RANGE) == "rows 1-40 of 2,000 (matched 40)"
            # red against the hub's stylesheet: Bootstrap's danger colour, not black on white
            colour = await page.evaluate(
                "getComputedStyle(document.querySelector('#workers tr td:nth-child(3) .badge'))"
                ".backgroundColor")
            assert colour == DANGER, colour
            await screenshot_for_docs(page, tmp_path, "admin-page-fleet-held.png")
            await page.click("#filters button[type='reset']")
            default = (await api(harness, "limit=50"))["workers"]
            await shows(page, [w["key"] for w in default])

            # sort by a header: Age, ascending, as api/pool sorts it
            await page.click("#workers-section th[data-col='age'] button")
            by_age = [w["key"] for w in (await api(harness, "limit=50&workers.sort=age"))["workers"]]
            await shows(page, by_age)
            assert by_age != [w["key"] for w in default]
            assert await page.get_attribute("#workers-section th[data-col='age']", "aria-sort") == "ascending"

            # next page: rows 51-100
            await page.click("#workers-section [data-page='1']")
            second = await api(harness, "limit=50&workers.sort=age&workers.offset=50")
            await shows(page, [w["key"] for w in second["workers"]])
            assert await page.evaluate(RANGE) == "rows 51-100 of 2,000"

            # filter by user: the user of a held worker's app
            user = (await api(harness, "state=held&limit=1"))["workers"][0]["users"][0]
            await page.fill("#filter-user", user)
            await page.press("#filter-user", "Enter")
            mine = await api(harness, f"limit=50&workers.sort=age&user={user}")
            await shows(page, [w["key"] for w in mine["workers"]])
            assert all(user in w["users"] for w in mine["workers"]) and mine["workers"]
            await page.wait_for_function(
                f"[...document.querySelectorAll('#apps tr td:nth-child(3)')].every(td => td.textContent === "
                f"{json.dumps(user)}) && document.querySelectorAll('#apps tr').length"
                f" === {len(mine['apps'])}",
                timeout=WAIT_MS)

            await refresh_keeps_the_view(page, harness)
            assert not problems, problems
        finally:
            await context.close()


async def refresh_keeps_the_view(page, harness: dict) -> None:
    """Sorted by age, filtered to busy and idle workers, on page 2, scrolled: a refresh with
    changed rows (one of them on this page) keeps all that and updates that row in place."""
    await page.click("#filters button[type='reset']")
    for state in ("busy", "idle"):
        await page.check(f"#filters input[name='state'][value='{state}']")
    query = "limit=50&workers.sort=age&workers.offset=50&state=busy,idle"
    await page.click("#workers-section [data-page='1']")
    expected = await api(harness, query)
    await shows(page, [w["key"] for w in expected["workers"]])
    target = expected["workers"][10]["key"]
    await page.evaluate("window.scrollTo(0, document.getElementById('workers').getBoundingClientRect().top"
                        " + window.scrollY - 200)")
    scrolled = await page.evaluate("window.scrollY")
    assert scrolled > 0
    cores = await page.evaluate(f"document.querySelector('#workers tr[data-key={json.dumps(target)}]')"
                                ".cells[4].textContent")
    await page.evaluate(f"""() => {{
        window.__rows = new Map([...document.querySelectorAll('#workers tr')]
                                .map(tr => [tr.dataset.key, tr]));
        window.__rows.get({json.dumps(target)}).__marked = true;
        window.__refreshes = window.scalerPool.refreshes;
    }}""")
    changed = (await asyncio.to_thread(
        get_json, harness["base"] + f"/harness/step?fraction=0.01&handles={target}", data=b""))["changed"]
    assert target in changed and len(changed) == 20
    await page.wait_for_function(
        f"document.querySelector('#workers tr[data-key={json.dumps(target)}]').cells[4].textContent"
        f" !== {json.dumps(cores)}", timeout=WAIT_MS)
    after = await api(harness, query)
    await shows(page, [w["key"] for w in after["workers"]])
    assert await page.evaluate(
        f"document.querySelector('#workers tr[data-key={json.dumps(target)}]').__marked")
    # every row still on the page is the node it was before
    assert await page.evaluate(
        "[...document.querySelectorAll('#workers tr')].every(tr => !window.__rows.has(tr.dataset.key)"
        " || window.__rows.get(tr.dataset.key) === tr)")
    assert await page.evaluate("window.scalerPool.refreshes > window.__refreshes")
    assert await page.evaluate("window.scrollY") == scrolled
    assert await page.get_attribute("#workers-section th[data-col='age']", "aria-sort") == "ascending"
    assert await page.evaluate(
        "[...document.querySelectorAll('#filters input[name=state]:checked')].map(b => b.value).sort().join()"
    ) == "busy,idle"
    assert (await page.evaluate(RANGE)).startswith("rows 51-100 of 2,000 (matched ")


async def screenshot_for_docs(page, tmp_path: Path, name: str) -> None:
    """What the window shows (1280x900), kept in docs/ with UPDATE_DOCS_SCREENSHOT=1."""
    shot = tmp_path / name
    await page.screenshot(path=str(shot))
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / name)
