"""The alert rules in docs/reliability.md: they name only series the scaler exports, and
Prometheus's own `promtool` fires each one on what a real `ScalerMetrics` exports for it.

The series fed to promtool are read back from `ScalerMetrics.render()` after cycles planned
by the real policy, so a renamed metric or label breaks these tests, not an admin's alerts.
promtool comes from Debian's `prometheus` package: scripts/install-promtool.sh (part of
`make test-setup`) unpacks it into the test cache; $PROMTOOL or one on PATH also serve.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.model import MasterApp, Snapshot, WorkerState
from jhub_spark_scaler.policy import History, plan

from .kube_cluster import BIN
from .settings import make_policy
from .test_metrics import worker

S = WorkerState
DOCS = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
POLICY = make_policy(max_workers=3, idle_workers=1)
TARGET = {"job": "spark-scaler", "instance": "hub:8000"}  # what a scrape adds
AT = 100_000.0


def rules_text() -> str:
    section = DOCS.read_text().split("## Alerts: what to watch", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def rules() -> list[dict]:
    return [r for group in yaml.safe_load(rules_text())["groups"] for r in group["rules"]]


def exported(m: ScalerMetrics) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted labels: value}, as Prometheus would ingest them."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def observe(m: ScalerMetrics, snapshot: Snapshot) -> None:
    m.observe_cycle(snapshot=snapshot, plan=plan(snapshot, POLICY, History()), duration=0.01)


def test_the_rules_name_only_series_and_labels_the_scaler_exports():
    m = ScalerMetrics()
    observe(m, Snapshot(AT, (worker("i", S.IDLE),), ()))
    samples = exported(m)
    names = [r["alert"] for r in rules()]
    assert names == ["SparkScalerDown", "SparkScalerBlind", "SparkPoolSaturated", "SparkAppWaiting",
                     "SparkWorkersHeld"]
    for rule in rules():
        for name in re.findall(r"\bspark_scaler_\w+", rule["expr"] + str(rule.get("annotations"))):
            assert name in samples, (rule["alert"], name)
    parts = {dict(labels)["part"] for labels in samples["spark_scaler_reachable"]}
    assert {"master", "backend"} <= parts
    assert "held" in {dict(labels)["state"] for labels in samples["spark_scaler_workers"]}


def series(m: ScalerMetrics, name: str, *, cycles_per_minute: int = 0, minutes: int = 30,
           **labels: str) -> dict:
    """One promtool input series: the value `m` exports for it, held for `minutes`; a counter
    with `cycles_per_minute` grows by that much a minute."""
    value = exported(m)[name][tuple(sorted(labels.items()))]
    selector = ",".join(f'{k}="{v}"' for k, v in sorted({**TARGET, **labels}.items()))
    return {"series": f"{name}{{{selector}}}", "values": f"{value:g}+{cycles_per_minute}x{minutes}"}


def pool_series(m: ScalerMetrics, *, cycles_per_minute: int = 30) -> list[dict]:
    names = ("spark_scaler_saturated", "spark_scaler_oldest_waiting_app_seconds",
             "spark_scaler_oldest_held_worker_seconds")
    return [
        series(m, "spark_scaler_cycle_duration_seconds_count", cycles_per_minute=cycles_per_minute),
        series(m, "spark_scaler_reachable", part="master"),
        series(m, "spark_scaler_reachable", part="backend"),
        *(series(m, n) for n in names),
    ]


def alerts(at: str, *expected: dict) -> list[dict]:
    """Each rule's expected alerts at `at`: `expected` by alert name, none for the others."""
    by_name = {e["alertname"]: e for e in expected}
    return [{"eval_time": at, "alertname": r["alert"],
             "exp_alerts": [by_name[r["alert"]]["alert"]] if r["alert"] in by_name else []}
            for r in rules()]


def fired(name: str, labels: dict, annotations: dict) -> dict:
    return {"alertname": name, "alert": {"exp_labels": labels, "exp_annotations": annotations}}


def expanded(name: str, duration: str = "") -> dict:
    """The rule's annotations as Prometheus expands them, `duration` for its $value."""
    annotations = next(r["annotations"] for r in rules() if r["alert"] == name)
    return {k: v.replace("{{ $value | humanizeDuration }}", duration) for k, v in annotations.items()}


#: where scripts/install-promtool.sh (make test-setup) puts it, beside the test kube-apiserver
CACHED_PROMTOOL = BIN / "promtool"
PROMTOOL = os.environ.get("PROMTOOL") or (str(CACHED_PROMTOOL) if CACHED_PROMTOOL.exists() else None) \
    or shutil.which("promtool")


def test_promtool_fires_each_rule_on_what_the_scaler_exports(tmp_path):
    if not PROMTOOL:
        pytest.fail(f"promtool is missing: run scripts/install-promtool.sh (it unpacks it into {BIN})",
                    pytrace=False)
    quiet = ScalerMetrics()
    observe(quiet, Snapshot(AT, (worker("b", S.BUSY), worker("i", S.IDLE)), ()))

    troubled = ScalerMetrics()  # 3 busy at max_workers 3, an app waiting 700 s, a worker held 2,000 s
    waiting = MasterApp("app-1", "job", 0, "WAITING", "alice", int((AT - 700) * 1000))
    observe(troubled, Snapshot(AT, (*(worker(f"b{i}", S.BUSY) for i in range(3)),
                                    worker("h", S.HELD, retiring_since=AT - 2000)), (waiting,)))
    assert exported(troubled)["spark_scaler_saturated"][()] == 1

    blind = ScalerMetrics()
    observe(blind, Snapshot(AT, (worker("i", S.IDLE),), ()))
    observe(blind, Snapshot(AT, (), (), master_error="master down"))

    instance = {"instance": TARGET["instance"]}
    warning = {**TARGET, "severity": "warning"}
    tests = [
        {"name": "a quiet pool fires nothing", "interval": "1m", "input_series": pool_series(quiet),
         "alert_rule_test": alerts("20m")},
        {"name": "saturated, an app waiting, a worker held", "interval": "1m",
         "input_series": pool_series(troubled),
         "alert_rule_test": [
             *alerts("10m",  # the ages fire at once; saturation is still pending
                     fired("SparkAppWaiting", warning, expanded("SparkAppWaiting", "11m 40s")),
                     fired("SparkWorkersHeld", warning, expanded("SparkWorkersHeld", "33m 20s"))),
             *[a for a in alerts("16m", fired("SparkPoolSaturated", warning, expanded("SparkPoolSaturated")))
               if a["alertname"] == "SparkPoolSaturated"],
         ]},
        {"name": "blind", "interval": "1m", "input_series": pool_series(blind),
         "alert_rule_test": alerts("6m", fired("SparkScalerBlind", {**instance, "severity": "critical"},
                                               expanded("SparkScalerBlind")))},
        {"name": "stalled: cycles stop", "interval": "1m",
         "input_series": pool_series(quiet, cycles_per_minute=0),
         "alert_rule_test": alerts("11m", fired("SparkScalerDown", {"severity": "critical"},
                                                expanded("SparkScalerDown")))},
        {"name": "down: no series", "interval": "1m",
         "input_series": [{"series": 'up{job="spark-scaler"}', "values": "0x30"}],
         "alert_rule_test": alerts("6m", fired("SparkScalerDown", {"severity": "critical"},
                                               expanded("SparkScalerDown")))},
    ]
    (tmp_path / "rules.yaml").write_text(rules_text())
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "tests": tests}))
    run = subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout, run.stdout
