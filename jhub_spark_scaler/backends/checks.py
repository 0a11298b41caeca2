"""Validation of backend settings, shared by the backends.

Each backend states its rules as data: a dict of trait name -> `Check` (is the value
valid, and what is wrong otherwise). `validator()` turns that dict into the traitlets
`@validate` hook, which raises `TraitError` naming the setting in one line, so a wrong
value stops the command when the backend is made, before anything is created or any
API is called. Values equal to a trait's static default need `revalidate()` as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from traitlets import HasTraits, TraitError, validate


class Check(NamedTuple):
    """One rule for a setting: the value is valid when `ok(value)` is true."""

    ok: Callable[[Any], Any]
    problem: str  # what is wrong otherwise, after the value: "'x' is not a port"


MASTER_URL = re.compile(r"spark://[^/:,\s]+:\d+(,[^/:,\s]+:\d+)*/?")
MASTER_UI_URL = re.compile(r"https?://[^/:\s]+(:\d+)?(/\S*)?")


def master_url_check(*, empty_ok: bool) -> Check:
    """The master URL workers register with; "" too if `empty_ok` (no master known yet)."""
    return Check(lambda v: (empty_ok and not v) or MASTER_URL.fullmatch(v),
                 "is not spark://host:port (or spark://host1:port1,host2:port2 for standby masters)")


def master_ui_url_check(*, empty_ok: bool) -> Check:
    """The master's web UI; "" too if `empty_ok`."""
    return Check(lambda v: (empty_ok and not v) or MASTER_UI_URL.fullmatch(v), "is not http://host:port")


def validator(checks: Mapping[str, Check], *, owner: str):
    """The `@validate` hook for every trait in `checks`: assign it in the class body.
    `owner` is the class name the message gives: "LocalBackend.worker_cores: 0 must be ..."."""

    @validate(*checks)
    def check(self, proposal):
        name = proposal.trait.name
        if not checks[name].ok(proposal.value):
            raise TraitError(f"{owner}.{name}: {proposal.value!r} {checks[name].problem}")
        return proposal.value

    return check


def revalidate(obj: HasTraits, checks: Mapping[str, Check]) -> None:
    """Validate the settings in `checks` again: call at the end of `__init__`. traitlets does
    not validate a configured value equal to the trait's static default (an empty string)."""
    for name in checks:
        setattr(obj, name, getattr(obj, name))
