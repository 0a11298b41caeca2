"""How long one soak session's driver takes to its first executor on an idle machine.

    python benchmarks/driver_start.py [--runs 3] [--worker-lead SECONDS ...]
    python benchmarks/driver_start.py --tuned [--runs 4] [--backend local|kubernetes|both] [--long]

The soak's go/no-go probe: its first-executor times are mostly driver and executor
JVM starts, and this machine's speed at them drifts by a factor of two from day to
day, more than a worker's start (benchmarks/worker_start.py) shows. Starts a master
and one worker with LocalBackend (free ports, a temporary state dir), then runs
benchmarks/soaklib/session_driver.py, the soak's driver, with no jobs, one at a
time. With --worker-lead, each run also times a driver against a fresh worker
started SECONDS before it (as pre-warm starts one when a notebook server spawns),
and the ready worker is fresh too, started and given READY_AFTER s past ALIVE: the
difference is what the worker's start, on the same CPUs, costs the driver. Prints a
markdown table and writes it to benchmarks/RESULTS.md; everything it started is
stopped and its temporary directory removed.

With --tuned: notebook-like drivers against one ready worker, taking turns, with Spark's
default JVMs and with the tuned ones of jhub_spark_scaler.jvm_archives (its settings as
configure() hands them to a notebook, PYSPARK_SUBMIT_ARGS; archives built first into
$JVM_ARCHIVES, default .cache/jvm-archives), on the local backend and/or on the Kubernetes backend (the tests'
real kube-apiserver and stand-in kubelet, as the soak's KubeEnv runs them, against the
same master). Each driver times getOrCreate() to its first executor and to the end of a
first 1-task job; with --long also a CPU-bound job on the executor (code-generated SQL,
one task) and a query-planning-heavy driver step, and a third kind, the tuned JVMs plus
C1-only compilation on the executor too, shows what that costs there. Writes the table
to benchmarks/RESULTS.md ("Tuned driver and executor JVMs", with --long its own section).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from jhub_spark_scaler import jvm_archives  # noqa: E402
from jhub_spark_scaler.backends.local import LocalBackend  # noqa: E402
from results import machine, write_section  # noqa: E402
from tests.settings import AS_ROOT  # noqa: E402
from soaklib.environments import WORKER_CORES, KubeEnv  # noqa: E402
from soaklib.run import STRATEGIES  # noqa: E402
from soaklib.users import DRIVER  # noqa: E402
from tests.waiting import until  # noqa: E402
from worker_start import wait_alive  # noqa: E402

READY_AFTER = 5.0  # s a "ready" fresh worker gets past ALIVE before the driver starts


def first_executor_s(master_url: str, tmp: str, run: int) -> float:
    """One driver's seconds from just before getOrCreate() to its first executor."""
    out = os.path.join(tmp, f"driver-{run}.json")
    subprocess.run([sys.executable, DRIVER, "--master", master_url, "--name", f"driver-start-{run}",
                    "--out", out, "--jobs", "0", "--first-executor-timeout", "120"],
                   check=True, capture_output=True, timeout=300)
    with open(out) as f:
        result = json.load(f)
    if "first_executor_s" not in result:
        raise RuntimeError(f"driver {run}: {result.get('first_executor_error', 'no first executor')}")
    return result["first_executor_s"]


async def main(runs: int, leads: list[float]) -> None:
    log = logging.getLogger("driver_start")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    kinds = [None, *leads]  # None: a ready worker; else a fresh one started that many s before the driver
    times: dict[float | None, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="driver-start-") as tmp:
        b = LocalBackend(**AS_ROOT, state_dir=os.path.join(tmp, "workers"), master_port=0,
                         master_webui_port=0, worker_cores=WORKER_CORES, stop_timeout=20, log=log,
                         stop_on_exit=True)
        await b.setup()
        try:
            [w] = await b.start(1)
            await wait_alive(b.master_ui_url, w.host, w.port, time.perf_counter())
            if leads:
                await b.stop(w)  # it writes the class archive that the fresh workers start from
            drivers = 0
            for run in range(runs):
                for kind in kinds[run % len(kinds):] + kinds[:run % len(kinds)]:  # no kind always first
                    if kind is not None:
                        [w] = await b.start(1)
                        await asyncio.sleep(kind)
                    elif leads:
                        [w] = await b.start(1)
                        await wait_alive(b.master_ui_url, w.host, w.port, time.perf_counter())
                        await asyncio.sleep(READY_AFTER)
                    times[kind].append(await asyncio.to_thread(first_executor_s, b.master_url, tmp, drivers))
                    drivers += 1
                    if leads:
                        await b.stop(w)
        finally:
            await b.shutdown()
    table = ["| worker | runs | median s | min s | max s |", "|---|---:|---:|---:|---:|"]
    for kind, values in times.items():
        what = "ready" if kind is None else f"started {kind:g} s before the driver"
        table.append(f"| {what} | {len(values)} | {statistics.median(values):.1f} | {min(values):.1f} "
                     f"| {max(values):.1f} |")
    print("\n".join(table))
    command = f"--runs {runs}" + "".join(f" --worker-lead {lead:g}" for lead in leads)
    write_section("Driver start time", [
        f"`python benchmarks/driver_start.py {command}` on {machine()}. One soak driver "
        "(benchmarks/soaklib/session_driver.py, no jobs) at a time: seconds from just before "
        "getOrCreate() to its first executor, against one ready worker"
        + (", and against a fresh worker (from the class archive) started the given seconds before the "
           "driver, as pre-warm starts one when a notebook server spawns (the ready worker fresh too, "
           f"{READY_AFTER:g} s past ALIVE): what the worker's start on the same CPUs costs the driver. "
           "The kinds take turns." if leads else "."), "", *table,
    ])


TUNED_KINDS = ("defaults", "tuned")
C1_KIND = "tuned + executor C1"  # the tuned ones, and -XX:TieredStopAtLevel=1 and SerialGC on the executor
C1_OPTIONS = {"driver": [], "executor": ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]}
JVM_ARCHIVES = os.environ.get("JVM_ARCHIVES", os.path.join(HERE, "..", ".cache", "jvm-archives"))
CPU_JOB_ROWS = 400_000_000  # one task: about 10-20 s of code-generated SQL with C2 here
PLANNING_ROUNDS = 6


def kind_conf(kind: str) -> dict[str, str]:
    """The Spark settings of a kind of driver, as configure() hands them to a notebook."""
    if kind == "defaults":
        return {}
    conf = jvm_archives.spark_conf(os.path.abspath(JVM_ARCHIVES), java=jvm_archives.default_java(),
                                   spark_home=jvm_archives.default_spark_home())
    if kind == C1_KIND:
        for role in jvm_archives.ROLES:
            name = f"spark.{role}.defaultJavaOptions"
            conf[name] = " ".join([conf[name], *C1_OPTIONS[role]])
    return conf


def as_driver(master_url: str, out: str, long: bool) -> None:
    """The driver of one run (this script started with --as-driver): writes its times to `out`."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from tests.drivers.spark_session import seconds_to_first_executor

    t0 = time.perf_counter()
    spark = (SparkSession.builder.master(master_url).appName("driver-start-tuned")
             .config("spark.cores.max", "1").config("spark.executor.cores", "1")
             .config("spark.executor.memory", "512m").config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1").config("spark.ui.port", "0")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    result = {"session_s": time.perf_counter() - t0,
              "first_executor_s": seconds_to_first_executor(spark, since=t0, timeout=120)}
    spark.range(1, numPartitions=1).count()
    result["first_job_s"] = time.perf_counter() - t0
    if long:
        t = time.perf_counter()
        spark.range(0, CPU_JOB_ROWS, 1, 1).selectExpr("sum(hash(id, id * 7) % 1000) AS s").collect()
        result["cpu_job_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for round_ in range(PLANNING_ROUNDS):  # analysis, optimisation, physical planning, codegen
            wide = spark.range(10).selectExpr(*[f"id * {j + round_} AS c{j}" for j in range(200)])
            agg = wide.groupBy("c1").agg(*[F.sum(f"c{j}") for j in range(2, 80)])
            joined = wide.join(wide.selectExpr("c1", "c2 AS d2"), "c1").where("c3 > 1 AND d2 < 100")
            for df in (agg, joined):
                df._jdf.queryExecution().executedPlan().toString()
        result["planning_s"] = time.perf_counter() - t
    spark.stop()
    with open(out, "w") as f:
        json.dump(result, f)


def tuned_run(master_url: str, tmp: str, run: int, kind: str, long: bool) -> dict:
    """One driver of `kind` in a fresh Python; its times."""
    out = os.path.join(tmp, f"tuned-{run}.json")
    conf = kind_conf(kind)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1",
           jvm_archives.SUBMIT_ARGS: f"{jvm_archives.submit_args(conf)} pyspark-shell"}
    subprocess.run([sys.executable, __file__, "--as-driver", master_url, out, *(["--long"] if long else [])],
                   env=env, check=True, capture_output=True, timeout=900)
    with open(out) as f:
        result = json.load(f)
    if result["first_executor_s"] is None:
        raise RuntimeError(f"driver {run} ({kind}): no executor within 120 s")
    return result


async def ready_worker(backend_name: str, b: LocalBackend, tmp: str, stack: contextlib.AsyncExitStack):
    """One worker of `backend_name` for the master of `b`, ALIVE."""
    if backend_name == "local":
        [w] = await b.start(1)
    else:
        env = KubeEnv(Path(tmp) / "kube")
        await env.start()
        stack.push_async_callback(env.stop)
        master = SimpleNamespace(url=b.master_url, ui=b.master_ui_url)
        kb = await env.backend(master, STRATEGIES[0])
        stack.push_async_callback(kb.shutdown)
        [w] = await kb.start(1)
        stack.push_async_callback(kb.stop, w)
    # a pod's address and port are unknown when it is made: the master's only worker is it
    await until(lambda: any_alive(b.master_ui_url), timeout=300, interval=0.2, what="the worker to be ALIVE")


def any_alive(master_ui_url: str) -> bool:
    with urllib.request.urlopen(f"{master_ui_url}/json/", timeout=5) as r:
        return any(w["state"] == "ALIVE" for w in json.load(r)["workers"])


async def tuned_backend(backend_name: str, runs: int, kinds: list[str],
                        long: bool) -> dict[str, list[dict]]:
    """Drivers of each kind against one ready worker of `backend_name`, taking turns."""
    log = logging.getLogger("driver_start")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="driver-start-tuned-") as tmp:
        b = LocalBackend(**AS_ROOT, state_dir=os.path.join(tmp, "workers"), master_port=0,
                         master_webui_port=0, worker_cores=WORKER_CORES, stop_timeout=20, log=log,
                         stop_on_exit=True)
        await b.setup()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(b.shutdown)
            await ready_worker(backend_name, b, tmp, stack)
            n = 0
            for run in range(runs):
                for kind in kinds[run % len(kinds):] + kinds[:run % len(kinds)]:  # no kind always first
                    results[kind].append(await asyncio.to_thread(tuned_run, b.master_url, tmp, n, kind, long))
                    n += 1
    return results


def tuned_table(all_results: dict[str, dict[str, list[dict]]], long: bool) -> list[str]:
    """Medians (min-max) per backend and kind, and the tuned/defaults ratio of each turn."""
    fields = ["first_executor_s", "first_job_s", *(["cpu_job_s", "planning_s"] if long else [])]
    head = ["backend", "JVMs", "runs", *(f.removesuffix("_s").replace("_", " ") + " s" for f in fields)]
    table = ["| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * len(fields)]
    for backend_name, results in all_results.items():
        for kind, values in results.items():
            cells = []
            for field in fields:
                xs = [v[field] for v in values]
                cells.append(f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})")
            table.append(f"| {backend_name} | {kind} | {len(values)} | " + " | ".join(cells) + " |")
        ratios = [t["first_executor_s"] / d["first_executor_s"]
                  for d, t in zip(results["defaults"], results["tuned"])]
        table.append(f"| {backend_name} | tuned / defaults, turn by turn | {len(ratios)} | "
                     + ", ".join(f"{r:.2f}" for r in ratios) + " |" + " |" * (len(fields) - 1))
    return table


async def tuned_main(runs: int, backends: list[str], long: bool) -> None:
    java, spark_home = jvm_archives.default_java(), jvm_archives.default_spark_home()
    built = await asyncio.to_thread(jvm_archives.build, os.path.abspath(JVM_ARCHIVES), java=java,
                                    spark_home=spark_home)
    print("archives:", *built)
    kinds = [*TUNED_KINDS, *([C1_KIND] if long else [])]
    all_results = {name: await tuned_backend(name, runs, kinds, long) for name in backends}
    table = tuned_table(all_results, long)
    print("\n".join(table))
    command = f"--tuned --runs {runs} --backend {'both' if len(backends) > 1 else backends[0]}" + \
        (" --long" if long else "")
    write_section("Tuned driver and executor JVMs" + (": long jobs, C1 only or not" if long else ""), [
        f"`python benchmarks/driver_start.py {command}` on {machine()}; the kinds take turns and the "
        "ratios are taken turn by turn. Kubernetes: the tests' real kube-apiserver with the stand-in "
        "kubelet (tests/kubelet.py: each worker pod runs as a local process). One "
        "notebook-like driver at a time against one ready worker: seconds "
        "from just before getOrCreate() to its first executor and to the end of a first 1-task "
        "job, median (min-max). \"defaults\": Spark's JVMs; \"tuned\": jhub_spark_scaler.jvm_archives' "
        "settings (class data archives for the driver and the executor, built by its build "
        "command, and C1-only compilation on the driver) as configure() hands them to a notebook"
        + (f"; \"{C1_KIND}\": the same plus -XX:TieredStopAtLevel=1 and SerialGC on the "
           "executor. \"cpu job\": one task of "
           f"code-generated SQL over {CPU_JOB_ROWS:,} rows on the executor; \"planning\": "
           f"{PLANNING_ROUNDS} rounds of planning a 200-column aggregate and join on the driver."
           if long else "."), "", *table,
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="drivers of each kind (default 3)")
    parser.add_argument("--worker-lead", type=float, action="append", default=[], metavar="SECONDS",
                        help="also time drivers against a fresh worker started SECONDS before each "
                        "(repeatable)")
    parser.add_argument("--tuned", action="store_true",
                        help="compare Spark's default JVMs with the tuned ones "
                        "(jhub_spark_scaler.jvm_archives)")
    parser.add_argument("--backend", choices=["local", "kubernetes", "both"], default="both",
                        help="--tuned: where the ready worker runs (default both)")
    parser.add_argument("--long", action="store_true",
                        help="--tuned: also a CPU-bound executor job and a planning-heavy driver step, "
                        "and the archives without C1")
    parser.add_argument("--as-driver", nargs=2, metavar=("MASTER_URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_driver:
        as_driver(*args.as_driver, args.long)
    elif args.tuned:
        backends = ["local", "kubernetes"] if args.backend == "both" else [args.backend]
        asyncio.run(tuned_main(args.runs, backends, args.long))
    else:
        asyncio.run(main(args.runs, args.worker_lead))
