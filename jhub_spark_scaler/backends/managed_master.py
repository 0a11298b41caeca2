"""The managed master's objects (KubernetesBackend.manage_master): create what is missing of
the master Deployment and its Services, adopt what exists, and wait until one that is being
deleted has gone before creating it anew. Adopting an object being deleted would leave the
pool without a master once it goes, and with the Deployment as the workers' owner the
garbage collector would delete every new worker pod with it."""

from __future__ import annotations

import asyncio
import logging
import time

from . import BackendError
from .kube_api import Conflict, KubeApi, NotFound

#: Seconds between looks at an object being deleted.
RECHECK_SECONDS = 1.0


async def ensure_master(api: KubeApi, manifests: list[dict], *, log: logging.Logger, timeout: float) -> None:
    """Create or adopt each of `manifests`; wait at most `timeout` s for each being deleted."""
    for manifest in manifests:
        await _ensure(api, manifest, log=log, timeout=timeout)


async def _ensure(api: KubeApi, manifest: dict, *, log: logging.Logger, timeout: float) -> None:
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            await api.create(manifest)
            log.info("created %s %s", kind, name)
            return
        except Conflict:
            pass
        try:
            existing = await api.read(kind, name)
        except NotFound:
            continue  # it went between the two calls: create it
        if not existing["metadata"].get("deletionTimestamp"):
            log.info("adopted the existing %s %s", kind, name)
            return
        if time.monotonic() >= deadline:
            raise BackendError(
                f"the managed master's {kind} {name} is being deleted and was still there after "
                f"{timeout:.0f} s: raise KubernetesBackend.setup_timeout, or wait until it is gone")
        if not waiting:
            log.info("the %s %s is being deleted: creating it anew once it is gone", kind, name)
            waiting = True
        await asyncio.sleep(RECHECK_SECONDS)
