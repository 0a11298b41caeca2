"""GET a JSON document over HTTP, turning every failure into one line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


async def fetch_json(
    client: AsyncHTTPClient,
    request: HTTPRequest,
    *,
    what: str,
    error: type[Exception],
    advice: Mapping[int, str] = {},
) -> Any:
    """The decoded body of `request`, or `error` saying what went wrong with `what`
    (e.g. "Spark master"); `advice` adds a hint for some HTTP status codes."""
    url = request.url
    try:
        response = await client.fetch(request)
    except HTTPClientError as e:
        if e.code == 599:  # tornado's code for "no HTTP answer": a timeout
            raise error(f"cannot reach {what} at {url}: {e.message}") from None
        hint = f": {advice[e.code]}" if e.code in advice else ""
        raise error(f"{what} at {url} answered HTTP {e.code}{hint}") from None
    except Exception as e:  # connection refused, DNS, body too large
        raise error(f"cannot reach {what} at {url}: {e}") from None
    try:
        return json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        start = response.body[:40].decode("utf-8", "replace")
        raise error(f"{what} at {url} did not answer JSON (starts {start!r})") from None
