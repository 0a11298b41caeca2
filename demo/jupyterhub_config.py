"""The embedded demo: a JupyterHub on 127.0.0.1 with the scaler as a managed
service on the local backend. Started by `make demo` (scripts/demo.sh).

One user, `demo`, an admin, logs in with a password made at start and printed
by scripts/demo.sh; the hub listens on 127.0.0.1 only. Notebook servers run as
the hub's user (root is allowed here, with --allow-root) with Spark defaults
that point a SparkSession at the local master, decommission enabled
(demo/spark-conf: its `spark.cores.max` is WORKER_CORES, see below).

The notebook's Spark driver gets SPARK_LOCAL_IP, so that Spark neither looks for a
non-loopback address nor warns that the hostname resolves to a loopback one;
spark-conf/log4j2.properties keeps the native-hadoop notice (Spark runs without
Hadoop's native library) out of the notebook. configure() adds SPARK_SUBMIT_OPTS to
the same environment, and PYSPARK_SUBMIT_ARGS: the driver and executor JVMs start from the
class data archives that `make demo` builds once into .cache/jvm-archives
(`jhub_spark_scaler.jvm_archives`; DEMO_JVM_ARCHIVES names another directory).
"""

import os
import sys

from jupyterhub.utils import random_port

from jhub_spark_scaler.hub import configure

c = get_config()  # noqa: F821 (provided by JupyterHub)
here = os.path.dirname(os.path.abspath(__file__))
state = os.environ.get("DEMO_STATE_DIR", os.path.join(here, "..", ".cache", "demo"))

#: DEMO_FREE_PORTS=1 (the tests' way to run the demo beside anything else): free ports for the
#: hub's API, the proxy's API, the scaler and the Spark master, instead of 8081, 8001, 10101,
#: 7077 and 8080. The notebooks' spark-defaults still name 7077, so start no notebook then.
free_ports = os.environ.get("DEMO_FREE_PORTS") == "1"
if free_ports:
    c.JupyterHub.hub_port = random_port()
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{random_port()}"

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("DEMO_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = f"{state}/jupyterhub-proxy.pid"

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ["DEMO_PASSWORD"]
c.Authenticator.allowed_users = {"demo"}
c.Authenticator.admin_users = {"demo"}

c.JupyterHub.spawner_class = "simple"  # runs notebook servers as this user, home in state dir
c.SimpleLocalProcessSpawner.home_dir_template = f"{state}/home/{{username}}"
c.Spawner.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.default_url = "/lab"
c.Spawner.environment = {
    "SPARK_CONF_DIR": os.path.join(here, "spark-conf"),
    "SPARK_LOCAL_IP": "127.0.0.1",
}

#: Cores per worker, equal to spark-conf's spark.cores.max: the scaler grows the pool for an
#: app that has no cores yet, not for one granted fewer than it asked for, so an app asking
#: for more than one worker offers would run on part of what it asked for.
WORKER_CORES = 1

#: Where `make demo` builds the class data archives of the notebooks' Spark JVMs.
JVM_ARCHIVES = os.path.abspath(os.path.join(here, "..", ".cache", "jvm-archives"))

configure(
    c,
    **({"port": random_port(), "LocalBackend__master_port": 0, "LocalBackend__master_webui_port": 0}
       if free_ports else {}),
    max_workers=int(os.environ.get("DEMO_MAX_WORKERS", "4")),
    idle_workers=0,
    scale_down_delay=30,
    poll_interval=1,
    LocalBackend__state_dir=f"{state}/spark",
    LocalBackend__worker_cores=WORKER_CORES,
    # The single-user demo: its one notebook user runs as the hub's user, root included, so
    # Spark may too. A multi-user hub running as root sets LocalBackend__run_as instead.
    LocalBackend__allow_root=os.geteuid() == 0,
    # Ctrl-C ends the whole demo; a deployed hub leaves the pool to the next scaler (the default)
    LocalBackend__stop_on_exit=True,
    jvm_archives_dir=os.environ.get("DEMO_JVM_ARCHIVES", JVM_ARCHIVES),
)
