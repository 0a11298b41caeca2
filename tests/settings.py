"""Settings records for tests, with the command's defaults (the traits of `SparkScalerApp`),
so no test restates a default."""

from __future__ import annotations

from dataclasses import replace

from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.observe import ObserveSettings
from jhub_spark_scaler.policy import PolicySettings


def default(trait: str):
    return SparkScalerApp.class_traits()[trait].default()


#: PolicySettings as the command builds them from its defaults
COMMAND_POLICY = SparkScalerApp(max_workers=10).policy_settings()


def make_policy(*, max_workers: int = 10, **changes) -> PolicySettings:
    """The command's default PolicySettings, with `changes`."""
    return replace(COMMAND_POLICY, max_workers=max_workers, **changes)


def make_observe(**changes) -> ObserveSettings:
    """The command's ObserveSettings (with the local backend's start_timeout), with `changes`."""
    app = SparkScalerApp(max_workers=10)
    values = {"start_timeout": app.start_timeout, "node_wait_timeout": app.node_wait_timeout,
              "held_after": app.held_after}
    return ObserveSettings(**(values | changes))


DECISION_LOG_SIZE = default("decision_log_size")
HTTP_TIMEOUT = default("http_timeout")


#: The suite runs as root (its machines have no other user for Spark) and these tests are not
#: about privilege (tests/test_local_privilege.py is): their local backends run Spark as root,
#: as the single-user demo does. As a LocalBackend keyword, a configure() keyword and a flag.
AS_ROOT = {"allow_root": True}
AS_ROOT_SETTING = {"LocalBackend__allow_root": True}
AS_ROOT_FLAG = "--LocalBackend.allow_root=True"
