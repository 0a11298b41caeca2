"""Notebook drivers named after their hub user (jhub_spark_scaler.driver_user).

Quoting: the option configure() gives a spawner is split by Spark's real launcher
(org.apache.spark.launcher.Main, the JVM `spark-submit` runs first), and what comes out
is the argument the driver JVM gets. Composition: configure() on a config that already
sets environments. On a real hub (MockHub with the real scaler), notebook-like drivers
started with the environment the hub's spawner computes show up at the real master under
their hub user's name, a non-plain one included, use up that user's pre-warm credit, and
the admin page's API shows them as that hub user's apps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyspark
import pytest
import requests
from jupyterhub.utils import random_port
from traitlets.config import Config

from jhub_spark_scaler.constants import READ_SCOPE
from jhub_spark_scaler.driver_user import SUBMIT_OPTS, DriverUser, quote, user_option
from jhub_spark_scaler.hub import configure

from .kubelet import expand
from .real_hub import ADMIN_TOKEN, configure_scaler, hub_api, hub_config, stop_scaler
from .waiting import until

HERE = Path(__file__).resolve().parent
SPARK_HOME = Path(pyspark.__file__).parent
#: names that need quoting, every character the launcher's parser treats specially
AWKWARD = ["alice", "o'brien", 'say "hi"', "two  spaces", "$HOME", "$(JUPYTERHUB_API_TOKEN)", "$$", "`id`",
           "back\\slash", "trailing\\", "-Dx=y", "émilie 日本", "a=b", "'", '"', "\\"]


def launcher_arguments(submit_opts: str) -> list[str]:
    """The driver JVM's arguments as Spark's launcher builds them with this SPARK_SUBMIT_OPTS
    (its output, NUL-separated, is what bin/spark-class executes)."""
    [launcher] = (SPARK_HOME / "jars").glob("spark-launcher_*.jar")
    scala = launcher.name.split("_")[1].split("-")[0]
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8", "SPARK_HOME": str(SPARK_HOME),
           "SPARK_SCALA_VERSION": scala, SUBMIT_OPTS: submit_opts}
    run = subprocess.run(
        [java, "-Xmx128m", "-cp", str(SPARK_HOME / "jars" / "*"), "org.apache.spark.launcher.Main",
         "org.apache.spark.deploy.SparkSubmit", "--master", "spark://127.0.0.1:7077", "pyspark-shell"],
        env=env, capture_output=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    return [arg.decode("utf-8", "replace") for arg in run.stdout.split(b"\0")]


def test_quoted_names_reach_the_driver_jvm_unchanged():
    options = [quote(f"-Dn{i}={name}") for i, name in enumerate(AWKWARD)]
    arguments = launcher_arguments(" ".join(options))
    expected = [f"-Dn{i}={name}" for i, name in enumerate(AWKWARD)]
    assert [a for a in arguments if a.startswith("-Dn")] == expected
    assert [a for a in launcher_arguments(user_option("o'brien $x")) if "user.name" in a] == \
        ["-Duser.name=o'brien $x"]


def test_names_the_launcher_would_corrupt_get_no_option():
    # the launcher reads a UTF-16 surrogate pair as two characters: the emoji comes out broken
    [broken] = [a for a in launcher_arguments(quote("-Dn=x\U0001F600y")) if a.startswith("-Dn=")]
    assert broken != "-Dn=x\U0001F600y"
    for name in ("x\U0001F600y", "tab\there", "cr\r", ""):
        assert user_option(name) == "", repr(name)


def spawner(name: str, *, module: str = "jupyterhub.spawner") -> object:
    """A stand-in with what DriverUser reads: the user's name and the spawner's class."""
    cls = type("KubeSpawner" if module.startswith("kubespawner") else "LocalProcessSpawner", (), {})
    cls.__module__ = module
    instance = cls()
    instance.user = SimpleNamespace(name=name)
    return instance


def test_on_kubernetes_every_dollar_survives_the_kubelets_expansion():
    environment = {"HOME": "/home/jovyan", "JUPYTERHUB_API_TOKEN": "secret"}
    for name in AWKWARD:
        value = DriverUser()(spawner(name, module="kubespawner.spawner"))
        as_run = expand(value, environment)  # what the kubelet hands the container
        assert [a for a in launcher_arguments(as_run) if "user.name" in a] == [f"-Duser.name={name}"], name
    # without the escaping, a name could pull the user's own token into the master's UI
    plain = DriverUser()(spawner("$(JUPYTERHUB_API_TOKEN)"))
    assert "secret" in expand(plain, environment)


def test_configure_adds_the_option_and_keeps_the_admins(caplog):
    c = Config()
    c.Spawner.environment = {"TZ": "UTC", SUBMIT_OPTS: "-Dadmin.submit=kept -Duser.name=admin-choice"}
    c.KubeSpawner.environment = {"SPARK_CONF_DIR": "/etc/spark/conf"}  # as z2jh sets singleuser.extraEnv
    c.KubeSpawner.image = "x"
    c.SystemdSpawner.environment = {SUBMIT_OPTS: lambda s: f"-Dtheirs={s.user.name}"}
    c.DockerSpawner.environment = {SUBMIT_OPTS: {"valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}}
    with caplog.at_level(logging.WARNING):
        configure(c, port=random_port(), max_workers=2)
    alice = spawner("alice")
    assert c.Spawner.environment["TZ"] == "UTC"
    # the admin's options come after the user's name: theirs win, as documented
    assert c.Spawner.environment[SUBMIT_OPTS](alice) == \
        "'-Duser.name=alice' -Dadmin.submit=kept -Duser.name=admin-choice"
    assert c.KubeSpawner.environment["SPARK_CONF_DIR"] == "/etc/spark/conf"
    assert c.KubeSpawner.environment[SUBMIT_OPTS](spawner("a$b", module="kubespawner.spawner")) == \
        "'-Duser.name=a$$b'"
    assert c.SystemdSpawner.environment[SUBMIT_OPTS](alice) == "'-Duser.name=alice' -Dtheirs=alice"
    assert isinstance(c.DockerSpawner.environment[SUBMIT_OPTS], dict), "a valueFrom is left alone"
    [warning] = [r.getMessage() for r in caplog.records if SUBMIT_OPTS in r.getMessage()]
    assert "c.DockerSpawner.environment" in warning and "\n" not in warning
    configure(c, name="second", port=random_port(), max_workers=2)
    assert c.Spawner.environment[SUBMIT_OPTS](alice).count("user.name=alice") == 1, "installed once"


def test_without_driver_user_no_environment_is_set():
    c = Config()
    configure(c, port=random_port(), max_workers=2, driver_user=False)
    assert SUBMIT_OPTS not in c.Spawner.get("environment", {})
    configure(c, name="second", port=random_port(), max_workers=2, driver_user=False, fast_jvm=False)
    assert SUBMIT_OPTS not in c.Spawner.get("environment", {})


# --- a real hub, a real master, real drivers ---

#: a hub user whose name needs every kind of quoting (JupyterHub lowercases names)
ODD = "o'brien \"$x\" \\ é"
#: Spark settings an admin put in the notebooks' spark-defaults.conf
ADMIN_DEFAULTS = "spark.driver.defaultJavaOptions -Dadmin.default=kept\n"


async def start_hub(hub_app, spark_master, tmp_path: Path):
    """A hub whose spawners already set an admin's SPARK_SUBMIT_OPTS, with the real scaler
    (pre-warm 1 worker per server, no idle workers) and a service "monitor" that may read
    the admin page's API."""
    c = hub_config(tmp_path)
    # the notebooks' Spark defaults, where the admin put options of their own (ADMIN_DEFAULTS)
    c.Spawner.environment = {SUBMIT_OPTS: "-Dadmin.submit=kept",
                             "SPARK_CONF_DIR": str(tmp_path / "spark-conf")}
    monitor = "monitor-" + "2" * 32
    c.JupyterHub.services = [{"name": "test-admin", "api_token": ADMIN_TOKEN},
                             {"name": "monitor", "api_token": monitor}]
    c.JupyterHub.load_roles = [
        {"name": "test-admin", "services": ["test-admin"], "scopes": ["admin:users", "admin:servers"]},
        {"name": "monitor", "services": ["monitor"], "scopes": [READ_SCOPE]},
    ]
    configure_scaler(c, spark_master, tmp_path / "scaler", prewarm_workers_per_server=1)
    app = await hub_app(c)
    return app, monitor


class NotebookDriver:
    """tests/drivers/notebook_driver.py started with a spawner's environment."""

    def __init__(self, control: Path, environment: dict[str, str], master: str, *args: str):
        self.control = control
        control.mkdir(parents=True)
        self.log = open(control / "driver.log", "w")
        properties = ["--property=user.name", "--property=admin.default", "--property=admin.submit",
                      "--property=user.flag"]
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "drivers" / "notebook_driver.py"), "--master", master,
             "--control", str(control), *properties, *args],
            env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    async def report(self) -> dict:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError((self.control / "driver.log").read_text()[-3000:])
            path = self.control / "app.json"
            return json.loads(path.read_text()) if path.exists() else None
        return await until(ready, timeout=180, what="the notebook driver's SparkSession")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.log.close()


def notebook_environment(app, user: str, conf_dir: Path) -> dict[str, str]:
    """What the hub's spawner gives `user`'s notebook server, plus what a notebook image has
    (Java, this Python's packages, the admin's Spark defaults)."""
    env = app.users[user].spawner.get_env()
    env.update({"PATH": os.environ["PATH"], "SPARK_CONF_DIR": str(conf_dir),
                "LANG": "C.UTF-8", "HOME": str(conf_dir)})
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    return env


@pytest.mark.spark
async def test_a_notebooks_driver_shows_its_hub_user_and_uses_up_their_credit(
        hub_app, spark_master, tmp_path):
    app, monitor = await start_hub(hub_app, spark_master, tmp_path)
    state = tmp_path / "scaler"
    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(ADMIN_DEFAULTS)
    drivers: list[NotebookDriver] = []
    try:
        for user in ("bob", ODD):  # bob's server is the older: the credit an unnamed app would take
            await hub_api(app, "POST", f"users/{requests.utils.quote(user, safe='')}", {})
            await hub_api(app, "POST", f"users/{requests.utils.quote(user, safe='')}/server", {})
        env = notebook_environment(app, ODD, conf_dir)
        assert env[SUBMIT_OPTS] == user_option(ODD) + " -Dadmin.submit=kept"
        drivers.append(NotebookDriver(tmp_path / "odd", env, spark_master.master_url,
                                      "--conf", "spark.driver.extraJavaOptions=-Duser.flag=kept"))
        report = await drivers[0].report()
        assert report["properties"] == {"user.name": ODD, "admin.default": "kept", "admin.submit": "kept",
                                        "user.flag": "kept"}, "the name, and every admin's and user's option"

        url = app.proxy.public_url.rstrip("/") + "/services/spark-scaler/api/pool"

        def pool():
            answer = requests.get(url, headers={"Authorization": f"token {monitor}"}, timeout=30)
            return answer.json() if answer.status_code == 200 else None

        def shown():
            view = pool()
            return view if view and [a["user"] for a in view["apps"]] == [ODD] else None

        view = await until(lambda: asyncio.to_thread(shown), timeout=60,
                           what="the app on the admin page's API")
        assert view["apps"][0]["hub_user"] is True
        credit = {s["user"]: s["prewarm_credit"] for s in view["servers"]}
        assert credit == {"bob": 1, ODD: 0}, "the app used up its own user's credit, not bob's older one"
        users = {u["user"]: (u["hub_user"], u["servers"], u["apps"]) for u in view["users"]}
        assert users == {"bob": (True, 1, 0), ODD: (True, 1, 1)}

        # a user who sets their own -Duser.name is shown (and credited) under that name
        env = notebook_environment(app, "bob", conf_dir)
        drivers.append(NotebookDriver(tmp_path / "claim", env, spark_master.master_url,
                                      "--conf", "spark.driver.extraJavaOptions=-Duser.name=mallory"))
        assert (await drivers[1].report())["properties"]["user.name"] == "mallory"
    finally:
        for driver in drivers:
            driver.kill()
        await stop_scaler(app, state)
