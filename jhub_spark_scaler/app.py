"""The `jhub-spark-scaler` command: a traitlets Application that wires the parts.

Like jupyterhub-idle-culler, the Application is only a config adapter: traits
with help, validated at start-up; `run()` builds plain objects (backend, Spark
client, Reconciler) and drives `Reconciler.cycle` every `poll_interval`.

Each setting's default is stated once, by its trait here (docs/settings.md is
generated from them); reading the settings strictly is `cli`'s job.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal

from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.log import LogFormatter
from traitlets import Bool, Float, Int, List, TraitError, Unicode, default, validate
from traitlets.config import Application, Config

from . import __version__, cli
from .backends import Backend
from .backends.kubernetes import KubernetesBackend
from .backends.local import LocalBackend
from .cli import BackendType, at_least, check_url
from .constants import (
    ADMIN_SCOPE, EVENTS_SECRET_ENV, HUB_METRICS_SCOPE, READ_SCOPE, SERVICE_NAME, SERVICE_URL,
)
from .errors import ConfigError
from .leader import Leader
from .metrics import ScalerMetrics
from .model import Snapshot
from .observe import ObserveSettings
from .policy import PolicySettings
from .pool_line import pool_line
from .reconciler import CycleReport, Reconciler
from .service import HubService, refuse_internal_ssl
from .spark import SparkClient
from .web.history import PoolHistory


class SparkScalerApp(Application):
    name = "jhub-spark-scaler"
    version = __version__
    description = """Keep a Spark standalone worker pool at A + I workers (A in use, I idle),
    retiring workers only after Spark has drained them."""

    aliases = {
        "config": "SparkScalerApp.config_file",
        "max-workers": "SparkScalerApp.max_workers",
        "min-workers": "SparkScalerApp.min_workers",
        "idle-workers": "SparkScalerApp.idle_workers",
        "max-surge": "SparkScalerApp.max_surge",
        "scale-down-delay": "SparkScalerApp.scale_down_delay",
        "start-timeout": "SparkScalerApp.start_timeout",
        "held-after": "SparkScalerApp.held_after",
        "poll-interval": "SparkScalerApp.poll_interval",
        "master-ui-url": "SparkScalerApp.master_ui_url",
        "backend": "SparkScalerApp.backend_class",
        "standby": "SparkScalerApp.standby",
        "log-level": "Application.log_level",
        "state-dir": "LocalBackend.state_dir",
        "worker-cores": "LocalBackend.worker_cores",
        "worker-memory": "LocalBackend.worker_memory",
    }
    flags = {
        "generate-config": (
            {"SparkScalerApp": {"generate_config": True}},
            "Write a commented config file (config_file) with every setting and exit.",
        ),
        "standby": (
            {"SparkScalerApp": {"standby": True}},
            "If another scaler is active on this pool, wait and take over when it exits.",
        ),
    }
    classes = [LocalBackend, KubernetesBackend]

    config_file = Unicode("jhub_spark_scaler_config.py", help="The config file to load.").tag(config=True)
    generate_config = Bool(False, help="Write the default config file and exit.").tag(config=True)

    max_workers = Int(
        None, allow_none=True,
        help="Most workers the scaler will run at once (required): the bound on runaway scale-out.",
    ).tag(config=True)
    min_workers = Int(0, help="Fewest workers to keep, even with no demand.").tag(config=True)
    idle_workers = Int(1, help="Idle workers to keep ready beyond those in use (I in A + I).").tag(
        config=True)
    max_surge = Int(10, help="Most workers started in one cycle.").tag(config=True)
    scale_down_delay = Float(
        60.0, help="Seconds a surplus must last before workers are retired (stops flapping)."
    ).tag(config=True)
    start_timeout = Float(help=(
        "Seconds a new worker may take to register with the master before it is removed as unschedulable; "
        "scale-up then pauses for as long. Default: the backend's, %.0f for LocalBackend (a JVM start, on a "
        "loaded machine too), %.0f for KubernetesBackend (a 2 GB image pulled at 10 MB/s, then the JVM). "
        "A pod a node is being added for has node_wait_timeout instead.") % (
        LocalBackend.default_start_timeout, KubernetesBackend.default_start_timeout)).tag(config=True)
    node_wait_timeout = Float(1200.0, help=(
        "Seconds a new worker pod may take to register while cluster-autoscaler adds a node for it (its "
        "TriggeredScaleUp event on the pod; shown as 'waiting for a node'). 1200: the autoscaler's bound on "
        "a new node (--max-node-provision-time, 15 min) and 5 min for the image and the JVM. A pod it adds "
        "no node for (NotTriggerScaleUp) is unschedulable at once.")).tag(config=True)
    held_after = Float(
        120.0, help="Seconds after decommission that a worker still running executors is shown as held "
        "(its app does not release them; the scaler keeps waiting, up to drain_timeout if set).",
    ).tag(config=True)
    drain_timeout = Float(
        0.0, help="Seconds after decommission that a draining or held worker is stopped anyway, its apps' "
        "executors on it lost (like Dataproc's gracefulDecommissionTimeout): the one exception to never "
        "taking a worker from a running app (docs/reliability.md). 0 (the default): off, wait for as long "
        "as the executors stay.",
    ).tag(config=True)
    count_foreign_workers = Bool(
        False, help="Count workers registered at the master that this scaler did not start as demand (busy) "
        "and capacity (busy or idle), so fewer of its own are kept. Off by default: anyone who reaches "
        "the master's port can register a worker (Spark's RPC has no authentication), and fake idle "
        "ones would shrink the pool. Foreign workers are shown either way.",
    ).tag(config=True)
    poll_interval = Float(2.0, help="Seconds between reconcile cycles.").tag(config=True)
    exit_timeout = Float(
        8.0, help="Seconds the command waits on SIGTERM or SIGINT for the cycle in flight to end (a worker "
        "being stopped, say) before cancelling it; keep it below the hub's 10 s between its SIGINT "
        "and SIGTERM to a managed service. A cancelled stop is finished by the next scaler.",
    ).tag(config=True)
    http_timeout = Float(5.0, help="Seconds before a request to the master or a worker gives up.").tag(
        config=True)
    decision_log_size = Int(500, help="Decisions kept in memory for display.").tag(config=True)
    master_ui_url = Unicode(
        "", help="The Spark master web UI (http://host:8080). Default: the backend's master."
    ).tag(config=True)
    backend_class = BackendType(
        LocalBackend, klass=Backend,
        help="Where workers run: 'local' (processes on this machine), 'kubernetes' (pods), "
        "or the import path of a Backend subclass.",
    ).tag(config=True)

    standby = Bool(
        False, help="When another scaler is already active on this pool (the same LocalBackend.state_dir, "
        "or a valid Lease of the same KubernetesBackend.pool): False exits with an error naming it; True "
        "waits as standby and takes over when it exits or dies. On Kubernetes a scaler waits out a lease "
        "that is no longer renewed either way.",
    ).tag(config=True)

    hub_api_url = Unicode(
        help="The hub's REST API (http://hub:8081/hub/api). Set: run as a hub service, with "
        "pre-warm. Default: $JUPYTERHUB_API_URL, which the hub sets for a managed service."
    ).tag(config=True)
    hub_api_token = Unicode(
        help="Token for the hub API; hooks authenticate to the service with it too. "
        "Default: $JUPYTERHUB_API_TOKEN."
    ).tag(config=True)
    service_url = Unicode(
        help=f"Where the service listens. Default: $JUPYTERHUB_SERVICE_URL, else {SERVICE_URL}."
    ).tag(config=True)
    service_prefix = Unicode(
        help="URL prefix of the service's endpoints. Default: $JUPYTERHUB_SERVICE_PREFIX, else /."
    ).tag(config=True)
    hub_poll_interval = Float(
        10.0, help="Seconds between polls of the hub's users API (the truth; events only speed it up)."
    ).tag(config=True)
    hub_stale_after = Float(
        300.0, help="Seconds without a good hub poll after which the known servers are forgotten "
        "(their pre-warm credit ends)."
    ).tag(config=True)
    prewarm_window = Float(
        600.0, help="Seconds after a notebook server starts during which it pre-warms workers."
    ).tag(config=True)
    authenticate_prometheus = Bool(
        True, help=f"Require a hub admin, or a token with {READ_SCOPE}, {ADMIN_SCOPE} or the hub's "
        f"{HUB_METRICS_SCOPE}, for /metrics (like JupyterHub.authenticate_prometheus)."
    ).tag(config=True)
    prewarm_workers_per_server = Int(
        1, help="Idle workers for each server started within prewarm_window, still running, not yet "
        "followed by an app of its user (of no hub user: anyone's), allowed by prewarm_profiles and history."
    ).tag(config=True)
    prewarm_profiles = List(Unicode(), help="Only servers whose KubeSpawner profile slug or server name is "
                            "listed pre-warm. Empty: every server.").tag(config=True)
    prewarm_history = Int(3, help="No pre-warm for a user whose last N servers ran no Spark app, until one "
                          "starts (0: off); kept in state_dir (Kubernetes: a ConfigMap).").tag(config=True)

    @default("hub_api_url")
    def _hub_api_url_default(self):
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("hub_api_token")
    def _hub_api_token_default(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("start_timeout")
    def _start_timeout_default(self):
        return self.backend_class.default_start_timeout

    @default("service_url")
    def _service_url_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", SERVICE_URL)

    @default("service_prefix")
    def _service_prefix_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    _validate_min_workers = validate("min_workers", "idle_workers",
                                     "prewarm_workers_per_server", "prewarm_history")(at_least(0))
    _validate_max_surge = validate("max_surge")(at_least(1))
    _validate_delays = validate("scale_down_delay", "start_timeout", "node_wait_timeout", "held_after",
                                "drain_timeout")(at_least(0))
    _validate_intervals = validate("poll_interval", "http_timeout", "hub_poll_interval")(at_least(0.05))
    _validate_exit_timeout = validate("exit_timeout")(at_least(0))
    _validate_windows = validate("prewarm_window", "hub_stale_after")(at_least(0))
    _validate_log_size = validate("decision_log_size")(at_least(0))
    _validate_urls = validate("master_ui_url", "hub_api_url")(check_url())
    _validate_service_url = validate("service_url")(check_url(empty_ok=False))

    @validate("service_prefix")
    def _validate_service_prefix(self, proposal):
        if not proposal.value.startswith("/"):
            raise TraitError(f"service_prefix: {proposal.value!r} must start with '/' "
                             f"(like /services/{SERVICE_NAME}/)")
        return proposal.value

    @validate("hub_api_token")
    def _validate_hub_api_token(self, proposal):
        # it goes into an HTTP header: no spaces, control or non-ASCII characters
        if not re.fullmatch(r"[\x21-\x7e]*", proposal.value):
            raise TraitError("hub_api_token: contains a space, control or non-ASCII character")
        return proposal.value

    @default("log_level")
    def _log_level_default(self):
        return "INFO"

    @default("log_format")
    def _log_format_default(self):
        return ("%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s %(module)s:%(lineno)d]"
                "%(end_color)s %(message)s")

    @default("log_datefmt")
    def _log_datefmt_default(self):
        return "%Y-%m-%d %H:%M:%S"

    _log_formatter_cls = LogFormatter  # traitlets' formatter class for its console handler

    # Settings are read strictly, each mistake one line naming it (jhub_spark_scaler.cli).
    _validate_log_format = validate("log_format", "log_datefmt")(cli.check_log_format)
    #: a config file that fails to load stops the command (traitlets would log it and go on)
    raise_config_file_errors = True
    python_config_loader_class = cli.PyFileLoader
    json_config_loader_class = cli.JSONFileLoader

    def _create_loader(self, argv, aliases, flags, classes):
        # traitlets has no public way to choose the command-line loader class
        return cli.ArgLoader(argv, aliases, flags, classes=classes, log=self.log,
                             subcommands=self.subcommands)

    def initialize(self, argv=None):
        cli.parse_command_line(self, argv)
        if self.generate_config:
            return
        cli.load_config_file(self, self.config_file)
        self.check_settings()

    def update_config(self, config: Config) -> None:
        cli.check_setting_names(self, config)
        with cli.settings_errors():
            super().update_config(config)

    def _configure_logging(self):
        # traitlets' logging observers call this private method: there is no public hook
        # for a logging_config that dictConfig refuses
        with cli.logging_config_errors():
            super()._configure_logging()

    def check_settings(self) -> None:
        """Settings that depend on each other; single traits validate themselves."""
        # traitlets does not validate a configured value equal to the trait's static default ('')
        for name in ("service_url", "service_prefix"):
            setattr(self, name, getattr(self, name))
        if self.max_workers is None:
            raise ConfigError("max_workers is required (--max-workers=N): the most workers to run")
        if self.max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.min_workers > self.max_workers:
            raise ConfigError(f"min_workers ({self.min_workers}) > max_workers ({self.max_workers})")
        if self.hub_api_url and not self.hub_api_token:
            raise ConfigError("hub_api_token (or $JUPYTERHUB_API_TOKEN) is required with hub_api_url")

    def policy_settings(self) -> PolicySettings:
        return PolicySettings(
            max_workers=self.max_workers,
            min_workers=self.min_workers,
            idle_workers=self.idle_workers,
            max_surge=self.max_surge,
            scale_down_delay=self.scale_down_delay,
            unschedulable_backoff=self.start_timeout,
            count_foreign_workers=self.count_foreign_workers,
            drain_timeout=self.drain_timeout,
        )

    def start(self):
        if self.generate_config:
            self.write_default_config()
            return
        asyncio.run(self.run())

    def write_default_config(self) -> None:
        with open(self.config_file, "w", encoding="utf-8") as f:
            f.write(self.generate_config_file())
        print(f"wrote {self.config_file}")

    #: the pool's one-active-scaler guard, from run() (None: a reconciler driven without it)
    leader: Leader | None = None

    async def run(self) -> None:
        """Become the pool's active scaler, set up the backend, reconcile until SIGTERM/SIGINT,
        then clean up."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Our own handlers: a service started by a backgrounded hub inherits SIGINT ignored.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        if self.hub_api_url:
            refuse_internal_ssl()  # before the pool is taken or anything made
        backend = self.backend_class(parent=self, log=self.log)
        self.leader = Leader(backend.leadership(), log=self.log)
        if not await self.leader.lead(wait=self.standby, stopping=stopping):
            return  # stopped while standing by: nothing was adopted, nothing to clean up
        self.metrics = ScalerMetrics()
        self.pool_history = PoolHistory(interval=self.poll_interval)
        self.hub = self.make_hub_service(backend) if self.hub_api_url else None
        self.leader.on_regain += [self.hub.keeper.reread] if self.hub else []
        self.reconciler: Reconciler | None = None  # events may arrive before it exists
        self._cycles: set[asyncio.Future] = set()  # the cycle in flight, if any
        try:
            await backend.setup()
            if self.hub:
                await self.hub.start()
            # Everything alive now (modules, the adopted pool) lives as long as the process:
            # keep the garbage collector from re-scanning it each cycle. At 10,000 pods this
            # halves a cycle (benchmarks/RESULTS.md).
            gc.freeze()
            self.reconciler = Reconciler(
                backend=backend,
                spark=SparkClient(self.master_ui_url or backend.master_ui_url, timeout=self.http_timeout),
                policy=self.policy_settings(),
                observe=ObserveSettings(start_timeout=self.start_timeout, held_after=self.held_after,
                                        node_wait_timeout=self.node_wait_timeout),
                log=self.log,
                prewarm_credit=self.hub.credit if self.hub else lambda app_starts: 0,
                decision_log_size=self.decision_log_size, on_cycle=self.observe_cycle,
            )
            if self.hub:
                self.hub.pool.attach(self.reconciler)
            self.log.info("Spark master %s, UI %s", backend.master_url, self.reconciler.spark.master_ui_url)
            await self.reconcile()
            ticker = PeriodicCallback(self.reconcile, self.poll_interval * 1000)
            ticker.start()
            await stopping.wait()
            ticker.stop()
            self.log.info("stopping")
            await self.end_cycles()
        finally:
            if self.hub:
                self.hub.stop()
                if self.leader.leading:  # standing by, the store is the active scaler's to write
                    await self.hub.keeper.flush()  # the last change, while the backend's client is open
            await backend.shutdown()
            await self.leader.resign()

    def make_hub_service(self, backend: Backend | None = None) -> HubService:
        return HubService(
            api_url=self.hub_api_url,
            api_token=self.hub_api_token,
            # a secret (environment only: never on a command line) that configure() sets
            events_secret=os.environ.get(EVENTS_SECRET_ENV) or self.hub_api_token,
            service_url=self.service_url, prefix=self.service_prefix,
            poll_interval=self.hub_poll_interval, stale_after=self.hub_stale_after,
            prewarm_window=self.prewarm_window, prewarm_per_server=self.prewarm_workers_per_server,
            prewarm_profiles=self.prewarm_profiles, prewarm_history=self.prewarm_history,
            history_store=backend.history_store() if backend else None,  # the history survives restarts
            on_change=self.reconcile_soon, log=self.log, cycle_interval=self.poll_interval,
            metrics=self.metrics, pool_history=self.pool_history,
            authenticate_prometheus=self.authenticate_prometheus,
        )

    def observe_cycle(self, report: CycleReport) -> None:
        """After each pass: metrics and the pool history for the admin page's chart."""
        self.metrics.observe_cycle(
            snapshot=report.snapshot, plan=report.plan, duration=report.duration,
            started=len(report.started), retired=len(report.retired), stopped=report.stopped,
            action_errors=len(report.errors),
            hub_healthy=self.hub.activity.healthy if self.hub else None,
            paused=self.reconciler.paused,
        )
        self.pool_history.add(report.snapshot.taken_at, report.snapshot)

    def reconcile_soon(self) -> None:
        """A cycle now, not at the next tick (a notebook server just started, say)."""
        if self.reconciler is not None:
            IOLoop.current().add_callback(self.reconcile)

    _exiting = False

    async def reconcile(self) -> None:
        """One cycle, if this scaler is the pool's active one; errors are logged and the
        loop goes on. None once exiting."""
        if self._exiting or self.leader is not None and not await self.leader.may_act():
            return
        if self._exiting:  # began while the lease was checked
            return
        cycle = asyncio.ensure_future(self.reconciler.cycle())
        self._cycles.add(cycle)
        cycle.add_done_callback(self._cycles.discard)
        await asyncio.wait([cycle])
        if cycle.cancelled():  # by end_cycles, at exit
            return
        if error := cycle.exception():
            self.log.error("reconcile cycle failed", exc_info=error)
            return
        self.log_pool(self.reconciler.last_snapshot)

    async def end_cycles(self) -> None:
        """At exit, start no more cycles and let the one in flight end, so that shutdown never
        acts on a worker halfway through a stop; after exit_timeout, cancel it."""
        self._exiting = True
        if not self._cycles:
            return
        _, pending = await asyncio.wait(set(self._cycles), timeout=self.exit_timeout)
        if pending:
            self.log.warning("the cycle in flight did not end within exit_timeout (%.0f s): cancelling it",
                             self.exit_timeout)
            for cycle in pending:
                cycle.cancel()
            await asyncio.wait(pending)

    _last_pool_line = ""

    def log_pool(self, snapshot: Snapshot | None) -> None:
        """Log the pool (`pool_line`) when it changes."""
        if snapshot is None:
            return
        line = pool_line(snapshot, self.reconciler.last_plan)
        if line != self._last_pool_line:
            self.log.info("%s", line)
            self._last_pool_line = line


def main(argv: list[str] | None = None) -> None:
    cli.run_command(SparkScalerApp(), argv)
