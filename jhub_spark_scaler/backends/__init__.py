"""Where Spark workers run. One small interface, one implementation per platform.

A backend owns worker processes or pods and nothing else: it does not decide
how many there should be (`policy.plan` does) and does not talk to the Spark
master except where a platform needs the master to decommission.
"""

from __future__ import annotations

from traitlets.config import LoggingConfigurable

from ..model import BackendWorker


class BackendError(Exception):
    """The backend cannot do what was asked; the message names what to fix."""


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

    async def setup(self) -> None:
        """Prepare (and, if configured, start the Spark master); adopt existing workers."""

    async def list(self) -> list[BackendWorker]:
        """Every worker this backend owns, including ones it is still starting."""
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
