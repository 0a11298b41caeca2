"""The service side of the hub's spawn hooks: `POST <prefix>events`.

The hooks installed by `jhub_spark_scaler.hub.configure` send
`{"action": "start"|"stop", "user": "...", "server": "..."}` (`constants.EVENT_ACTIONS`) with the header
`Authorization: token <the events secret>` (`constants.EVENTS_SECRET_ENV`, set by
`configure()`; without it, the service's API token). A valid event is handed to
`on_event(action, user, server)` and answered 202; anything else gets a
one-line JSON error `{"error": "..."}`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable

from tornado import web

from .constants import EVENT_ACTIONS, EVENTS_PATH
from .httpjson import json_object

MAX_BODY = 4096
MAX_USER_NAME = 255

EventCallback = Callable[[str, str, str], None]


@web.stream_request_body
class EventsHandler(web.RequestHandler):
    """Token-authenticated spawn events; streamed so an oversized body is never read."""

    SUPPORTED_METHODS = ("POST",)

    def initialize(self, token: str, on_event: EventCallback) -> None:
        self.token = token
        self.on_event = on_event
        self.chunks: list[bytes] = []

    def check_xsrf_cookie(self) -> None:
        """No cookies are involved: the token header is the whole authentication."""

    def prepare(self) -> None:
        """Refuse before the body is read: wrong credentials, then a declared size over the limit."""
        self.authenticate()
        if int(self.request.headers.get("Content-Length", 0)) > MAX_BODY:  # tornado checked it is a number
            raise web.HTTPError(413, "body over %d bytes", MAX_BODY)
        # a chunked body has no Content-Length: tornado stops reading it at this size
        self.request.connection.set_max_body_size(MAX_BODY)

    def authenticate(self) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or not token.strip():
            raise web.HTTPError(401, "an 'Authorization: token <token>' header is required")
        if not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise web.HTTPError(403, "wrong token")

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def post(self) -> None:
        action, user, server = parse_event(b"".join(self.chunks))
        self.on_event(action, user, server)
        self.set_status(202)

    def write_error(self, status_code: int, **kwargs) -> None:
        if status_code == 401:
            self.set_header("WWW-Authenticate", "token")
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, web.HTTPError) and error.log_message:
            message = error.log_message % error.args
        else:
            message = self._reason
        self.finish({"error": message})


def parse_event(body: bytes) -> tuple[str, str, str]:
    """(action, user, server) from a JSON body, or HTTPError 400 saying what is wrong."""
    event = json_object(body, like='{"action": "start", "user": "alice", "server": ""}')
    action, user, server = event.get("action"), event.get("user"), event.get("server")
    if action not in EVENT_ACTIONS:
        raise web.HTTPError(400, "action must be " + " or ".join(map(repr, EVENT_ACTIONS)))
    if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_NAME:
        raise web.HTTPError(400, "user must be a non-empty string of at most %d characters", MAX_USER_NAME)
    if not isinstance(server, str):
        raise web.HTTPError(400, "server must be a string ('' for the default server)")
    return action, user, server


def make_events_route(prefix: str, *, token: str, on_event: EventCallback) -> tuple[str, type, dict]:
    """The tornado route `(pattern, EventsHandler, kwargs)` for `POST <prefix>events` (`EVENTS_PATH`).

    `prefix` is the service's JUPYTERHUB_SERVICE_PREFIX; `token` what the hub's hooks send
    (see the module's docstring).
    """
    if not token:
        raise ValueError("events: the events secret is empty (JHUB_SPARK_SCALER_EVENTS_SECRET, "
                         "else JUPYTERHUB_API_TOKEN)")
    pattern = re.escape(f"{prefix.rstrip('/')}/{EVENTS_PATH}")
    return pattern, EventsHandler, {"token": token, "on_event": on_event}
