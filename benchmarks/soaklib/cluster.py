"""The soak's Spark master (a process it owns, so it can restart it) and what it
needs to find processes: Spark workers on an address range, the scaler service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pyspark

from jhub_spark_scaler.backends.local import FAST_JVM_OPTIONS, MASTER_CLASS, WORKER_CLASS
from jhub_spark_scaler.backends.processes import free_port
from tests.waiting import until_sync

from .start_delay import LATE_START

SPARK_HOME = os.path.dirname(pyspark.__file__)


def master_json(ui: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(f"{ui}/json/", timeout=timeout) as r:
        return json.load(r)


def alive_hosts(ui: str) -> list[str]:
    """The hosts of the workers the master calls ALIVE (none while it cannot be read)."""
    try:
        return [w["host"] for w in master_json(ui, 2)["workers"] if w["state"] == "ALIVE"]
    except (OSError, ValueError):
        return []


class SoakMaster:
    """A standalone master with FILESYSTEM recovery: killed and started again on the
    same ports, it recovers its apps and workers (without recovery a new master kills
    every executor it does not know), as a production master must. `spread_out`:
    Spark's spark.deploy.spreadOut (Spark's default is True: an app's executors go to
    as many workers as possible, which leaves many workers partly used)."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", *, spread_out: bool = False):
        self.workdir = Path(workdir)
        self.spread_out = spread_out
        self.host = host
        self.port = free_port(host)
        self.webui_port = free_port(host, avoid={self.port})
        self.url = f"spark://{host}:{self.port}"
        self.ui = f"http://{host}:{self.webui_port}"
        self.process: subprocess.Popen | None = None
        self.recovery = self.workdir / "recovery"

    def start(self, timeout: float = 120) -> None:
        self.recovery.mkdir(parents=True, exist_ok=True)
        java = shutil.which("java")
        cmd = [java, *FAST_JVM_OPTIONS, "-Xmx256m", "-Dspark.decommission.enabled=true",
               "-Dspark.master.rest.enabled=false", "-Dspark.deploy.recoveryMode=FILESYSTEM",
               f"-Dspark.deploy.recoveryDirectory={self.recovery}",
               # False packs an app's executors onto as few workers as will hold them
               f"-Dspark.deploy.spreadOut={str(self.spread_out).lower()}",
               "-cp", os.path.join(SPARK_HOME, "jars", "*"), MASTER_CLASS,
               "--host", self.host, "--port", str(self.port), "--webui-port", str(self.webui_port)]
        log = self.workdir / "master.log"
        with open(log, "a") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "SPARK_HOME": SPARK_HOME})
        until_sync(lambda: master_json(self.ui, 2).get("status") == "ALIVE", timeout=timeout, interval=0.2,
                   what="the Spark master to be ALIVE", ignore=(OSError, ValueError), process=self.process,
                   log=log)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


SPARK_LAUNCHER = "org.apache.spark.launcher.Main"


def worker_processes(host_prefix: str) -> dict[int, str]:
    """Spark worker JVMs whose --host starts with `host_prefix`: {pid: host}. Not the
    short-lived processes that carry a worker's arguments too, each of which a sample
    catching it counted as one more arrival and departure: the launcher JVM by which
    spark-class (a worker pod's command) builds the worker's command line, the stub
    of a worker whose start is delayed (start_delay.py; counted once it is the JVM), and a copy
    of a process that has not exec'd yet (a worker forking to launch an executor,
    spark-class's subshell), whose command line is its parent's."""
    found: dict[int, tuple[list[str], str]] = {}  # pid: (command line, host)
    for pid in pids():
        cmd = _cmdline(pid)
        if WORKER_CLASS in cmd and "--host" in cmd and SPARK_LAUNCHER not in cmd and LATE_START not in cmd:
            host = cmd[cmd.index("--host") + 1]
            if host.startswith(host_prefix):
                found[pid] = (cmd, host)
    return {pid: host for pid, (cmd, host) in found.items() if found.get(_ppid(pid), (None,))[0] != cmd}


def service_pids(hub_pid: int) -> list[int]:
    """The hub's managed scaler service: children of the hub running jhub_spark_scaler."""
    return [pid for pid in pids() if _ppid(pid) == hub_pid and "jhub_spark_scaler" in _cmdline(pid)]


def sweep(workdir: Path) -> list[int]:
    """SIGKILL every process working in `workdir` (a directory only this run uses): what
    a hub that had to be killed left behind, notebook servers, workers, executors."""
    root, killed = str(Path(workdir).resolve()), []
    for pid in pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if pid != os.getpid() and (cwd == root or cwd.startswith(root + "/")):
            kill_quietly(pid)
            killed.append(pid)
    return killed


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
