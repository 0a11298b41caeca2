"""The admin page at fleet scale in headless Chromium: load, bytes, and the cost of a refresh.

Two harnesses side by side (tests/admin_harness.py: the page's real handlers over a synthetic
pool, with a stand-in for the hub's OAuth and a stand-in reconciler that never cycles), one
serving the page as it is at `--before` (a git ref, exported with `git archive` into a temporary
directory, with this checkout's harness copied into its tests/), one serving this checkout
("after"). Measurements alternate between the two in every repetition, so both see the same
load on the machine.

Per repetition and page: a fresh browser context loads the page (load event = navigation
timing `loadEventEnd - startTime`); then `--refreshes` times: the pool changes 1 % of its
workers and apps and adds 1 % new decisions (`POST /harness/step`), the page's own timer
refreshes once, and the script time of that refresh is the Chrome DevTools Protocol metric
`ScriptDuration` (Performance.getMetrics), read after the previous refresh settled and again
once this one has (its api/pool body parsed, then two animation frames and 200 ms, which covers
a chart fetch the refresh makes); a window holding anything but exactly one api/pool fetch is
measured again. Long tasks come from a `PerformanceObserver` of type `longtask` installed
before the page's own script. HTML bytes: the page's first response; api/pool bytes: the last
query the page's script made, and `api/pool` without parameters (the whole pool).

    python benchmarks/admin_page.py [--before main] [--reps 5] [--refreshes 3] [--write]
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
from tests.admin_harness import harness_process  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SIZES = {"workers": 2000, "apps": 1000, "decisions": 1000, "servers": 500}
HARNESS_FILES = ("tests/admin_harness.py", "tests/synthetic_pool.py")
WAIT_MS = 30_000
TITLE = "Admin page at fleet scale (synthetic pool, stand-in hub auth)"

#: before the page's own script: long tasks, and a counter of api/pool bodies read (bumped
#: in a task after the body's promise resolved, so after the page's render in that promise chain)
PROBE = """
window.__bench = {longtasks: [], poolBodies: 0, poolUrls: []};
new PerformanceObserver(list => list.getEntries().forEach(
  e => window.__bench.longtasks.push([e.startTime, e.duration]))).observe({type: 'longtask', buffered: true});
(function () {
  const isPool = r => r && r.url && r.url.indexOf('api/pool') !== -1;
  for (const name of ['json', 'text']) {
    const original = Response.prototype[name];
    Response.prototype[name] = function () {
      const body = original.apply(this, arguments);
      if (!isPool(this)) return body;
      window.__bench.poolUrls.push(this.url);
      return body.then(v => { setTimeout(() => { window.__bench.poolBodies++; }, 0); return v; });
    };
  }
})();
"""
SETTLE = ("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame("
          "() => setTimeout(r, 200))))")


def fetch_bytes(url: str, *, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as response:
        return response.read()


async def metric(cdp, name: str) -> float:
    metrics = (await cdp.send("Performance.getMetrics"))["metrics"]
    return next(m["value"] for m in metrics if m["name"] == name)


async def load_page(browser, url: str) -> tuple:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_init_script(PROBE)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    cdp = await context.new_cdp_session(page)
    await cdp.send("Performance.enable")
    await page.goto(url, wait_until="load", timeout=WAIT_MS)
    load_ms = await page.evaluate(
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return n.loadEventEnd - n.startTime; })()")
    load_task_ms = await metric(cdp, "TaskDuration") * 1000
    return context, page, cdp, (load_ms, load_task_ms), errors


async def one_refresh(page, cdp, base: str) -> dict | None:
    """Script time and longest long task of one refresh with 1 % of the rows changed; None when
    the window held other than exactly one api/pool fetch (measured again by the caller)."""
    bodies = await page.evaluate("window.__bench.poolBodies")
    await page.wait_for_function(f"window.__bench.poolBodies > {bodies}", timeout=WAIT_MS)
    await page.evaluate(SETTLE)  # the previous refresh is over
    before = await page.evaluate("window.__bench.poolBodies")
    started = await page.evaluate("performance.now()")
    script0, task0 = await metric(cdp, "ScriptDuration"), await metric(cdp, "TaskDuration")
    await asyncio.to_thread(fetch_bytes, base + "/harness/step?fraction=0.01", data=b"")
    await page.wait_for_function(f"window.__bench.poolBodies > {before}", timeout=WAIT_MS)
    await page.evaluate(SETTLE)
    script1, task1 = await metric(cdp, "ScriptDuration"), await metric(cdp, "TaskDuration")
    after = await page.evaluate("window.__bench.poolBodies")
    if after != before + 1:
        return None
    longest = await page.evaluate(
        f"Math.max(0, ...window.__bench.longtasks.filter(t => t[0] >= {started}).map(t => t[1]))")
    return {"script_ms": (script1 - script0) * 1000, "task_ms": (task1 - task0) * 1000, "longest_ms": longest}


async def measure(browser, harness: dict, *, refreshes: int) -> dict:
    context, page, cdp, (load_ms, load_task_ms), errors = await load_page(browser, harness["url"])
    try:
        load_longest = await page.evaluate("Math.max(0, ...window.__bench.longtasks.map(t => t[1]))")
        done: list[dict] = []
        for _ in range(refreshes * 3):
            if len(done) == refreshes:
                break
            result = await one_refresh(page, cdp, harness["base"])
            if result is not None:
                done.append(result)
        query = (await page.evaluate("window.__bench.poolUrls"))[-1]
        return {"load_ms": load_ms, "load_task_ms": load_task_ms, "load_longest_ms": load_longest,
                "refreshes": done,
                "query": urljoin(harness["url"], query), "errors": errors}
    finally:
        await context.close()


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
        before = export(args.before, Path(tmp) / "before")
        roots = {f"before ({args.before})": before, "after (this tree)": ROOT}
        async with contextlib.AsyncExitStack() as stack:
            harnesses = {}
            for name, root in roots.items():
                log = Path(tmp) / f"{name.split()[0]}.log"
                harnesses[name] = await stack.enter_async_context(harness_process(root, log=log, **SIZES))
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
                    print(name, rep, round(last["load_ms"]), json.dumps(last["refreshes"]), file=sys.stderr)
            for name, harness in harnesses.items():
                html = await asyncio.to_thread(fetch_bytes, harness["url"])
                query = runs[name][-1]["query"]
                results[name] = {
                    "runs": runs[name], "html": len(html), "query": query,
                    "query_bytes": len(await asyncio.to_thread(fetch_bytes, query)),
                    "full_bytes": len(await asyncio.to_thread(fetch_bytes, harness["url"] + "api/pool")),
                }
    return results


def table(results: dict) -> list[str]:
    lines = ["| page | load event ms | main-thread tasks to load ms | longest task at load ms | HTML KB "
             "| api/pool KB, page's query | api/pool KB, whole pool | refresh script ms | refresh task ms "
             "| longest task in refresh ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        refreshes = [x for run in r["runs"] for x in run["refreshes"]]
        lines.append(
            f"| {name} | {stats([x['load_ms'] for x in r['runs']])} "
            f"| {stats([x['load_task_ms'] for x in r['runs']])} "
            f"| {stats([x['load_longest_ms'] for x in r['runs']])} | {r['html'] / 1000:.0f} "
            f"| {r['query_bytes'] / 1000:.0f} | {r['full_bytes'] / 1000:.0f} "
            f"| {stats([x['script_ms'] for x in refreshes])} | {stats([x['task_ms'] for x in refreshes])} "
            f"| {stats([x['longest_ms'] for x in refreshes])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git ref of the page to compare with")
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
    refreshes = {k: sum(len(r["refreshes"]) for r in v["runs"]) for k, v in results.items()}
    queries = "; ".join(f"{k}: `{v['query'].split('/services/spark-scaler/')[-1]}`"
                        for k, v in results.items())
    return [
        f"`python benchmarks/admin_page.py --before {args.before} --reps {args.reps}"
        f" --refreshes {args.refreshes} --write` on {machine()}, {time.strftime('%H:%M UTC', time.gmtime())};"
        f" load average {load0:.2f} at the"
        f" start, {load1:.2f} at the end (2 CPUs shared with other work). Debian chromium, headless, via"
        " Playwright.",
        "",
        "Synthetic pool (tests/synthetic_pool.py, seed 1): 2,000 workers (1,184 busy, 592 idle, 140 draining,"
        " 40 held, 20 starting, 10 lost, 10 unschedulable, 4 drained), 1,000 apps, 1,000 decisions, 500"
        " servers, served by the page's real handlers with a stand-in for the hub's OAuth (every request is"
        " an admin) and a stand-in reconciler that never cycles (tests/admin_harness.py); the hub's real"
        " stylesheet. Both pages were measured in the same run, alternating.",
        "",
        f"Median / max of {args.reps} page loads and of {refreshes} refreshes (each with 1 % of the workers"
        " and"
        " apps changed and 1 % new decisions). Refresh script ms: Chrome DevTools Protocol `ScriptDuration`"
        " between the previous refresh settled and this one settled (exactly one api/pool fetch in the"
        " window);"
        " task ms: `TaskDuration` over the same window (script, style, layout, paint); long tasks: a"
        " `PerformanceObserver('longtask')` installed before the page's script. Bytes uncompressed."
        f" The page's query: {queries}.",
        "",
        *lines,
        "",
        "Targets: load < 1000 ms, refresh script < 50 ms, no long task > 100 ms, HTML < 150 KB.",
    ]


if __name__ == "__main__":
    main()
