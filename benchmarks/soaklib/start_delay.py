"""A benchmark-only cold-start model: each worker process starts some seconds after its
start was asked for, standing for a node being added and an image being pulled.

`--worker-start-delay` takes one of
    60                        a fixed 60 s
    uniform:30:90             uniform between 30 and 90 s
    lognormal:60:0.5          lognormal, median 60 s, sigma 0.5 (of the log), cut at 3 sigma

Worker n of a pool (its n-th start, counted the same way in every strategy) waits
`StartDelay.draw(seed, n)`: the same seed gives the same delays in every strategy,
whatever order the starts come in.

On the local backend, `LateStartLocalBackend` (a subclass that only the benchmarks
name, as `backend_class` by import path) starts each worker JVM through a python
stub that sleeps, then execs the JVM: the same pid, whose command line carries the
worker's arguments from the start (so the backend sees a worker starting, as it sees
a pod that is not running yet), marked with LATE_START so that the soak's sampler
counts it only once it is the JVM. On Kubernetes the tests' kubelet holds a bound
pod that long before it starts the pod's process (`TestKubelet.start_delay`).
"""

from __future__ import annotations

import math
import os
import random
import sys
from dataclasses import dataclass

from traitlets import Int, TraitError, Unicode, validate

from jhub_spark_scaler.backends.local import WORKER_CLASS, LocalBackend

#: an argument of the stub's command line, and of no other process's
LATE_START = "soak-late-start"
#: sleeps argv[2] seconds, then becomes the command argv[3:] (same pid, same session; found
#: on the daemon's PATH, as the backend's own spawn finds it)
_STUB = ("import os, sys, time; print('soak: worker start delayed %s s' % sys.argv[2], flush=True); "
         "time.sleep(float(sys.argv[2])); os.execvp(sys.argv[3], sys.argv[3:])")
LOGNORMAL_CUT = 3.0  # sigmas: the delay is bounded, as a start_timeout must be above it


@dataclass(frozen=True)
class StartDelay:
    kind: str  # "fixed", "uniform", "lognormal"
    a: float  # seconds: fixed; uniform's low; lognormal's median
    b: float = 0.0  # uniform's high; lognormal's sigma

    @classmethod
    def parse(cls, spec: str) -> StartDelay:
        """ValueError, naming --worker-start-delay, unless `spec` is one of the forms above."""
        head, *rest = spec.strip().split(":")
        try:
            if not rest:
                delay = cls("fixed", float(head))
            elif head in ("uniform", "lognormal") and len(rest) == 2:
                delay = cls(head, float(rest[0]), float(rest[1]))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--worker-start-delay: {spec!r} is not SECONDS, uniform:LOW:HIGH or "
                             "lognormal:MEDIAN:SIGMA") from None
        if not all(math.isfinite(x) and x >= 0 for x in (delay.a, delay.b)):
            raise ValueError(f"--worker-start-delay: {spec!r}: every number must be finite and >= 0")
        if delay.kind == "uniform" and delay.b < delay.a:
            raise ValueError(f"--worker-start-delay: {spec!r}: HIGH is below LOW")
        return delay

    def __str__(self) -> str:
        return f"{self.a:g}" if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"

    @property
    def bound(self) -> float:
        """The longest delay `draw` can give."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return self.b
        return self.a * math.exp(LOGNORMAL_CUT * self.b)

    def draw(self, seed: int, n: int) -> float:
        """The delay of start `n` in a run seeded `seed`: a draw of its own, so reproducible
        whatever other draws were made before it."""
        rng = random.Random(f"worker-start-delay/{seed}/{n}")
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        z = max(-LOGNORMAL_CUT, min(LOGNORMAL_CUT, rng.gauss(0.0, 1.0)))
        return self.a * math.exp(self.b * z)


def late_command(cmd: list[str], delay: float) -> list[str]:
    """`cmd`, started `delay` seconds late by the stub (which execs it: same pid)."""
    return [sys.executable, "-c", _STUB, LATE_START, f"{delay:.3f}", *cmd]


def start_number(cmd: list[str]) -> int:
    """Which start of its pool a worker's command is: n of its work dir `.../local-n`."""
    work_dir = cmd[cmd.index("--work-dir") + 1]
    return int(os.path.basename(work_dir).rpartition("-")[2])


class LateStartLocalBackend(LocalBackend):
    """LocalBackend whose worker JVMs start `start_delay` late (benchmarks only)."""

    start_delay = Unicode("", help="a --worker-start-delay spec; empty: no delay").tag(config=True)
    start_delay_seed = Int(1, help="the run's seed").tag(config=True)

    @validate("start_delay")
    def _check_start_delay(self, proposal):
        if proposal.value:
            try:
                StartDelay.parse(proposal.value)
            except ValueError as e:
                raise TraitError(f"LateStartLocalBackend.start_delay: {e}") from None
        return proposal.value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        spawn = self._children.spawn

        def late_spawn(cmd: list[str], env: dict[str, str], **kwargs) -> int:
            if self.start_delay and WORKER_CLASS in cmd:
                n = start_number(cmd)
                delay = StartDelay.parse(self.start_delay).draw(self.start_delay_seed, n)
                self.log.info("LateStartLocalBackend: worker local-%d starts %.1f s late", n, delay)
                cmd = late_command(cmd, delay)
            return spawn(cmd, env, **kwargs)

        self._children.spawn = late_spawn
