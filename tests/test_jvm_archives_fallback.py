"""Real notebook-like drivers on a real LocalBackend worker, with the tuned JVM settings of
`jhub_spark_scaler.jvm_archives` as `configure()` hands them (PYSPARK_SUBMIT_ARGS) and the
demo's Spark configuration directory: the driver and its executor start from the archives
built by the build command, and start just as well (the job runs, nothing in their output
mentions it) when the archives are missing, were written for another class path, or are
not archives at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from jhub_spark_scaler import jvm_archives
from jhub_spark_scaler.backends.local import LocalBackend

from .settings import AS_ROOT
from .waiting import until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "drivers", "jvm_probe.py")
JAVA, SPARK_HOME = jvm_archives.default_java(), jvm_archives.default_spark_home()
CASES = ["archives", "missing", "stale", "garbage"]

pytestmark = pytest.mark.spark


def build_command(out: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jhub_spark_scaler.jvm_archives", "build", "--out", out],
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=900,
                          cwd=cwd)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Built as `make demo` builds them: --out relative to the current directory."""
    parent = tmp_path_factory.mktemp("demo-checkout")
    run = build_command(".cache/jvm-archives", cwd=str(parent))
    assert run.returncode == 0, run.stderr
    return str(parent / ".cache" / "jvm-archives")


@pytest.fixture(scope="module")
async def worker(tmp_path_factory):
    state = tmp_path_factory.mktemp("jvm-worker")
    b = LocalBackend(**AS_ROOT, state_dir=str(state), master_port=0, master_webui_port=0,
                     worker_cores=1, stop_timeout=20, stop_on_exit=True)
    await b.setup()
    try:
        [w] = await b.start(1)
        await until(lambda: alive(b.master_ui_url, f"{w.host}:{w.port}"), timeout=180,
                    what="the worker to be ALIVE")
        yield b
    finally:
        await b.shutdown()


def alive(master_ui_url: str, address: str) -> bool:
    with urllib.request.urlopen(f"{master_ui_url}/json/", timeout=5) as r:
        workers = json.load(r)["workers"]
    return any(f"{w['host']}:{w['port']}" == address and w["state"] == "ALIVE" for w in workers)


def stale_archive(path: str, tmp: str) -> None:
    """A real dynamic archive, written by a JVM with another class path."""
    other = os.path.join(tmp, "other")
    os.makedirs(other, exist_ok=True)
    [jar] = [j for j in os.listdir(os.path.join(SPARK_HOME, "jars")) if j.startswith("slf4j-api")]
    shutil.copy(os.path.join(SPARK_HOME, "jars", jar), other)
    subprocess.run([JAVA, f"-XX:ArchiveClassesAtExit={path}", jvm_archives.QUIET, "-cp", f"{other}/*",
                    "org.slf4j.LoggerFactory"], capture_output=True, timeout=120)
    assert os.path.getsize(path) > 0


def archives_for(case: str, built: str, tmp: str) -> str:
    if case == "archives":
        return built
    directory = os.path.join(tmp, case)
    os.makedirs(directory)
    for role in jvm_archives.ROLES:
        path = jvm_archives.archive(directory, role, java=JAVA, spark_home=SPARK_HOME)
        if case == "stale":
            stale_archive(path, tmp)
        elif case == "garbage":
            with open(path, "wb") as f:
                f.write(os.urandom(1 << 20))
    return directory


@pytest.mark.parametrize("case", CASES)
async def test_driver_and_executor_start(case, built, worker, tmp_path):
    directory = archives_for(case, built, str(tmp_path))
    conf = jvm_archives.spark_conf(directory, java=JAVA, spark_home=SPARK_HOME)
    env = {**os.environ, "PYTHONPATH": ROOT, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_CONF_DIR": os.path.join(ROOT, "demo", "spark-conf"),
           jvm_archives.SUBMIT_ARGS: f"{jvm_archives.submit_args(conf)} pyspark-shell"}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, PROBE, worker.master_url], env=env, capture_output=True,
                         text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["sum"] == 499500
    ours = {role: jvm_archives.archive(directory, role, java=JAVA, spark_home=SPARK_HOME)
            for role in jvm_archives.ROLES}
    mapped = {"driver": result["driver_archives"], "executor": result["executor_archives"]}
    for role in jvm_archives.ROLES:
        assert (ours[role] in mapped[role]) == (case == "archives"), (role, mapped[role])
    for text in (output, result["executor_stderr"]):
        assert "[cds" not in text and "Error" not in text and "ERROR" not in text, text
    print(f"{case}: {time.perf_counter() - t0:.1f} s to the job's end")


def test_a_second_build_keeps_the_archives(built):
    """`make demo` builds once: a second build of the same Spark and java writes nothing."""
    before = {name: os.stat(os.path.join(built, name)).st_mtime_ns for name in os.listdir(built)}
    t0 = time.perf_counter()
    run = build_command(built)
    assert run.returncode == 0, run.stderr
    assert time.perf_counter() - t0 < 30
    assert {name: os.stat(os.path.join(built, name)).st_mtime_ns for name in os.listdir(built)} == before
    assert sorted(run.stdout.split()) == sorted(os.path.join(built, name) for name in before)
