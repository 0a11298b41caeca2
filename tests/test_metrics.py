"""Tests of the Prometheus metrics, the pool history ring and its SVG chart.

Snapshots are built from the model dataclasses and planned with the real
`policy.plan`, as tests/test_policy.py does; `render()` is read back with
prometheus_client's own parser. The last test runs real Spark (marked `spark`).
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jhub_spark_scaler.app import SparkScalerApp
from jhub_spark_scaler.metrics import ERROR_KINDS, ScalerMetrics
from jhub_spark_scaler.model import BackendWorker, MasterApp, MasterWorker, Snapshot, Worker, WorkerState
from jhub_spark_scaler.policy import History, explain, plan
from jhub_spark_scaler.web.chart import STACK_ORDER, render_svg
from jhub_spark_scaler.web.history import PoolHistory

from .settings import make_policy
from . import test_scaling
from .waiting import until

S = WorkerState
SVG = "{http://www.w3.org/2000/svg}"
POLICY = make_policy(max_workers=20, idle_workers=1)


def worker(handle: str, state: WorkerState, *, ours: bool = True,
           retiring_since: float | None = None) -> Worker:
    host = f"host-{handle}"
    backend = BackendWorker(handle, host, created_at=0.0, retiring_since=retiring_since) if ours else None
    master = None
    if state not in (S.STARTING, S.UNSCHEDULABLE):
        master = MasterWorker(f"worker-20261125000000-{host}-7078", host, 7078, "", 2,
                              1 if state is S.BUSY else 0, 1024, 0, "ALIVE", 0)
    return Worker(handle if ours else f"master:{handle}", host, state, backend, master)


def snap(*workers: Worker, at: float = 1000.0, credit: int = 0, master_error: str = "",
         backend_error: str = "", apps: tuple[MasterApp, ...] = ()) -> Snapshot:
    return Snapshot(at, tuple(workers), apps, credit, master_error, backend_error)


def scrape(metrics: ScalerMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of `render()`, keyed (sample name, sorted labels)."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def by_state(values, name="spark_scaler_workers") -> dict[str, float]:
    return {dict(labels)["state"]: v for (n, labels), v in values.items() if n == name}


def cycle(metrics: ScalerMetrics, snapshot: Snapshot, **kw) -> None:
    kw.setdefault("duration", 0.02)
    metrics.observe_cycle(snapshot=snapshot, plan=plan(snapshot, POLICY, History()), **kw)


# -- metrics ---------------------------------------------------------------------


def test_every_state_and_error_kind_is_exported_before_the_first_cycle():
    values = scrape(ScalerMetrics())
    assert by_state(values) == {s.value: 0 for s in S}
    errors = {dict(l)["kind"]: v for (n, l), v in values.items() if n == "spark_scaler_errors_total"}
    assert errors == dict.fromkeys(ERROR_KINDS, 0)


def test_gauges_follow_the_snapshot_and_count_only_our_workers():
    m = ScalerMetrics()
    s = snap(
        worker("b1", S.BUSY), worker("b2", S.BUSY), worker("i1", S.IDLE), worker("s1", S.STARTING),
        worker("d1", S.DRAINING, retiring_since=900.0), worker("fb", S.BUSY, ours=False), credit=2,
    )
    cycle(m, s, hub_healthy=True)
    values = scrape(m)
    expected = {st.value: 0 for st in S} | {"busy": 2, "idle": 1, "starting": 1, "draining": 1}
    assert by_state(values) == expected
    target = plan(s, POLICY, History()).demand.target
    assert values[("spark_scaler_target_workers", ())] == target == 3 + 3 - 1  # busy + idle target - foreign
    assert values[("spark_scaler_prewarm_credit_workers", ())] == 2
    assert values[("spark_scaler_paused", ())] == 0
    reach = {dict(l)["part"]: v for (n, l), v in values.items() if n == "spark_scaler_reachable"}
    assert reach == {"master": 1, "backend": 1, "hub": 1}

    cycle(m, snap(worker("i1", S.IDLE)), hub_healthy=True)  # states drop back to 0
    assert by_state(scrape(m)) == {st.value: 0 for st in S} | {"idle": 1}
    cycle(m, snap(backend_error="cannot list"), hub_healthy=True)  # blind: the last counts stay
    assert by_state(scrape(m)) == {st.value: 0 for st in S} | {"idle": 1}


def test_reachability_and_errors_count_cycles_that_could_not_read_a_part():
    m = ScalerMetrics()
    cycle(m, snap(master_error="master down"), hub_healthy=False)
    cycle(m, snap(master_error="master down", backend_error="cannot list"), hub_healthy=True, action_errors=2)
    values = scrape(m)
    reach = {dict(l)["part"]: v for (n, l), v in values.items() if n == "spark_scaler_reachable"}
    assert reach == {"master": 0, "backend": 0, "hub": 1}
    errors = {dict(l)["kind"]: v for (n, l), v in values.items() if n == "spark_scaler_errors_total"}
    assert errors == {"master": 2, "backend": 1, "hub": 1, "action": 2}

    cycle(m, snap(), hub_healthy=None)  # no hub configured: its series goes away
    reach = {dict(l)["part"]: v for (n, l), v in scrape(m).items() if n == "spark_scaler_reachable"}
    assert reach == {"master": 1, "backend": 1}


def test_the_admin_pause_is_given_and_the_scale_up_pause_comes_from_the_plan():
    m = ScalerMetrics()
    s = snap(worker("u1", S.UNSCHEDULABLE))  # stopping an unschedulable worker pauses scale-up
    cycle(m, s, paused=True)
    values = scrape(m)
    assert (values[("spark_scaler_paused", ())], values[("spark_scaler_scale_up_paused", ())]) == (1, 1)
    cycle(m, snap(worker("i1", S.IDLE)))
    values = scrape(m)
    assert (values[("spark_scaler_paused", ())], values[("spark_scaler_scale_up_paused", ())]) == (0, 0)


def app(app_id: str, *, cores: int = 0, started: float) -> MasterApp:
    state = "WAITING" if cores == 0 else "RUNNING"
    return MasterApp(app_id, "job", cores, state, "alice", int(started * 1000))


SATURATION = ("spark_scaler_wanted_workers", "spark_scaler_target_workers", "spark_scaler_max_workers",
              "spark_scaler_saturated", "spark_scaler_waiting_apps",
              "spark_scaler_oldest_waiting_app_seconds")


def saturation(values) -> tuple[float, ...]:
    return tuple(values[(name, ())] for name in SATURATION)


def test_the_wanted_size_saturation_and_the_apps_waiting_are_exported():
    m = ScalerMetrics()
    assert saturation(scrape(m)) == (0, 0, 0, 0, 0, 0)
    pol = make_policy(max_workers=3, idle_workers=1)
    busy = [worker(f"b{i}", S.BUSY) for i in range(3)]
    apps = (app("app-1", started=960.0), app("app-2", started=990.0), app("app-3", cores=6, started=900.0))
    s = snap(*busy, apps=apps, at=1000.0)
    p = plan(s, pol, History())
    m.observe_cycle(snapshot=s, plan=p, duration=0.01)
    assert explain(p)[-1] == ("saturated: wanted 6 workers, max_workers 3: "
                              "2 apps waiting, the longest app-1 of alice for 40 s")
    # wanted 3 busy + 2 waiting + 1 idle = 6, target 3; the app with cores does not wait
    assert saturation(scrape(m)) == (6, 3, 3, 1, 2, 40)

    quiet = snap(*busy, at=1010.0)  # 3 busy + 1 idle = 4 > 3: saturated, no app waiting
    m.observe_cycle(snapshot=quiet, plan=plan(quiet, pol, History()), duration=0.01)
    assert saturation(scrape(m)) == (4, 3, 3, 1, 0, 0)
    blind = snap(master_error="master down", at=1020.0)  # a pool seen in part: the last values stay
    m.observe_cycle(snapshot=blind, plan=plan(blind, pol, History()), duration=0.01)
    held = saturation(scrape(m))
    assert (held[0], held[2:]) == (4, (3, 1, 0, 0))
    calm = snap(worker("b0", S.BUSY), at=1030.0)
    m.observe_cycle(snapshot=calm, plan=plan(calm, pol, History()), duration=0.01)
    assert saturation(scrape(m)) == (2, 2, 3, 0, 0, 0)


def test_the_oldest_held_worker_is_timed_from_its_decommission():
    m = ScalerMetrics()
    assert scrape(m)[("spark_scaler_oldest_held_worker_seconds", ())] == 0
    cycle(m, snap(worker("h1", S.HELD, retiring_since=400.0), worker("h2", S.HELD, retiring_since=700.0),
                  worker("d1", S.DRAINING, retiring_since=100.0), at=1000.0))
    values = scrape(m)
    assert values[("spark_scaler_oldest_held_worker_seconds", ())] == 600
    assert by_state(values)["held"] == 2
    cycle(m, snap(worker("d1", S.DRAINING, retiring_since=100.0), at=1010.0))
    assert scrape(m)[("spark_scaler_oldest_held_worker_seconds", ())] == 0


def test_counters_increment_and_histograms_count_cycles_and_drains():
    m = ScalerMetrics()
    s = snap(
        worker("dr1", S.DRAINED, retiring_since=970.0),
        worker("dr2", S.DRAINED, retiring_since=400.0),
        worker("l1", S.LOST),  # stopped without a decommission: no drain time
        at=1000.0,
    )
    cycle(m, s, started=3, retired=1, stopped=["dr1", "dr2", "l1"], duration=0.3)
    cycle(m, snap(at=1002.0), started=2, duration=4.0)
    values = scrape(m)
    assert values[("spark_scaler_workers_started_total", ())] == 5
    assert values[("spark_scaler_workers_retired_total", ())] == 1
    assert values[("spark_scaler_workers_stopped_total", ())] == 3

    assert values[("spark_scaler_cycle_duration_seconds_count", ())] == 2
    assert values[("spark_scaler_cycle_duration_seconds_sum", ())] == pytest.approx(4.3)
    assert values[("spark_scaler_cycle_duration_seconds_bucket", (("le", "0.5"),))] == 1
    assert values[("spark_scaler_cycle_duration_seconds_bucket", (("le", "5.0"),))] == 2

    assert values[("spark_scaler_decommission_to_stop_seconds_count", ())] == 2
    assert values[("spark_scaler_decommission_to_stop_seconds_sum", ())] == pytest.approx(30 + 600)
    assert values[("spark_scaler_decommission_to_stop_seconds_bucket", (("le", "30.0"),))] == 1
    assert values[("spark_scaler_decommission_to_stop_seconds_bucket", (("le", "600.0"),))] == 2


def test_drain_time_is_measured_up_to_now_when_given():
    m = ScalerMetrics()
    cycle(m, snap(worker("dr1", S.DRAINED, retiring_since=900.0), at=1000.0), stopped=["dr1"], now=1010.0)
    assert scrape(m)[("spark_scaler_decommission_to_stop_seconds_sum", ())] == pytest.approx(110)


def test_two_instances_do_not_share_a_registry():
    a, b = ScalerMetrics(), ScalerMetrics()
    cycle(a, snap(worker("i1", S.IDLE)), started=1)
    assert scrape(b)[("spark_scaler_workers_started_total", ())] == 0
    assert scrape(a)[("spark_scaler_workers_started_total", ())] == 1


# -- history ---------------------------------------------------------------------


def test_history_holds_one_window_of_samples_at_the_poll_interval():
    h = PoolHistory(interval=2.0, window=3600.0)
    assert h.maxlen == 1801
    for i in range(3000):
        h.add(i * 2.0, snap(worker("i1", S.IDLE)))
    assert len(h) == 1801
    now = 2999 * 2.0
    kept = h.samples(now)
    assert kept[0].at == now - 3600 and kept[-1].at == now
    assert dict(kept[-1].counts) == {S.IDLE: 1}
    assert [s.at for s in h.samples(now + 100)][0] == now + 100 - 3600  # trimmed to the window


def test_history_counts_ours_by_state_keeps_blind_cycles_as_gaps_and_merges_extra_cycles():
    h = PoolHistory(interval=2.0, window=60.0)
    h.add(0.0, snap(worker("b1", S.BUSY), worker("b2", S.BUSY), worker("f", S.IDLE, ours=False)))
    h.add(2.0, snap(master_error="down"))
    h.add(4.0, snap(worker("i1", S.IDLE)))
    h.add(4.5, snap(worker("i1", S.IDLE), worker("s1", S.STARTING)))  # pushed event: replaces the last
    samples = h.samples(4.5)
    assert [s.at for s in samples] == [0.0, 2.0, 4.5]
    assert dict(samples[0].counts) == {S.BUSY: 2}
    assert samples[1].counts is None
    assert dict(samples[2].counts) == {S.IDLE: 1, S.STARTING: 1}


# -- chart -----------------------------------------------------------------------


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("role") == "img" and root.get("viewBox")
    assert root.find(f"{SVG}title").text
    assert "<script" not in svg and "href" not in svg  # no JavaScript, no external resources
    return root


def series(root: ET.Element) -> dict[str, list[ET.Element]]:
    found: dict[str, list[ET.Element]] = {}
    for path in root.iter(f"{SVG}path"):
        if path.get("class") == "series":
            found.setdefault(path.get("data-state"), []).append(path)
    return found


def ys(path: ET.Element) -> list[float]:
    return [float(p.split(",")[1]) for p in path.get("d").strip("MZ ").split(" L")]


def plot_box(root: ET.Element) -> tuple[float, float]:
    """(top, bottom) of the plot: the gridlines' y range."""
    grid = [float(line.get("y1")) for line in root.iter(f"{SVG}line") if line.get("y1") == line.get("y2")]
    return min(grid), max(grid)


def test_empty_history_says_no_data_yet():
    root = parse(render_svg([], now=1000.0))
    assert "no data yet" in [t.text for t in root.iter(f"{SVG}text")]
    assert not series(root)
    old_only = parse(render_svg([(0.0, {S.IDLE: 1})], now=10_000.0))  # everything outside the window
    assert "no data yet" in [t.text for t in old_only.iter(f"{SVG}text")]


def test_one_series_per_state_present_stacked_in_order_with_a_legend():
    now = 3600.0
    samples = [(now - 600 + 60 * i, {S.BUSY: 2, S.IDLE: 1, S.DRAINING: i % 2}) for i in range(10)]
    root = parse(render_svg(samples, now=now))
    found = series(root)
    assert list(found) == [s.value for s in STACK_ORDER if s in (S.BUSY, S.IDLE, S.DRAINING)]
    assert all(len(paths) == 1 for paths in found.values())
    legend = [g.get("data-state") for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert legend == list(found)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "minutes ago" in texts and "workers" in texts and "busy 2" in texts


def test_heights_scale_with_counts_and_the_largest_pool_reaches_the_top():
    now = 3600.0
    samples = [(0.0, {S.BUSY: 1}), (1200.0, {S.BUSY: 2}), (2400.0, {S.BUSY: 4})]
    root = parse(render_svg(samples, now=now, window=3600))
    top, bottom = plot_box(root)
    heights = sorted({round(bottom - y, 1) for y in ys(series(root)["busy"][0])} - {0.0})
    full = bottom - top
    assert heights == pytest.approx([full / 4, full / 2, full], abs=0.2)
    assert min(ys(series(root)["busy"][0])) == pytest.approx(top, abs=0.1)


def test_a_blind_sample_breaks_the_series_and_old_samples_are_trimmed():
    now = 3600.0
    samples = [(-10.0, {S.LOST: 9}), (0.0, {S.IDLE: 1}), (1800.0, None), (2000.0, {S.IDLE: 2})]
    root = parse(render_svg(samples, now=now, window=3600))
    found = series(root)
    assert list(found) == ["idle"] and len(found["idle"]) == 2  # two runs around the gap
    assert "lost" not in [g.get("data-state") for g in root.iter(f"{SVG}g")]
    top, bottom = plot_box(root)
    assert min(ys(found["idle"][1])) == pytest.approx(top, abs=0.1)  # 2 is the peak, not the trimmed 9


def test_text_is_escaped_and_the_svg_scales():
    svg = render_svg([(0.0, {"idle": 1})], now=60.0, width=320, height=120)
    root = parse(svg)
    assert root.get("viewBox").startswith("0 0 320 ")
    assert "max-width:100%" in root.get("style")
    assert list(series(root)) == ["idle"]  # states given as plain strings work too


# -- on real parts -----------------------------------------------------------------

make_scaler = test_scaling.make_scaler  # the fixture: a Reconciler on its own local backend


@pytest.mark.spark
async def test_a_driver_asking_past_max_workers_makes_the_metrics_and_the_log_say_saturated(
        make_scaler, drivers, caplog):
    """A real master, a real worker and two real drivers: one asks 4 cores of a pool held to
    1 one-core worker and takes it, the other gets none. The app's metrics and log, fed as
    `SparkScalerApp` feeds them, say saturated, with the waiting app and its wait."""
    r = await make_scaler(max_workers=1, idle_workers=0)
    app = SparkScalerApp(max_workers=1)
    app.metrics, app.pool_history = ScalerMetrics(), PoolHistory(interval=0.3)
    app.hub, app.reconciler, app.log = None, r, r.log
    r.on_cycle = app.observe_cycle
    caplog.set_level(logging.INFO, logger=r.log.name)

    def metric(name: str) -> float:
        return scrape(app.metrics)[(f"spark_scaler_{name}", ())]

    async def cycle(predicate) -> bool:
        await r.cycle()
        app.log_pool(r.last_snapshot)
        return predicate()

    greedy = drivers("greedy", "--cores-max", "4", "--tasks", "4", "--task-seconds", "2")
    await greedy.started()
    await until(lambda: cycle(lambda: r.last_snapshot.count(S.BUSY) == 1), timeout=120, interval=0.3,
                what="the greedy driver on the one worker")
    assert metric("saturated") == 0, "an app with some cores is not seen to want more"
    starved = drivers("starved", "--cores-max", "1")
    starved_id = (await starved.started())["app_id"]
    await until(lambda: cycle(lambda: metric("saturated") == 1 and metric("waiting_apps") == 1),
                timeout=60, interval=0.3, what="saturated, 1 app waiting")
    # 1 busy + 1 waiting app wanted, 1 allowed
    assert (metric("wanted_workers"), metric("target_workers"), metric("max_workers")) == (2, 1, 1)
    await asyncio.sleep(2)
    await cycle(lambda: None)
    assert metric("oldest_waiting_app_seconds") >= 2
    assert len([w for w in r.last_snapshot.workers if w.ours]) == 1, "never past max_workers"
    logged = [rec.getMessage() for rec in caplog.records]
    assert "pool: 1 busy; target 1, wanted 2 > max_workers 1, 1 app waiting" in logged, logged
    began = [line for line in logged if line.startswith("saturated: ")]
    assert len(began) == 1, began
    assert began[0].startswith(
        f"saturated: wanted 2 workers, max_workers 1: 1 app waiting, {starved_id} of "), began

    starved.kill()  # its job waits for a core it never gets: it would never read its stop file
    await greedy.result()
    await until(lambda: cycle(lambda: not r.last_snapshot.apps), timeout=60, interval=0.3,
                what="both apps gone")
    ended = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("unsaturated: ")]
    assert len(ended) == 1 and "the longest an app waited" in ended[0], ended
    assert (metric("saturated"), metric("waiting_apps"), metric("oldest_waiting_app_seconds")) == (0, 0, 0)
