"""One active scaler per Kubernetes pool: a `coordination.k8s.io/v1` Lease, as client-go does it.

The holder renews the Lease every `retry_period` (in the background, and before a cycle
when the last renewal is older than that), and stops acting once `renew_deadline` has
passed since the last renewal that succeeded was sent. Any other scaler takes the Lease
over only after it has seen the same record (resourceVersion) for `lease_duration`, on its
own monotonic clock: renew_deadline < lease_duration, so the old holder has stopped acting
by then, with no clocks compared across machines. Updates carry the resourceVersion they
read, so two scalers never both win: the second gets a conflict. At exit the holder
empties the Lease, and the next scaler takes over at its next try.

kubernetes_asyncio's own `leaderelection` does not fit: it drives a renew loop of its own
around callbacks, where the command checks before each cycle; it logs a traceback for
every lost update race, writes local time marked as UTC, and has no release.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import aiohttp
from kubernetes_asyncio import client

from ..errors import ConfigError
from . import BackendError, Leadership
from .kube_api import Conflict, KubeApi, NotFound, request_error

GROUP = "coordination.k8s.io"


def lease_name(pool: str) -> str:
    """The pool's Lease (a pool is a DNS label of at most 40 characters: the name is valid)."""
    return f"jhub-spark-scaler-{pool}"


def lease_permissions(name: str) -> list[tuple[str, str, str, str]]:
    """(verb, API group, resource, name) the Lease needs; create cannot be limited to a name."""
    return [("get", GROUP, "leases", name), ("create", GROUP, "leases", ""),
            ("update", GROUP, "leases", name)]


@dataclass(frozen=True)
class LeaseTimings:
    """Seconds; client-go's rules between them (its defaults are 15, 10 and 2)."""

    duration: float
    renew_deadline: float
    retry_period: float

    def problem(self) -> str:
        """Why these timings cannot keep two holders apart ("" if they can)."""
        name = "KubernetesBackend.lease_"
        if not self.duration > self.renew_deadline:
            return (f"{name}duration ({self.duration:g}) must be greater than {name}renew_deadline "
                    f"({self.renew_deadline:g})")
        if not self.renew_deadline > 1.2 * self.retry_period:  # client-go's JitterFactor
            return (f"{name}renew_deadline ({self.renew_deadline:g}) must be greater than 1.2 x "
                    f"{name}retry_period ({self.retry_period:g})")
        return ""


def _now() -> str:
    """A MicroTime: RFC 3339 in UTC with microseconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Lease(Leadership):
    """A Lease named for the pool, in the backend's namespace."""

    def __init__(self, *, name: str, namespace: str, identity: str, timings: LeaseTimings,
                 connect: Callable[[], Awaitable[KubeApi]], log: logging.Logger):
        if problem := timings.problem():
            raise ConfigError(problem)
        self.name, self.namespace, self.identity = name, namespace, identity
        self.timings = timings
        self.what = f"Lease {namespace}/{name}"
        self.log = log
        self._connect = connect
        self._api: KubeApi | None = None
        self._lock = asyncio.Lock()  # one request at a time: the background renewal and a cycle's
        self._lease: dict | None = None  # as last read or written
        self._held = False
        self._renewed_at = -math.inf  # monotonic time the last successful write was sent
        self._seen: tuple[str, float] = ("", 0.0)  # another holder's resourceVersion, first seen at
        self._renewing: asyncio.Task | None = None
        self._trouble = ""
        #: the last other holder seen, for log lines
        self.holder = "nobody"

    # -- requests ------------------------------------------------------------------

    async def _request(self, verb: str, method, *args) -> dict:
        try:
            response = await method(*args, _preload_content=False, _request_timeout=self._api.timeout)
            async with response:
                body = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            host = self._api.api_client.configuration.host
            raise BackendError(
                f"cannot reach the Kubernetes API at {host}: {e or type(e).__name__}") from None
        if not 200 <= response.status <= 299:
            raise request_error(response.status, body, verb, f"leases/{self.name}", self.namespace)
        return json.loads(body)

    def _body(self, lease: dict | None, holder: str) -> dict:
        """The Lease to write: held by `holder` ("" to release), renewed now."""
        old = (lease or {}).get("spec") or {}
        spec = {"holderIdentity": holder, "leaseDurationSeconds": math.ceil(self.timings.duration),
                "renewTime": _now(), "acquireTime": old.get("acquireTime") or _now(),
                "leaseTransitions": old.get("leaseTransitions") or 0}
        if holder and old.get("holderIdentity") != holder:
            spec["acquireTime"] = spec["renewTime"]
            spec["leaseTransitions"] += 1 if old.get("holderIdentity") else 0
        if not holder:  # as client-go's release: the next holder need not wait
            spec["leaseDurationSeconds"] = 1
        metadata = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {"apiVersion": f"{GROUP}/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def _write(self, lease: dict | None, holder: str) -> dict:
        coordination = client.CoordinationV1Api(self._api.api_client)
        if lease is None:
            return await self._request("create", coordination.create_namespaced_lease, self.namespace,
                                       self._body(None, holder))
        return await self._request("update", coordination.replace_namespaced_lease, self.name,
                                   self.namespace, self._body(lease, holder))

    async def _read(self) -> dict | None:
        coordination = client.CoordinationV1Api(self._api.api_client)
        try:
            return await self._request("get", coordination.read_namespaced_lease, self.name, self.namespace)
        except NotFound:
            return None

    # -- one try -------------------------------------------------------------------

    async def _try(self) -> bool:
        """Renew, or take over if it is free or expired; True if held now. BackendError
        when the apiserver cannot be asked."""
        sent = time.monotonic()
        if self._held and self._lease is not None:
            # the holder writes without reading first: a conflict means someone else wrote
            with contextlib.suppress(Conflict):
                return self._won(await self._write(self._lease, self.identity), sent)
        lease = await self._read()
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
        self.holder = holder or self.holder
        if lease is not None and holder not in ("", self.identity):
            self._held = False
            version = lease["metadata"]["resourceVersion"]
            if version != self._seen[0]:
                self._seen = (version, time.monotonic())
            if time.monotonic() - self._seen[1] < self.timings.duration:
                return False
            self.log.info("%s: not renewed by %s for %.0f s: taking over", self.what, holder,
                          self.timings.duration)
        try:
            return self._won(await self._write(lease, self.identity), sent)
        except Conflict:  # another scaler wrote first
            return False

    def _won(self, lease: dict, sent: float) -> bool:
        self._lease, self._held, self._renewed_at = lease, True, sent
        return True

    async def _try_logged(self) -> bool:
        """`_try`, with trouble logged once when it starts and once when it ends."""
        async with self._lock:
            try:
                held = await self._try()
            except (BackendError, ValueError, KeyError, TypeError) as e:  # an answer that is not a Lease too
                if str(e) != self._trouble:
                    self.log.warning("%s: %s", self.what, e)
                self._trouble = str(e)
                return False
        if self._trouble:
            self.log.info("%s: the apiserver answers again", self.what)
            self._trouble = ""
        return held

    # -- Leadership ----------------------------------------------------------------

    async def _connected(self) -> None:
        if self._api is not None:
            return
        self._api = await self._connect()
        missing = await self._api.missing_permissions(lease_permissions(self.name))
        if missing:
            raise ConfigError(
                f"missing RBAC permissions in namespace {self.namespace!r}: {', '.join(missing)}; "
                "grant them to the scaler's service account (helm-values/rbac.yaml)"
            )

    async def acquire(self, *, wait: bool) -> None:
        """Without `wait`, still wait out a Lease nobody renews (a holder that died): refuse
        only once its holder is seen renewing it, or the apiserver cannot be asked."""
        await self._connected()
        first_seen, told = "", False
        while not await self._try_logged():
            if not wait and self._trouble:
                raise BackendError(self._trouble)
            if not wait and first_seen and self._seen[0] != first_seen:
                raise BackendError(
                    f"another jhub-spark-scaler ({self.holder}) is the active scaler of {self.what}: "
                    "stop it, or start this one with --standby to take over when it exits")
            first_seen = first_seen or self._seen[0]
            if not told:
                self.log.info("standing by: %s is the active scaler of %s (a lease of %.0f s, retried "
                              "every %.0f s)", self.holder, self.what, self.timings.duration,
                              self.timings.retry_period)
                told = True
            await asyncio.sleep(self.timings.retry_period)
        if told:
            self.log.info("now the active scaler of %s (%s was before)", self.what, self.holder)
        self._renewing = asyncio.ensure_future(self._renew_loop())

    async def _renew_loop(self) -> None:
        retry = self.timings.retry_period
        while self._held:
            due = self._renewed_at + retry - time.monotonic()
            await asyncio.sleep(due if due > 0 else retry)  # after a failed try: the next in `retry`
            if self._held and time.monotonic() - self._renewed_at >= retry:
                await self._try_logged()
            if time.monotonic() - self._renewed_at >= self.timings.renew_deadline:
                self._held = False

    async def still_held(self) -> bool:
        if self._held and time.monotonic() - self._renewed_at >= self.timings.retry_period:
            await self._try_logged()
        if self._held and time.monotonic() - self._renewed_at >= self.timings.renew_deadline:
            self._held = False
        return self._held

    async def release(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
            self._renewing = None
        if self._api is None:
            return
        try:
            if self._held and self._lease is not None:
                async with self._lock:
                    await self._write(self._lease, "")
                self.log.info("released %s", self.what)
        except BackendError as e:  # a conflict: someone else holds it already
            self.log.info("%s not released: %s", self.what, e)
        finally:
            self._held, self._lease = False, None
            await self._api.api_client.close()
            self._api = None
