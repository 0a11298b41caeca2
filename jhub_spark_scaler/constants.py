"""Names and values that the hub side and the service side must agree on.

`hub` runs inside the JupyterHub process (the spawn hooks, `configure()`); the service
(`app`, `service`, `events`, `activity`, `web`) runs as the hub's managed service. Both
import these from here. This module imports nothing, so that `hub` stays importable in
the hub without the service's modules.
"""

#: The service's name in the hub; the hub serves it under /services/<name>/.
SERVICE_NAME = "spark-scaler"
#: Where the service listens unless the hub says otherwise ($JUPYTERHUB_SERVICE_URL).
SERVICE_HOST = "127.0.0.1"
SERVICE_PORT = 10101
SERVICE_URL = f"http://{SERVICE_HOST}:{SERVICE_PORT}"

#: The scopes the service's own token needs: it reads `GET /users?state=active` and nothing else.
SERVICE_SCOPES = ["list:users", "read:servers"]
#: Held by those who may use the admin page and its API besides the hub's admins: read and act
#: (pause, resume, the idle override). It implies READ_SCOPE.
ADMIN_SCOPE = "custom:spark-scaler:admin"
ADMIN_SCOPE_DESCRIPTION = (
    "Use the Spark scaler's admin page and API: read the pool, pause, resume, set the idle target."
)
#: Held by those who may only read: the page, its JSON API (`api/pool`) and `/metrics`.
READ_SCOPE = "custom:spark-scaler:read"
READ_SCOPE_DESCRIPTION = "Read the Spark scaler's admin page, its pool API and its metrics; change nothing."
#: JupyterHub's own scope for scraping its /metrics: a scraper holding it may read ours too.
HUB_METRICS_SCOPE = "read:metrics"

#: The service's endpoint for the hooks' events, below its prefix.
EVENTS_PATH = "events"
#: The service's environment variable with the secret the hub's hooks send with each event:
#: not the service's API token, which would go to whoever listens on the service's port
#: while it is down (on one machine, any local user can)
EVENTS_SECRET_ENV = "JHUB_SPARK_SCALER_EVENTS_SECRET"
#: What a hook reports of a notebook server.
EVENT_START = "start"
EVENT_STOP = "stop"
EVENT_ACTIONS = (EVENT_START, EVENT_STOP)  # a tuple: `in` compares, never hashes a JSON list
