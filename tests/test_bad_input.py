"""Bad input (issue 7, part 3): every setting with a wrong value, a Spark master answering
garbage or nothing, and forged, oversized or malformed requests to the service. Each gets
one clear error or a refusal; the service keeps running and loses no state.

What is real: the command's own `main()` (in-process, and once as `python -m
jhub_spark_scaler`); the Reconciler with the local backend, a real Spark master and a
real worker; and a real JupyterHub (pytest-jupyterhub's MockHub) running the real scaler
as its managed service, reached over HTTP, as in test_admin_page.py.

What stands in: the Spark master's web UI, where it must misbehave. A real master cannot
be made to answer truncated or mistyped JSON, 20 MB, HTML, or nothing at all, so a real
tornado server on 127.0.0.1 (a free port) answers in its place (`StandInMaster`): in mode
"proxy" it forwards the real master's /json/ (plus extra apps and workers whose names
carry markup, when a test adds them); in any other mode it answers the garbage it names.

Settings run in-process through `main()`, with the four places where the command would
start or reach something (a Spark process, the Kubernetes API, the reconciler, the hub
service) replaced by a trap: a wrong value must stop the command before any of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from traitlets import Bool, Callable, Dict, Enum, Float, Int, List, Type, Unicode

from jhub_spark_scaler import app as app_module
from jhub_spark_scaler.app import SparkScalerApp, main
from jhub_spark_scaler.backends import kubernetes as kubernetes_module
from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.backends.local import LocalBackend
from jhub_spark_scaler.constants import ADMIN_SCOPE, EVENTS_SECRET_ENV
from jhub_spark_scaler.model import WorkerState
from jhub_spark_scaler.reconciler import Reconciler
from jhub_spark_scaler.service import HubService
from jhub_spark_scaler.spark import MAX_BODY_BYTES, SparkClient

from .waiting import until
from .real_hub import hub_api, worker_records
from .settings import AS_ROOT, DECISION_LOG_SIZE, make_observe, make_policy
from .test_scaling import cycles_until

ERROR = "jhub-spark-scaler: error: "
XSS = "<script>alert(1)</script>"
XSS_SHOWN = "&lt;script&gt;alert(1)&lt;/script&gt;"
SURROGATE = "\ud800"  # a lone surrogate: valid in JSON ("\ud800"), not encodable as UTF-8


# == Settings ====================================================================================


class Trapped(Exception):
    """A wrong setting got as far as starting or reaching something."""


class Py:
    """A value for the config file (any Python value), not the command line (a string)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return f"Py({self.value!r})"


CLASSES = (SparkScalerApp, LocalBackend, KubernetesBackend)
SETTINGS = {(cls.__name__, name): trait
            for cls in CLASSES for name, trait in cls.class_traits(config=True).items()}


def wrong_type(trait) -> str | Py:
    """An invalid value generated from the trait's type: a string that no Bool, Int, Float,
    Enum or Type accepts on the command line; for the rest, a value of another type in the
    config file (every string on the command line is a valid Unicode)."""
    if isinstance(trait, Bool):
        return "maybe"
    if isinstance(trait, (Int, Float)):
        return "many"
    if isinstance(trait, Enum):
        return "no-such-choice"
    if isinstance(trait, Type):
        return "no_such_module.NoSuchBackend"
    if isinstance(trait, (Unicode, Dict, List, Callable)):
        return Py(42)
    raise AssertionError(f"no wrong value known for a {type(trait).__name__}: teach wrong_type() one")


#: A value of the right type but outside what the setting allows, and a part of the one-line
#: error. The line must also name the setting: that is checked for every case.
OUT_OF_RANGE: dict[tuple[str, str], tuple[str | Py, str]] = {
    ("SparkScalerApp", "backend_class"): ("collections.OrderedDict",
                                          "subclass of 'jhub_spark_scaler.backends"),
    ("SparkScalerApp", "config_file"): ("/nonexistent/scaler_config.py", "not found"),
    ("SparkScalerApp", "decision_log_size"): ("-1", ">= 0"),
    ("SparkScalerApp", "drain_timeout"): ("-1", ">= 0"),
    ("SparkScalerApp", "exit_timeout"): ("-1", ">= 0"),
    ("SparkScalerApp", "held_after"): ("-1", ">= 0"),
    ("SparkScalerApp", "http_timeout"): ("0", ">= 0.05"),
    ("SparkScalerApp", "hub_api_token"): (Py("two words"), "space"),
    ("SparkScalerApp", "hub_api_url"): ("hub:8081/hub/api", "http://"),
    ("SparkScalerApp", "hub_poll_interval"): ("0", ">= 0.05"),
    ("SparkScalerApp", "hub_stale_after"): ("-1", ">= 0"),
    ("SparkScalerApp", "idle_workers"): ("-1", ">= 0"),
    ("SparkScalerApp", "log_datefmt"): (Py("%Y\0"), "cannot format a log line"),
    ("SparkScalerApp", "log_format"): ("%(highlevel)s %(message)s", "cannot format a log line"),
    ("SparkScalerApp", "logging_config"): (Py({"version": 2}), "Unsupported version"),
    ("SparkScalerApp", "master_ui_url"): ("spark-master:8080", "http://"),
    ("SparkScalerApp", "max_surge"): ("0", ">= 1"),
    ("SparkScalerApp", "max_workers"): ("0", ">= 1"),
    ("SparkScalerApp", "min_workers"): ("4", "min_workers (4) > max_workers (3)"),
    ("SparkScalerApp", "poll_interval"): ("0.01", ">= 0.05"),
    ("SparkScalerApp", "prewarm_window"): ("-1", ">= 0"),
    ("SparkScalerApp", "prewarm_workers_per_server"): ("-1", ">= 0"),
    ("SparkScalerApp", "prewarm_history"): ("-1", ">= 0"),
    ("SparkScalerApp", "scale_down_delay"): ("-1", ">= 0"),
    ("SparkScalerApp", "service_prefix"): ("services/spark-scaler/", "must start with '/'"),
    ("SparkScalerApp", "service_url"): ("http://127.0.0.1:port", "is not a URL"),
    ("SparkScalerApp", "start_timeout"): ("-1", ">= 0"),
    ("SparkScalerApp", "node_wait_timeout"): ("-1", ">= 0"),
    ("LocalBackend", "cds_dump_timeout"): ("-1", "must not be negative"),
    ("LocalBackend", "run_as"): ("no-such-user-here", "no Unix user"),
    ("LocalBackend", "extra_java_options"): ("Xmx1g", "JVM options"),
    ("LocalBackend", "host_range"): ("10.0.0.2-10.0.0.9", "127.x.x.x"),
    ("LocalBackend", "java"): ("/nonexistent/java", "no Java executable"),
    ("LocalBackend", "master_host"): ("192.0.2.1", "cannot listen on 192.0.2.1"),  # TEST-NET-1: not ours
    ("LocalBackend", "master_port"): ("70000", "not a port"),
    ("LocalBackend", "master_start_timeout"): ("0", "must be positive"),
    ("LocalBackend", "master_ui_url"): ("127.0.0.1:8080", "http://host:port"),
    ("LocalBackend", "master_url"): ("127.0.0.1:7077", "spark://host:port"),
    ("LocalBackend", "master_webui_port"): ("-1", "not a port"),
    ("LocalBackend", "spark_home"): ("/nonexistent/spark", "no Spark jars"),
    ("LocalBackend", "state_dir"): (Py(""), "must not be empty"),
    ("LocalBackend", "stop_timeout"): ("-1", "must not be negative"),
    ("LocalBackend", "worker_cores"): ("0", "at least 1"),
    ("LocalBackend", "worker_heap"): ("lots", "not a JVM heap size"),
    ("LocalBackend", "worker_memory"): ("512", "not a size"),  # Spark would read bytes
    ("KubernetesBackend", "api_timeout"): ("0", "must be positive"),
    ("KubernetesBackend", "lease_duration"): ("0", "must be positive"),
    ("KubernetesBackend", "run_as_user"): ("0", "must be a user id other than root's 0"),
    ("KubernetesBackend", "lease_renew_deadline"): ("0", "must be positive"),
    ("KubernetesBackend", "lease_retry_period"): ("0", "must be positive"),
    ("KubernetesBackend", "context"): ("no-such-context", "no-such-context"),
    ("KubernetesBackend", "cpu_guarantee"): ("lots", "not a Kubernetes quantity"),
    ("KubernetesBackend", "cpu_limit"): ("0", "not a Kubernetes quantity"),
    ("KubernetesBackend", "daemon_memory"): ("256Mi", "not a Spark memory size"),
    ("KubernetesBackend", "extra_env"): (Py({"SPARK_WORKER_OPTS": "-Dspark.decommission.enabled=false"}),
                                         "names a variable the scaler sets"),
    ("KubernetesBackend", "image"): ("", "not an image reference"),
    ("KubernetesBackend", "image_pull_policy"): ("Sometimes", "Always, IfNotPresent or Never"),
    ("KubernetesBackend", "image_pull_secrets"): ("Registry_Key", "Secret names"),
    ("KubernetesBackend", "jvm_overhead"): ("-1", "must not be negative"),
    ("KubernetesBackend", "kubeconfig"): ("/nonexistent/kubeconfig", "is not a file"),
    ("KubernetesBackend", "master_memory"): ("500Mi", "at least 512Mi"),
    ("KubernetesBackend", "master_name"): ("Spark_Master", "not a Service name"),
    ("KubernetesBackend", "master_ui_url"): ("spark-master-ui:8080", "http://host:port"),
    ("KubernetesBackend", "master_url"): ("spark-master:7077", "spark://host:port"),
    ("KubernetesBackend", "memory_guarantee"): ("2GB", "not a Kubernetes quantity"),
    ("KubernetesBackend", "memory_limit"): ("600Mi", "leaves"),
    ("KubernetesBackend", "namespace"): ("Spark_NS", "not a namespace name"),
    ("KubernetesBackend", "owner"): ("Deployment", "'Kind/name'"),
    ("KubernetesBackend", "pool"): ("Team_A", "lowercase"),
    ("KubernetesBackend", "service_account"): ("Scaler Account", "not a ServiceAccount name"),
    ("KubernetesBackend", "setup_timeout"): ("0", "must be positive"),
    ("KubernetesBackend", "stop_grace_period"): ("-1", "must not be negative"),
    ("KubernetesBackend", "pod_drain_timeout"): ("-1", "must not be negative"),
    ("KubernetesBackend", "default_cores"): ("0", "at least 1"),
    ("KubernetesBackend", "watch_timeout"): ("0", "at least 1"),
    ("KubernetesBackend", "worker_cores"): ("-1", "must not be negative"),
    ("KubernetesBackend", "worker_memory"): ("lots", "not a Spark memory size"),
}

#: Settings where every value of the right type is accepted, and why. (A value of the wrong
#: type is refused for these too: the generated case above.)
ACCEPTED_BY_DESIGN: dict[tuple[str, str], str] = {
    ("SparkScalerApp", "authenticate_prometheus"): "a Bool: both values are meaningful",
    ("SparkScalerApp", "count_foreign_workers"): "a Bool: both values are meaningful",
    ("SparkScalerApp", "generate_config"): "a Bool: both values are meaningful",
    ("SparkScalerApp", "standby"): "a Bool: both values are meaningful",
    ("SparkScalerApp", "show_config"): "a Bool (traitlets'): both values are meaningful",
    ("SparkScalerApp", "show_config_json"): "a Bool (traitlets'): both values are meaningful",
    ("SparkScalerApp", "log_level"): "an Enum: a value outside its choices is the wrong-type case",
    ("SparkScalerApp", "prewarm_profiles"): "any string may be a profile slug or a server name; one no "
                                            "server has lets none through, which the page shows",
    ("LocalBackend", "class_data_sharing"): "a Bool: both values are meaningful",
    ("LocalBackend", "external_shuffle_service"): "a Bool: both values are meaningful",
    ("KubernetesBackend", "external_shuffle_service"): "a Bool: both values are meaningful",
    ("LocalBackend", "allow_root"): "a Bool: both values are meaningful",
    ("LocalBackend", "start_master"): "a Bool: both values are meaningful",
    ("LocalBackend", "stop_on_exit"): "a Bool: both values are meaningful",
    ("LocalBackend", "decommission_method"): "an Enum: a value outside its choices is the wrong-type case",
    ("LocalBackend", "spark_conf"): "Spark properties (str to str) are free-form; Spark ignores unknown ones",
    ("KubernetesBackend", "manage_master"): "a Bool: both values are meaningful",
    ("KubernetesBackend", "spark_conf"): "Spark properties are free-form; Spark ignores unknown ones",
    **{("KubernetesBackend", name): "copied into the pod manifest as it is; the apiserver validates it "
       "(tests/test_kubernetes_backend.py dry-runs the manifests) and refuses a bad pod in one line"
       for name in ("affinity", "extra_annotations", "extra_labels", "node_selector",
                    "tolerations", "volumes", "volume_mounts")},
    ("KubernetesBackend", "modify_pod_hook"):
        "any callable; the pod it returns is the apiserver's to validate",
}

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: not-used}}]
contexts: [{name: ctx, context: {cluster: c, user: u, namespace: spark}}]
current-context: ctx
"""


@pytest.fixture
async def command(tmp_path, monkeypatch, capsys):
    """`command(settings, config=..., args=...)` runs `main()` in-process with `settings`
    ({(class, trait): command-line string or Py(value for the config file)}) over a base
    that would otherwise start the scaler, and returns the lines it wrote to stderr after
    checking it exited 2. Starting a Spark process, calling the Kubernetes API, making the
    reconciler or starting the hub service raises Trapped instead.

    main() ends in asyncio.run(), which leaves the thread with no current event loop: `run`
    makes the session's loop (this fixture runs in it) current again, or a server started
    later outside a coroutine (tornado's IOLoop.current()) would listen on a new loop that
    nothing runs."""
    session_loop = asyncio.get_running_loop()

    def trap(what: str):
        def reached(*args, **kwargs):
            raise Trapped(f"a wrong setting got as far as {what}")
        return reached

    monkeypatch.setattr(LocalBackend, "_spawn", trap("starting a Spark process"))
    monkeypatch.setattr(kubernetes_module, "KubeApi", trap("the Kubernetes API"))
    monkeypatch.setattr(app_module, "Reconciler", trap("making the reconciler"))
    monkeypatch.setattr(HubService, "start", trap("starting the hub service"))
    monkeypatch.chdir(tmp_path)  # the default config file, jhub_spark_scaler_config.py, is read from here
    for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL",
                 "JUPYTERHUB_SERVICE_PREFIX", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    base = {("SparkScalerApp", "max_workers"): "3", ("LocalBackend", "state_dir"): str(tmp_path / "state"),
            ("LocalBackend", "allow_root"): str(AS_ROOT["allow_root"])}

    def run(settings: dict, *, config: str = "", args: tuple[str, ...] = ()) -> list[str]:
        chosen = {**base, **settings}
        if any(cls == "KubernetesBackend" for cls, _ in chosen):
            chosen = {("SparkScalerApp", "backend_class"): "kubernetes",
                      ("KubernetesBackend", "kubeconfig"): str(tmp_path / "kubeconfig"), **chosen}
        argv = [f"--{cls}.{name}={value}" for (cls, name), value in chosen.items()
                if not isinstance(value, Py)]
        lines = [f"c.{cls}.{name} = {value.value!r}" for (cls, name), value in chosen.items()
                 if isinstance(value, Py)]
        (tmp_path / "jhub_spark_scaler_config.py").write_text("\n".join([config, *lines]) + "\n")
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as exited:
                main([*argv, *args])
        finally:
            asyncio.set_event_loop(session_loop)
        stderr = capsys.readouterr().err
        assert exited.value.code == 2, stderr
        return stderr.splitlines()

    return run


def test_main_in_process_leaves_the_sessions_event_loop_current(command):
    """A setting refused inside asyncio.run() (the backend's setup), then the thread's
    current loop is still the one the tests run in."""
    before = IOLoop.current()
    one_line_naming(command({("LocalBackend", "java"): "/nonexistent/java"}), "java")
    assert IOLoop.current() is before


def one_line_naming(lines: list[str], *names: str) -> str:
    """The one line of `lines`, in main()'s form, saying each of `names` (a setting's name
    may be spelt with spaces: "config file")."""
    assert len(lines) == 1, lines
    assert lines[0].startswith(ERROR), lines
    for name in names:
        assert name in lines[0] or name.replace("_", " ") in lines[0], (name, lines[0])
    return lines[0]


def test_every_setting_is_refused_out_of_range_or_accepted_by_design():
    """A new setting fails here until it gets a wrong value in OUT_OF_RANGE or a reason in
    ACCEPTED_BY_DESIGN."""
    assert set(OUT_OF_RANGE).isdisjoint(ACCEPTED_BY_DESIGN)
    assert set(OUT_OF_RANGE) | set(ACCEPTED_BY_DESIGN) == set(SETTINGS), (
        sorted(set(SETTINGS) - set(OUT_OF_RANGE) - set(ACCEPTED_BY_DESIGN)),
        sorted((set(OUT_OF_RANGE) | set(ACCEPTED_BY_DESIGN)) - set(SETTINGS)),
    )


@pytest.mark.parametrize("setting", sorted(SETTINGS), ids="{0[0]}.{0[1]}".format)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_setting(setting, command):
    value = wrong_type(SETTINGS[setting])
    one_line_naming(command({setting: value}), setting[1])


@pytest.mark.parametrize("setting", sorted(OUT_OF_RANGE), ids="{0[0]}.{0[1]}".format)
def test_a_value_out_of_range_is_one_line_naming_the_setting(setting, command):
    value, expected = OUT_OF_RANGE[setting]
    one_line_naming(command({setting: value}), setting[1], expected)


@pytest.mark.parametrize("args, config, expected", [
    (["--nonsense=1"], "", ["unknown option --nonsense"]),
    (["--LocalBackend.worker_cors=2"], "", ["unknown setting LocalBackend.worker_cors",
                                            "did you mean LocalBackend.worker_cores"]),
    (["--NoSuchClass.x=1"], "", ["unknown setting 'NoSuchClass'"]),
    (["start"], "", ["unexpected argument 'start'"]),
    ([], "c.KubernetesBackend.pol = 'a'", ["unknown setting KubernetesBackend.pol",
                                           "did you mean KubernetesBackend.pool"]),
    ([], "c.SparkScalerApp.idle_workers = = 2", ["config file jhub_spark_scaler_config.py: SyntaxError"]),
    ([], "raise RuntimeError('boom')", ["config file jhub_spark_scaler_config.py: RuntimeError: boom"]),
    (["--SparkScalerApp.hub_api_url=http://127.0.0.1:8081/hub/api"], "", ["hub_api_token", "is required"]),
    (["--backend=kubernetes"], "", ["no Kubernetes credentials", "KubernetesBackend.kubeconfig"]),
])
def test_command_line_and_config_file_mistakes_are_one_line(args, config, expected, command):
    one_line_naming(command({}, config=config, args=tuple(args)), *expected)


@pytest.mark.parametrize("name, expected", [("settings.txt", ".py or .json"),
                                            ("state-file", "Not a directory")])
def test_a_file_where_a_config_file_or_directory_belongs(name, expected, command, tmp_path):
    (tmp_path / name).write_text("c.SparkScalerApp.idle_workers = 2\n")
    setting = ("SparkScalerApp", "config_file") if name.endswith(".txt") else ("LocalBackend", "state_dir")
    one_line_naming(command({setting: str(tmp_path / name)}), setting[1], expected)


def test_the_process_exits_2_with_the_same_one_line(tmp_path):
    (tmp_path / "jhub_spark_scaler_config.py").write_text("c.SparkScalerApp.max_workers = = 3\n")
    done = subprocess.run([sys.executable, "-m", "jhub_spark_scaler"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    one_line_naming(done.stderr.splitlines(), "config file jhub_spark_scaler_config.py: SyntaxError")


# == A Spark master that answers garbage =========================================================


def _huge_master(size: int) -> bytes:
    """A master document of `size` bytes: thousands of well-formed workers, then one whose port
    is a string (JSON's types checked to the last entry, in bounded time)."""
    worker = {"id": "worker-x", "host": "10.0.0.1", "port": 7078, "webuiaddress": "http://10.0.0.1:8081",
              "cores": 4, "coresused": 0, "memory": 1024, "memoryused": 0, "state": "ALIVE",
              "lastheartbeat": 1}
    entry = json.dumps(worker)
    bad = json.dumps({**worker, "port": "7078"})
    return ('{"status": "ALIVE", "workers": [' + ", ".join([entry] * (size // (len(entry) + 2))) + ", " + bad
            + '], "activeapps": []}').encode()


def _deep(depth: int) -> bytes:
    return b'{"status": "ALIVE", "workers": ' + b"[" * depth + b"]" * depth + b"}"


HUGE = 20 * 2**20
#: mode -> (HTTP status, body) of the stand-in's answer
BODIES: dict[str, tuple[int, bytes | None]] = {
    "truncated": (200, None),  # the first half of the real master's answer (made at request time)
    "wrong-types": (200, json.dumps({"status": "ALIVE", "workers": [
        {"id": 7, "host": "h", "port": 7078, "state": "ALIVE"}]}).encode()),
    "not-an-object": (200, b'[{"status": "ALIVE"}]'),
    "html": (200, b"<!DOCTYPE html><html><body><h1>Spark Master at spark://x:7077</h1></body></html>"),
    "html-503": (503, b"<html><body>503 Service Unavailable (a proxy in front of the master)</body></html>"),
    "empty": (200, b""),
    "not-utf8": (200, b'{"status": "ALIVE", "url": "\xff\xfe"}'),
    "standby": (200, b'{"status": "STANDBY", "workers": [], "activeapps": []}'),
    "nested": (200, _deep(100_000)),
}


class StandInHandler(RequestHandler):
    def initialize(self, stand_in: StandInMaster):
        self.stand_in = stand_in
        self.gone = asyncio.Event()

    def on_connection_close(self):
        self.gone.set()

    async def wait_gone(self, timeout: float = 30) -> None:
        """Until the client hangs up (or the stand-in stops)."""
        waits = [asyncio.ensure_future(self.gone.wait()),
                 asyncio.ensure_future(self.stand_in.released.wait())]
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()

    async def get(self):
        s = self.stand_in
        mode = s.mode
        s.requests[mode] = s.requests.get(mode, 0) + 1
        if mode in ("proxy", "truncated"):
            real = await AsyncHTTPClient().fetch(f"{s.real_ui_url}/json/", request_timeout=10)
            if mode == "truncated":
                self.write(real.body[: len(real.body) // 2])
                return
            doc = json.loads(real.body)
            doc["activeapps"] = [*doc.get("activeapps", []), *s.extra_apps]
            doc["workers"] = [*doc.get("workers", []), *s.extra_workers]
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(doc))
        elif mode == "huge":
            self.write(s.huge)
        elif mode == "hang":  # accepts the request, never answers
            await self.wait_gone()
        elif mode == "trickle":  # a byte a tenth of a second, forever
            try:
                while not (self.gone.is_set() or s.released.is_set()):
                    self.write(b" ")
                    await self.flush()
                    await asyncio.sleep(0.1)
            except StreamClosedError:
                pass
        elif mode == "declares-too-much":  # a Content-Length over the limit, then nothing
            self.set_header("Content-Length", str(16 * MAX_BODY_BYTES))
            self.write(b"{")
            await self.flush()
            await self.wait_gone()
        elif mode == "endless":  # chunked, 1 MiB after 1 MiB, until the client hangs up
            try:
                for _ in range(2 * MAX_BODY_BYTES // 2**20):
                    self.write(b" " * 2**20)
                    await self.flush()
            except StreamClosedError:
                pass
        else:
            status, body = BODIES[mode]
            self.set_status(status)
            self.write(body)


class StandInMaster:
    """A stand-in for the Spark master's web UI (see the module docstring)."""

    def __init__(self, real_ui_url: str):
        self.real_ui_url = real_ui_url.rstrip("/")
        self.mode = "proxy"
        self.extra_apps: list[dict] = []
        self.extra_workers: list[dict] = []
        self.requests: dict[str, int] = {}
        self.released = asyncio.Event()
        self.huge = b""
        self.url = ""
        self._server: HTTPServer | None = None

    async def start(self) -> None:
        sockets = bind_sockets(0, "127.0.0.1")
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self._server = HTTPServer(Application([(r"/json/?", StandInHandler, {"stand_in": self})]))
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        self.released.set()
        self._server.stop()
        await self._server.close_all_connections()


@pytest.fixture
async def stand_in(spark_master):
    master = StandInMaster(spark_master.master_ui_url)
    await master.start()
    try:
        yield master
    finally:
        await master.stop()


MASTER_TIMEOUT = 1.0
#: mode of the stand-in -> what the one-line master_error must say
GARBAGE = [
    ("truncated", "did not answer JSON (starts '{"),
    ("wrong-types", "master /json/ workers[]: field 'id' is int, expected str"),
    ("not-an-object", "master /json/: expected a JSON object, got list"),
    ("html", "did not answer JSON (starts '<!DOCTYPE html>"),
    ("html-503", "answered HTTP 503"),
    ("empty", "did not answer JSON (starts '')"),
    ("not-utf8", "did not answer JSON"),
    ("standby", "is STANDBY, not ALIVE"),
    ("nested", "answered JSON nested too deeply to read"),
    ("huge", "master /json/ workers[]: field 'port' is str, expected int"),
    ("declares-too-much", f"answered more than {MAX_BODY_BYTES // 2**20} MiB"),
    ("endless", f"answered more than {MAX_BODY_BYTES // 2**20} MiB"),
    ("hang", "Timeout"),
    ("trickle", "Timeout"),
]


def ours(snapshot, *states: WorkerState) -> list:
    return [w for w in snapshot.workers if w.ours and (not states or w.state in states)]


@pytest.mark.spark
async def test_a_master_answering_garbage_blinds_the_reconciler_which_retires_nothing_then_recovers(
    spark_master, stand_in, tmp_path
):
    stand_in.huge = _huge_master(HUGE)
    backend = LocalBackend(**AS_ROOT, start_master=False, master_url=spark_master.master_url,
                           master_ui_url=stand_in.url, state_dir=str(tmp_path / "state"), stop_timeout=5,
                           stop_on_exit=True)
    await backend.setup()
    try:
        r = Reconciler(
            backend=backend,
            spark=SparkClient(stand_in.url, timeout=MASTER_TIMEOUT),
            policy=make_policy(max_workers=2, idle_workers=1, scale_down_delay=0),
            observe=make_observe(start_timeout=120, held_after=60),
            log=logging.getLogger("test.bad-input"),
            decision_log_size=DECISION_LOG_SIZE,
        )
        await cycles_until(r, lambda s: ours(s, WorkerState.IDLE), timeout=90,
                           what="an idle worker, seen through the stand-in")
        pool = await backend.list()
        # From now on the worker is surplus: only not seeing the master keeps it.
        r.policy = dataclasses.replace(r.policy, idle_workers=0)
        seen = len(r.decisions)  # the start of that worker
        for mode, expected in GARBAGE:
            stand_in.mode = mode
            began = time.monotonic()
            decided = await r.cycle()
            took = time.monotonic() - began
            error = r.last_snapshot.master_error
            assert r.last_snapshot.blind, mode
            assert expected in error and "\n" not in error, (mode, error)
            assert not decided.acts and await backend.list() == pool, mode
            assert took < MASTER_TIMEOUT + 5, (mode, took)
            assert stand_in.requests.get(mode), f"{mode}: the stand-in was not asked"
        actions = [d.action for d in r.decisions][seen:]
        assert actions == ["blind"], actions  # once, with the first reason; nothing started or retired

        stand_in.mode = "proxy"
        await cycles_until(r, lambda s: not ours(s), timeout=60,
                           what="the surplus worker retired and stopped once the master answers again")
        actions = [d.action for d in r.decisions][seen:]
        assert actions == ["blind", "seeing", "retire", "stop"], actions
    finally:
        await backend.shutdown()


# == The service: forged, oversized and malformed requests; names with markup ====================

MONITOR_TOKEN = "monitor-" + "2" * 32
MARKUP_APP = {"id": "app-20990101000000-0099", "name": f"{XSS}{SURROGATE}", "cores": 0, "state": "WAITING",
              "user": "<b>mallory</b>", "starttime": 0}
MARKUP_WORKER = {"id": "worker-<i>x</i>", "host": "<svg onload=alert(2)>", "port": 7078,
                 "webuiaddress": "http://<svg>:8081", "cores": 1, "coresused": 0, "memory": 1024,
                 "memoryused": 0, "state": "ALIVE", "lastheartbeat": 0}


@pytest.fixture
async def hub(stand_in, scaler_hub):
    """A hub with the real scaler as its managed service, reading the master through the
    stand-in (requested first: it outlives the scaler); a service `monitor` holding the
    admin scope; `viewer` without it. Returns (app, the service's entry, its state dir)."""
    return await scaler_hub(
        services=[{"name": "monitor", "api_token": MONITOR_TOKEN}],
        roles=[{"name": "monitor", "services": ["monitor"], "scopes": [ADMIN_SCOPE]},
               {"name": "service-viewer", "users": ["viewer"], "scopes": ["access:services"]}],
        http_timeout=MASTER_TIMEOUT, LocalBackend__master_ui_url=stand_in.url,
    )


async def call(url: str, method: str = "GET", *, token: str | None = None, auth: str | None = None,
               body: str | bytes | None = None, content_type: str | None = None, accept="application/json"):
    headers = {"Accept": accept}
    if token is not None:
        headers["Authorization"] = f"token {token}"
    if auth is not None:
        headers["Authorization"] = auth
    if method == "POST":
        headers["Content-Type"] = content_type or "application/x-www-form-urlencoded"
        body = b"" if body is None else body
    return await AsyncHTTPClient().fetch(url, method=method, headers=headers, body=body, raise_error=False,
                                         follow_redirects=False, request_timeout=30)


def one_line_error(response) -> str:
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    error = json.loads(response.body)["error"]
    assert error and "\n" not in error and "Traceback" not in error, error
    return error


async def declared_body_answer(service_url: str, path: str, headers: str = "") -> bytes:
    """POST `path` declaring a 100 MB body and sending none: what the service answers (the
    status line and what follows) within 10 s, or b"" if it waits for the body."""
    host, port = urlsplit(service_url).hostname, urlsplit(service_url).port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Length: {10**8}\r\n{headers}\r\n".encode())
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(4096), timeout=10)
        except asyncio.TimeoutError:
            return b""
    finally:
        writer.close()


@pytest.mark.spark
async def test_bad_requests_to_the_service_are_refused_and_change_nothing(hub, stand_in):
    app, service, state = hub
    scaler = app._service_map["spark-scaler"]
    public = app.proxy.public_url.rstrip("/") + "/services/spark-scaler/"  # public_url has the hub's base_url
    direct = service["url"].rstrip("/") + scaler.prefix
    pid = scaler.proc.pid

    async def pool() -> dict:
        response = await call(public + "api/pool", token=MONITOR_TOKEN)
        assert response.code == 200, response.body
        return json.loads(response.body)

    async def observed():
        response = await call(public + "api/pool", token=MONITOR_TOKEN)
        return response.code == 200 and json.loads(response.body)["status"] == "healthy"

    await until(observed, timeout=60, what="the scaler's first cycle")
    # State worth keeping: paused, an idle override, the decision log.
    assert (await call(public + "api/pause", "POST", token=MONITOR_TOKEN)).code == 200
    set_override = await call(public + "api/idle-target", "POST", token=MONITOR_TOKEN, body="idle_workers=2")
    assert set_override.code == 200, set_override.body
    before = await pool()
    assert before["paused"] and before["target"]["idle_override"] == 2
    kept = before["decisions"]
    assert [d["action"] for d in kept[:2]] == ["idle-target", "pause"]

    # -- no token, a wrong one, a revoked one, one without the scope: 403 on every endpoint --
    revoked = await hub_api(app, "POST", "users/admin/tokens", {"scopes": ["inherit"]})
    await hub_api(app, "DELETE", f"users/admin/tokens/{revoked['id']}")
    viewer = (await hub_api(app, "POST", "users/viewer/tokens", {"note": "no admin scope"}))["token"]
    credentials = [None, "token not-a-token", "Bearer not-a-token", "token", "token " + "x" * 4000,
                   f"token {revoked['token']}", f"token {viewer}"]
    endpoints = [("GET", "api/pool"), ("GET", "api/chart"), ("POST", "api/pause"), ("POST", "api/resume"),
                 ("POST", "api/idle-target"), ("GET", "metrics")]
    for method, path in endpoints:
        for auth in credentials:
            response = await call(public + path, method, auth=auth,
                                  body="idle_workers=0" if method == "POST" else None)
            assert response.code == 403, (method, path, auth and auth[:30], response.code,
                                          response.body[:200])
            message = one_line_error(response)
            assert ("not logged in" in message or ADMIN_SCOPE in message), message

    # -- malformed values for the idle target, with a good token: 400, one line --
    form, as_json = "application/x-www-form-urlencoded", "application/json"
    bad_values = [("idle_workers=many", form), ("idle_workers=-1", form), ("idle_workers=4", form),
                  ("idle_workers=1.5", form), ("idle_workers=1e3", form),
                  ("idle_workers=" + "9" * 4000, form),
                  (f"idle_workers={XSS}", form), ("[1]", as_json), ('{"idle_workers": [1]}', as_json),
                  ('{"idle_workers": true}', as_json), ('{"idle_workers": {"n": 1}}', as_json),
                  ('{"idle_workers": 1', as_json), ("\xff\xfe", as_json)]
    for body, content_type in bad_values:
        response = await call(public + "api/idle-target", "POST", token=MONITOR_TOKEN,
                              body=body.encode("latin-1") if body.startswith("\xff") else body,
                              content_type=content_type, accept="text/html")
        assert response.code == 400, (body[:40], response.code, response.body[:200])
        assert "idle_workers" in one_line_error(response) or "JSON" in one_line_error(response)

    # -- bodies are bounded before anyone is authenticated --
    refused = await declared_body_answer(service["url"], f"{scaler.prefix}api/idle-target")
    assert refused.startswith(b"HTTP/1.1 400"), refused[:200] or "waited for a 100 MB body"
    secret = service["environment"][EVENTS_SECRET_ENV]
    refused = await declared_body_answer(service["url"], f"{scaler.prefix}events",
                                         f"Authorization: token {secret}\r\n")
    assert refused.startswith(b"HTTP/1.1 413"), refused[:200] or "waited for a 100 MB event"

    # -- names with markup: from the hub's hooks (an event) and from Spark (the master) --
    event = json.dumps({"action": "start", "user": XSS + SURROGATE, "server": "<b>gpu</b>"})
    assert (await call(f"{direct}events", "POST", token=secret, body=event)).code == 202
    stand_in.extra_apps, stand_in.extra_workers = [MARKUP_APP], [MARKUP_WORKER]

    async def shown():
        p = await pool()
        return p if p["servers"] and p["apps"] and len(p["workers"]) else None

    shown_pool = await until(shown, timeout=30, what="the markup names in api/pool")
    assert [s["user"] for s in shown_pool["servers"]] == [XSS + SURROGATE]
    assert [a["name"] for a in shown_pool["apps"] if a["id"] == MARKUP_APP["id"]] == [XSS + SURROGATE]
    assert shown_pool["plan"]["start"] >= 1, (
        "the plan would start a worker for them (but paused: it does not)")
    page = await call(public, token=MONITOR_TOKEN, accept="text/html")
    assert page.code == 200, page.body[:300]
    text = page.body.decode("utf-8")  # strict: the lone surrogate was replaced, not sent
    for raw in (XSS, "<b>mallory</b>", "<b>gpu</b>", "<svg onload", "<i>x</i>"):
        assert raw not in text, raw
    for escaped in (XSS_SHOWN, "&lt;b&gt;mallory&lt;/b&gt;", "&lt;b&gt;gpu&lt;/b&gt;",
                    "&lt;svg onload=alert(2)&gt;", "worker-&lt;i&gt;x&lt;/i&gt;"):
        assert escaped in text, escaped

    # -- the master answers garbage, then nothing, then again: blind, then back --
    for mode, expected in (("truncated", "did not answer JSON"), ("hang", "Timeout")):
        stand_in.mode = mode

        async def blind():
            p = await pool()
            return p if p["status"] == "blind" and expected in p["error"] else None

        blinded = await until(blind, timeout=30, what=f"the page's status to show the master's {mode} answer")
        assert "\n" not in blinded["error"]
        assert (await call(public, token=MONITOR_TOKEN, accept="text/html")).code == 200
    stand_in.mode = "proxy"
    after = await until(lambda: _status_is(pool, "paused"), timeout=30,
                        what="the scaler to see the master again")

    # -- nothing was lost, nothing was done, nothing restarted --
    assert after["paused"] and after["target"]["idle_override"] == 2
    new = after["decisions"][: len(after["decisions"]) - len(kept)]
    assert after["decisions"][len(new):] == kept
    # the markup app waits beside 2 idle workers asked for: past max_workers 3, once, and a
    # blind spell neither ends nor restarts that
    assert [d["action"] for d in new] == ["seeing", "blind", "saturated"], new
    assert not worker_records(state), "paused: no worker started for the markup server or app"
    assert scaler.proc.pid == pid and scaler.proc.returncode is None


async def _status_is(pool, status: str):
    p = await pool()
    return p if p["status"] == status else None
