"""Faster notebook Spark drivers and executors: the tuned JVM options, and the class data
(AppCDS) archives they start from.

    python -m jhub_spark_scaler.jvm_archives build [--out DIR] [--stable-names]
    python -m jhub_spark_scaler.jvm_archives conf [--dir DIR] [--stable-names]

`build` runs one throwaway Spark app (a driver with a `local-cluster` worker in it, so
that its executor is a JVM launched as a standalone worker launches one) with
-XX:ArchiveClassesAtExit, and keeps the classes each JVM loaded: `driver-<key>.jsa` and
`executor-<key>.jsa`, the key a digest of the java executable and the Spark jars, so that
an upgrade of either misses the archive instead of using a stale one. It does nothing when
both exist. `conf` prints the Spark settings (spark-defaults.conf lines) that use them.

The options go in Spark's admin-level `spark.driver.defaultJavaOptions` and
`spark.executor.defaultJavaOptions`, which Spark puts before a user's
`spark.*.extraJavaOptions`, so a user's own options stay whole and win. A dynamic archive
holds only if the JVM's class path starts as it did when the archive was written, and
Spark's launcher puts the configuration directory (never empty: spark-defaults.conf is in
it) first, which the JVM refuses in an archived class path: `spark.driver.extraClassPath`
and `spark.executor.extraClassPath` put the Spark jars first instead (the jars are on the
class path anyway; a directory after them is not part of the archive's).

Fallback (JDK 17, checked by tests/test_jvm_archives_fallback.py): a missing archive, a
file that is not one, or one written for another class path or JVM is ignored and the JVM
starts without it; -Xlog:cds*=off keeps the JVM's warning about the last two out of the
driver's output (a notebook shows it). A TRUNCATED archive crashes the JVM (SIGBUS), so an
archive is written elsewhere, checked with -Xshare:on, and only then moved in place; the
archive directory must be writable only by the admin.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tornado.log import app_log
from traitlets.config import Config

from .spawner_env import add_to_every_environment

ROLES = ("driver", "executor")

#: Where `build` writes and `configure()` looks by default.
DEFAULT_DIR = os.path.join(sys.prefix, "share", "jhub-spark-scaler", "jvm-archives")

#: Past the archive, per role: C1-only compilation (-XX:TieredStopAtLevel=1) on the driver,
#: whose work is short bursts (it starts sooner; planning showed no consistent cost: 1.8-3.5 s
#: with it, 2.2-7.3 s without, on a loaded machine), never on the executor, where a long
#: code-generated job ran 6-10 times slower with it (benchmarks/RESULTS.md, "Tuned driver
#: and executor JVMs: long jobs").
TUNED_OPTIONS: dict[str, tuple[str, ...]] = {"driver": ("-XX:TieredStopAtLevel=1",), "executor": ()}

#: The JVM's notes about an archive it cannot use: off, so that a stale archive is silent.
QUIET = "-Xlog:cds*=off"

#: Seconds the throwaway app of `build` may take (two JVMs dumping ~100 MB each).
BUILD_TIMEOUT = 900

#: Throwaway apps `build` runs at most (the next one dumps only what is missing).
BUILD_ATTEMPTS = 3

# The throwaway app: SQL with a shuffle and an RDD job, so that each archive holds the
# classes of planning, code generation, shuffle and Python workers. A JVM dumps its classes
# as it exits, which takes seconds on a loaded machine: the executor is sent SIGTERM and
# waited for (its worker would SIGKILL it 10 s after the app ends) and its dump moved aside
# before the app ends (the executor started in its place would write the same file when
# killed); the driver JVM's PID is printed last, for `build` to wait for it.
_WORKLOAD = """
import os, signal, sys, time
from pyspark.sql import SparkSession
from jhub_spark_scaler.jvm_archives import wait_gone

def gone(pid):
    if not wait_gone(pid, timeout=float(os.environ["JVM_ARCHIVES_WAIT"])):
        sys.exit(f"process {pid} did not exit")

def executor_jvm(_rows):
    pid = os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                yield pid
                return
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rpartition(")")[2].split()[1])

spark = (SparkSession.builder.master("local-cluster[1,1,1024]").appName("jvm-archives")
         .config("spark.executor.memory", "512m").config("spark.ui.enabled", "false").getOrCreate())
sc = spark.sparkContext
spark.range(100000).selectExpr("id % 7 AS k", "id").groupBy("k").sum("id").collect()
sc.parallelize(range(100), 2).map(lambda x: (x % 3, x)).reduceByKey(lambda a, b: a + b).collect()
dump = os.environ["JVM_ARCHIVES_EXECUTOR_DUMP"]
if dump:
    [executor] = sc.parallelize([0], 1).mapPartitions(executor_jvm).collect()
    os.kill(executor, signal.SIGTERM)
    gone(executor)
    if os.path.isfile(dump):
        os.replace(dump, dump + ".done")
driver = sc._jvm.java.lang.ProcessHandle.current().pid()
spark.stop()
print(driver)
"""


def default_java() -> str:
    """$JAVA_HOME/bin/java, else java on PATH (as Spark's launcher picks it)."""
    java_home = os.environ.get("JAVA_HOME")
    return os.path.join(java_home, "bin", "java") if java_home else shutil.which("java") or "java"


def default_spark_home() -> str:
    """$SPARK_HOME, else the installed pyspark's directory ("" if neither)."""
    if os.environ.get("SPARK_HOME"):
        return os.environ["SPARK_HOME"]
    spec = importlib.util.find_spec("pyspark")
    return os.path.dirname(spec.origin) if spec and spec.origin else ""


def jars(spark_home: str) -> str:
    """The class path entry of Spark's jars."""
    return os.path.join(spark_home, "jars", "*")


def key(*, java: str, spark_home: str) -> str:
    """A digest of what an archive is valid for: the JVM and the Spark jars."""
    java = os.path.realpath(shutil.which(java) or java)
    listing = sorted(os.listdir(os.path.join(spark_home, "jars")))
    data = json.dumps([java, os.stat(java).st_mtime, os.path.realpath(spark_home), listing])
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def archive(directory: str, role: str, *, java: str, spark_home: str, stable_names: bool = False) -> str:
    """The archive of `role` for this JVM and Spark; `stable_names`: `<role>.jsa`, for a
    configuration written before the archive (an image's), which then relies on the JVM
    ignoring an archive of another class path."""
    name = role if stable_names else f"{role}-{key(java=java, spark_home=spark_home)}"
    return os.path.join(directory, f"{name}.jsa")


def java_options(role: str, archive_file: str) -> str:
    """The tuned options of `role` as Spark's option string."""
    return " ".join([f"-XX:SharedArchiveFile={archive_file}", QUIET, *TUNED_OPTIONS[role]])


def spark_conf(directory: str, *, java: str, spark_home: str, executor_spark_home: str | None = None,
               stable_names: bool = False) -> dict[str, str]:
    """The Spark settings of the tuned driver and executor JVMs, archives in `directory`
    (executors' paths on the workers: `executor_spark_home`, default `spark_home`)."""
    if any(ch.isspace() or ch in "'\"\\" for ch in directory):
        raise ValueError(f"jvm_archives: the archive directory {directory!r} has a space or quote: "
                         "choose a plain path")
    conf = {}
    for role, home in (("driver", spark_home), ("executor", executor_spark_home or spark_home)):
        path = archive(directory, role, java=java, spark_home=home, stable_names=stable_names)
        conf[f"spark.{role}.defaultJavaOptions"] = java_options(role, path)
        conf[f"spark.{role}.extraClassPath"] = jars(home)
    return conf


def build(directory: str, *, java: str, spark_home: str, python: str = sys.executable,
          stable_names: bool = False, attempts: int = BUILD_ATTEMPTS) -> list[str]:
    """Write the driver's and the executor's archives into `directory` unless they exist;
    returns their paths. RuntimeError, naming what failed, if an archive cannot be written."""
    # absolute: the throwaway app's JVMs dump from directories of their own (an executor
    # runs in its worker's), where a relative path would name another file
    directory = os.path.abspath(directory)
    targets = {role: archive(directory, role, java=java, spark_home=spark_home, stable_names=stable_names)
               for role in ROLES}
    os.makedirs(directory, exist_ok=True)
    for attempt in range(1, attempts + 1):
        missing = [role for role in ROLES if not os.path.isfile(targets[role])]
        if not missing:
            break
        with tempfile.TemporaryDirectory(prefix=".build-", dir=directory) as tmp:
            dumps = _dump(tmp, missing, java=java, spark_home=spark_home, python=python)
            for role in missing:
                try:
                    check(dumps[role], java=java, spark_home=spark_home)
                except RuntimeError:
                    if attempt == attempts:
                        raise
                    continue  # a JVM that died before its dump ended: the next app dumps what is missing
                os.replace(dumps[role], targets[role])
    return list(targets.values())


def _dump(tmp: str, roles: list[str], *, java: str, spark_home: str, python: str) -> dict[str, str]:
    """Run the throwaway app, its JVMs of `roles` dumping their classes into `tmp`; the dumps."""
    conf_dir = os.path.join(tmp, "conf")
    os.mkdir(conf_dir)
    dumps = {role: os.path.join(tmp, f"{role}.jsa") for role in roles}
    with open(os.path.join(conf_dir, "spark-defaults.conf"), "w") as f:
        for role in ROLES:
            dump = [f"-XX:ArchiveClassesAtExit={dumps[role]}"] if role in roles else []
            f.write(f"spark.{role}.defaultJavaOptions {' '.join([*dump, QUIET, *TUNED_OPTIONS[role]])}\n")
            f.write(f"spark.{role}.extraClassPath {jars(spark_home)}\n")
    java_home = os.path.dirname(os.path.dirname(os.path.realpath(shutil.which(java) or java)))
    env = {**os.environ, "SPARK_CONF_DIR": conf_dir, "SPARK_HOME": spark_home, "JAVA_HOME": java_home}
    env["JVM_ARCHIVES_EXECUTOR_DUMP"] = dumps.get("executor", "")
    env["JVM_ARCHIVES_WAIT"] = str(BUILD_TIMEOUT / 3)
    run = subprocess.run([python, "-c", _WORKLOAD], env=env, capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT)
    if run.returncode != 0:
        raise RuntimeError(f"jvm_archives: the throwaway Spark app failed: {run.stderr.strip()[-2000:]}")
    # the driver JVM, dumping (its dump is checked whether or not it is gone by then)
    wait_gone(int(run.stdout.split()[-1]), timeout=BUILD_TIMEOUT / 3)
    if "executor" in dumps:
        dumps["executor"] += ".done"
    return dumps


def wait_gone(pid: int, *, timeout: float) -> bool:
    """Until process `pid` has exited, at most `timeout` s; whether it did. Also the
    throwaway app's, which imports it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def check(path: str, *, java: str, spark_home: str) -> None:
    """RuntimeError unless the JVM maps `path` as a whole archive for Spark's class path (a
    truncated one crashes the JVM, so none is put in place unchecked)."""
    if not os.path.isfile(path):
        raise RuntimeError(f"jvm_archives: no archive was written at {path}")
    run = subprocess.run([java, "-Xshare:on", f"-XX:SharedArchiveFile={path}", "-cp", jars(spark_home),
                          "-version"], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"jvm_archives: the JVM cannot use {path}: {run.stdout.strip()[-500:]} "
                           f"{run.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jhub_spark_scaler.jvm_archives",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "conf"])
    parser.add_argument("--out", "--dir", dest="directory", default=DEFAULT_DIR,
                        help=f"the archives' directory (default {DEFAULT_DIR})")
    parser.add_argument("--java", default=None, help="the java executable (default: as Spark picks it)")
    parser.add_argument("--spark-home", default=None,
                        help="Spark's home (default: $SPARK_HOME, else pyspark's)")
    parser.add_argument("--executor-spark-home", default=None,
                        help="conf: Spark's home on the workers, if not the same")
    parser.add_argument("--stable-names", action="store_true",
                        help="driver.jsa and executor.jsa, for a configuration written before the archives")
    args = parser.parse_args(argv)
    java, spark_home = args.java or default_java(), args.spark_home or default_spark_home()
    if not spark_home or not os.path.isdir(os.path.join(spark_home, "jars")):
        print(f"jvm_archives: no Spark jars under {spark_home!r}: set --spark-home", file=sys.stderr)
        return 2
    try:
        if args.command == "build":
            paths = build(args.directory, java=java, spark_home=spark_home, stable_names=args.stable_names)
            print("\n".join(paths))
        else:
            conf = spark_conf(args.directory, java=java, spark_home=spark_home,
                              executor_spark_home=args.executor_spark_home, stable_names=args.stable_names)
            print("\n".join(f"{name} {value}" for name, value in conf.items()))
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def submit_args(conf: dict[str, str]) -> str:
    """`conf` as PYSPARK_SUBMIT_ARGS options (pyspark splits that variable like a shell)."""
    return " ".join(f"--conf {shlex.quote(f'{name}={value}')}" for name, value in conf.items())


def _makes_pods(spawner: Any) -> bool:
    """KubeSpawner or a subclass."""
    return any(cls.__module__.partition(".")[0] == "kubespawner" for cls in type(spawner).__mro__)


#: The environment variable pyspark reads spark-submit's arguments from.
SUBMIT_ARGS = "PYSPARK_SUBMIT_ARGS"


#: how each tuned setting is joined with an admin's own value of it, which comes after
#: (the JVM keeps the last of a repeated option; a class path is searched in order)
JOINS = {"defaultJavaOptions": " ", "extraClassPath": os.pathsep}


def notebook_defaults(spawner: Any, spark_home: str) -> dict[str, str]:
    """The settings of the notebook's spark-defaults.conf: in the SPARK_CONF_DIR of the
    spawner's environment, else of the hub's, else Spark's `conf/`; {} if there is none."""
    conf_dir = (getattr(spawner, "environment", None) or {}).get("SPARK_CONF_DIR")
    if callable(conf_dir):
        conf_dir = conf_dir(spawner)
    conf_dir = conf_dir or os.environ.get("SPARK_CONF_DIR") or os.path.join(spark_home, "conf")
    try:
        with open(os.path.join(str(conf_dir), "spark-defaults.conf"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    # Java properties as Spark writes them: "key value", "key=value" or "key: value"
    pairs = (re.match(r"([^\s=:]+)\s*[\s=:]\s*(.*)$", line.strip()) for line in lines
             if line.strip() and line.strip()[0] not in "#!")
    return {m[1]: m[2].strip() for m in pairs if m}


def joined(conf: dict[str, str], theirs: dict[str, str]) -> dict[str, str]:
    """`conf` with an admin's own value of each of its settings kept after ours."""
    return {name: f"{value}{JOINS[name.rpartition('.')[2]]}{theirs[name]}" if theirs.get(name) else value
            for name, value in conf.items()}


class SubmitArgs:
    """A `Spawner.environment` value for PYSPARK_SUBMIT_ARGS (JupyterHub calls it with the
    spawner): the tuned JVMs' settings, each joined with the admin's own value of it from
    the notebook's spark-defaults.conf (`notebook_defaults`: a `--conf` replaces the file's
    value, so the file's is carried over), then `theirs` (the admin's value, a string or a
    callable of the spawner; pyspark's default "pyspark-shell" if none), whose own `--conf`
    of the same name wins. Spawners that make pods get `theirs` only: a pod's image is not
    the hub's, and helm-values/ ships the settings in the notebooks' spark-defaults.conf."""

    def __init__(self, conf: dict[str, str], theirs: str | Callable[[Any], str] | None = None,
                 spark_home: str = ""):
        self.conf = conf
        self.theirs = theirs
        self.spark_home = spark_home

    def __call__(self, spawner: Any) -> str:
        theirs = (self.theirs(spawner) if callable(self.theirs) else self.theirs) or "pyspark-shell"
        if _makes_pods(spawner):
            return theirs
        conf = joined(self.conf, notebook_defaults(spawner, self.spark_home))
        return f"{submit_args(conf)} {theirs}"

    def __deepcopy__(self, memo: dict) -> SubmitArgs:
        return self  # traitlets copies config values into every Spawner: immutable, share it

    def __repr__(self) -> str:
        return f"<SubmitArgs then {self.theirs!r}>"


def install(c: Config, directory: str) -> None:
    """Give local notebook servers the tuned driver and executor JVMs, archives in
    `directory`: PYSPARK_SUBMIT_ARGS in `c.Spawner.environment` and in every other section
    that sets `environment`, keeping each section's value. The hub's own java and Spark
    name the archives: the notebooks' must be the same for them to be used."""
    java, spark_home = default_java(), default_spark_home()
    if not spark_home or not os.path.isdir(os.path.join(spark_home, "jars")):
        app_log.info("%s: no Spark (pyspark or SPARK_HOME) in the hub's environment; notebook Spark "
                     "JVMs keep Spark's defaults (configure(fast_jvm=False) silences this)", SUBMIT_ARGS)
        return
    try:
        conf = spark_conf(directory, java=java, spark_home=spark_home)
    except ValueError as e:
        app_log.warning("%s (configure()'s jvm_archives_dir); notebook Spark JVMs keep Spark's defaults", e)
        return
    if os.path.isdir(directory) and os.stat(directory).st_mode & 0o022:
        # whoever can put an archive there puts class data into every notebook's Spark JVMs
        app_log.warning("%s: %s is writable by others than its owner: not used (make it writable by the "
                        "admin only, configure()'s jvm_archives_dir)", SUBMIT_ARGS, directory)
        return
    missing = [value.split()[0].partition("=")[2] for name, value in conf.items()
               if name.endswith("defaultJavaOptions")]
    if not all(os.path.isfile(path) for path in missing):
        app_log.warning("%s: no class data archives in %s yet: notebook Spark JVMs start slower until "
                        "`%s -m jhub_spark_scaler.jvm_archives build --out %s` writes them",
                        SUBMIT_ARGS, directory, sys.executable, directory)
    add_to_every_environment(c, SUBMIT_ARGS, lambda theirs: SubmitArgs(conf, theirs, spark_home),
                             kind=SubmitArgs,
                             left_alone="notebook Spark JVMs there keep Spark's defaults")


if __name__ == "__main__":
    sys.exit(main())
