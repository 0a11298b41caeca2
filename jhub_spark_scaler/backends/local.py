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

A pid counts as ours only if its start time (/proc/<pid>/stat field 22) and the
main class on its command line match the state file: pids get reused. (Right after
the spawn, before the command line is readable, the start time alone.)
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
import urllib.request
from urllib.parse import urlsplit

from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from ..model import BackendWorker
from . import Backend, BackendError

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
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
_HANDLE = re.compile(r"local-(\d+)")
_REQUIRED = {"pid", "start_time", "host", "port", "webui_port", "created_at"}


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # fields 3, 4, ...
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def _alive(rec: dict) -> bool:
    pid = rec.get("pid")
    return isinstance(pid, int) and pid > 0 and _start_time(pid) == rec.get("start_time")


def _is_ours(rec: dict, main_class: str) -> bool:
    """The process the record names is alive and is the Spark daemon we started. Its
    command line reads empty until the kernel has set up the exec'd program's arguments,
    a moment after Popen returns; the pid and start time already say it is ours then."""
    try:
        with open(f"/proc/{rec['pid']}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except (OSError, KeyError, TypeError):
        return False
    return (args == [b""] or main_class.encode() in args) and _alive(rec)


def _processes_in(directory: str) -> list[int]:
    """The processes whose working directory is `directory` or below it."""
    root, found = os.path.realpath(directory), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd == root or cwd.startswith(root + os.sep):
                found.append(int(entry))
    return found


def _catches(pid: int, sig: int) -> bool:
    """The process handles `sig` (a JVM without Spark's handler dies of SIGPWR)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: str, data: dict) -> None:
    with open(f"{path}.tmp", "w") as f:
        json.dump(data, f)
    os.replace(f"{path}.tmp", path)


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _free_port(host: str, *, avoid=()) -> int:
    """A port nothing listens on now (the kernel's pick), not one of `avoid`."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def _bind_error(host: str, port: int) -> str:
    """Why a daemon could not listen on host:port ("" if it can)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return ""


def _listening_hosts() -> set[str]:
    """IPv4 addresses something listens on (TCP, also as IPv4-mapped IPv6, as the JVM binds)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:  # "sl local_address:port rem_address:port st ..."
                address, state = line.split()[1].split(":")[0], line.split()[3]
                words = [int(address[i:i + 8], 16).to_bytes(4, sys.byteorder)  # words in host byte order
                         for i in range(0, len(address), 8)]
                if state == "0A" and (len(words) == 1 or words[:3] == [bytes(4), bytes(4), b"\0\0\xff\xff"]):
                    hosts.add(socket.inet_ntoa(words[-1]))  # LISTEN, IPv4 or ::ffff:a.b.c.d
    return hosts


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def _parse_range(text: str) -> tuple[int, int]:
    """'127.0.0.2-127.0.0.254' (or one address) -> (first, last) as integers."""
    first, _, last = text.partition("-")
    a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address((last or first).strip())
    if not (a.is_loopback and b.is_loopback and a <= b):
        raise ValueError(text)
    return int(a), int(b)


def _range_ok(text: str) -> bool:
    with contextlib.suppress(ValueError):
        return bool(_parse_range(text))
    return False


_PORT_CHECK = (lambda v: 0 <= v <= 65535, "is not a port (0 picks a free one)")
#: trait name -> (is the value valid, what is wrong otherwise)
_CHECKS = {
    "worker_cores": (lambda v: v >= 1, "must be at least 1"),
    # Spark's --memory needs a unit (a bare number means bytes); -Xmx takes k/m/g/t or bytes
    "worker_memory": (lambda v: re.fullmatch(r"[1-9]\d*[kmgt]b?", v, re.I), "is not a size like 512m or 2g"),
    "worker_heap": (lambda v: re.fullmatch(r"[1-9]\d*[kmgt]?", v, re.I), "is not a JVM heap size like 128m"),
    "master_port": _PORT_CHECK,
    "master_webui_port": _PORT_CHECK,
    "stop_timeout": (lambda v: v >= 0, "must not be negative"),
    "cds_dump_timeout": (lambda v: v >= 0, "must not be negative"),
    "master_start_timeout": (lambda v: v > 0, "must be positive"),
    "host_range": (_range_ok, "is not 'FIRST-LAST' (or one address) of 127.x.x.x addresses, FIRST <= LAST"),
    "master_url": (lambda v: not v or re.fullmatch(r"spark://[^/:,\s]+:\d+(,[^/:,\s]+:\d+)*/?", v),
                   "is not spark://host:port (or spark://host1:port1,host2:port2 for standby masters)"),
    "master_ui_url": (lambda v: not v or re.fullmatch(r"https?://[^/:\s]+(:\d+)?(/\S*)?", v),
                      "is not http://host:port"),
    # anything else would be taken for the JVM's main class
    "extra_java_options": (lambda v: all(o.startswith("-") for o in v), "are not all JVM options (-X...)"),
    "state_dir": (lambda v: v.strip(), "must not be empty"),
}


class LocalBackend(Backend):
    """Spark master (optional) and workers as local processes, one loopback address per worker."""

    spark_home = Unicode(
        help="Spark installation (with jars/). Default: $SPARK_HOME, else the pyspark package."
    ).tag(config=True)
    java = Unicode(help="The java executable (17+). Default: $JAVA_HOME/bin/java, else java on PATH.").tag(
        config=True
    )
    state_dir = Unicode(
        help="State files, logs, work dirs. Default: $XDG_STATE_HOME/jhub-spark-scaler/local "
        "($XDG_STATE_HOME defaults to ~/.local/state)."
    ).tag(config=True)
    start_master = Bool(
        True, help="Start a Spark master as a child process; if False, workers join LocalBackend.master_url."
    ).tag(config=True)
    master_url = Unicode("", help="spark://host:port of a master started elsewhere.").tag(config=True)
    master_ui_url = Unicode("", help="http://host:port of that master's web UI.").tag(config=True)
    master_host = Unicode("127.0.0.1", help="Address the started master binds to.").tag(config=True)
    master_port = Int(7077, help="RPC port of the started master; 0 picks a free one.").tag(config=True)
    master_webui_port = Int(8080, help="Web UI port of the started master; 0 picks one.").tag(config=True)
    master_start_timeout = Float(60.0, help="Seconds for a started master to be ALIVE.").tag(config=True)
    worker_cores = Int(1, help="Cores each worker offers (--cores).").tag(config=True)
    worker_memory = Unicode("1g", help="Memory each worker offers executors (--memory): 512m, 2g, ...").tag(
        config=True
    )
    worker_heap = Unicode("128m", help="-Xmx of a worker daemon (executors get JVMs of their own).").tag(
        config=True
    )
    host_range = Unicode(
        "127.0.0.2-127.0.0.254",
        help="Loopback addresses for workers, one each: 'FIRST-LAST' or one address. "
        "The master's is skipped; a stopped worker's is reused.",
    ).tag(config=True)
    stop_timeout = Float(10.0, help="Seconds from SIGTERM to SIGKILL when stopping.").tag(config=True)
    stop_on_exit = Bool(
        True, help="shutdown() stops all workers and the master; False leaves them for the next scaler."
    ).tag(config=True)
    extra_java_options = List(Unicode(), help="More JVM options for the worker daemons.").tag(config=True)
    spark_conf = Dict(
        value_trait=Unicode(), key_trait=Unicode(), help="Spark properties: -Dkey=value to master, workers."
    ).tag(config=True)
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

    @validate(*_CHECKS)
    def _check(self, proposal):
        ok, problem = _CHECKS[proposal.trait.name]
        if not ok(proposal.value):
            raise TraitError(f"LocalBackend.{proposal.trait.name}: {proposal.value!r} {problem}")
        return proposal.value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # traitlets does not validate a configured value equal to the trait's static default ('')
        for name in _CHECKS:
            setattr(self, name, getattr(self, name))
        self._children: set[int] = set()  # pids we spawned and have not reaped
        self._master: dict | None = None  # the master we started or adopted
        self._scala = ""

    # -- state files -----------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(self.state_dir, *parts)

    def _worker_file(self, handle: str) -> str:
        if not _HANDLE.fullmatch(handle):
            raise BackendError(f"LocalBackend: {handle!r} is not a local worker handle")
        return self._path("workers", f"{handle}.json")

    def _records(self) -> list[dict]:
        records = []
        for path in glob.glob(self._path("workers", "local-*.json")):
            rec, handle = _read_json(path), os.path.basename(path)[: -len(".json")]
            if rec is None or not _REQUIRED <= rec.keys() or not _HANDLE.fullmatch(handle):
                self.log.warning("LocalBackend: ignoring unreadable state file %s", path)
            else:
                records.append({**rec, "handle": handle})
        return sorted(records, key=lambda r: int(r["handle"][len("local-"):]))

    def _next_handle(self) -> str:
        try:
            with open(self._path("next-id")) as f:
                n = int(f.read())
        except (OSError, ValueError):
            n = 1
        n = max([n] + [int(r["handle"][len("local-"):]) + 1 for r in self._records()])
        with open(self._path("next-id.tmp"), "w") as f:
            f.write(str(n + 1))
        os.replace(self._path("next-id.tmp"), self._path("next-id"))
        return f"local-{n}"

    def _classpath(self) -> str:
        return os.path.join(self.spark_home, "jars", "*")

    def _reap(self, *pids: int) -> None:
        """Collect our children that exited (and `pids`, if children of this process): no zombies."""
        for pid in self._children | set(pids):
            try:
                done = os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:
                done = True
            if done:
                self._children.discard(pid)

    # -- processes -------------------------------------------------------------

    def _check_environment(self) -> None:
        java = shutil.which(self.java)
        if not java:
            raise BackendError(f"LocalBackend.java: no Java executable at {self.java!r}; "
                               "install Java 17+ or set LocalBackend.java")
        self.java = java
        cores = glob.glob(os.path.join(self.spark_home, "jars", "spark-core_*.jar"))
        if not self.spark_home or not cores:
            raise BackendError(f"LocalBackend.spark_home: no Spark jars in {self.spark_home!r}/jars; "
                               "pip install pyspark or set LocalBackend.spark_home")
        # the worker launches executors with Spark's launcher code, which needs it (spark-class sets it)
        self._scala = re.search(r"spark-core_([\d.]+)-", os.path.basename(cores[0])).group(1)

    def _spawn(self, args: list[str], *, host: str, log_name: str) -> dict:
        """Start a Spark daemon in a session of its own; return its identity for a state file."""
        # maxRetries=0: a daemon binds the ports in its state file or fails, never port+1 unnoticed
        cmd = [self.java, *FAST_JVM_OPTIONS, "-Dspark.decommission.enabled=true", "-Dspark.port.maxRetries=0",
               *[f"-D{k}={v}" for k, v in self.spark_conf.items()], *args]
        env = {**os.environ, "SPARK_HOME": self.spark_home, "SPARK_SCALA_VERSION": self._scala}
        env["SPARK_LOCAL_IP"] = host
        log = os.open(self._path("logs", log_name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:  # a plain pid, not a Popen: nothing warns when a scaler leaves its workers running
            pid = os.posix_spawn(self.java, cmd, env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
            ])
        finally:
            os.close(log)
        self._children.add(pid)
        return {"pid": pid, "start_time": _start_time(pid), "created_at": time.time(), "host": host}

    async def _wait_gone(self, rec: dict, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            gone = not _alive(rec)  # a zombie counts as gone: reap it now
            self._reap(rec["pid"])  # (another backend in this process may have spawned it)
            if gone:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def _terminate(self, rec: dict, what: str, timeout: float) -> bool:
        """SIGTERM; after `timeout` seconds SIGKILL to its process group (with the executors
        it launched). True if it exited on SIGTERM."""
        pid = rec["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
            if await self._wait_gone(rec, timeout):
                return True
            self.log.warning("LocalBackend: %s (pid %d) outlived SIGTERM by %.0fs; killing it",
                             what, pid, timeout)
            os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        await self._wait_gone(rec, 5.0)
        return False

    # -- master ----------------------------------------------------------------

    async def setup(self) -> None:
        self._check_environment()
        for sub in ("workers", "logs", "work", "cds"):
            try:
                os.makedirs(self._path(sub), exist_ok=True)
            except OSError as e:
                raise BackendError(
                    f"LocalBackend.state_dir: cannot create {self._path(sub)}: {e.strerror}"
                ) from None
        if self.start_master:
            await self._setup_master()
        elif not self.master_url:
            raise BackendError("LocalBackend.master_url: must be set when LocalBackend.start_master is False")
        archive = self._cds_archive()
        _remove(*(p for p in glob.glob(self._path("cds", "worker-*")) if not p.startswith(archive)))
        workers = await self.list()
        running = sum(w.running for w in workers)
        self.log.info("LocalBackend: adopted %d running worker(s) and %d dead one(s); state in %s",
                      running, len(workers) - running, self.state_dir)

    async def _setup_master(self) -> None:
        rec = _read_json(self._path("master.json"))
        if rec is not None and _is_ours(rec, MASTER_CLASS):
            self.log.info("LocalBackend: adopting the Spark master, pid %d", rec["pid"])
        else:
            rec = self._start_master()
        self._master = rec
        self.master_url = f"spark://{rec['host']}:{rec['port']}"
        self.master_ui_url = f"http://{rec['host']}:{rec['webui_port']}"
        await self._wait_master_alive(rec)

    def _start_master(self) -> dict:
        host, ports = self.master_host, []
        if error := _bind_error(host, 0):
            raise BackendError(f"LocalBackend.master_host: cannot listen on {host}: {error}")
        for name in ("master_port", "master_webui_port"):
            port = getattr(self, name)
            if error := _bind_error(host, port):
                raise BackendError(f"LocalBackend.{name}: cannot listen on {host}:{port}: {error}")
            ports.append(port or _free_port(host, avoid=ports))
        args = ["-Xmx256m", "-Dspark.master.rest.enabled=false", "-cp", self._classpath(), MASTER_CLASS,
                "--host", host, "--port", str(ports[0]), "--webui-port", str(ports[1])]
        rec = {**self._spawn(args, host=host, log_name="master.log"), "port": ports[0]}
        rec["webui_port"] = ports[1]
        _write_json(self._path("master.json"), rec)
        self.log.info("LocalBackend: started Spark master pid %d on %s:%d, UI :%d", rec["pid"], host, *ports)
        return rec

    async def _wait_master_alive(self, rec: dict) -> None:
        log = self._path("logs", "master.log")
        deadline = time.monotonic() + self.master_start_timeout
        while True:
            self._reap()
            # pid + start time, not the command line: a JVM's /proc cmdline can read empty
            # while it starts on a loaded machine (seen in the full test suite at load 8)
            if not _alive(rec):
                raise BackendError(f"LocalBackend: the Spark master exited while starting; see {log}")
            try:
                status = (await asyncio.to_thread(_get_json, f"{self.master_ui_url}/json/")).get("status")
            except (OSError, ValueError):
                status = None
            if status == "ALIVE":
                return
            if time.monotonic() >= deadline:
                await self._terminate(rec, "Spark master", self.stop_timeout)
                raise BackendError(f"LocalBackend: the Spark master was not ALIVE within "
                                   f"{self.master_start_timeout:.0f}s; see {log}")
            await asyncio.sleep(0.2)

    # -- workers ---------------------------------------------------------------

    def _worker(self, rec: dict) -> BackendWorker:
        elsewhere = rec.get("master", self.master_url) != self.master_url
        return BackendWorker(
            handle=rec["handle"], host=rec["host"], created_at=rec["created_at"], port=rec["port"],
            running=_is_ours(rec, WORKER_CLASS), webui_url=f"http://{rec['host']}:{rec['webui_port']}",
            retiring_since=rec.get("retiring_since"),
            problem=f"it joins {rec.get('master')}, not {self.master_url}" if elsewhere else "",
        )

    async def list(self) -> list[BackendWorker]:
        self._reap()
        return [self._worker(rec) for rec in self._records()]

    def _pick_host(self, used: set[str]) -> str:
        first, last = _parse_range(self.host_range)
        # skip addresses others listen on too: workers of another state dir, on the same master maybe
        taken = used | {self.master_host, urlsplit(self.master_url).hostname or ""} | _listening_hosts()
        for n in range(first, last + 1):
            if str(ipaddress.IPv4Address(n)) not in taken:
                return str(ipaddress.IPv4Address(n))
        raise BackendError(f"LocalBackend.host_range: no address left in {self.host_range} "
                           f"({len(used)} workers hold one); widen it")

    async def start(self, n: int) -> list[BackendWorker]:
        if not self._scala:
            raise BackendError("LocalBackend: setup() must run before start()")
        records = self._records()
        for _ in range(n):
            ports = {r[k] for r in records for k in ("port", "webui_port")}
            host = self._pick_host({r["host"] for r in records})
            if error := _bind_error(host, 0):
                raise BackendError(f"LocalBackend.host_range: cannot listen on {host}: {error}")
            port = _free_port(host, avoid=ports)
            ui = _free_port("0.0.0.0", avoid=ports | {port})  # free on all addresses: UI ports stay distinct
            records.append(self._start_worker(host=host, port=port, ui=ui, records=records))
        return [self._worker(rec) for rec in records[-n:]] if n > 0 else []

    def _start_worker(self, *, host: str, port: int, ui: int, records: list[dict]) -> dict:
        handle = self._next_handle()
        work_dir = self._path("work", handle)
        os.makedirs(work_dir, exist_ok=True)
        cds = self._cds_options(handle, records)
        args = [f"-Xmx{self.worker_heap}", *cds, *self.extra_java_options,
                "-cp", self._classpath(), WORKER_CLASS, "--host", host, "--port", str(port),
                "--webui-port", str(ui), "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                "--work-dir", work_dir, self.master_url]
        rec = {**self._spawn(args, host=host, log_name=f"{handle}.log"), "port": port, "webui_port": ui,
               "master": self.master_url, "retiring_since": None}
        if cds and cds[0].startswith("-XX:ArchiveClassesAtExit="):
            rec["cds_dump"] = cds[0].partition("=")[2]
        _write_json(self._worker_file(handle), rec)
        self.log.info("LocalBackend: started worker %s pid %d on %s:%d", handle, rec["pid"], host, port)
        return {**rec, "handle": handle}

    def _cds_archive(self) -> str:
        """The AppCDS archive path, keyed on what makes an archive valid: JVM, jars, options."""
        java = os.path.realpath(self.java)
        jars = sorted(os.listdir(os.path.join(self.spark_home, "jars")))
        key = json.dumps([java, os.stat(java).st_mtime, jars, self.worker_heap, self.extra_java_options])
        return self._path("cds", f"worker-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa")

    def _cds_options(self, handle: str, records: list[dict]) -> list[str]:
        """Use the archive; else (Java 17 cannot auto-create one) have one worker dump its
        classes when it exits, which `stop()` then moves in place: one at a time, until one
        writes the archive or fails to (see `_finish_cds`)."""
        archive = self._cds_archive()
        if not self.class_data_sharing or os.path.exists(f"{archive}.failed"):
            return []
        if os.path.exists(archive):
            return [f"-XX:SharedArchiveFile={archive}"]
        if any(r.get("cds_dump") and _alive(r) for r in records):
            return []
        return [f"-XX:ArchiveClassesAtExit={archive}.{handle}.tmp"]

    def _finish_cds(self, handle: str, rec: dict, stopped: bool, exited: bool) -> None:
        """Move the dumping worker's archive in place. One that died before its stop
        (SIGKILL, OOM) never got to dump: the next worker tries. One that exited without
        an archive, or outlived cds_dump_timeout, marks the archive failed for good."""
        dump = rec.get("cds_dump")
        if not dump:
            return
        archive = dump.removesuffix(f".{handle}.tmp")
        if exited and os.path.exists(dump):
            os.replace(dump, archive)
            self.log.info("LocalBackend: wrote %s; workers will start from it", archive)
            return
        _remove(dump)
        if not stopped:
            self.log.warning("LocalBackend: worker %s died before writing the class data archive; "
                             "the next worker writes it", handle)
            return
        open(f"{archive}.failed", "w").close()
        why = "exited without one" if exited else "was killed after LocalBackend.cds_dump_timeout"
        self.log.warning("LocalBackend: worker %s wrote no class data archive (%s); not trying again "
                         "until %s.failed is removed", handle, why, archive)

    async def decommission(self, worker: BackendWorker) -> None:
        """Mark the worker retiring, then send SIGPWR if the JVM can take it yet.

        SIGPWR kills a JVM before Spark installs its handler, so it is not sent then;
        one sent before the worker registered is lost (Spark drops it). Both times the
        master still shows the worker ALIVE, and the reconciler calls this again.
        """
        path = self._worker_file(worker.handle)
        rec = _read_json(path)
        if rec is None:
            self.log.warning("LocalBackend: cannot decommission %s: no state file", worker.handle)
            return
        if rec.get("retiring_since") is None:
            rec["retiring_since"] = time.time()
            _write_json(path, rec)
        if not _is_ours(rec, WORKER_CLASS) or self.decommission_via_master:
            return  # with "master", the reconciler asks the master after this
        if _catches(rec["pid"], signal.SIGPWR):
            os.kill(rec["pid"], signal.SIGPWR)
            self.log.info("LocalBackend: sent SIGPWR to worker %s (pid %d)", worker.handle, rec["pid"])
        else:
            self.log.info("LocalBackend: worker %s cannot take SIGPWR yet (still starting)", worker.handle)

    async def stop(self, worker: BackendWorker) -> None:
        path = self._worker_file(worker.handle)
        rec = _read_json(path) or {}
        # pid + start time name one process for good: stop it even if its command line
        # cannot be read right now (a JVM still starting was seen to slip through)
        ours = bool(rec) and _alive(rec)
        timeout = self.cds_dump_timeout if rec.get("cds_dump") else self.stop_timeout
        exited = await self._terminate(rec, f"worker {worker.handle}", timeout) if ours else False
        # a worker that died (SIGKILL, OOM) leaves its executors running in its work dir,
        # unknown to the master; deleting that dir under them would fail their tasks
        if left := _processes_in(self._path("work", worker.handle)):
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.log.warning("LocalBackend: killed %d executor process(es) worker %s left behind",
                             len(left), worker.handle)
        self._finish_cds(worker.handle, rec, ours, exited)
        log = self._path("logs", f"{worker.handle}.log")
        _remove(path, f"{path}.tmp", *([log] if ours else []))  # keep the log of one that died on its own
        shutil.rmtree(self._path("work", worker.handle), ignore_errors=True)
        self.log.info("LocalBackend: %s worker %s", "stopped" if ours else "forgot", worker.handle)

    async def shutdown(self) -> None:
        if not self.stop_on_exit:
            self.log.info("LocalBackend: leaving workers and master running (stop_on_exit is False)")
            return
        await asyncio.gather(*(self.stop(w) for w in await self.list()))
        if self._master is not None and _is_ours(self._master, MASTER_CLASS):
            await self._terminate(self._master, "Spark master", self.stop_timeout)
            self.log.info("LocalBackend: stopped the Spark master")
        if self._master is not None:
            _remove(self._path("master.json"))
            self._master = None
