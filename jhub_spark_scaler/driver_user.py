"""The hub user's name on a notebook's Spark driver, so that the master reports its apps
under that name: runs in the hub's process (`configure()` calls `install`).

A standalone master's app `user` is the driver JVM's `user.name` system property (not
`SPARK_USER`). A notebook's driver is the JVM that pyspark starts through `spark-submit`,
whose launcher (org.apache.spark.launcher, `SparkSubmitCommandBuilder`) builds the JVM's
options in this order: `$SPARK_SUBMIT_OPTS`, then `spark.driver.defaultJavaOptions`, then
`spark.driver.extraJavaOptions`; for a repeated `-D` the JVM keeps the last. So
`-Duser.name=<hub user>` in the notebook server's `SPARK_SUBMIT_OPTS` names the app, replaces
no Spark setting (an admin's `spark-defaults.conf` and a user's builder options stay whole),
and yields to a `-Duser.name` set in either: a name claimed that way is a display and credit
matter, not an access control.

The launcher splits `SPARK_SUBMIT_OPTS` like a shell (`CommandBuilderUtils.parseOptionString`:
spaces, single and double quotes, backslash); no shell evaluates it, so `$` and backquotes
are plain characters, except on Kubernetes, where the kubelet expands `$(VAR)` and `$$` in
a pod's environment values. Two kinds of name cannot be carried and get no option (their
apps show the driver's OS user, as without this module): a character outside Unicode's
Basic Multilingual Plane (an emoji), which that parser corrupts by reading a UTF-16
surrogate pair as two characters, and a control character (the `spark-class` script drops
carriage returns). Other non-ASCII names need a UTF-8 locale in the notebook (`LANG`, e.g.
`C.UTF-8`): Java reads its environment and arguments in the locale's encoding.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from tornado.log import app_log
from traitlets.config import Config

from .spawner_env import add_to_every_environment

#: The environment variable the launcher puts first among the driver JVM's options.
SUBMIT_OPTS = "SPARK_SUBMIT_OPTS"


def quote(arg: str) -> str:
    """One argument for Spark's option splitting: in single quotes, inside which only `'`
    needs care (close, an escaped quote, reopen)."""
    return "'" + arg.replace("'", "'\\''") + "'"


def carried(name: str) -> bool:
    """Whether the launcher and the JVM pass `name` on unchanged (see the module's docstring)."""
    return bool(name) and not any(ord(ch) > 0xFFFF or unicodedata.category(ch) == "Cc" for ch in name)


def user_option(name: str) -> str:
    """`-Duser.name=<name>`, quoted; "" for a name that cannot be carried."""
    return quote(f"-Duser.name={name}") if carried(name) else ""


def _makes_pods(spawner: Any) -> bool:
    """KubeSpawner or a subclass: its environment values pass the kubelet's `$(VAR)` expansion."""
    return any(cls.__module__.partition(".")[0] == "kubespawner" for cls in type(spawner).__mro__)


class DriverUser:
    """A `Spawner.environment` value for SPARK_SUBMIT_OPTS (JupyterHub calls it with the
    spawner): the hub user's option, then `theirs`, the value the admin had set (a string or
    a callable of the spawner), so that an option of theirs overrides the user's name."""

    def __init__(self, theirs: str | Callable[[Any], str] | None = None):
        self.theirs = theirs

    def __call__(self, spawner: Any) -> str:
        theirs = self.theirs(spawner) if callable(self.theirs) else (self.theirs or "")
        if isinstance(self.theirs, str) and hasattr(spawner, "_expand_all"):
            theirs = spawner._expand_all(theirs)  # KubeSpawner expands `{username}` in its strings
        ours = user_option(spawner.user.name)
        if not ours:
            app_log.info("%s: the hub user %r cannot be carried to Spark drivers; their apps show the "
                         "driver's OS user", SUBMIT_OPTS, spawner.user.name)
        if ours and _makes_pods(spawner):
            ours = ours.replace("$", "$$")  # the kubelet turns $$ into $ and leaves nothing else expanded
        return " ".join(part for part in (ours, theirs) if part)

    def __deepcopy__(self, memo: dict) -> DriverUser:
        return self  # traitlets copies config values into every Spawner: immutable, share it

    def __repr__(self) -> str:
        return f"<DriverUser then {self.theirs!r}>"


def install(c: Config) -> None:
    """Put SPARK_SUBMIT_OPTS in every spawner section's `environment`, keeping each
    section's value (`spawner_env.add_to_every_environment`)."""
    add_to_every_environment(c, SUBMIT_OPTS, DriverUser, kind=DriverUser,
                             left_alone="Spark drivers started there keep their OS user's name "
                             "(set it as a string to get the hub user's)")
