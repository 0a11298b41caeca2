"""One default per setting: the traits state it; the command, the hub helper and the docs agree.

docs/settings.md is generated from the traits (`jhub_spark_scaler.settings_doc`); the hub
helper (`hub.configure`) passes no setting of its own but `max_workers`, and its service
defaults (name, port, address) are the ones the command listens on.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from traitlets.config import Config

import jhub_spark_scaler
from jhub_spark_scaler import hub
from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.constants import (
    ADMIN_SCOPE,
    EVENT_ACTIONS,
    READ_SCOPE,
    SERVICE_NAME,
    SERVICE_SCOPES,
    SERVICE_URL,
)
from jhub_spark_scaler.events import make_events_route
from jhub_spark_scaler.hub import SpawnerHook, configure
from jhub_spark_scaler.settings_doc import app_defaults, settings_reference

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "settings.md"
PACKAGE = Path(jhub_spark_scaler.__file__).parent


@pytest.fixture
def outside_a_hub(monkeypatch, tmp_path):
    """No $JUPYTERHUB_* variables, and a directory without a config file."""
    for name in [name for name in os.environ if name.startswith("JUPYTERHUB_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# ---- the docs ---------------------------------------------------------------------------------


def test_the_settings_reference_is_what_the_traits_generate():
    assert REFERENCE.read_text() == settings_reference(), (
        "docs/settings.md is out of date: python -m jhub_spark_scaler.settings_doc > docs/settings.md"
    )


def reference_defaults(section: str) -> dict[str, str]:
    """{setting: the default docs/settings.md states} for the class `section`."""
    found = re.findall(rf"^### `{section}\.(\w+)`\n\n\w+; default: `(.*?)`", REFERENCE.read_text(), re.M)
    return dict(found)


def shown(value) -> str:
    """A value as the reference shows it (a class by its import path)."""
    return repr(f"{value.__module__}.{value.__name__}" if isinstance(value, type) else value)


def test_the_command_runs_with_the_defaults_the_reference_states(outside_a_hub):
    app = SparkScalerApp()
    app.initialize(["--max-workers=3"])
    stated = reference_defaults("SparkScalerApp")
    assert set(stated) == set(SparkScalerApp.class_traits(config=True))
    assert stated.pop("max_workers") == "None", "required: no default"
    running = {name: shown(getattr(app, name)) for name in stated}
    assert stated == running
    assert app_defaults()["service_url"] == SERVICE_URL


def test_the_reference_lists_every_setting_of_every_class():
    text = REFERENCE.read_text()
    for cls in dict.fromkeys([SparkScalerApp, *SparkScalerApp.classes]):
        for name in cls.class_traits(config=True):
            assert f"### `{cls.__name__}.{name}`" in text


# ---- one place: the traits --------------------------------------------------------------------

#: Parameters and fields that carry a setting of the command under another name.
SAME_SETTING = {
    "cycle_interval": "poll_interval",
    "stale_after": "hub_stale_after",
    "unschedulable_backoff": "start_timeout",
    "prewarm_per_server": "prewarm_workers_per_server",
}


def restated_defaults(tree: ast.AST, settings: set[str]) -> set[str]:
    """Names of `settings` given a literal default: a parameter's, or a dataclass field's."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults),
                     *zip(args.kwonlyargs, args.kw_defaults)]
            found.update(arg.arg for arg, value in pairs
                         if isinstance(value, ast.Constant) and arg.arg in settings)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(node.value, ast.Constant) and node.target.id in settings:
                found.add(node.target.id)
    return found


def test_no_module_restates_a_default_of_the_command():
    """The service's modules take each setting of the command from it (the backends take
    theirs from their own traits)."""
    settings = {*SparkScalerApp.class_own_traits(config=True), *SAME_SETTING}
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module == "app.py" or module.startswith("backends/"):
            continue
        found |= {(module, name) for name in restated_defaults(ast.parse(path.read_text()), settings)}
    assert not found, "a setting's default restated: take it from SparkScalerApp's trait"


# ---- the hub helper ---------------------------------------------------------------------------


def test_the_hub_helper_sets_only_max_workers_and_listens_where_the_command_does(outside_a_hub):
    c = Config()
    service = configure(c, max_workers=3)
    # --standby is how a managed service waits for a pool still held, not a setting's default
    assert service["command"][3:] == ["--max-workers=3", "--standby"], "the command's own defaults, no others"
    assert service["name"] == SERVICE_NAME
    app = SparkScalerApp()
    app.parse_command_line(service["command"][3:])
    assert service["url"] == app.service_url == SERVICE_URL

    # the hub serves the service under /services/<name>/; the hooks post to its events route
    hook = c.Spawner.pre_spawn_hook
    assert isinstance(hook, SpawnerHook) and hook.action in EVENT_ACTIONS
    events = urlsplit(hook.notifier.events_url("/"))
    pattern, _, _ = make_events_route(f"/services/{service['name']}/", token="t", on_event=print)
    assert re.fullmatch(pattern, events.path)
    assert events.netloc == urlsplit(app.service_url).netloc
    assert {c.Spawner.pre_spawn_hook.action, c.Spawner.post_stop_hook.action} == set(EVENT_ACTIONS)


def test_the_hub_helpers_written_out_form_states_the_same_values():
    doc = hub.__doc__
    assert f'"name": "{SERVICE_NAME}"' in doc and f'"url": "{SERVICE_URL}"' in doc
    assert f'"scopes": {json.dumps(SERVICE_SCOPES)}' in doc
    assert f'"oauth_client_allowed_scopes": ["{ADMIN_SCOPE}", "{READ_SCOPE}"]' in doc
    assert f'Notifier(name="{SERVICE_NAME}", url="{SERVICE_URL}"' in doc


def test_the_hub_side_imports_no_service_module():
    """`hub` runs in JupyterHub's process: it pulls in neither tornado's web framework nor
    the scaler's service modules."""
    code = ("import sys, jhub_spark_scaler.hub; watched = ('jhub_spark_scaler', 'tornado.web'); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(watched))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT, timeout=60)
    assert done.stdout.split() == ["jhub_spark_scaler", "jhub_spark_scaler.constants",
                                   "jhub_spark_scaler.driver_user", "jhub_spark_scaler.hub",
                                   "jhub_spark_scaler.jvm_archives", "jhub_spark_scaler.spawner_env"]
