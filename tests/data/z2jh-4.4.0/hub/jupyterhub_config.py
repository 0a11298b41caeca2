"""Stand-in for the part of zero-to-jupyterhub 4.4.0's jupyterhub_config.py that turns `cull`,
`hub.services`, `hub.loadRoles`, `singleuser.extraEnv` and `hub.extraConfig` into configuration, in the
chart's order (see ../README.md). Loaded by tests/test_z2jh.py as JupyterHub loads its
config file: `c` is the JupyterHub config object."""

import os
import sys

from jupyterhub.utils import url_path_join

# like the chart: modules beside this file (z2jh) are importable, also from hub.extraConfig
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from z2jh import get_config, get_secret_value, set_config_if_not_none  # noqa: E402,F401

c.JupyterHub.services = []  # noqa: F821
c.JupyterHub.load_roles = []  # noqa: F821

if get_config("cull.enabled", False):
    culler_role = {
        "name": "jupyterhub-idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["jupyterhub-idle-culler"],
    }
    culler = ["python3", "-m", "jupyterhub_idle_culler"]
    base_url = c.JupyterHub.get("base_url", "/")  # noqa: F821
    culler.append("--url=http://localhost:8081" + url_path_join(base_url, "hub/api"))
    if get_config("cull.timeout"):
        culler.append(f"--timeout={get_config('cull.timeout')}")
    if get_config("cull.every"):
        culler.append(f"--cull-every={get_config('cull.every')}")
    c.JupyterHub.services.append({"name": "jupyterhub-idle-culler", "command": culler})  # noqa: F821
    c.JupyterHub.load_roles.append(culler_role)  # noqa: F821

for key, service in get_config("hub.services", {}).items():
    # a dict of dicts in the values (mergeable), a list of dicts in JupyterHub
    service.setdefault("name", key)
    # the chart generates the token and keeps it in its Secret (or hub.existingSecret)
    service.pop("apiToken", None)
    service["api_token"] = get_secret_value(f"hub.services.{key}.apiToken")
    c.JupyterHub.services.append(service)  # noqa: F821

for key, role in get_config("hub.loadRoles", {}).items():
    role.setdefault("name", key)
    c.JupyterHub.load_roles.append(role)  # noqa: F821

# the chart sets KubeSpawner traits from singleuser.* (one of them), before hub.extraConfig
set_config_if_not_none(c.KubeSpawner, "environment", "singleuser.extraEnv")  # noqa: F821

for key, config_py in sorted(get_config("hub.extraConfig", {}).items()):
    print(f"Loading extra config: {key}")
    exec(config_py)
