"""Shared fixtures: one real Spark master per session, real drivers, bounded waits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jhub_spark_scaler.backends.local import LocalBackend

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "drivers" / "busy_driver.py"


async def until(predicate, *, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` (sync or async) until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
async def spark_master(tmp_path_factory):
    """A real Spark master for the whole session, started by the local backend."""
    backend = LocalBackend(
        state_dir=str(tmp_path_factory.mktemp("spark-master")),
        master_port=0,
        master_webui_port=0,
        stop_on_exit=True,
    )
    await backend.setup()
    try:
        yield backend
    finally:
        await backend.shutdown()


class Driver:
    """A real pyspark driver process (tests/drivers/busy_driver.py)."""

    def __init__(self, control: Path, args: list[str]):
        self.control = control
        control.mkdir(parents=True, exist_ok=True)
        self.log = open(control / "driver.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), "--control", str(control), *args],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _read(self, name: str):
        try:
            return json.loads((self.control / name).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _alive_or_fail(self):
        if self.process.poll() is not None:
            tail = (self.control / "driver.log").read_text()[-3000:]
            raise AssertionError(f"driver exited with {self.process.returncode}:\n{tail}")

    async def started(self, timeout: float = 180) -> dict:
        def app():
            self._alive_or_fail()
            return self._read("app.json")

        return await until(app, timeout=timeout, what="the driver's SparkSession")

    async def jobs_done(self, n: int, timeout: float = 120) -> None:
        def done():
            self._alive_or_fail()
            return (self._read("progress.json") or {}).get("jobs", 0) >= n

        await until(done, timeout=timeout, what=f"{n} jobs of the driver")

    def burst(self, n: int) -> None:
        (self.control / f"burst-{n}").touch()

    async def result(self, timeout: float = 120) -> dict:
        """Stop the driver and return what it saw (see busy_driver.py)."""
        (self.control / "stop").touch()
        loop = asyncio.get_running_loop()
        await until(lambda: self.process.poll() is not None or self._read("result.json"),
                    timeout=timeout, what="the driver's result")
        result = await until(lambda: self._read("result.json"), timeout=5, what="result.json")
        await loop.run_in_executor(None, self.process.wait, timeout)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.log.close()


@pytest.fixture
def drivers(tmp_path, spark_master):
    """Start drivers with `drivers(name, *args)`; every one is killed at teardown."""
    started: list[Driver] = []

    def start(name: str, *args: str) -> Driver:
        driver = Driver(tmp_path / f"driver-{name}", ["--master", spark_master.master_url,
                                                      "--name", name, *args])
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.kill()


def lost_executors(result: dict) -> list[dict]:
    """Executors the driver lost: removed for any reason but a graceful decommission
    or its own dynamic allocation giving them back."""
    graceful = ("executor decommission", "killed by driver")
    return [
        e for e in result["executors"]
        if e["reason"] and not any(g in e["reason"].lower() for g in graceful)
    ]
