"""The embedded demo: a JupyterHub on 127.0.0.1 with the scaler as a managed
service on the local backend. Started by `make demo` (scripts/demo.sh).

One user, `demo`, an admin, logs in with a password made at start and printed
by scripts/demo.sh; the hub listens on 127.0.0.1 only. Notebook servers run as
the hub's user (root is allowed here, with --allow-root) with Spark defaults
that point a SparkSession at the local master, decommission enabled.
"""

import os
import sys

from jhub_spark_scaler.hub import configure

c = get_config()  # noqa: F821 (provided by JupyterHub)
here = os.path.dirname(os.path.abspath(__file__))
state = os.environ.get("DEMO_STATE_DIR", os.path.join(here, "..", ".cache", "demo"))

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
c.Spawner.environment = {"SPARK_CONF_DIR": os.path.join(here, "spark-conf")}

configure(
    c,
    max_workers=int(os.environ.get("DEMO_MAX_WORKERS", "4")),
    idle_workers=0,
    scale_down_delay=30,
    poll_interval=1,
    LocalBackend__state_dir=f"{state}/spark",
    # The single-user demo: its one notebook user runs as the hub's user, root included, so
    # Spark may too. A multi-user hub running as root sets LocalBackend__run_as instead.
    LocalBackend__allow_root=os.geteuid() == 0,
    # Ctrl-C ends the whole demo; a deployed hub leaves the pool to the next scaler (the default)
    LocalBackend__stop_on_exit=True,
)
