"""The environment of the local backend's Spark daemons: an allowlist, not the scaler's own.

A worker hands its environment down to every executor it launches, so whatever it
holds is readable by every notebook user's code (`os.environ` in a UDF). The scaler's
own environment carries the hub's API token (JUPYTERHUB_API_TOKEN, also the service's
OAuth client secret and the events secret): a daemon gets only the variables named
here, and the ones the backend sets.

Executors need no PYSPARK_PYTHON of their own: the driver sends the Python to run
(its PYSPARK_PYTHON, else `python3` on the executor's PATH) with every job.
"""

from __future__ import annotations

from collections.abc import Mapping

#: variables passed on by name, when the scaler has them
NAMES = ("PATH", "JAVA_HOME", "LANG", "TZ")
#: variables passed on by prefix (SPARK_*: the admin's settings for Spark, e.g. SPARK_LOCAL_DIRS)
PREFIXES = ("LC_", "SPARK_")
#: never passed on, whatever the lists above say: the hub's tokens and the service's identity
NEVER = ("JUPYTERHUB_", "JPY_")
#: PATH when the scaler has none
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def allowed(name: str) -> bool:
    """Whether the variable `name` of the scaler's environment may reach a daemon."""
    if name.startswith(NEVER):
        return False
    return name in NAMES or name.startswith(PREFIXES)


def daemon_env(source: Mapping[str, str], *, home: str, spark_home: str, scala: str, local_ip: str,
               java_home: str) -> dict[str, str]:
    """The environment of one daemon: the allowed part of `source` (the scaler's
    environment), then what the backend sets. `java_home` ("" to keep `source`'s)
    makes the executors a worker launches use the daemons' Java."""
    env = {name: value for name, value in source.items() if allowed(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    if java_home:
        env["JAVA_HOME"] = java_home
    # Spark's launcher code in the worker needs SPARK_SCALA_VERSION (spark-class sets it);
    # SPARK_LOCAL_IP binds the daemon's web UI and its executors to the daemon's address
    env.update(HOME=home, SPARK_HOME=spark_home, SPARK_SCALA_VERSION=scala, SPARK_LOCAL_IP=local_ip)
    return env
