"""The local workers' addresses: one loopback address each, from `LocalBackend.host_range`,
because Spark decommissions by host."""

from __future__ import annotations

import contextlib
import ipaddress

from . import BackendError


def parse_range(text: str) -> tuple[int, int]:
    """'127.0.0.2-127.0.0.254' (or one address) -> (first, last) as integers."""
    first, _, last = text.partition("-")
    a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address((last or first).strip())
    if not (a.is_loopback and b.is_loopback and a <= b):
        raise ValueError(text)
    return int(a), int(b)


def range_ok(text: str) -> bool:
    with contextlib.suppress(ValueError):
        return bool(parse_range(text))
    return False


def pick_host(host_range: str, *, taken: set[str], held: int) -> str:
    """The first address of `host_range` not in `taken`; BackendError when none is left
    (`held`: how many of them our workers hold)."""
    first, last = parse_range(host_range)
    for n in range(first, last + 1):
        if str(ipaddress.IPv4Address(n)) not in taken:
            return str(ipaddress.IPv4Address(n))
    raise BackendError(f"LocalBackend.host_range: no address left in {host_range} "
                       f"({held} workers hold one); widen it")
