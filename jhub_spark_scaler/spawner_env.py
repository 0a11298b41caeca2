"""Hub-config helpers shared by `configure()`'s parts: read what a config section already
holds, and add a per-spawn environment variable to every spawner section.

A spawner class's own section (`c.KubeSpawner`, which z2jh fills from
`singleuser.extraEnv`) replaces `c.Spawner`'s `environment` for that class, so a variable
meant for every notebook goes in `c.Spawner` and in each other section that sets one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tornado.log import app_log  # the hub wires tornado's loggers into its own
from traitlets.config import Config, LazyConfigValue


def current(section: Config, key: str, empty: Any) -> Any:
    """What `section` already holds for `key`, or `empty`; reading a missing key
    would create a LazyConfigValue, and one built by `.append()`/`.update()` on
    an unset key is resolved against `empty`."""
    if key not in section:
        return empty
    value = section[key]
    if isinstance(value, LazyConfigValue):
        return value.get_value(empty)
    return value


def add_to_every_environment(c: Config, name: str, wrap: Callable[[Any], Any], *, kind: type,
                             left_alone: str) -> None:
    """Set `environment[name]` to `wrap(theirs)` in `c.Spawner` and in every other section
    that sets `environment`, keeping each section's own value as `theirs` (None if unset).
    A value already of `kind` (a second call) stays; one that is neither a string nor a
    callable is left alone with a warning ending in `left_alone` (what that means)."""
    sections = ["Spawner", *(key for key in c if key != "Spawner" and isinstance(c[key], Config)
                             and "environment" in c[key])]
    for section in sections:
        environment = dict(current(c[section], "environment", {}))
        theirs = environment.get(name)
        if isinstance(theirs, kind):
            continue
        if theirs is not None and not isinstance(theirs, str) and not callable(theirs):
            app_log.warning("c.%s.environment[%r] is %s, not a string or callable: left as it is, "
                            "and %s", section, name, type(theirs).__name__, left_alone)
            continue
        environment[name] = wrap(theirs)
        c[section].environment = environment
