"""Fast tests of retirement with an external shuffle service: the pure `shuffle` module and
`policy.plan`, on snapshots built by hand, the worker /json/ parser on a real answer, and
the worker pods' conf."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

from jhub_spark_scaler.backends.kubernetes import KubernetesBackend
from jhub_spark_scaler.backends.worker_pod import worker_pod
from jhub_spark_scaler.model import Executor, ShuffleRead, Snapshot, WorkerState, WorkerStatus
from jhub_spark_scaler.policy import History, RetireIdle, describe, explain, plan
from jhub_spark_scaler.shuffle import KeepForShuffle, candidates, keeps, kept_words, next_reads, pick
from jhub_spark_scaler.spark import parse_worker

from .settings import make_policy
from .test_policy import app, worker

S = WorkerState
DATA = Path(__file__).parent / "data" / "spark-4.3.0"
DELAY = 30.0
POLICY = make_policy(idle_workers=0, min_workers=0, scale_down_delay=DELAY)
APP = "app-20261205070000-0001"


def pool(*, apps=(), reads=None, service=True, now=1000.0) -> Snapshot:
    """Two idle workers of ours: w-old idle longer than w-new, so w-old is retired first."""
    workers = (worker("w-old", S.IDLE), worker("w-new", S.IDLE))
    return Snapshot(taken_at=now, workers=workers, apps=tuple(apps), shuffle_service=service,
                    shuffle_reads=MappingProxyType(reads or {}))


def due(snapshot: Snapshot):
    """The plan once a surplus has lasted scale_down_delay, w-old idle since long before w-new."""
    history = History(surplus_since=snapshot.taken_at - DELAY,
                      idle_since=MappingProxyType({"w-old": 0.0, "w-new": 500.0}))
    return plan(snapshot, POLICY, history)


def read(*apps: str, at: float = 999.0) -> ShuffleRead:
    return ShuffleRead(at, frozenset(apps))


def test_an_idle_worker_with_shuffle_files_of_a_running_app_is_kept_and_another_retired():
    # one app running with no executors (it waits): target 1, capacity 2, surplus 1
    snapshot = pool(apps=[app(APP, 0)], reads={"w-old": read(APP, "app-ended"), "w-new": read("app-ended")})
    decided = due(snapshot)
    assert decided.retire == ("w-new",)
    assert decided.spared == ("w-old",)
    assert decided.kept["w-old"] == KeepForShuffle("w-old", (APP,))
    assert kept_words(decided.kept["w-old"]) == f"keeps shuffle files of {APP} (running)"
    assert f"keeping w-old: idle, but keeps shuffle files of {APP} (running)" in explain(decided)


def test_the_same_pool_without_a_shuffle_service_retires_the_longest_idle():
    snapshot = pool(apps=[app(APP, 0)], reads={"w-old": read(APP)}, service=False)
    decided = due(snapshot)
    assert decided.retire == ("w-old",) and not decided.kept and not decided.spared
    assert isinstance(decided.why["w-old"], RetireIdle)


def test_once_the_app_ends_the_worker_is_retired():
    snapshot = pool(apps=[], reads={"w-old": read(APP), "w-new": read()})
    decided = due(snapshot)
    assert set(decided.retire) == {"w-old", "w-new"} and not decided.kept


def test_a_surplus_held_back_by_kept_workers_goes_on_so_they_retire_when_their_apps_end():
    reads = {"w-old": read(APP), "w-new": read(APP)}
    held = due(pool(apps=[app(APP, 0)], reads=reads))
    assert held.retire == () and held.stop == () and held.spared == ("w-old",)
    assert held.history.surplus_since == 1000.0 - DELAY
    ended = plan(pool(apps=[], reads=reads, now=1002.0), POLICY, held.history)
    assert set(ended.retire) == {"w-old", "w-new"}


def test_a_worker_not_read_yet_is_kept():
    decided = due(pool(apps=[], reads={"w-new": read()}))
    assert decided.retire == ("w-new",)
    assert decided.kept["w-old"].unread == "not read yet"
    assert "its own /json/ is not read yet" in describe(decided.kept["w-old"])


def test_an_unreadable_worker_is_kept_for_scale_down_delay_of_failures_then_retired():
    failing = ShuffleRead(1000.0, None, "no answer from http://w-old within 1 s", unread_since=990.0)
    kept = due(pool(apps=[], reads={"w-old": failing, "w-new": read()}))
    assert kept.retire == ("w-new",)
    assert kept.kept["w-old"].unread_for == 10.0
    assert "kept 10 s of 30 s" in describe(kept.kept["w-old"])
    later = due(pool(apps=[], reads={"w-old": failing, "w-new": read()}, now=990.0 + DELAY))
    assert set(later.retire) == {"w-old", "w-new"}


def test_keeps_names_nothing_without_a_shuffle_service_or_for_busy_workers():
    snapshot = pool(apps=[app(APP, 1)], reads={}, service=False)
    assert keeps(snapshot, grace=DELAY) == {}
    busy = Snapshot(taken_at=0.0, workers=(worker("b", S.BUSY),), apps=(app(APP, 1),), shuffle_service=True)
    assert keeps(busy, grace=DELAY) == {} and candidates(busy) == {}


def test_reads_go_to_the_never_read_first_then_the_failed_then_the_oldest():
    targets = {"new": "u", "failed": "u", "old": "u", "fresh": "u"}
    reads = {"failed": ShuffleRead(9.0, None, "x", 5.0), "old": read(at=1.0), "fresh": read(at=8.0)}
    assert pick(targets, reads, 3) == ["new", "failed", "old"]


def test_next_reads_keeps_one_per_idle_worker_and_dates_the_first_failure():
    status = WorkerStatus("id", (Executor(APP, 1, "a"),), (Executor("app-old", 0, "o"),))
    old = {"b": ShuffleRead(1.0, None, "down", 0.5), "c": read("k"), "gone": read("z")}
    reads = next_reads({"a": "u", "b": "u", "c": "u"}, old, {"a": status, "b": "still down"}, 2.0)
    assert reads["a"] == ShuffleRead(2.0, frozenset({APP, "app-old"}))
    assert reads["b"] == ShuffleRead(2.0, None, "still down", 0.5)
    assert reads["c"] == read("k") and "gone" not in reads


def test_parse_worker_reads_finished_executors_of_a_real_answer():
    doc = json.loads((DATA / "05_worker3_with_executor.json").read_text())
    assert parse_worker(doc).finished == ()
    doc["finishedexecutors"] = [dict(doc["executors"][0], id=7, appid="app-done")]
    status = parse_worker(doc)
    assert [(e.app_id, e.executor_id) for e in status.finished] == [("app-done", 7)]
    assert status.executors[0].app_id == "app-20261125141527-0000"


def test_kubernetes_workers_run_the_shuffle_service_only_with_the_setting():
    def worker_opts(**settings) -> str:
        backend = KubernetesBackend(namespace="spark", master_url="spark://m:7077", image="spark:4",
                                    **settings)
        env = worker_pod(backend.template())["spec"]["containers"][0]["env"]
        return next(e["value"] for e in env if e["name"] == "SPARK_WORKER_OPTS")

    assert "spark.shuffle.service" not in worker_opts()
    assert "-Dspark.shuffle.service.enabled=true" in worker_opts(external_shuffle_service=True).split()
    # the setting wins over an admin's spark_conf saying otherwise: the scaler relies on it
    opts = worker_opts(external_shuffle_service=True, spark_conf={"spark.shuffle.service.enabled": "false"})
    assert "-Dspark.shuffle.service.enabled=true" in opts.split() and "enabled=false" not in opts
