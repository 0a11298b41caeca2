"""Stand-in for zero-to-jupyterhub 4.4.0's z2jh.py (the hub pod's helper module), for tests.

Same functions and behaviour as the chart's module, reading from `$Z2JH_STANDIN_ROOT`
instead of the chart's mount point /usr/local/etc/jupyterhub (see ../README.md).
"""

import os
from collections.abc import Mapping
from functools import lru_cache

import yaml

ROOT = os.environ.get("Z2JH_STANDIN_ROOT", "/usr/local/etc/jupyterhub")


def _merge(a, b):
    merged = dict(a)
    for key, value in b.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@lru_cache
def _load_config():
    """The chart's values from its Secret, merged with hub.existingSecret's if mounted."""
    config = {}
    for source in ("secret", "existing-secret"):
        path = os.path.join(ROOT, source, "values.yaml")
        if os.path.exists(path):
            with open(path) as f:
                config = _merge(config, yaml.safe_load(f))
    return config


@lru_cache
def get_secret_value(key, default="never-explicitly-set"):
    for source in ("existing-secret", "secret"):
        path = os.path.join(ROOT, source, key)
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
    if default != "never-explicitly-set":
        return default
    raise Exception(f"{key} not found in either k8s Secret!")


def get_config(key, default=None):
    """`get_config("a.b.c")` is config["a"]["b"]["c"], or `default`."""
    value = _load_config()
    for level in key.split("."):
        if not isinstance(value, dict) or level not in value:
            return default
        value = value[level]
    return value


def set_config_if_not_none(cparent, name, key):
    data = get_config(key)
    if data is not None:
        setattr(cparent, name, data)
