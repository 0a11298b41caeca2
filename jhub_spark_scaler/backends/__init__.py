"""Where Spark workers run. One small interface, one implementation per platform.

A backend owns worker processes or pods and nothing else: it does not decide
how many there should be (`policy.plan` does) and does not talk to the Spark
master except where a platform needs the master to decommission. It also says
where the scaler's one small record, the pre-warm history, outlives a restart
(`history_store()`: its own store, a file in the state dir or a ConfigMap).

Errors follow one rule in every backend, each a single line that says what to fix:

- A trait's validator raises `traitlets.TraitError` (the traitlets protocol) naming
  the setting, when the backend is made: before anything starts.
- Any other problem an admin fixes by changing a setting (or what it points at: a
  Java install, a kubeconfig, RBAC permissions, the owner object) raises
  `jhub_spark_scaler.errors.ConfigError`, from the constructor or `setup()`.
- `BackendError` is the backend failing at run time: it cannot list its workers, or
  cannot start, mark or stop a process or pod (or start the master). Its message may
  name a setting that would help (a host range with no address left). `list()` raises
  `BackendError` (or `OSError`) when it cannot see the pool, and nothing else: the
  reconciler takes that as "blind" and retires nothing until it sees the pool again.

The command line prints TraitError, ConfigError and BackendError alike, as one line.

One scaler acts on a pool at a time. `Backend.leadership()` returns the pool's
`Leadership` (an exclusive lock on the local `state_dir`, a Lease per Kubernetes pool);
the command acquires it before `setup()` adopts anything, renews it before every cycle,
and acts only while it holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from traitlets import Bool
from traitlets.config import LoggingConfigurable

from ..model import BackendWorker

if TYPE_CHECKING:
    from .history_store import HistoryStore


class BackendError(Exception):
    """The backend failed at run time (cannot list, start, mark or stop); one line saying why."""


class Leadership:
    """Who may act on a pool: at most one holder at a time, across processes and machines.

    This base class is the no-op a backend without a shared pool uses: it is always held.
    """

    #: what is held, for log lines ("state_dir /srv/spark", "Lease spark/jhub-spark-scaler-default")
    what = "the pool (not shared)"

    async def acquire(self, *, wait: bool) -> None:
        """Become the holder. If another holds it: with `wait`, stand by until it is free
        (logging that, once); without, raise BackendError naming the holder."""

    async def still_held(self) -> bool:
        """Renew; True if this process may act now. Never raises: trouble renewing counts
        as lost once it lasts too long for another holder to be excluded."""
        return True

    async def release(self) -> None:
        """Let the next holder in at once; safe to call when not held, and more than once."""


class Backend(LoggingConfigurable):
    """The interface the reconciler drives. Subclasses are traitlets-configurable.

    All methods are coroutines. Every method that changes a worker must be safe
    to call again for the same worker (a restarted scaler repeats itself).
    """

    #: the Spark master URL workers register with (spark://host:port)
    master_url: str = ""
    #: the master's web UI (http://host:port), used to read /json/ and to decommission
    master_ui_url: str = ""
    #: True: the reconciler also asks the master to decommission (POST /workers/kill/?host=)
    decommission_via_master: bool = False
    #: SparkScalerApp.start_timeout's default with this backend: seconds a worker takes to start
    #: and register at most (a JVM start on one machine, with room for a loaded one)
    default_start_timeout: float = 120.0
    external_shuffle_service = Bool(
        False, help="The apps use Spark's external shuffle service on the workers "
        "(spark.shuffle.service.enabled=true, the companion of dynamic allocation): a worker whose "
        "executors have all left is not retired while it keeps shuffle files of a running app, and "
        "is once the app ends. KubernetesBackend starts each worker with the service on; "
        "LocalBackend's workers share one machine, where the service binds its port on every "
        "address: run one for the machine (Spark's sbin/start-shuffle-service.sh).",
    ).tag(config=True)

    async def setup(self) -> None:
        """Prepare (and, if configured, start the Spark master); adopt existing workers."""

    async def list(self) -> list[BackendWorker]:
        """Every worker this backend owns, including ones it is still starting;
        BackendError (or OSError) if the pool cannot be seen now."""
        raise NotImplementedError

    async def start(self, n: int) -> list[BackendWorker]:
        """Start `n` new workers without waiting for them to register."""
        raise NotImplementedError

    async def decommission(self, worker: BackendWorker) -> None:
        """Ask the worker to decommission gracefully and record that it is retiring.

        The mark must survive a restart of the scaler (`list()` reports
        `retiring_since`), so that a new scaler resumes the drain.
        """
        raise NotImplementedError

    async def stop(self, worker: BackendWorker) -> None:
        """Stop the worker for good and forget it. Only called once it is drained or lost."""
        raise NotImplementedError

    async def shutdown(self) -> None:
        """Release what `setup()` acquired (the scaler is exiting)."""

    def leadership(self) -> Leadership:
        """The pool's one-active-scaler guard; made before `setup()`, acquired before it runs.
        A backend that owns a pool others could share returns a real one."""
        return Leadership()

    def history_store(self) -> HistoryStore | None:
        """Where the pre-warm history outlives the scaler (`history_store`), usable once
        `setup()` has run; None: in memory only."""
        return None
