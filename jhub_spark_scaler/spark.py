"""Client of the Spark standalone master's and workers' web UI JSON.

Parsing is separate from I/O (`parse_master`, `parse_worker` are pure) so it
can be tested on real answers: a Spark 4.3.0 master's and worker's `/json/`,
kept in `tests/data/spark-4.3.0/`. Unknown fields are
ignored (Spark 3.1 to 4.x add fields freely); missing or mistyped required
fields are a `SparkError` naming the field.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .httpjson import fetch_json, redirect_error
from .model import AppStart, Executor, MasterApp, MasterStatus, MasterWorker, WorkerStatus

#: /json/ of a master with 10,000 workers is ~5 MB; anything far larger is not a master.
MAX_BODY_BYTES = 64 * 1024 * 1024


class SparkError(Exception):
    """The master or a worker could not be read or refused a request (one line)."""


def _field(doc: dict, key: str, kind: type, where: str, default: Any = None) -> Any:
    value = doc.get(key, default)
    if value is None:
        raise SparkError(f"{where}: missing field {key!r}")
    # bool is an int in Python; Spark never sends booleans where it means numbers
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SparkError(f"{where}: field {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _object(doc: Any, where: str) -> dict:
    if not isinstance(doc, dict):
        raise SparkError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _list(doc: dict, key: str, where: str) -> list:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise SparkError(f"{where}: field {key!r} is {type(value).__name__}, expected list")
    return value


_WORKER_FIELDS = (
    ("id", str, None), ("host", str, None), ("port", int, None), ("webuiaddress", str, ""),
    ("cores", int, 0), ("coresused", int, 0), ("memory", int, 0), ("memoryused", int, 0),
    ("state", str, None), ("lastheartbeat", int, 0),
)


def parse_master_worker(doc: Any) -> MasterWorker:
    # The hot path of a cycle at 10,000 workers: one combined type test, and
    # the field-by-field check only to explain a failure.
    if type(doc) is dict:
        g = doc.get
        values = (
            g("id"), g("host"), g("port"), g("webuiaddress", ""), g("cores", 0), g("coresused", 0),
            g("memory", 0), g("memoryused", 0), g("state"), g("lastheartbeat", 0),
        )
        if (
            type(values[0]) is str and type(values[1]) is str and type(values[2]) is int
            and type(values[3]) is str and type(values[4]) is int and type(values[5]) is int
            and type(values[6]) is int and type(values[7]) is int and type(values[8]) is str
            and type(values[9]) is int
        ):
            return MasterWorker(*values)
    where = "master /json/ workers[]"
    doc = _object(doc, where)
    for key, kind, default in _WORKER_FIELDS:
        _field(doc, key, kind, where, default)
    raise SparkError(f"{where}: malformed entry")  # unreachable unless a type is a subclass


def parse_master_app(doc: Any) -> MasterApp:
    where = "master /json/ activeapps[]"
    doc = _object(doc, where)
    return MasterApp(
        id=_field(doc, "id", str, where),
        name=_field(doc, "name", str, where, ""),
        cores=_field(doc, "cores", int, where, 0),
        state=_field(doc, "state", str, where, ""),
        user=_field(doc, "user", str, where, ""),
        start_time=_field(doc, "starttime", int, where, 0),
    )


def parse_completed_app(doc: Any) -> AppStart:
    where = "master /json/ completedapps[]"
    doc = _object(doc, where)
    return AppStart(_field(doc, "starttime", int, where, 0) / 1000, _field(doc, "user", str, where, ""))


def parse_master(doc: Any) -> MasterStatus:
    """Parse the master's `/json/` document."""
    where = "master /json/"
    doc = _object(doc, where)
    return MasterStatus(
        url=_field(doc, "url", str, where, ""),
        status=_field(doc, "status", str, where),
        workers=tuple(parse_master_worker(w) for w in _list(doc, "workers", where)),
        apps=tuple(parse_master_app(a) for a in _list(doc, "activeapps", where)),
        completed_apps=tuple(parse_completed_app(a) for a in _list(doc, "completedapps", where)),
    )


def _executors(doc: dict, key: str, where: str) -> tuple[Executor, ...]:
    executors = []
    for entry in _list(doc, key, where):
        entry = _object(entry, f"{where} {key}[]")
        appdesc = entry.get("appdesc") if isinstance(entry.get("appdesc"), dict) else {}
        executors.append(
            Executor(
                app_id=_field(entry, "appid", str, f"{where} {key}[]"),
                executor_id=_field(entry, "id", int, f"{where} {key}[]"),
                app_name=str(appdesc.get("name", "")),
            )
        )
    return tuple(executors)


def parse_worker(doc: Any) -> WorkerStatus:
    """Parse a worker's own `/json/` document."""
    where = "worker /json/"
    doc = _object(doc, where)
    return WorkerStatus(id=_field(doc, "id", str, where), executors=_executors(doc, "executors", where),
                        finished=_executors(doc, "finishedexecutors", where))


class SparkClient:
    """Reads the master and workers over HTTP; decommissions workers through the master."""

    def __init__(self, master_ui_url: str, *, timeout: float):
        self.master_ui_url = master_ui_url.rstrip("/")
        self.timeout = timeout
        # Its own client: the limit of the shared one is whatever its first user set. The
        # client stops reading a little over the limit, fetch_json says why.
        self._http = AsyncHTTPClient(force_instance=True, max_body_size=MAX_BODY_BYTES + 2**20)

    async def _get_json(self, url: str, what: str) -> Any:
        request = HTTPRequest(url, connect_timeout=self.timeout, request_timeout=self.timeout)
        return await fetch_json(self._http, request, what=what, error=SparkError, max_bytes=MAX_BODY_BYTES)

    async def master(self) -> MasterStatus:
        """The master's state. Raises SparkError if unreachable, malformed or not ALIVE."""
        url = f"{self.master_ui_url}/json/"
        status = parse_master(await self._get_json(url, "Spark master"))
        if not status.ready:
            raise SparkError(f"Spark master at {self.master_ui_url} is {status.status}, not ALIVE")
        return status

    async def worker(self, webui_url: str) -> WorkerStatus:
        """A worker's own state (its executors). Raises SparkError."""
        url = f"{webui_url.rstrip('/')}/json/"
        return parse_worker(await self._get_json(url, "Spark worker"))

    async def decommission_host(self, host: str) -> None:
        """`POST /workers/kill/?host=H`: decommission every worker on `host`.

        Needs `spark.decommission.enabled=true` on master and workers, and
        `spark.master.ui.decommission.allow.mode=ALLOW` unless the scaler
        reaches the master UI over loopback.
        """
        url = f"{self.master_ui_url}/workers/kill/?{urlencode({'host': host})}"
        request = HTTPRequest(
            url, method="POST", body=b"", connect_timeout=self.timeout,
            request_timeout=self.timeout, follow_redirects=False,
        )
        try:
            await self._http.fetch(request)
        except HTTPClientError as e:
            if e.code in (302, 303):  # Spark redirects to the master page on success
                return
            if 300 <= e.code < 400:
                raise SparkError(redirect_error("Spark master", url, e)) from None
            if e.code == 599:  # no HTTP answer: a timeout
                raise SparkError(f"cannot reach Spark master at {self.master_ui_url}: {e.message}") from None
            if e.code == 404:  # Spark: no worker registered on that host
                raise SparkError(
                    f"Spark master found no worker to decommission on host {host} (HTTP 404: it is gone, "
                    "or the master runs without spark.decommission.enabled=true)"
                ) from None
            raise SparkError(
                f"Spark master refused to decommission host {host} (HTTP {e.code}): "
                "set spark.master.ui.decommission.allow.mode=ALLOW on the master"
            ) from None
        except Exception as e:
            raise SparkError(f"cannot reach Spark master at {self.master_ui_url}: {e}") from None
