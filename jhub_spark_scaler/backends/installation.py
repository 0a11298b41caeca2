"""The Java and Spark the local backend starts its daemons from, checked before any start."""

from __future__ import annotations

import glob
import os
import re
import shutil
from typing import NamedTuple

from ..errors import ConfigError
from .daemon_user import DaemonUser, readable_check, unreachable


class Installation(NamedTuple):
    java: str  # the java executable, found on PATH if need be
    java_home: str  # the JDK it belongs to ("" if it is not in one): the executors' Java too
    scala: str  # Spark's Scala version, which the worker's launcher code needs


def executor_python(path: str, user: DaemonUser | None) -> str:
    """The `python3` an executor finds on `path` (the daemons' PATH) when the driver names
    none (PYSPARK_PYTHON): the first one `user` can run, as exec's search does; "" if none."""
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", "python3")
        if os.path.isfile(candidate) and (user is None or not unreachable(candidate, user, bits=1)):
            return candidate
    return ""


def find(*, java: str, spark_home: str, user: DaemonUser | None) -> Installation:
    """Java and Spark as `LocalBackend.java` and `spark_home` name them, usable by the
    daemons' `user` (None: the scaler's); ConfigError naming the setting otherwise."""
    found = shutil.which(java)
    if not found:
        raise ConfigError(f"LocalBackend.java: no Java executable at {java!r}; "
                          "install Java 17+ or set LocalBackend.java")
    home = os.path.dirname(os.path.dirname(os.path.realpath(found)))
    cores = glob.glob(os.path.join(spark_home, "jars", "spark-core_*.jar"))
    if not spark_home or not cores:
        raise ConfigError(f"LocalBackend.spark_home: no Spark jars in {spark_home!r}/jars; "
                          "pip install pyspark or set LocalBackend.spark_home")
    readable_check("LocalBackend.java", found, user, bits=1)
    readable_check("LocalBackend.spark_home", os.path.join(spark_home, "jars"), user, bits=5)
    readable_check("LocalBackend.spark_home", cores[0], user, bits=4)
    return Installation(
        java=found,
        java_home=home if os.path.isfile(os.path.join(home, "bin", "java")) else "",
        scala=re.search(r"spark-core_([\d.]+)-", os.path.basename(cores[0])).group(1),
    )
