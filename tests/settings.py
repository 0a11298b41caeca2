"""Settings records for tests, with the command's defaults (the traits of `SparkScalerApp`),
so no test restates a default."""

from __future__ import annotations

from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.observe import ObserveSettings
from jhub_spark_scaler.policy import PolicySettings


def default(trait: str):
    return SparkScalerApp.class_traits()[trait].default()


def make_policy(*, max_workers: int = 10, **changes) -> PolicySettings:
    """PolicySettings as the command would build them, with `changes`."""
    values = {
        "min_workers": default("min_workers"),
        "idle_workers": default("idle_workers"),
        "max_surge": default("max_surge"),
        "scale_down_delay": default("scale_down_delay"),
        "unschedulable_backoff": default("start_timeout"),
    }
    return PolicySettings(max_workers=max_workers, **(values | changes))


def make_observe(**changes) -> ObserveSettings:
    values = {"start_timeout": default("start_timeout"), "held_after": default("held_after")}
    return ObserveSettings(**(values | changes))


DECISION_LOG_SIZE = default("decision_log_size")
