"""`make demo`: its notebooks' Spark settings, a real driver started with them, and the real
scripts/demo.sh, whose login banner comes only once the hub answers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from jupyterhub.utils import random_port
from traitlets.config import PyFileConfigLoader

from .test_cli import _master_pid, alive, worker_pids
from .waiting import until_sync

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
SPARK_CONF = DEMO / "spark-conf"

#: What Spark prints on a driver's stderr, which a notebook shows under the cell, without the
#: demo's settings: the loopback hostname (with SPARK_LOCAL_IP advice) and native-hadoop notices.
LOOPBACK_WARNING = "resolves to a loopback address"
LOCAL_IP_WARNING = "Set SPARK_LOCAL_IP"
NATIVE_HADOOP_WARNING = "Unable to load native-hadoop library"


def demo_config(monkeypatch, tmp_path):
    """demo/jupyterhub_config.py as the hub loads it."""
    monkeypatch.setenv("DEMO_PASSWORD", "not-used")
    monkeypatch.setenv("DEMO_STATE_DIR", str(tmp_path))
    loader = PyFileConfigLoader("jupyterhub_config.py", path=str(DEMO))
    return loader.load_config()


def notebook_environment(monkeypatch, tmp_path) -> dict[str, str]:
    """The environment the demo's spawners give the notebook of user `demo`, as JupyterHub
    builds it (a callable value is called with the spawner)."""
    spawner = SimpleNamespace(user=SimpleNamespace(name="demo"))
    environment = demo_config(monkeypatch, tmp_path).Spawner.environment
    return {key: value(spawner) if callable(value) else value for key, value in environment.items()}


def spark_defaults() -> dict[str, str]:
    lines = (SPARK_CONF / "spark-defaults.conf").read_text().splitlines()
    return dict(line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))


def test_the_demo_notebook_environment_carries_the_spark_settings(monkeypatch, tmp_path):
    env = notebook_environment(monkeypatch, tmp_path)
    assert env["SPARK_CONF_DIR"] == str(SPARK_CONF)
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["SPARK_SUBMIT_OPTS"] == "'-Duser.name=demo'"  # configure()'s, composed with the demo's
    log4j = (SPARK_CONF / "log4j2.properties").read_text()
    name = re.search(r"^logger\.(\w+)\.name = org\.apache\.hadoop\.util\.NativeCodeLoader$", log4j, re.M)
    assert name and re.search(rf"^logger\.{name[1]}\.level = error$", log4j, re.M)


def test_the_demo_app_asks_for_the_cores_of_one_worker(monkeypatch, tmp_path):
    """An app granted fewer cores than it asked for makes no worker start: one worker serves it whole."""
    (service,) = demo_config(monkeypatch, tmp_path).JupyterHub.services
    flag = "--LocalBackend.worker_cores="
    (cores,) = [arg.removeprefix(flag) for arg in service["command"] if arg.startswith(flag)]
    assert spark_defaults()["spark.cores.max"] == cores
    assert spark_defaults()["spark.executor.cores"] == cores


def run_driver(env: dict[str, str]) -> subprocess.CompletedProcess:
    """A real pyspark driver, as a notebook starts one, on a local master (the notices come
    from the driver's start, whatever its master); its stderr is what the notebook shows."""
    code = ("from pyspark.sql import SparkSession\n"
            "spark = SparkSession.builder.master('local[1]').getOrCreate()\n"
            "print('rows', spark.range(10).count())\n"
            "spark.stop()\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.spark
def test_a_driver_with_the_demo_settings_prints_no_startup_warnings(monkeypatch, tmp_path):
    """No log line of WARN or ERROR. What remains on stderr is the JVM's own notice for the
    incubator module Spark's launcher adds ("WARNING: Using incubator modules"), which no
    setting turns off, and the stage progress bar."""
    bare_conf = tmp_path / "bare-conf"  # the demo's defaults without its log4j2 configuration
    bare_conf.mkdir()
    (bare_conf / "spark-defaults.conf").write_text((SPARK_CONF / "spark-defaults.conf").read_text())
    without = run_driver({"SPARK_CONF_DIR": str(bare_conf)})
    assert "rows 10" in without.stdout, without.stderr
    # the warnings this test looks for are there without the settings (the hostname's only
    # where it resolves to loopback)
    assert NATIVE_HADOOP_WARNING in without.stderr, without.stderr
    if socket.gethostbyname(socket.gethostname()).startswith("127."):
        assert LOOPBACK_WARNING in without.stderr and LOCAL_IP_WARNING in without.stderr, without.stderr

    demo = run_driver(notebook_environment(monkeypatch, tmp_path / "state"))
    assert "rows 10" in demo.stdout, demo.stderr
    for warning in (LOOPBACK_WARNING, LOCAL_IP_WARNING, NATIVE_HADOOP_WARNING):
        assert warning not in demo.stderr, demo.stderr
    assert not re.search(r" (WARN|ERROR) \S+: ", demo.stderr), demo.stderr  # Spark's log4j lines


def login_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hub/login", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.mark.spark
def test_the_demo_prints_its_banner_once_the_hub_answers_and_stops_on_sigint(tmp_path):
    """The real scripts/demo.sh (hub, proxy, scaler, Spark master): the password is printed
    only once /hub/login answers 200, and SIGINT to the PID started ends every process."""
    port, state = random_port(), tmp_path / "state"
    out, err = open(tmp_path / "demo.out", "w"), open(tmp_path / "demo.err", "w")
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "DEMO_PORT": str(port),
           "DEMO_FREE_PORTS": "1", "DEMO_STATE_DIR": str(state)}
    demo = subprocess.Popen([str(ROOT / "scripts" / "demo.sh")], env=env, stdout=out, stderr=err,
                            start_new_session=True)
    pids: set[int] = set()
    try:
        banner = until_sync(lambda: "password:" in (tmp_path / "demo.out").read_text(), timeout=120,
                            what="the demo's login banner", process=demo, log=tmp_path / "demo.err")
        assert banner and login_status(port) == 200, (tmp_path / "demo.out").read_text()
        password = re.search(r"password: (\S+)", (tmp_path / "demo.out").read_text())[1]
        assert len(password) >= 16
        until_sync(lambda: _master_pid(state / "spark"), timeout=120, what="the scaler's Spark master",
                   process=demo, log=tmp_path / "demo.err")
        proxy = int((state / "jupyterhub-proxy.pid").read_text())
        pids = {_master_pid(state / "spark"), proxy, *worker_pids(state / "spark").values()}
        assert all(alive(p) for p in pids)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=90) == 0, (tmp_path / "demo.err").read_text()[-4000:]
        until_sync(lambda: not any(alive(p) for p in pids), timeout=30,
                   what="no process of the demo left after SIGINT")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        for pid in {*pids, *worker_pids(state / "spark").values(), _master_pid(state / "spark")}:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        out.close()
        err.close()
