"""Cost of one observe + plan cycle, without the network.

Builds a synthetic master /json/ body and backend listing with N workers
(60 % idle, 30 % busy, 10 % retiring, 20 apps), then times what a cycle does
with them: parse the JSON, join with the backend, choose the busy workers to
read and keep their reads (every busy worker read before: the largest cache),
classify, plan. The reads themselves are network time, not measured. Each size
runs in a fresh subprocess so its peak RSS is its own.

    python benchmarks/cycle_cost.py            # all sizes, updates benchmarks/RESULTS.md
    python benchmarks/cycle_cost.py --one 1000 # one size, prints JSON
    python benchmarks/cycle_cost.py --against ../other-checkout   # this tree against another

`--against DIR` measures this tree and the checkout in DIR (its own
benchmarks/cycle_cost.py and package) taking turns, `--rounds` times per size,
and writes their ratio: a change to the cycle's code is no slower when the
ratio is at most 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = (10, 100, 1_000, 10_000)
REPEATS = 21
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from jhub_spark_scaler.model import BackendWorker, Executor, WorkerStatus  # noqa: E402
from jhub_spark_scaler.observe import (  # noqa: E402
    ExecutorRead,
    ObserveSettings,
    build_snapshot,
    busy_workers,
    join,
    next_reads,
    pick_reads,
)
from jhub_spark_scaler.policy import History, PolicySettings, plan  # noqa: E402
from jhub_spark_scaler.reconciler import BUSY_READS_PER_CYCLE  # noqa: E402
from jhub_spark_scaler.spark import parse_master  # noqa: E402
from results import machine, write_section  # noqa: E402

NOW = 1_800_000_000.0


def host(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def synthetic(n: int):
    workers, backend, statuses, reads = [], [], {}, {}
    for i in range(n):
        kind = i % 10
        retiring = kind == 9
        busy = kind in (6, 7, 8)
        workers.append({
            "id": f"worker-20261125141434-{host(i)}-7078", "host": host(i), "port": 7078,
            "webuiaddress": f"http://{host(i)}:8081", "cores": 2, "coresused": 1 if busy else 0,
            "coresfree": 1, "memory": 4096, "memoryused": 512 if busy else 0, "memoryfree": 3584,
            "resources": {}, "resourcesused": {}, "resourcesfree": {},
            "state": "DECOMMISSIONED" if retiring else "ALIVE", "lastheartbeat": 1795616135208,
        })
        backend.append(BackendWorker(
            handle=f"w-{i}", host=host(i), port=7078, created_at=NOW - 600,
            webui_url=f"http://{host(i)}:8081", retiring_since=NOW - 5 if retiring else None,
        ))
        if retiring:
            executors = (Executor("app-1", i, "x"),) if i % 20 == 9 else ()
            statuses[f"w-{i}"] = WorkerStatus(f"worker-{i}", executors)
        if busy:
            reads[f"w-{i}"] = ExecutorRead(NOW - 60 - i % 100, 1, (Executor(f"app-{i % 20}", i, "x"),))
    apps = [{"id": f"app-{a}", "name": f"app {a}", "cores": 3, "user": "u", "state": "RUNNING",
             "starttime": 1795616127734} for a in range(20)]
    body = json.dumps({"url": "spark://m:7077", "workers": workers, "activeapps": apps,
                       "status": "ALIVE"}).encode()
    return body, backend, statuses, reads


def one_cycle(body, backend, statuses, reads, policy, settings, history, clock=time.process_time):
    """One cycle's CPU work; returns the plan, the busy reads kept and the CPU seconds of each phase."""
    t0 = clock()
    doc = json.loads(body)
    t1 = clock()
    master = parse_master(doc)
    t2 = clock()
    joined = join(master.workers, backend)
    t3 = clock()
    busy = busy_workers(joined)
    chosen = pick_reads(busy, reads, BUSY_READS_PER_CYCLE)
    answer = WorkerStatus("worker-x", (Executor("app-0", 0, "x"),))
    reads = next_reads(busy, reads, {handle: answer for handle in chosen}, NOW)
    t4 = clock()
    snapshot = build_snapshot(now=NOW, master=master, joined=joined, worker_statuses=statuses,
                              busy_reads=reads, settings=settings)
    t5 = clock()
    decided = plan(snapshot, policy, history)
    t6 = clock()
    return decided, reads, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)


PHASES = ("json.loads", "parse", "join", "busy reads", "classify", "plan")


def measure(n: int) -> dict:
    body, backend, statuses, reads = synthetic(n)
    # The scenario's settings, spelt out rather than read from the command (tests/settings.py):
    # importing the command would add its libraries to the peak RSS measured here.
    policy = PolicySettings(max_workers=2 * n, min_workers=0, idle_workers=1, max_surge=10,
                            scale_down_delay=60, unschedulable_backoff=120, count_foreign_workers=False,
                            drain_timeout=0)
    settings, history = ObserveSettings(start_timeout=120, node_wait_timeout=1200, held_after=120), History()
    samples = []
    for _ in range(REPEATS):
        decided, reads, phases = one_cycle(body, backend, statuses, reads, policy, settings, history)
        history = decided.history
        samples.append(phases)
    totals = sorted(samples, key=sum)
    median = totals[len(totals) // 2]
    return {
        "workers": n,
        "json_bytes": len(body),
        "median_cpu_ms": round(sum(median) * 1000, 2),
        "phases_ms": {name: round(t * 1000, 2) for name, t in zip(PHASES, median)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def write_results(rows: list[dict]) -> None:
    table = [
        "| workers | master JSON | median CPU per cycle | per worker | "
        + " | ".join(PHASES) + " | peak RSS |",
        "|---:|---:|---:|---:|" + "---:|" * len(PHASES) + "---:|",
    ]
    for r in rows:
        per = r["median_cpu_ms"] * 1000 / r["workers"]
        table.append(
            f"| {r['workers']:,} | {r['json_bytes'] / 1024:,.0f} KiB | {r['median_cpu_ms']} ms "
            f"| {per:.1f} µs | " + " | ".join(f"{r['phases_ms'][p]}" for p in PHASES)
            + f" | {r['peak_rss_mb']} MB |"
        )
    write_section("Cycle cost (observe + plan, no network)", [
        f"`python benchmarks/cycle_cost.py` on {machine()}. Median CPU time of {REPEATS} cycles: "
        "parse the master JSON, join it with the backend listing, choose the "
        f"{BUSY_READS_PER_CYCLE} busy workers to read and keep the reads of all of them (busy "
        "reads; the reads themselves are network time), classify, plan "
        "(phases in ms, of the median cycle). Peak RSS of the whole process, interpreter "
        "included.", "", *table,
    ])


def run_one(script: Path, n: int) -> dict:
    """One size measured by `script` (a checkout's cycle_cost.py) in a fresh process."""
    out = subprocess.run([sys.executable, str(script), "--one", str(n)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def compare(other: Path, rounds: int) -> None:
    """This tree against the checkout `other`, taking turns, the order swapped each round."""
    theirs, ours = other / "benchmarks" / "cycle_cost.py", Path(__file__).resolve()
    table = ["| workers | this tree, median CPU per cycle | the other tree | ratio |",
             "|---:|---:|---:|---:|"]
    for n in SIZES:
        times: dict[Path, list[float]] = {ours: [], theirs: []}
        for r in range(rounds):
            for script in (ours, theirs) if r % 2 == 0 else (theirs, ours):
                times[script].append(run_one(script, n)["median_cpu_ms"])
        mine, other_ms = (sorted(times[s])[len(times[s]) // 2] for s in (ours, theirs))
        table.append(f"| {n:,} | {mine} ms | {other_ms} ms | {mine / other_ms:.2f} |")
        print(table[-1])
    commit = subprocess.run(["git", "-C", str(other), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or str(other)
    write_section("Cycle cost against an earlier tree", [
        f"`python benchmarks/cycle_cost.py --against DIR --rounds {rounds}` on {machine()}, "
        f"DIR a checkout of {commit}: each size measured {rounds} times by each tree's own "
        "benchmark and package, taking turns; the median of the medians (CPU time of one "
        "cycle, as above). A ratio at most 1: this tree's cycle is no slower.", "", *table,
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", type=int, help="measure one size in this process, print JSON")
    parser.add_argument("--against", type=Path, help="a checkout to compare this tree with")
    parser.add_argument("--rounds", type=int, default=6, help="measurements per tree and size (--against)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    if args.against:
        compare(args.against.resolve(), args.rounds)
        return
    rows = []
    for n in SIZES:
        rows.append(run_one(Path(__file__).resolve(), n))
        print(rows[-1])
    write_results(rows)


if __name__ == "__main__":
    main()
