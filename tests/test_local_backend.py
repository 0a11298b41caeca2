"""LocalBackend against real Spark processes, no mocks: start, decommission, stop, adopt.

Every wait polls with a deadline; every process started is stopped by the
backend, and the fixture kills whatever a state file still names afterwards.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from traitlets import TraitError

from jhub_spark_scaler.backends import BackendError
from jhub_spark_scaler.backends.local import MASTER_CLASS, WORKER_CLASS, LocalBackend
from jhub_spark_scaler.backends.children import Children
from jhub_spark_scaler.backends.processes import (
    EXECUTOR_CLASS, Daemon, alive, catches, executors_in, is_ours, start_time,
)
from jhub_spark_scaler.errors import ConfigError

from .conftest import Driver
from .settings import AS_ROOT
from .waiting import until

pytestmark = [pytest.mark.asyncio, pytest.mark.spark]


def backend(state_dir: str, **kwargs) -> LocalBackend:
    settings = dict(master_port=0, master_webui_port=0, worker_memory="512m", stop_timeout=5,
                    class_data_sharing=False, stop_on_exit=True)
    return LocalBackend(state_dir=state_dir, **{**AS_ROOT, **settings, **kwargs})


def records(state_dir: str) -> list[dict]:
    paths = glob.glob(os.path.join(state_dir, "master.json"))
    paths += glob.glob(os.path.join(state_dir, "workers", "*.json"))
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out


def command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def running(rec: dict) -> bool:
    """A master or worker JVM of this state dir's still runs (by its class, whatever its marker)."""
    return alive(rec) and bool({MASTER_CLASS, WORKER_CLASS} & set(command_line(rec["pid"])))


@pytest.fixture
def state_dir(tmp_path):
    path = str(tmp_path / "state")
    try:
        yield path
    finally:  # the backend should have stopped everything; make sure, by pid and start time
        for rec in records(path):
            if running(rec):
                os.killpg(rec["pid"], signal.SIGKILL)


async def get_json(url: str) -> dict:
    def get():
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)

    return await asyncio.to_thread(get)


async def master_states(b: LocalBackend) -> dict[str, str]:
    workers = (await get_json(f"{b.master_ui_url}/json/"))["workers"]
    return {w["host"]: w["state"] for w in workers if w["state"] != "DEAD"}


async def test_start_decommission_stop(state_dir):
    # the first worker dumps its class archive as it exits on SIGTERM: about 5 s here, more when
    # loaded; it gets cds_dump_timeout for that, where stop_timeout=0 would SIGKILL it at once
    b = backend(state_dir, class_data_sharing=True, stop_timeout=0, cds_dump_timeout=60)
    try:
        await b.setup()
        assert b.master_url.startswith("spark://127.0.0.1:")
        started = await b.start(2)
        hosts = [w.host for w in started]
        assert len(set(hosts)) == 2 and "127.0.0.1" not in hosts and all(w.running for w in started)

        async def both_alive():
            return (await master_states(b)) == {h: "ALIVE" for h in hosts}

        await until(both_alive, timeout=60, what="both workers ALIVE at the master")
        first, second = started
        assert (await get_json(f"{first.webui_url}/json/"))["id"].startswith("worker-")

        await b.decommission(first)
        assert (await b.list())[0].retiring_since is not None

        async def decommissioned():
            return (await master_states(b)).get(first.host) == "DECOMMISSIONED"

        await until(decommissioned, timeout=20, what="the master sees the decommission")
        await b.decommission(first)  # again: harmless, the retirement mark stays
        [rec] = [r for r in records(state_dir) if r.get("host") == first.host]
        await b.stop(first)
        assert not running(rec)
        assert [w.handle for w in await b.list()] == [second.handle]
        assert not os.path.exists(os.path.join(state_dir, "work", first.handle))
        # the first worker dumped its classes when it stopped: later workers start from the archive
        assert glob.glob(os.path.join(state_dir, "cds", "worker-*.jsa"))
        await b.stop(first)  # idempotent
    finally:
        before = records(state_dir)
        await b.shutdown()
    assert before and not any(running(r) for r in before)
    assert records(state_dir) == []


def cds_files(state_dir: str) -> list[str]:
    """The archives, marks and dumps (cds/dumps/ is the daemons' directory for the last)."""
    cds = os.path.join(state_dir, "cds")
    paths = [*glob.glob(os.path.join(cds, "*")), *glob.glob(os.path.join(cds, "dumps", "*"))]
    return sorted(os.path.basename(p) for p in paths if not os.path.isdir(p))


def dumps_classes(rec: dict) -> bool:
    return any(a.startswith("-XX:ArchiveClassesAtExit=") for a in command_line(rec["pid"]))


async def test_a_worker_killed_before_it_wrote_the_class_archive_leaves_the_next_one_to_write_it(state_dir):
    """The chaos's SIGKILL of a busy worker (or an OOM) can hit the one that is to dump the
    archive when it stops: that is no reason to give the archive up."""
    b = backend(state_dir, class_data_sharing=True, cds_dump_timeout=60)
    try:
        await b.setup()
        [doomed] = await b.start(1)
        [rec] = [r for r in records(state_dir) if r.get("host") == doomed.host]
        assert await until(lambda: dumps_classes(rec), timeout=10, what="the worker's command line")
        os.killpg(rec["pid"], signal.SIGKILL)
        await until(lambda: not running(rec), timeout=10, what="the killed worker gone")
        await b.stop(doomed)
        assert cds_files(state_dir) == []  # neither a half-written archive nor a ".failed" mark
        [writer] = await b.start(1)
        [rec] = [r for r in records(state_dir) if r.get("host") == writer.host]
        assert await until(lambda: dumps_classes(rec), timeout=10, what="the worker's command line")

        async def writer_alive():
            return (await master_states(b)).get(writer.host) == "ALIVE"

        # ALIVE: its classes are loaded, and go to the archive when it stops
        await until(writer_alive, timeout=60, what="the second worker ALIVE at the master")
        await b.stop(writer)
        [archive] = cds_files(state_dir)
        assert archive.startswith("worker-") and archive.endswith(".jsa")
    finally:
        await b.shutdown()


async def test_adopts_master_and_workers(state_dir):
    a = backend(state_dir, stop_on_exit=False)
    try:
        await a.setup()
        [worker] = await a.start(1)
    finally:
        await a.shutdown()  # leaves both running
    pids = {r["pid"] for r in records(state_dir)}
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    with open(os.path.join(state_dir, "workers", "local-7.json"), "w") as f:
        json.dump({"pid": gone.pid, "start_time": 1, "host": "127.0.0.99", "port": 1, "webui_port": 2,
                   "created_at": time.time(), "retiring_since": None}, f)

    b = backend(state_dir)
    try:
        await b.setup()
        assert b.master_url == a.master_url and b.master_ui_url == a.master_ui_url
        listed = {w.handle: w for w in await b.list()}
        assert listed[worker.handle] == worker
        assert {r["pid"] for r in records(state_dir) if running(r)} == pids
        assert not listed["local-7"].running
        await b.stop(listed["local-7"])
        assert sorted(listed) == sorted([worker.handle, "local-7"])
        assert [w.handle for w in await b.list()] == [worker.handle]
        [new] = await b.start(1)
        assert new.handle not in listed and new.host not in (worker.host, "127.0.0.1")
        # retired at once: a SIGPWR before Spark's handler is installed would kill the JVM, so none is sent
        await b.decommission(new)
        [rec] = [r for r in records(state_dir) if r["host"] == new.host]

        async def handler_installed():
            return catches(rec["pid"], signal.SIGPWR)

        await until(handler_installed, timeout=30, what="Spark's SIGPWR handler")
        assert running(rec) and rec["retiring_since"] is not None
    finally:
        await b.shutdown()
    assert not any(running(r) for r in records(state_dir))


async def test_bad_settings_are_one_clear_line(state_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^LocalBackend\.java: .*no-java") as e:
        await backend(state_dir, java=str(tmp_path / "no-java")).setup()
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^LocalBackend\.spark_home: "):
        await backend(state_dir, spark_home=str(tmp_path)).setup()
    with pytest.raises(TraitError, match=r"^LocalBackend\.worker_memory: 'lots' is not a size"):
        backend(state_dir, worker_memory="lots")
    with pytest.raises(TraitError, match=r"^LocalBackend\.host_range: "):
        backend(state_dir, host_range="10.0.0.1-10.0.0.9")

    # two addresses for workers, someone else listening on the first, and a master that never answers
    b = backend(state_dir, start_master=False, master_url="spark://127.0.0.1:9",
                host_range="127.0.9.2-127.0.9.3")
    try:
        with socket.create_server(("127.0.9.2", 0)):
            await b.setup()
            [worker] = await b.start(1)
            assert worker.host == "127.0.9.3"
            with pytest.raises(BackendError, match=r"^LocalBackend\.host_range: no address left"):
                await b.start(1)
    finally:
        await b.shutdown()


async def test_a_starting_master_is_judged_by_pid_not_command_line(tmp_path):
    """A JVM's /proc cmdline can read empty while it starts on a loaded machine: a master
    whose command line does not show the master class (here a plain `sleep`) is waited
    for until master_start_timeout, not reported as exited."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        b = backend(str(tmp_path), master_start_timeout=1, master_ui_url="http://127.0.0.1:9")
        rec = {"pid": sleeper.pid, "start_time": start_time(sleeper.pid)}
        with pytest.raises(BackendError, match="was not ALIVE within"):
            await b._wait_master_alive(rec)
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_a_daemon_just_spawned_is_ours_before_its_command_line_is_readable(tmp_path):
    """The spawn returns before the kernel has set up the new program's arguments: checked
    at once, a fresh worker's /proc cmdline mostly reads empty (330 of 400 reads on this
    machine), and start() reported the worker it had just started as not running. A child
    spawned here and not reaped is ours by its pid; one adopted from a state file is not
    until its command line shows it. Each stand-in carries the worker's arguments."""
    daemon = Daemon(WORKER_CLASS, ("--work-dir", str(tmp_path)))
    children = Children()
    for _ in range(20):
        pid = children.spawn(["/bin/bash", "-c", "sleep 60; true", "java", WORKER_CLASS, "--work-dir",
                              str(tmp_path)], {}, log_path=str(tmp_path / "stand-in.log"), user=None)
        try:
            rec = {"pid": pid, "start_time": start_time(pid)}
            assert children.ours(rec, daemon)
            assert await until(lambda: command_line(pid)[1:2] == ["-c"], timeout=10, what="its command line")
            assert is_ours(rec, daemon)  # as an adopted process: by its command line
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            children.reap()


async def test_stopping_a_dead_worker_ends_the_executors_it_left_behind(state_dir, tmp_path):
    """A worker JVM that dies (an OOM kill, say) while an executor it launched is still
    starting leaves that executor running in its work dir: the executor never got to
    watch its worker. Stopping the lost worker must end it rather than delete the dir
    under it (its Python workers would then fail every task: found by the soak)."""
    b = backend(state_dir)
    driver = None
    try:
        await b.setup()
        [worker] = await b.start(1)
        [rec] = [r for r in records(state_dir) if r.get("host") == worker.host]
        driver = Driver(tmp_path / "driver", ["--master", b.master_url, "--name", "orphans",
                                              "--cores-max", "1", "--task-seconds", "1"])
        work = os.path.join(state_dir, "work", worker.handle)

        async def launched():  # the executor JVM, the moment the worker has spawned it
            return [p for p in executors_in(os.path.realpath(work)) if EXECUTOR_CLASS in command_line(p)]

        [executor] = await until(launched, timeout=180, what="the worker to launch an executor")
        os.kill(rec["pid"], signal.SIGKILL)
        orphan = {"pid": executor, "start_time": start_time(executor)}

        async def lost():
            return not (await b.list())[0].running

        await until(lost, timeout=30, what="the backend to see the worker gone")
        await driver.jobs_done(1)  # the orphan registered with the driver and runs its tasks
        assert alive(orphan), "the executor outlived its worker"
        await b.stop((await b.list())[0])

        async def orphan_ended():
            return not alive(orphan)

        await until(orphan_ended, timeout=2, what="the backend to end the orphaned executor")
        assert not os.path.exists(work)
    finally:
        if driver:
            driver.kill()
        await b.shutdown()
