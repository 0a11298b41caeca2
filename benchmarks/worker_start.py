"""How long a Spark worker takes from spawn to ALIVE at the master, launched four ways.

    python benchmarks/worker_start.py [--runs 5]

Starts a master with LocalBackend (free ports, a temporary state dir), then
starts and stops one worker at a time, the variants taking turns, and polls the
master's /json/ every 50 ms. Prints a markdown table and writes it to
benchmarks/RESULTS.md; everything it started is stopped and its temporary
directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jhub_spark_scaler.backends.local import WORKER_CLASS, LocalBackend  # noqa: E402
from jhub_spark_scaler.backends.processes import free_port  # noqa: E402
from results import machine, write_section  # noqa: E402
from tests.settings import AS_ROOT  # noqa: E402
from tests.waiting import until  # noqa: E402


def alive(master_ui_url: str, host: str, port: int) -> bool:
    with urllib.request.urlopen(f"{master_ui_url}/json/", timeout=2) as r:
        workers = json.load(r)["workers"]
    return any(w["host"] == host and w["port"] == port and w["state"] == "ALIVE" for w in workers)


async def wait_alive(master_ui_url: str, host: str, port: int, t0: float, timeout: float = 120.0) -> float:
    """Seconds from `t0` (a time.perf_counter() reading) until the worker is ALIVE, polled every 50 ms."""
    await until(lambda: alive(master_ui_url, host, port), timeout=timeout - (time.perf_counter() - t0),
                interval=0.05, what=f"worker {host}:{port} to be ALIVE")
    return time.perf_counter() - t0


def launcher_command(b: LocalBackend) -> list[str]:
    """The java command spark-class would exec for a worker (Spark's launcher prints it)."""
    env = {**os.environ, "SPARK_HOME": b.spark_home, "SPARK_SCALA_VERSION": b._scala}
    out = subprocess.run(
        [b.java, "-Xmx128m", "-cp", b._classpath(), "org.apache.spark.launcher.Main", WORKER_CLASS],
        env=env, capture_output=True, check=True,
    ).stdout
    return [a.decode().strip() for a in out.split(b"\0") if a.strip()]


class Raw:
    """A worker started with a given command prefix, outside LocalBackend."""

    def __init__(self, b: LocalBackend, prefix: list[str], tmp: str, net: int):
        self.b, self.prefix, self.tmp, self.net, self.n = b, prefix, tmp, net, 0

    async def run(self) -> float:
        self.n += 1
        host, work = f"127.0.{self.net}.{self.n}", os.path.join(self.tmp, f"raw-{self.net}-{self.n}")
        port, ui = free_port(host), free_port("0.0.0.0")
        args = ["--host", host, "--port", str(port), "--webui-port", str(ui), "--cores", "1",
                "--memory", "1g", "--work-dir", work, self.b.master_url]
        env = {**os.environ, "SPARK_HOME": self.b.spark_home, "SPARK_LOCAL_IP": host,
               "SPARK_SCALA_VERSION": self.b._scala}
        t0 = time.perf_counter()
        proc = subprocess.Popen([*self.prefix, *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return await wait_alive(self.b.master_ui_url, host, port, t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Backend:
    """A worker started by LocalBackend.start(1), with or without the AppCDS archive."""

    def __init__(self, b: LocalBackend, cds: bool):
        self.b, self.cds = b, cds

    async def run(self) -> float:
        self.b.class_data_sharing = self.cds
        t0 = time.perf_counter()
        [w] = await self.b.start(1)
        try:
            return await wait_alive(self.b.master_ui_url, w.host, w.port, t0)
        finally:
            await self.b.stop(w)


async def main(runs: int) -> None:
    log = logging.getLogger("worker_start")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    with tempfile.TemporaryDirectory(prefix="worker-start-") as tmp:
        b = LocalBackend(**AS_ROOT, state_dir=tmp, master_port=0, master_webui_port=0, stop_timeout=20,
                         log=log, stop_on_exit=True)
        await b.setup()
        try:
            launcher = launcher_command(b)
            variants = {
                "spark-class defaults (launcher JVM + -Xmx1g, C2, G1)": Raw(b, [
                    os.path.join(b.spark_home, "bin", "spark-class"), WORKER_CLASS], tmp, net=1),
                "java with spark-class's options (no launcher JVM)": Raw(b, launcher, tmp, net=2),
                "LocalBackend: java -Xmx128m, C1 only, SerialGC": Backend(b, cds=False),
                "LocalBackend + AppCDS archive (class_data_sharing)": Backend(b, cds=True),
            }
            await Backend(b, cds=True).run()  # not timed: this worker writes the archive when stopped
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(runs):
                for name, variant in variants.items():
                    times[name].append(await variant.run())
        finally:
            await b.shutdown()
    table = ["| variant | median s | min s | max s |", "|---|---:|---:|---:|"]
    table += [f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |"
              for name, ts in times.items()]
    print("\n".join(table))
    write_section("Worker start time", [
        f"`python benchmarks/worker_start.py --runs {runs}` on {machine()}. From spawning a worker "
        "to the master listing it ALIVE (polled every 50 ms), variants taking turns.", "", *table,
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (default 5)")
    asyncio.run(main(parser.parse_args().runs))
