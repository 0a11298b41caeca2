"""The embedded backend: a Spark master and workers as local child processes.

Each worker binds a loopback address of its own from `host_range`, so that Spark's
decommission-by-host matches exactly one worker. SPARK_LOCAL_IP is set to that
address too, so the worker's web UI and its executors bind there (without it the
worker web UI binds 0.0.0.0).

`state_dir` holds everything a restarted scaler needs to adopt what runs:

    master.json, workers/<handle>.json   pid, process start time, host, ports, ...
    logs/<name>.log                      output (a worker's is kept if it died on its own)
    work/<handle>/                       a worker's --work-dir
    cds/worker-<key>.jsa                 AppCDS archive: workers start about twice as fast
    next-id                              handle counter: handles are never reused
    scaler.lock                          the active scaler's pid, flock-ed while it runs

Anyone running as the service's user (every executor) can plant files there, so a
pid counts as ours only if its start time (/proc/<pid>/stat field 22) matches the state
file (pids get reused) and its command line is the daemon we start: the Worker class
with its own --work-dir, or the Master class with this state directory as a property.
(Right after a spawn, before the command line is readable, a child of this process
not yet reaped is ours by its pid and start time: see `processes.is_ours`.) Nothing
under the state directory is followed through a symlink (see `state_files`).
Who may write which of them (the daemons may run as another user): see `state_layout`.

The parts with a job of their own: `processes` reads /proc and sockets, `children`
spawns and ends the daemons, `daemon_user` says as whom, `daemon_env` with which
environment, `state_files` reads and writes the files above, `state_layout` makes
their directories, `class_data` keeps the AppCDS archive, and `loopback` picks the
workers' addresses.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import time
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, default

from .. import clock
from ..errors import ConfigError
from ..httpjson import fetch_json
from ..model import BackendWorker
from . import Backend, BackendError, class_data, installation, loopback, state_files, state_layout
from .checks import Check, master_ui_url_check, master_url_check, revalidate, validator
from .children import Children, end_executors
from .daemon_env import DEFAULT_PATH, daemon_env
from .daemon_user import DaemonUser, check_adoptable, daemon_home, daemon_user
from .history_store import FileStore
from .processes import Daemon, alive, bind_error, catches, free_port, listening_hosts, start_time
from .state_files import read_json, remove, write_json
from .state_lock import StateDirLock

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
#: a JVM property only our master carries, naming its state directory (Spark ignores it)
STATE_DIR_PROPERTY = "jhub_spark_scaler.state_dir"
_OPENS = (
    "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util",
    "java.util.concurrent", "java.util.concurrent.atomic", "jdk.internal.ref", "sun.nio.ch", "sun.nio.cs",
    "sun.security.action", "sun.util.calendar",
)
#: JVM options for small daemons that start fast: C1 only, serial GC, and what Spark 4 needs on Java 17+
FAST_JVM_OPTIONS = (
    "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto", "-XX:+IgnoreUnrecognizedVMOptions",
    *(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in _OPENS), "-Dio.netty.tryReflectionSetAccessible=true",
)


_PORT_CHECK = Check(lambda v: 0 <= v <= 65535, "is not a port (0 picks a free one)")
#: what each setting must be (the master's URLs are empty until a started master sets them)
_CHECKS = {
    "worker_cores": Check(lambda v: v >= 1, "must be at least 1"),
    # Spark's --memory needs a unit (a bare number means bytes); -Xmx takes k/m/g/t or bytes
    "worker_memory": Check(lambda v: re.fullmatch(r"[1-9]\d*[kmgt]b?", v, re.I),
                           "is not a size like 512m or 2g"),
    "worker_heap": Check(lambda v: re.fullmatch(r"[1-9]\d*[kmgt]?", v, re.I),
                         "is not a JVM heap size like 128m"),
    "master_port": _PORT_CHECK,
    "master_webui_port": _PORT_CHECK,
    "stop_timeout": Check(lambda v: v >= 0, "must not be negative"),
    "cds_dump_timeout": Check(lambda v: v >= 0, "must not be negative"),
    "master_start_timeout": Check(lambda v: v > 0, "must be positive"),
    "host_range": Check(loopback.range_ok,
                        "is not 'FIRST-LAST' (or one address) of 127.x.x.x addresses, FIRST <= LAST"),
    "master_url": master_url_check(empty_ok=True),
    "master_ui_url": master_ui_url_check(empty_ok=True),
    # anything else would be taken for the JVM's main class
    "extra_java_options": Check(lambda v: all(o.startswith("-") for o in v), "are not all JVM options"),
    "state_dir": Check(lambda v: v.strip(), "must not be empty"),
}


class LocalBackend(Backend):
    """Spark master (optional) and workers as local processes, one loopback address per worker."""

    spark_home = Unicode(help="Spark installation (with jars/). Default: $SPARK_HOME, else the pyspark "
                         "package.").tag(config=True)
    java = Unicode(
        help="The java executable (17+). Default: $JAVA_HOME/bin/java, else java on PATH.").tag(config=True)
    state_dir = Unicode(
        help="State files, logs, work dirs. Default: $XDG_STATE_HOME/jhub-spark-scaler/local "
        "($XDG_STATE_HOME defaults to ~/.local/state)."
    ).tag(config=True)
    run_as = Unicode(
        "", help="Unix user the Spark master and workers, and so every executor, run as when the scaler "
        "runs as root. Not as root: empty or the scaler's own user.",
    ).tag(config=True)
    allow_root = Bool(False, help="Let a scaler running as root, with no run_as, run Spark as root: only "
                      "where every notebook user may be root anyway (one user's machine).").tag(config=True)
    start_master = Bool(True, help="Start a Spark master as a child process; if False, workers join "
                        "LocalBackend.master_url.").tag(config=True)
    master_url = Unicode("", help="spark://host:port of a master started elsewhere.").tag(config=True)
    master_ui_url = Unicode("", help="http://host:port of that master's web UI.").tag(config=True)
    master_host = Unicode("127.0.0.1", help="Address the started master binds to.").tag(config=True)
    master_port = Int(7077, help="RPC port of the started master; 0 picks a free one.").tag(config=True)
    master_webui_port = Int(8080, help="Web UI port of the started master; 0 picks one.").tag(config=True)
    master_start_timeout = Float(60.0, help="Seconds for a started master to be ALIVE.").tag(config=True)
    worker_cores = Int(1, help="Cores each worker offers (--cores).").tag(config=True)
    worker_memory = Unicode(
        "1g", help="Memory each worker offers executors (--memory): 512m, 2g, ...").tag(config=True)
    worker_heap = Unicode(
        "128m", help="-Xmx of a worker daemon (executors get JVMs of their own).").tag(config=True)
    host_range = Unicode(
        "127.0.0.2-127.0.0.254",
        help="Loopback addresses for workers, one each: 'FIRST-LAST' or one address. "
        "The master's is skipped; a stopped worker's is reused.",
    ).tag(config=True)
    stop_timeout = Float(10.0, help="Seconds from SIGTERM to SIGKILL when stopping.").tag(config=True)
    stop_on_exit = Bool(
        False, help="On exit (SIGTERM, SIGINT: a hub restart too) stop all workers, busy ones included, "
        "and the master. False leaves them running, and the next scaler adopts them, jobs intact."
    ).tag(config=True)
    extra_java_options = List(Unicode(), help="More JVM options for the worker daemons.").tag(config=True)
    spark_conf = Dict(value_trait=Unicode(), key_trait=Unicode(), help=(
        "Spark properties: -Dkey=value to master, workers. Unless set here, a started master has "
        "spark.deploy.defaultCores = 2 x worker_cores: an app without spark.cores.max takes two workers, "
        "not all.")).tag(config=True)
    decommission_method = Enum(
        ["signal", "master"], "signal",
        help="How a worker is decommissioned: 'signal' sends SIGPWR to its JVM; 'master' asks the "
        "master (POST /workers/kill/?host=), which needs spark.master.ui.decommission.allow.mode "
        "ALLOW unless the master UI is reached over loopback.",
    ).tag(config=True)
    class_data_sharing = Bool(
        True, help="Start workers from an AppCDS archive in state_dir (the first worker writes it on stop)."
    ).tag(config=True)
    cds_dump_timeout = Float(
        30.0,
        help="Seconds from SIGTERM to SIGKILL for the worker that writes the class data archive as it "
        "exits (about 3 s on an idle machine, more than 10 s on a busy one); used instead of stop_timeout.",
    ).tag(config=True)

    @property
    def decommission_via_master(self) -> bool:
        return self.decommission_method == "master"

    @default("spark_home")
    def _default_spark_home(self) -> str:
        spec = importlib.util.find_spec("pyspark")
        return os.environ.get("SPARK_HOME") or (os.path.dirname(spec.origin) if spec and spec.origin else "")

    @default("java")
    def _default_java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        return os.path.join(java_home, "bin", "java") if java_home else shutil.which("java") or "java"

    @default("state_dir")
    def _default_state_dir(self) -> str:
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(base, "jhub-spark-scaler", "local")

    _check = validator(_CHECKS, owner="LocalBackend")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        revalidate(self, _CHECKS)
        self._children = Children()
        self._master: dict | None = None  # the master we started or adopted
        self._scala = ""
        self._user: DaemonUser | None = None  # who the daemons run as (None: this process's user)
        self._java_home = ""
        self._stopping: dict[str, asyncio.Future] = {}  # handle -> its stop in flight

    # -- state files -----------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(self.state_dir, *parts)

    def _worker_file(self, handle: str) -> str:
        return state_files.worker_file(self.state_dir, handle)

    def _records(self) -> list[dict]:
        return state_files.worker_records(self.state_dir, self.log)

    # -- processes -------------------------------------------------------------

    def _classpath(self) -> str:
        return os.path.join(self.spark_home, "jars", "*")

    def _spawn(self, args: list[str], *, host: str, log_name: str) -> dict:
        """Start a Spark daemon in a session of its own; return its identity for a state file."""
        # maxRetries=0: a daemon binds the ports in its state file or fails, never port+1 unnoticed
        cmd = [self.java, *FAST_JVM_OPTIONS, "-Dspark.decommission.enabled=true", "-Dspark.port.maxRetries=0",
               *[f"-D{k}={v}" for k, v in self.spark_conf.items()], *args]
        env = daemon_env(os.environ, home=daemon_home(self._user, self._path("home")), local_ip=host,
                         spark_home=self.spark_home, scala=self._scala, java_home=self._java_home)
        pid = self._children.spawn(cmd, env, log_path=self._path("logs", log_name), user=self._user)
        return {"pid": pid, "start_time": start_time(pid), "created_at": clock.now(), "host": host}

    def _worker_daemon(self, handle: str) -> Daemon:
        return Daemon(WORKER_CLASS, ("--work-dir", self._path("work", handle)))

    def _master_daemon(self) -> Daemon:
        return Daemon(MASTER_CLASS, (f"-D{STATE_DIR_PROPERTY}={self.state_dir}",))

    async def _terminate(self, rec: dict, daemon: Daemon, what: str, timeout: float) -> bool:
        """End `daemon`, the process of state record `rec`; True if it exited on SIGTERM
        (see `Children`)."""
        return await self._children.terminate(rec, daemon, what=what, timeout=timeout, log=self.log)

    def leadership(self) -> StateDirLock:
        """One active scaler per state_dir: an exclusive lock in it (state_lock.py)."""
        daemon_user(self.run_as, allow_root=self.allow_root)  # first: a refused scaler creates nothing
        return StateDirLock(self.state_dir, log=self.log)

    def history_store(self) -> FileStore:  # the pre-warm history, beside the pool's state
        return FileStore(self.state_dir, log=self.log)

    # -- master ----------------------------------------------------------------

    async def setup(self) -> None:
        self._user = daemon_user(self.run_as, allow_root=self.allow_root)
        found = installation.find(java=self.java, spark_home=self.spark_home, user=self._user)
        self.java, self._java_home, self._scala = found
        state_layout.prepare(self.state_dir, self._user)
        if self._user and not installation.executor_python(os.environ.get("PATH", DEFAULT_PATH), self._user):
            self.log.warning("LocalBackend: no python3 on PATH that run_as user %r can run: PySpark jobs "
                             "work only from drivers whose PYSPARK_PYTHON it can run", self._user.name)
        master = read_json(self._path("master.json"), root=self.state_dir, log=self.log)
        adopting = [r for r in (master, *self._records()) if r and alive(r)]
        check_adoptable([r["pid"] for r in adopting], self._user, state_dir=self.state_dir)
        if self.start_master:
            await self._setup_master()
        elif not self.master_url:
            raise ConfigError("LocalBackend.master_url: must be set when LocalBackend.start_master is False")
        archive = self._cds_archive()
        class_data.remove_stale(self._path("cds"), archive)
        dumps = self._path("cds", "dumps")
        class_data.remove_stale(dumps, os.path.join(dumps, os.path.basename(archive)))
        workers = await self.list()
        running = sum(w.running for w in workers)
        self.log.info("LocalBackend: adopted %d running worker(s) and %d dead one(s); state in %s",
                      running, len(workers) - running, self.state_dir)

    async def _setup_master(self) -> None:
        rec = read_json(self._path("master.json"), root=self.state_dir, log=self.log)
        if rec is not None and self._children.ours(rec, self._master_daemon()):
            self.log.info("LocalBackend: adopting the Spark master, pid %d", rec["pid"])
        else:
            rec = self._start_master()
        self._master = rec
        self.master_url = f"spark://{rec['host']}:{rec['port']}"
        self.master_ui_url = f"http://{rec['host']}:{rec['webui_port']}"
        await self._wait_master_alive(rec)

    def _start_master(self) -> dict:
        host, ports = self.master_host, []
        if error := bind_error(host, 0):
            raise ConfigError(f"LocalBackend.master_host: cannot listen on {host}: {error}")
        for name in ("master_port", "master_webui_port"):
            port = getattr(self, name)
            if error := bind_error(host, port):
                raise ConfigError(f"LocalBackend.{name}: cannot listen on {host}:{port}: {error}")
            ports.append(port or free_port(host, avoid=ports))
        default_cores = [] if "spark.deploy.defaultCores" in self.spark_conf else [
            f"-Dspark.deploy.defaultCores={2 * self.worker_cores}"]  # spark_conf's help says why
        args = ["-Xmx256m", "-Dspark.master.rest.enabled=false", *self._master_daemon().marker,
                *default_cores, "-cp", self._classpath(), MASTER_CLASS,
                "--host", host, "--port", str(ports[0]), "--webui-port", str(ports[1])]
        rec = {**self._spawn(args, host=host, log_name="master.log"), "port": ports[0]}
        rec["webui_port"] = ports[1]
        write_json(self._path("master.json"), rec, root=self.state_dir)
        self.log.info("LocalBackend: started Spark master pid %d on %s:%d, UI :%d", rec["pid"], host, *ports)
        return rec

    async def _wait_master_alive(self, rec: dict) -> None:
        log = self._path("logs", "master.log")
        deadline = time.monotonic() + self.master_start_timeout
        while True:
            self._children.reap()
            # pid + start time, not the command line: a JVM's /proc cmdline can read empty
            # while it starts on a loaded machine (seen in the full test suite at load 8)
            if not alive(rec):
                raise BackendError(f"LocalBackend: the Spark master exited while starting; see {log}")
            if await self._master_status() == "ALIVE":
                return
            if time.monotonic() >= deadline:
                await self._terminate(rec, self._master_daemon(), "Spark master", self.stop_timeout)
                raise BackendError(f"LocalBackend: the Spark master was not ALIVE within "
                                   f"{self.master_start_timeout:.0f}s; see {log}")
            await asyncio.sleep(0.2)

    async def _master_status(self) -> str | None:
        """The master's status ("ALIVE", "STANDBY", ...); None while it does not answer."""
        request = HTTPRequest(f"{self.master_ui_url}/json/", connect_timeout=2, request_timeout=2)
        try:
            answer = await fetch_json(AsyncHTTPClient(), request, what="Spark master", error=BackendError)
        except BackendError:
            return None
        return answer.get("status") if isinstance(answer, dict) else None

    # -- workers ---------------------------------------------------------------

    def _worker(self, rec: dict) -> BackendWorker:
        elsewhere = rec.get("master", self.master_url) != self.master_url
        return BackendWorker(
            handle=rec["handle"], host=rec["host"], created_at=rec["created_at"], port=rec["port"],
            running=self._children.ours(rec, self._worker_daemon(rec["handle"])),
            webui_url=f"http://{rec['host']}:{rec['webui_port']}",
            retiring_since=rec.get("retiring_since"),
            problem=f"it joins {rec.get('master')}, not {self.master_url}" if elsewhere else "",
        )

    async def list(self) -> list[BackendWorker]:
        self._children.reap()
        return [self._worker(rec) for rec in self._records()]

    def _pick_host(self, used: set[str]) -> str:
        # skip addresses others listen on too: workers of another state dir, on the same master maybe
        taken = used | {self.master_host, urlsplit(self.master_url).hostname or ""} | listening_hosts()
        return loopback.pick_host(self.host_range, taken=taken, held=len(used))

    async def start(self, n: int) -> list[BackendWorker]:
        if not self._scala:
            raise BackendError("LocalBackend: setup() must run before start()")
        records = self._records()
        for _ in range(n):
            ports = {r[k] for r in records for k in ("port", "webui_port")}
            host = self._pick_host({r["host"] for r in records})
            if error := bind_error(host, 0):
                raise BackendError(f"LocalBackend.host_range: cannot listen on {host}: {error}")
            port = free_port(host, avoid=ports)
            ui = free_port("0.0.0.0", avoid=ports | {port})  # free on all addresses: UI ports stay distinct
            records.append(self._start_worker(host=host, port=port, ui=ui, records=records))
        return [self._worker(rec) for rec in records[-n:]] if n > 0 else []

    def _start_worker(self, *, host: str, port: int, ui: int, records: list[dict]) -> dict:
        handle = state_files.next_handle(self.state_dir, self.log)
        work_dir = self._path("work", handle)
        state_layout.work_dir(work_dir, self._user)
        archive = self._cds_archive()
        cds = class_data.worker_options(archive, dump_dir=self._path("cds", "dumps"), handle=handle,
                                        records=records, enabled=self.class_data_sharing)
        args = [f"-Xmx{self.worker_heap}", *cds, *self.extra_java_options,
                "-cp", self._classpath(), WORKER_CLASS, "--host", host, "--port", str(port),
                "--webui-port", str(ui), "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                "--work-dir", work_dir, self.master_url]
        rec = {**self._spawn(args, host=host, log_name=f"{handle}.log"), "port": port, "webui_port": ui,
               "master": self.master_url, "retiring_since": None}
        if dump := class_data.dump_file(cds):
            rec["cds_dump"] = dump
        write_json(self._worker_file(handle), rec, root=self.state_dir)
        self.log.info("LocalBackend: started worker %s pid %d on %s:%d", handle, rec["pid"], host, port)
        return {**rec, "handle": handle}

    def _cds_archive(self) -> str:
        return class_data.archive_path(
            self._path("cds"), java=self.java, spark_home=self.spark_home, worker_heap=self.worker_heap,
            extra_java_options=self.extra_java_options,
        )

    async def decommission(self, worker: BackendWorker) -> None:
        """Mark the worker retiring, then send SIGPWR if the JVM can take it yet.

        SIGPWR kills a JVM before Spark installs its handler, so it is not sent then;
        one sent before the worker registered is lost (Spark drops it). Both times the
        master still shows the worker ALIVE, and the reconciler calls this again.
        """
        path = self._worker_file(worker.handle)
        rec = read_json(path, root=self.state_dir, log=self.log)
        if rec is None:
            self.log.warning("LocalBackend: cannot decommission %s: no state file", worker.handle)
            return
        if rec.get("retiring_since") is None:
            rec["retiring_since"] = clock.now()
            write_json(path, rec, root=self.state_dir)
        if self.decommission_via_master:
            return  # the reconciler asks the master after this
        daemon = self._worker_daemon(worker.handle)
        if self._children.send(rec, daemon, signal.SIGPWR, check=lambda: catches(rec["pid"], signal.SIGPWR)):
            self.log.info("LocalBackend: sent SIGPWR to worker %s (pid %d)", worker.handle, rec["pid"])
        elif self._children.ours(rec, daemon):
            self.log.info("LocalBackend: worker %s cannot take SIGPWR yet (still starting)", worker.handle)

    async def stop(self, worker: BackendWorker) -> None:
        """Stop a worker once: a second stop while one runs (a cycle's and shutdown's) waits
        for the first; two would signal it twice and both settle its class data dump."""
        if worker.handle not in self._stopping:
            self._stopping[worker.handle] = asyncio.ensure_future(self._stop_once(worker))
            self._stopping[worker.handle].add_done_callback(lambda _: self._stopping.pop(worker.handle))
        # shielded: a caller cancelled (the cycle, at exit) leaves the stop to finish for the other
        await asyncio.shield(self._stopping[worker.handle])

    async def _stop_once(self, worker: BackendWorker) -> None:
        path = self._worker_file(worker.handle)
        rec = read_json(path, root=self.state_dir, log=self.log) or {}
        if not state_files.own_dump(rec, cds_dir=self._path("cds", "dumps"), handle=worker.handle):
            rec.pop("cds_dump")  # finish_dump would move or delete the file it names
        daemon = self._worker_daemon(worker.handle)
        # a process that is not this worker (a pid reused, a state file planted) is a dead
        # worker's: forgotten, nothing signalled
        ours = bool(rec) and await self._children.identify(rec, daemon)
        timeout = self.cds_dump_timeout if rec.get("cds_dump") else self.stop_timeout
        exited = await self._terminate(rec, daemon, f"worker {worker.handle}", timeout) if ours else False
        # a worker that died (SIGKILL, OOM) leaves its executors running in its work dir,
        # unknown to the master; deleting that dir under them would fail their tasks
        work = state_files.work_dir(self.state_dir, worker.handle, log=self.log)
        if work and (killed := end_executors(work)):
            self.log.warning("LocalBackend: killed %d executor process(es) worker %s left behind",
                             killed, worker.handle)
        class_data.finish_dump(rec, cds_dir=self._path("cds"), handle=worker.handle, stopped=ours,
                               exited=exited, log=self.log)
        log = self._path("logs", f"{worker.handle}.log")
        # keep the log of one that died on its own
        remove(path, f"{path}.tmp", *([log] if ours else []), root=self.state_dir)
        state_files.remove_work_dir(self.state_dir, worker.handle)
        self.log.info("LocalBackend: %s worker %s", "stopped" if ours else "forgot", worker.handle)

    async def shutdown(self) -> None:
        if not self.stop_on_exit:
            if self._master is not None or self._records():  # nothing to say after a failed setup
                self.log.info("LocalBackend: leaving the workers and master running for the next scaler "
                              "(stop_on_exit is False)")
            return
        await asyncio.gather(*(self.stop(w) for w in await self.list()))
        if self._master is not None and self._children.ours(self._master, self._master_daemon()):
            await self._terminate(self._master, self._master_daemon(), "Spark master", self.stop_timeout)
            self.log.info("LocalBackend: stopped the Spark master")
        if self._master is not None:
            remove(self._path("master.json"), root=self.state_dir)
            self._master = None
