"""The admin page at fleet scale in headless Chromium: load, bytes, and the cost of a refresh.

Two harnesses side by side (tests/admin_harness.py: the page's real handlers over a synthetic
pool, with a stand-in for the hub's OAuth and a stand-in reconciler that never cycles), one
serving the page as it is at `--before` (a git ref; by default the newest commit of main, along
its first parents, before the page had a script of its own, static/pool.js; exported with
`git archive` into a temporary directory, with this checkout's harness copied into its tests/),
one serving this checkout ("after"). Measurements alternate between the two in every
repetition, so both see the same load on the machine.

Per repetition and page: a fresh browser context loads the page, traced (navigation timing
`loadEventEnd - startTime`, and the main thread's time from the trace); then `--refreshes`
times: the pool changes 1 % of its workers and apps and adds 1 % new decisions
(`POST /harness/step`), the page's own timer refreshes once, and a Chromium trace from after the
previous refresh settled to after this one settled gives its main-thread time
(benchmarks/trace_time.py: script, style and layout, tasks, the longest task). A trace holding
anything but exactly one api/pool request is measured again. HTML bytes: the page's first
response; api/pool bytes: the last query the page's script made, and `api/pool` without
parameters (the whole pool).

    python benchmarks/admin_page.py [--before REF] [--reps 5] [--refreshes 3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections import Counter
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from playwright.async_api import async_playwright  # noqa: E402

from results import machine, write_section  # noqa: E402
from trace_time import main_thread  # noqa: E402
from tests.admin_harness import harness_process  # noqa: E402
from tests.synthetic_pool import SyntheticPool  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SIZES = {"workers": 2000, "apps": 1000, "decisions": 1000, "servers": 500}
HARNESS_FILES = ("tests/admin_harness.py", "tests/synthetic_pool.py")
WAIT_MS = 30_000
TITLE = "Admin page at fleet scale (synthetic pool, stand-in hub auth)"

#: what the trace records: DevTools' timeline (tasks, script, style, layout) and V8's execution
CATEGORIES = ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8.execute", "v8", "toplevel"]
#: after an api/pool answer arrived: its render, and a chart fetch it starts, are over by then
SETTLE_S = 1.5
#: the harness's poll interval: the page refreshes this long after its last render, so that a
#: trace (SETTLE_S after an answer) never reaches into the next refresh
POLL_S = 3.0


def fetch_bytes(url: str, *, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as response:
        return response.read()


class PoolRequests:
    """The page's api/pool requests, seen from outside the page (no script added to it)."""

    def __init__(self, page):
        self.started: list[str] = []
        self.finished = 0
        self.changed = asyncio.Event()
        page.on("request", self._started)
        page.on("requestfinished", self._finished)

    def _started(self, request) -> None:
        if "/api/pool" in request.url:
            self.started.append(request.url)

    def _finished(self, request) -> None:
        if "/api/pool" in request.url:
            self.finished += 1
            self.changed.set()

    async def next_answer(self) -> None:
        seen = self.finished
        while self.finished == seen:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), WAIT_MS / 1000)


async def load_page(browser, url: str) -> tuple:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests = PoolRequests(page)
    await browser.start_tracing(page=page, categories=CATEGORIES)
    try:
        await page.goto(url, wait_until="load", timeout=WAIT_MS)
    finally:
        trace = await browser.stop_tracing()
    load_ms = await page.evaluate(
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return n.loadEventEnd - n.startTime; })()")
    return context, page, requests, {"load_ms": load_ms, **main_thread(trace)}, errors


async def one_refresh(browser, page, requests: PoolRequests, base: str) -> dict | None:
    """Main-thread time of one refresh with 1 % of the rows changed, from a trace started after
    the previous refresh settled; None when the trace held other than exactly one api/pool
    request (measured again by the caller)."""
    await requests.next_answer()
    await asyncio.sleep(SETTLE_S)  # the previous refresh is over; the next is a poll interval away
    count = len(requests.started)
    await browser.start_tracing(page=page, categories=CATEGORIES)
    try:
        await asyncio.to_thread(fetch_bytes, base + "/harness/step?fraction=0.01", data=b"")
        await requests.next_answer()
        await asyncio.sleep(SETTLE_S)
    finally:
        trace = await browser.stop_tracing()
    if len(requests.started) != count + 1:
        return None
    return main_thread(trace)


async def measure(browser, harness: dict, *, refreshes: int) -> dict:
    context, page, requests, load, errors = await load_page(browser, harness["url"])
    try:
        done: list[dict] = []
        for _ in range(refreshes * 3):
            if len(done) == refreshes:
                break
            result = await one_refresh(browser, page, requests, harness["base"])
            if result is not None:
                done.append(result)
        query = requests.started[-1]
        return {"load": load, "refreshes": done,
                "query": urljoin(harness["url"], query), "errors": errors}
    finally:
        await context.close()


#: what the default "before" lacks: the page's own script, added with the fleet-scale page
SCRIPT = "jhub_spark_scaler/web/static/pool.js"
BEFORE_DEFAULT = "main, before static/pool.js"


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)


def before_script() -> str:
    """The newest commit of main, along its first parents, without the page's script."""
    for commit in git("rev-list", "--first-parent", "-n", "500", "main").stdout.decode().split():
        if git("cat-file", "-e", f"{commit}:{SCRIPT}").returncode != 0:
            return commit
    raise SystemExit(f"no commit of main without {SCRIPT} among its last 500: pass --before")


def export(ref: str, into: Path) -> Path:
    """`ref`'s tree, with this checkout's harness in its tests/."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name in HARNESS_FILES:
        shutil.copyfile(ROOT / name, into / name)
    return into


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} / {max(values):.0f}" if values else "-"


async def run(args: argparse.Namespace) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="admin-page-bench-") as tmp:
        (Path(tmp) / "before").mkdir()
        ref = before_script() if args.before == BEFORE_DEFAULT else args.before
        before = export(ref, Path(tmp) / "before")
        roots = {f"before ({args.before})": before, "after (this tree)": ROOT}
        async with contextlib.AsyncExitStack() as stack:
            harnesses = {}
            for name, root in roots.items():
                log = Path(tmp) / f"{name.split()[0]}.log"
                harnesses[name] = await stack.enter_async_context(harness_process(
                    root, log=log, poll_interval=POLL_S, **SIZES))
            playwright = await stack.enter_async_context(async_playwright())
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True)
            stack.push_async_callback(browser.close)
            runs: dict[str, list[dict]] = {name: [] for name in harnesses}
            for rep in range(args.reps):
                order = list(harnesses) if rep % 2 == 0 else list(reversed(harnesses))
                for name in order:
                    runs[name].append(await measure(browser, harnesses[name], refreshes=args.refreshes))
                    last = runs[name][-1]
                    print(name, rep, json.dumps(last["load"]), json.dumps(last["refreshes"]), file=sys.stderr)
            for name, harness in harnesses.items():
                html = await asyncio.to_thread(fetch_bytes, harness["url"])
                query = runs[name][-1]["query"]
                results[name] = {
                    "runs": runs[name], "html": len(html), "query": query,
                    "query_bytes": len(await asyncio.to_thread(fetch_bytes, query)),
                    "full_bytes": len(await asyncio.to_thread(fetch_bytes, harness["url"] + "api/pool")),
                }
    return results


COLUMNS = (
    ("load event ms", "load", "load_ms"), ("load: main-thread tasks ms", "load", "tasks"),
    ("load: script ms", "load", "script"), ("load: longest task ms", "load", "longest_task"),
    ("refresh: script ms", "refresh", "script"), ("refresh: garbage collection ms", "refresh", "gc"),
    ("refresh: style + layout ms", "refresh", "style_layout"),
    ("refresh: main-thread tasks ms", "refresh", "tasks"),
    ("refresh: longest task ms", "refresh", "longest_task"),
)


def table(results: dict) -> list[str]:
    lines = ["| | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for label, when, key in COLUMNS:
        cells = []
        for r in results.values():
            values = ([run["load"][key] for run in r["runs"]] if when == "load"
                      else [x[key] for run in r["runs"] for x in run["refreshes"]])
            cells.append(stats(values))
        lines.append(f"| {label} (median / max) | " + " | ".join(cells) + " |")
    for label, key in (("HTML of the page KB", "html"),
                       ("api/pool KB, the page's refresh query", "query_bytes"),
                       ("api/pool KB, whole pool (no parameters)", "full_bytes")):
        lines.append(f"| {label} | " + " | ".join(f"{r[key] / 1000:.0f}" for r in results.values()) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE_DEFAULT,
                        help="git ref of the page to compare with; default: main before the page's script")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--refreshes", type=int, default=3, help="refreshes measured per page load")
    parser.add_argument("--write", action="store_true", help=f"write the '{TITLE}' section of RESULTS.md")
    args = parser.parse_args()
    load0 = os.getloadavg()[0]
    results = asyncio.run(run(args))
    load1 = os.getloadavg()[0]
    lines = table(results)
    print("\n".join(lines))
    print(json.dumps({k: {"query": v["query"], "errors": [e for r in v["runs"] for e in r["errors"]]}
                      for k, v in results.items()}, indent=1))
    if args.write:
        write_section(TITLE, body(args, lines, results, load0, load1))


def body(args, lines, results, load0, load1) -> list[str]:
    before = "" if args.before == BEFORE_DEFAULT else f" --before {args.before}"
    refreshes = min(sum(len(r["refreshes"]) for r in v["runs"]) for v in results.values())
    queries = "; ".join(f"{k}: `{v['query'].split('/services/spark-scaler/')[-1]}`"
                        for k, v in results.items())
    return [
        f"`python benchmarks/admin_page.py{before}"
        f" --reps {args.reps}"
        f" --refreshes {args.refreshes} --write` on {machine()}, {time.strftime('%H:%M UTC', time.gmtime())};"
        f" load average {load0:.2f} at the start, {load1:.2f} at the end (the 2 CPUs were shared with other"
        " work). Debian chromium, headless, driven by Playwright.",
        "",
        f"Synthetic pool (tests/synthetic_pool.py, seed 1): {mix()}, served by the page's real handlers,"
        " template and script (tests/admin_harness.py) with two stand-ins: a stand-in for the hub's OAuth"
        " (every request is an admin) and a stand-in reconciler that never cycles; the hub's real"
        " stylesheet. Both pages in the same run, alternating"
        " in every repetition. Before: the page as main served it before it had a script of its own"
        " (the default `--before`: every row of every table, all four"
        " rebuilt on every refresh); after: this tree, the page with its new server side (paged, sorted,"
        " filtered api/pool) and script (keyed rows patched in place).",
        "",
        f"Median / max of {args.reps} page loads and of at least {refreshes} refreshes per page, each with"
        " 1 % of the workers and apps changed and 1 % new decisions, fetched by the page's own timer."
        " Times come from a Chromium trace (DevTools' timeline events on the renderer's main thread,"
        " benchmarks/trace_time.py): script = the union of script evaluation, function calls, microtasks,"
        " timers, animation frames, DOM events, compilation and GC (layout forced by a script counts"
        " there); style + layout outside scripts; main-thread tasks = all of the thread's tasks; longest task"
        " = the longest single task (a long task over 50 ms blocks input). A refresh's trace runs from 1.5 s"
        " after the previous answer to 1.5 s after this one (the page's render and its chart fetch included;"
        " traces holding other than exactly one api/pool request are measured again); a load's from the"
        " navigation to the load event. Tracing slows the page a little; both pages bear it. CDP's"
        " `Performance.getMetrics` ScriptDuration was not used: it leaves out promise reactions, where a"
        " fetch-then-render runs (a 200 ms loop after a fetch read 0 ms). Bytes uncompressed."
        f" The page's refresh query: {queries}.",
        "",
        *lines,
        "",
        *verdict(results),
    ]


def mix() -> str:
    """The benchmark's pool in words: its sizes and its workers by state."""
    pool = SyntheticPool(**SIZES)
    states = Counter(w.state.value for w in pool.snapshot.workers)
    by_state = ", ".join(f"{n:,} {state}" for state, n in states.most_common())
    return (f"{SIZES['workers']:,} workers ({by_state}), {SIZES['apps']:,} apps, {SIZES['decisions']:,}"
            f" decisions, {SIZES['servers']:,} servers")


def verdict(results: dict) -> list[str]:
    """The issue's targets against the last column (the page as it is in this tree), by the max."""
    r = list(results.values())[-1]
    loads = [run["load"] for run in r["runs"]]
    refreshes = [x for run in r["runs"] for x in run["refreshes"]]
    checks = [
        ("load event < 1,000 ms", max(x["load_ms"] for x in loads), 1000),
        ("refresh script < 50 ms", max(x["script"] for x in refreshes), 50),
        ("no long task > 100 ms in a refresh", max(x["longest_task"] for x in refreshes), 100),
        ("HTML < 150 KB", r["html"] / 1000, 150),
    ]
    said = [f"{name}: max {value:.0f}, {'met' if value < limit else 'NOT met'}"
            for name, value, limit in checks]
    longest_load = max(x["longest_task"] for x in loads)
    return [
        "Targets, for the page in this tree: " + "; ".join(said) + ". The longest task while loading was"
        f" {longest_load:.0f} ms at most (parsing the first pages of five tables and the first layout); the"
        " targets' long-task limit is for refreshes.",
    ]


if __name__ == "__main__":
    main()
