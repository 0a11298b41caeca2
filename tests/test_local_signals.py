"""LocalBackend signals only its own daemons, whatever is planted under its state dir.

Anyone running as the service's Unix user (every Spark executor) can write there. Each
test performs the attack on real processes: a `bash` or `python` victim the test starts
in a session of its own, with a child, and always kills. A victim that passes the checks
(its command line is our worker's) is a control: it shows the check is what saved the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jhub_spark_scaler.backends import BackendError
from jhub_spark_scaler.backends.children import Children
from jhub_spark_scaler.backends.local import MASTER_CLASS, WORKER_CLASS, LocalBackend
from jhub_spark_scaler.backends.processes import (
    EXECUTOR_CLASS, Daemon, alive, catches, command_line, is_ours, start_time,
)
from jhub_spark_scaler.backends.state_files import next_handle, read_json
from jhub_spark_scaler.model import BackendWorker

from .settings import AS_ROOT
from .waiting import always, until, until_sync

pytestmark = pytest.mark.asyncio
#: a victim that keeps a child: its process group is more than itself
WITH_CHILD = "sleep 300 & wait"
#: a victim that writes the signals it catches to the file named by its first argument
CATCHER = ("import signal, sys, time\n"
           "for s in (signal.SIGPWR, signal.SIGTERM):\n"
           "    signal.signal(s, lambda n, f: open(sys.argv[1], 'a').write(signal.Signals(n).name + ' '))\n"
           "time.sleep(300)\n")


class Victim:
    """A process started by the test in a session of its own, and its child."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.rec = {"pid": process.pid, "start_time": start_time(process.pid)}

    async def child(self) -> dict:
        def first():
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                return f.read().split()

        [pid] = await until(first, timeout=10, what="the victim's child")
        return {"pid": int(pid), "start_time": start_time(int(pid))}


@pytest.fixture
def victims():
    started: list[subprocess.Popen] = []

    def start(args: list[str], *, executable: str = "/bin/bash", cwd: str | None = None) -> Victim:
        process = subprocess.Popen(args, executable=executable, cwd=cwd, start_new_session=True,
                                   stdin=subprocess.DEVNULL)
        started.append(process)
        # as an adopted daemon would: its command line set up (it reads empty a moment after the spawn)
        until_sync(lambda: command_line(process.pid), timeout=10, what="the victim's command line")
        return Victim(process)

    try:
        yield start
    finally:
        for process in started:  # its session's group: the victim and its child
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    for sub in ("workers", "work", "logs", "cds"):
        (path / sub).mkdir(parents=True)
    return str(path)


def backend(state_dir: str) -> LocalBackend:
    return LocalBackend(state_dir=state_dir, **AS_ROOT, stop_on_exit=True, stop_timeout=1,
                        class_data_sharing=False)


def plant(state_dir: str, handle: str, rec: dict) -> BackendWorker:
    """A worker's state file naming `rec`'s process; the worker as list() would give it."""
    full = {"host": "127.0.9.9", "port": 1, "webui_port": 2, "created_at": time.time(),
            "retiring_since": None, **rec}
    with open(os.path.join(state_dir, "workers", f"{handle}.json"), "w") as f:
        json.dump(full, f)
    return BackendWorker(handle=handle, host=full["host"], created_at=full["created_at"])


def gone_pid() -> dict:
    with subprocess.Popen(["true"]) as p:
        p.wait()
    return {"pid": p.pid, "start_time": 1}


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


async def all_alive(*recs: dict) -> None:
    """Each still runs, now and for a second (a SIGKILL after a timeout would show)."""
    await always(lambda: all(alive(r) for r in recs), seconds=1.5, what="a victim was signalled")


async def test_a_planted_state_file_naming_an_unrelated_process_signals_nothing(state_dir, victims):
    victim = victims(["bash", "-c", WITH_CHILD])
    child = await victim.child()
    b = backend(state_dir)
    worker = plant(state_dir, "local-1", victim.rec)
    assert [w.running for w in await b.list()] == [False]
    await b.decommission(worker)
    await b.stop(worker)
    await all_alive(victim.rec, child)
    assert await b.list() == []  # forgotten as a dead worker
    plant(state_dir, "local-2", victim.rec)
    await b.shutdown()
    await all_alive(victim.rec, child)
    assert await b.list() == []


async def test_a_reused_pid_is_a_dead_worker(state_dir, victims, tmp_path):
    """The pid now belongs to another process: another start time, or the same start time
    and another command line (a worker of another state dir, or of another of our handles)."""
    ours = os.path.join(state_dir, "work", "local-1")
    elsewhere = victims(["bash", "-c", WITH_CHILD, WORKER_CLASS, "--work-dir", str(tmp_path / "other")])
    sibling = victims(["bash", "-c", WITH_CHILD, WORKER_CLASS, "--work-dir", ours.replace("-1", "-9")])
    b = backend(state_dir)
    cases = [{**elsewhere.rec, "start_time": elsewhere.rec["start_time"] + 1}, elsewhere.rec, sibling.rec]
    for rec in cases:
        worker = plant(state_dir, "local-1", rec)
        assert [w.running for w in await b.list()] == [False]
        await b.decommission(worker)
        await b.stop(worker)
    await all_alive(elsewhere.rec, sibling.rec, await elsewhere.child(), await sibling.child())

    # the control: with our worker's command line, the same record is stopped
    control = victims(["bash", "-c", WITH_CHILD, WORKER_CLASS, "--work-dir", ours])
    worker = plant(state_dir, "local-1", control.rec)
    assert [w.running for w in await b.list()] == [True]
    await b.stop(worker)
    assert not alive(control.rec)


async def test_a_worker_that_leads_no_process_group_is_killed_alone(state_dir, victims):
    """SIGKILL after stop_timeout goes to a worker's process group only when the worker
    leads it (we spawned it with a session of its own). Here our worker (to its command
    line) ignores SIGTERM and sits in a group someone else leads, with a child."""
    ours = os.path.join(state_dir, "work", "local-1")
    leader = victims([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); "
                      "time.sleep(300)", "/bin/bash", "-c", "trap '' TERM; " + WITH_CHILD, WORKER_CLASS,
                      "--work-dir", ours], executable=sys.executable)
    worker = await leader.child()
    await until(lambda: _children(worker["pid"]), timeout=10, what="the worker's child")
    [child] = _children(worker["pid"])
    await backend(state_dir).stop(plant(state_dir, "local-1", worker))
    assert not alive(worker)
    await all_alive(leader.rec, {"pid": child, "start_time": start_time(child)})


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


async def test_sigpwr_goes_only_to_our_worker(state_dir, victims, tmp_path):
    b = backend(state_dir)
    ours = os.path.join(state_dir, "work", "local-2")
    for handle, work_dir in (("local-1", "/elsewhere"), ("local-2", ours)):
        caught = tmp_path / f"{handle}.caught"
        victim = victims([sys.executable, "-c", CATCHER, str(caught), WORKER_CLASS, "--work-dir", work_dir],
                         executable=sys.executable)
        await until(lambda: catches(victim.rec["pid"], signal.SIGPWR), timeout=10,
                    what="the victim's SIGPWR handler")
        await b.decommission(plant(state_dir, handle, victim.rec))
    await always(lambda: not (tmp_path / "local-1.caught").exists(), seconds=1, what="SIGPWR to a stranger")
    await until(lambda: (tmp_path / "local-2.caught").exists(), timeout=5, what="SIGPWR to our worker")
    assert read(str(tmp_path / "local-2.caught")) == "SIGPWR "


@pytest.mark.parametrize("link", ["work/local-1", "work"])
async def test_a_symlinked_work_dir_is_neither_followed_nor_emptied(state_dir, victims, tmp_path, link):
    """Executors left by a dead worker are ended by their working directory: a symlink
    planted there pointed it at a directory where an unrelated process works."""
    target = tmp_path / "precious"
    (target / "local-1").mkdir(parents=True)
    (target / "local-1" / "keep").write_text("mine")
    # looks like an executor to the letter, with a child: only where it works saves it
    executor = victims(["java", "-c", "sleep 300; true", EXECUTOR_CLASS], cwd=str(target / "local-1"))
    child = await executor.child()
    work = os.path.join(state_dir, "work")
    if link == "work":
        os.rmdir(work)
    os.symlink(target / "local-1" if link == "work/local-1" else target, os.path.join(state_dir, link))
    b = backend(state_dir)
    await b.stop(plant(state_dir, "local-1", gone_pid()))
    await all_alive(executor.rec, child)
    assert read(str(target / "local-1" / "keep")) == "mine"
    assert os.path.islink(os.path.join(state_dir, link))


async def test_only_executors_in_a_dead_workers_own_work_dir_are_ended(state_dir, victims):
    """The control: in a real work/<handle> dir, the executor and its child are ended, a
    process that merely works there (an admin's shell) is not, and the dir is deleted."""
    work = os.path.join(state_dir, "work", "local-1")
    os.mkdir(work)
    executor = victims(["java", "-c", "sleep 300; true", EXECUTOR_CLASS], cwd=work)
    child = await executor.child()
    shell = victims(["bash", "-c", WITH_CHILD], cwd=work)
    await backend(state_dir).stop(plant(state_dir, "local-1", gone_pid()))
    await until(lambda: not alive(executor.rec) and not alive(child), timeout=5, what="the executor ended")
    await all_alive(shell.rec)
    assert not os.path.exists(work)


async def test_symlinked_state_files_are_not_followed(state_dir, victims, tmp_path):
    b = backend(state_dir)
    # a state file that would make the victim ours, were it followed
    victim = victims(["bash", "-c", WITH_CHILD, WORKER_CLASS, "--work-dir",
                      os.path.join(state_dir, "work", "local-1")])
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"pid": victim.rec["pid"], "start_time": victim.rec["start_time"],
                                   "host": "127.0.9.9", "port": 1, "webui_port": 2, "created_at": 1.0}))
    link = os.path.join(state_dir, "workers", "local-1.json")
    os.symlink(outside, link)
    assert await b.list() == []  # refused: taken as absent
    worker = BackendWorker(handle="local-1", host="127.0.9.9", created_at=1.0)
    await b.decommission(worker)
    await b.stop(worker)
    await all_alive(victim.rec)
    assert json.loads(read(str(outside)))["pid"] == victim.rec["pid"] and not os.path.lexists(link)

    # temp files: a symlink where one goes is replaced, what it points at left alone
    for name in ("workers/local-2.json.tmp", "next-id.tmp"):
        os.symlink(tmp_path / "precious", os.path.join(state_dir, name))
    (tmp_path / "precious").write_text("mine")
    worker = plant(state_dir, "local-2", gone_pid())
    await b.decommission(worker)
    assert next_handle(state_dir, b.log) == "local-3"
    assert read(str(tmp_path / "precious")) == "mine"
    assert (await b.list())[0].retiring_since is not None
    assert not os.path.lexists(os.path.join(state_dir, "workers", "local-2.json.tmp"))
    assert os.stat(os.path.join(state_dir, "workers", "local-2.json")).st_mode & 0o777 == 0o600

    # a master record, a log file, a directory
    os.symlink(outside, os.path.join(state_dir, "master.json"))
    assert read_json(os.path.join(state_dir, "master.json"), root=state_dir, log=b.log) is None
    os.symlink(tmp_path / "precious", os.path.join(state_dir, "logs", "local-3.log"))
    with pytest.raises(BackendError, match=r"^LocalBackend: refusing the log file .*local-3\.log: a symlink"):
        Children().spawn(["/bin/true"], {}, log_path=os.path.join(state_dir, "logs", "local-3.log"),
                         user=None)
    assert read(str(tmp_path / "precious")) == "mine"
    os.rename(os.path.join(state_dir, "workers"), tmp_path / "workers")
    os.symlink(tmp_path / "workers", os.path.join(state_dir, "workers"))
    with pytest.raises(BackendError, match=r"^LocalBackend: refusing .*workers: a symlink"):
        await b.list()


async def test_a_kernel_thread_or_a_process_not_yet_showing_its_command_line_is_not_adopted():
    """An empty command line (a kernel thread's, or a program mid-exec) makes a process
    ours only if this process spawned it; pid 2 is the kernel's kthreadd where visible."""
    rec = {"pid": 2, "start_time": start_time(2)}
    if rec["start_time"] is None or read("/proc/2/cmdline"):
        pytest.skip("no kernel thread visible as pid 2 here")
    assert not is_ours(rec, Daemon(WORKER_CLASS, ()))
    assert not Children().ours(rec, Daemon(WORKER_CLASS, ()))


@pytest.mark.spark
async def test_a_planted_master_record_is_neither_adopted_nor_stopped(state_dir, victims):
    victim = victims(["bash", "-c", WITH_CHILD, MASTER_CLASS, "--host", "127.0.0.1", "--port", "7077"])
    child = await victim.child()
    with open(os.path.join(state_dir, "master.json"), "w") as f:
        json.dump({**victim.rec, "host": "127.0.0.1", "port": 9, "webui_port": 9, "created_at": 1.0}, f)
    b = LocalBackend(state_dir=state_dir, **AS_ROOT, master_port=0, master_webui_port=0, stop_on_exit=True,
                     stop_timeout=5, class_data_sharing=False)
    try:
        await b.setup()  # starts a master of its own
        assert b.master_url != "spark://127.0.0.1:9"
        ours = read_json(os.path.join(state_dir, "master.json"), root=state_dir, log=b.log)
        assert ours["pid"] != victim.rec["pid"]
    finally:
        await b.shutdown()
    assert not alive(ours)
    await all_alive(victim.rec, child)
