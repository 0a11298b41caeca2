"""What each `KubernetesBackend` setting must be, checked when the backend is made."""

from __future__ import annotations

import re

from .checks import Check, master_ui_url_check, master_url_check
from .master_manifests import MASTER_MEMORY_MIN_MIB
from .worker_pod import SCALER_ENV, parse_quantity, spark_size_mib


def _parses(parse, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*"
_QUANTITY = Check(lambda v: _parses(parse_quantity, v) and parse_quantity(v) > 0,
                  "is not a Kubernetes quantity like 2, 500m, 4Gi")
_SPARK_SIZE = "is not a Spark memory size like 512m, 2g"
#: what each setting must be; the master's URLs default to its Services' names, so never empty
CHECKS = {
    "namespace": Check(lambda v: len(v) <= 63 and re.fullmatch(_LABEL, v), "is not a namespace name"),
    "master_name": Check(lambda v: len(v) <= 60 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", v),
                         "is not a Service name (lowercase letters, digits, '-'; at most 60)"),
    "service_account": Check(lambda v: not v or re.fullmatch(_SUBDOMAIN, v), "is not a ServiceAccount name"),
    "image_pull_secrets": Check(lambda v: all(re.fullmatch(_SUBDOMAIN, n) for n in v),
                                "are not all Secret names"),
    "image": Check(lambda v: re.fullmatch(r"\S+", v), "is not an image reference"),
    "image_pull_policy": Check(lambda v: v in ("Always", "IfNotPresent", "Never"),
                               "is not Always, IfNotPresent or Never"),
    "cpu_limit": _QUANTITY,
    "memory_limit": _QUANTITY,
    "master_memory": Check(lambda v: _QUANTITY.ok(v) and parse_quantity(v) >= MASTER_MEMORY_MIN_MIB * 2**20,
                           f"is not a Kubernetes quantity of at least {MASTER_MEMORY_MIN_MIB}Mi (a 256 MiB "
                           "heap for the master JVM and as much for its other memory)"),
    "cpu_guarantee": Check(lambda v: not v or _QUANTITY.ok(v), _QUANTITY.problem),
    "memory_guarantee": Check(lambda v: not v or _QUANTITY.ok(v), _QUANTITY.problem),
    "daemon_memory": Check(lambda v: _parses(spark_size_mib, v), _SPARK_SIZE),
    "worker_memory": Check(lambda v: not v or _parses(spark_size_mib, v), _SPARK_SIZE),
    "worker_cores": Check(lambda v: v >= 0, "must not be negative (0: derived from cpu_limit)"),
    "jvm_overhead": Check(lambda v: v >= 0, "must not be negative"),
    "stop_grace_period": Check(lambda v: v >= 0, "must not be negative"),
    "pod_drain_timeout": Check(lambda v: v >= 0, "must not be negative"),
    "extra_env": Check(lambda v: not set(v) & set(SCALER_ENV),
                       f"names a variable the scaler sets ({', '.join(SCALER_ENV)}): use daemon_memory for "
                       "SPARK_DAEMON_MEMORY and spark_conf for SPARK_WORKER_OPTS"),
    "run_as_user": Check(lambda v: v > 0, "must be a user id other than root's 0"),
    "watch_timeout": Check(lambda v: v >= 1, "must be at least 1"),
    "setup_timeout": Check(lambda v: v > 0, "must be positive"),
    "api_timeout": Check(lambda v: v > 0, "must be positive"),
    "lease_duration": Check(lambda v: v > 0, "must be positive"),
    "lease_renew_deadline": Check(lambda v: v > 0, "must be positive"),
    "lease_retry_period": Check(lambda v: v > 0, "must be positive"),
    "master_url": master_url_check(empty_ok=False),
    "master_ui_url": master_ui_url_check(empty_ok=False),
}
#: settings whose default is computed from others when first read: checked when configured only
#: (revalidating them would compute the default, and its errors, as the backend is made)
COMPUTED_CHECKS = {
    "default_cores": Check(lambda v: v >= 1, "must be at least 1"),
}
