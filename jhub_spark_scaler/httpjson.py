"""JSON over HTTP, every failure one line: GET a document (`fetch_json`), read a request's
body (`json_object`).

Redirects are never followed: a request may carry credentials (the hub API's token), and
tornado would send its headers on to wherever the answer points. A 3xx is an error naming
where it pointed, so that the admin can set the address it should have been.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


def json_object(body: bytes, *, like: str) -> dict:
    """A request body's JSON object, or HTTPError 400 saying what is wrong with it (`like`:
    an example of a good one, for the message)."""
    try:
        document = json.loads(body)
    except RecursionError:  # the C decoder's stack: "[[[[..." thousands deep
        raise web.HTTPError(400, "body is JSON nested too deeply") from None
    except ValueError:  # UnicodeDecodeError too
        raise web.HTTPError(400, "body is not JSON") from None
    if not isinstance(document, dict):
        raise web.HTTPError(400, "body must be a JSON object, like %s", like)
    return document


def _limit(request: HTTPRequest, max_bytes: int, chunks: list[bytes]) -> Callable[[], bool]:
    """Collect the body into `chunks` up to `max_bytes`; the returned function says whether the
    answer declared or sent more. (What stops the reading is the client's `max_body_size`, set
    a little higher: tornado itself reports only "Connection closed".)"""
    size = [0, False]  # bytes received, over the limit

    def header(line: str) -> None:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit() and int(value) > max_bytes:
            size[1] = True

    def chunk(data: bytes) -> None:
        size[0] += len(data)
        size[1] = size[1] or size[0] > max_bytes
        if not size[1]:
            chunks.append(data)

    request.header_callback, request.streaming_callback = header, chunk
    return lambda: size[1]


async def fetch_json(
    client: AsyncHTTPClient,
    request: HTTPRequest,
    *,
    what: str,
    error: type[Exception],
    advice: Mapping[int, str] = {},
    max_bytes: int | None = None,
) -> Any:
    """The decoded body of `request`, or `error` saying what went wrong with `what`
    (e.g. "Spark master"); `advice` adds a hint for some HTTP status codes; an answer
    over `max_bytes` is refused, and not kept in memory; a redirect is refused, not followed."""
    url = request.url
    request.follow_redirects = False
    chunks: list[bytes] = []
    too_large = _limit(request, max_bytes, chunks) if max_bytes is not None else lambda: False
    try:
        response = await client.fetch(request)
    except HTTPClientError as e:
        if too_large():
            raise error(f"{what} at {url} answered more than {max_bytes / 2**20:g} MiB") from None
        if e.code == 599:  # tornado's code for "no HTTP answer": a timeout
            raise error(f"cannot reach {what} at {url}: {e.message}") from None
        if 300 <= e.code < 400:
            raise error(redirect_error(what, url, e)) from None
        hint = f": {advice[e.code]}" if e.code in advice else ""
        raise error(f"{what} at {url} answered HTTP {e.code}{hint}") from None
    except Exception as e:  # connection refused, DNS, body too large
        if too_large():
            raise error(f"{what} at {url} answered more than {max_bytes / 2**20:g} MiB") from None
        raise error(f"cannot reach {what} at {url}: {e}") from None
    if too_large():
        raise error(f"{what} at {url} answered more than {max_bytes / 2**20:g} MiB") from None
    body = b"".join(chunks) if max_bytes is not None else response.body
    try:
        return json.loads(body)
    except RecursionError:  # the C decoder's stack: "[[[[..." thousands deep
        raise error(f"{what} at {url} answered JSON nested too deeply to read") from None
    except (ValueError, UnicodeDecodeError):
        start = body[:40].decode("utf-8", "replace")
        raise error(f"{what} at {url} did not answer JSON (starts {start!r})") from None


def redirect_error(what: str, url: str, error: HTTPClientError) -> str:
    """One line for a redirect that was not followed."""
    location = error.response.headers.get("Location", "?") if error.response is not None else "?"
    return (f"{what} at {url} answered a redirect (HTTP {error.code}) to {location[:200]}: "
            "not followed, the request may carry credentials; use the address it should reach")
