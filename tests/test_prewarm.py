"""Pre-warm where it pays: `activity.Gate` (profiles and cold users), `PrewarmHistory`
(each user's recent servers; its stores: tests/test_prewarm_history_store*.py), the admin page's
`prewarm_why`, then the whole path against a real hub (MockHub, real single-user servers)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import datetime, timezone

import pytest

from jhub_spark_scaler.activity import Gate, Server, parse_users_page, prewarm_credit
from jhub_spark_scaler.metrics import ScalerMetrics
from jhub_spark_scaler.model import AppStart
from jhub_spark_scaler.backends.history_store import FILE_NAME, FileStore
from jhub_spark_scaler.prewarm_history import PrewarmHistory
from jhub_spark_scaler.service import HubService
from jhub_spark_scaler.web.history import PoolHistory
from jhub_spark_scaler.web.view import pool_view

from .test_activity import READER_TOKEN, FakeHub, admin, real_hub, user_doc  # noqa: F401 (a fixture)
from .test_policy import snap
from .waiting import until

LOG = logging.getLogger("test-prewarm")
NOW = 1000.0
COLD = "no Spark in the user's last 2 servers"


def server(user: str, name: str = "", *, started: float = 990.0, profile: str = "") -> Server:
    return Server(user, name, started, None, True, profile)


# -- the gate -------------------------------------------------------------------------


def test_the_default_gate_lets_every_server_prewarm():
    servers = [server("a", profile="spark"), server("b"), server("c", "gpu")]
    assert prewarm_credit(servers, now=NOW, window=600, per_server=1) == 3
    assert [Gate().why_not(s) for s in servers] == [None, None, None]


def test_profiles_match_the_profile_slug_or_the_server_name():
    gate = Gate(profiles=frozenset({"spark"}))
    servers = [server("a", profile="spark"), server("b", "spark"), server("c", profile="minimal"),
               server("d"), server("e", "gpu", profile="gpu")]
    assert [gate.why_not(s) for s in servers] == [None, None] + ["profile not in prewarm_profiles"] * 3
    assert prewarm_credit(servers, now=NOW, window=600, per_server=2, gate=gate) == 4


def test_a_cold_users_servers_get_nothing_and_their_apps_use_up_nothing_else():
    gate = Gate(cold=frozenset({"a"}), history=2)
    servers = [server("a", started=900.0), server("b", started=950.0)]
    assert gate.why_not(servers[0]) == COLD and gate.why_not(servers[1]) is None
    assert prewarm_credit(servers, now=NOW, window=600, per_server=1, gate=gate) == 1
    # a's app does not take b's credit (it is a hub user's app: only its own servers count)
    assert prewarm_credit(servers, now=NOW, window=600, per_server=1, gate=gate,
                          app_starts=[AppStart(960.0, "a")]) == 1


def test_the_profile_comes_from_kubespawners_user_options():
    def page(options):
        doc = {"started": None, "ready": True, "user_options": options}
        return {"items": [{"name": "a", "servers": {"": doc}}]}

    assert parse_users_page(page({"profile": "spark"}))[0][0].profile == "spark"
    for odd in (None, {}, {"profile": 3}, ["profile"], {"image": "x"}):
        assert parse_users_page(page(odd))[0][0].profile == ""


# -- the history ----------------------------------------------------------------------


#: an app of someone else, long ago: the master answers, and lists apps
OTHER = AppStart(0.0, "other")


def ended(history: PrewarmHistory, s: Server, *, at: float, apps=(OTHER,)) -> None:
    """`s` seen running, then gone at `at`."""
    history.observe([s], apps, now=s.started)
    history.observe([], apps, now=at)


def test_a_user_is_cold_after_n_servers_without_spark_until_an_app_of_theirs_starts(tmp_path):
    history = PrewarmHistory(keep=2)
    ended(history, server("a", started=100.0), at=200.0)
    assert history.cold(()) == frozenset()  # one server: not yet known to be cold
    ended(history, server("a", started=300.0), at=400.0, apps=[AppStart(250.0, "a"), AppStart(350.0, "b")])
    assert history.cold(()) == {"a"}  # the app before the server and another user's app do not count
    assert history.cold([AppStart(350.0, "a")]) == {"a"}  # before the last server ended: counted then
    assert history.cold([AppStart(450.0, "a")]) == frozenset()  # started since: warm again
    ended(history, server("a", started=500.0), at=600.0, apps=[AppStart(550.0, "a")])
    assert history.cold(()) == frozenset()
    assert history.users["a"] == [[400.0, False], [600.0, True]]  # only the last `keep`


def test_with_no_app_known_nothing_is_learnt_until_the_master_lists_apps():
    """An unreachable or restarted master answers no apps: that is no evidence of no Spark."""
    history = PrewarmHistory(keep=1)
    ended(history, server("a", started=1.0), at=2.0, apps=())
    assert history.users == {}
    history.observe([], [AppStart(1.5, "a")], now=3.0)  # the master back: a ran Spark after all
    assert history.users == {"a": [[3.0, True]]}


def test_an_app_seen_while_the_server_ran_counts_after_the_master_forgot_it():
    history = PrewarmHistory(keep=1)
    s = server("a", started=1.0)
    history.observe([s], [OTHER], now=1.0)
    history.observe([s], [OTHER, AppStart(2.0, "a")], now=2.0)
    history.observe([], [OTHER], now=3.0)  # the master keeps only its last completed apps
    assert history.users == {"a": [[3.0, True]]} and history.cold(()) == frozenset()


def test_without_a_state_dir_the_history_lives_in_memory():
    history = PrewarmHistory(keep=1)
    ended(history, server("a", started=1.0), at=2.0)
    assert history.cold(()) == {"a"}


# -- the admin page -------------------------------------------------------------------


def test_the_servers_table_says_why_a_server_gets_no_credit():
    settings = {"max_workers": 5, "min_workers": 0, "idle_workers": 1, "prewarm_window": 600,
                "prewarm_per_server": 1,
                "prewarm_gate": Gate(profiles=frozenset({"spark"}), cold=frozenset({"c"}), history=2)}
    servers = [server("a", profile="spark"), server("b", profile="minimal"), server("c", "spark"),
               server("d", "spark", started=NOW - 601), server("e", "spark", started=None)]
    v = pool_view(snapshot=None, plan=None, decisions=(), servers=servers, hub_healthy=True, hub_error="",
                  paused=False, idle_override=None, settings=settings, now=NOW)
    assert [(r["key"], r["profile"], r["prewarm_credit"], r["prewarm_why"]) for r in v["servers"]] == [
        ("a/", "spark", 1, None), ("b/", "minimal", 0, "profile not in prewarm_profiles"),
        ("c/spark", "", 0, COLD), ("d/spark", "", 0, "started over prewarm_window ago"),
        ("e/spark", "", 0, "no start time")]
    used = dataclasses.replace(snap(), app_starts=(AppStart(995.0, "a"),))
    v = pool_view(snapshot=used, plan=None, decisions=(), servers=servers[:1], hub_healthy=True, hub_error="",
                  paused=False, idle_override=None, settings=settings, now=NOW)
    assert [(r["prewarm_credit"], r["prewarm_why"]) for r in v["servers"]] == [(0, "used up by a Spark app")]


# -- the service ---------------------------------------------------------------------


@pytest.mark.parametrize("profiles", [("spark",), ()])
async def test_with_profiles_a_pushed_start_reads_its_profile_from_the_hub_at_once(tmp_path, profiles):
    """An event names no profile: with prewarm_profiles set, the service polls at once."""
    hub = FakeHub([])
    hub.up()
    try:
        service = hub_service(hub.api_url, tmp_path, profiles=profiles)
        await service.activity.poll()
        started = datetime.now(timezone.utc).isoformat()
        hub.state["items"] = [user_doc("a", {"": {"started": started, "pending": "spawn", "ready": False,
                                                  "user_options": {"profile": "spark"}}})]
        service._on_event("start", "a", "")
        if profiles:
            assert service.credit(()) == 0  # the event alone: no profile yet
            await until(lambda: service.credit(()) == 1, timeout=10, what="the poll the event started")
            assert len(hub.state["requests"]) == 2
        else:
            assert service.credit(()) == 1  # every server pre-warms: no poll needed
            await asyncio.sleep(0.2)
            assert len(hub.state["requests"]) == 1
    finally:
        await hub.down()


async def test_servers_forgotten_in_a_hub_outage_are_not_recorded_as_ended(tmp_path):
    """A hub that cannot be read past hub_stale_after forgets its servers: they have not
    ended, so no user's history gains a server without Spark."""
    started = datetime.now(timezone.utc).isoformat()
    hub = FakeHub([user_doc(u, {"": {"started": started, "ready": True}}) for u in ("a", "b")])
    hub.up()
    service = hub_service(hub.api_url, tmp_path, profiles=(), stale_after=0.0)
    try:
        await service.activity.poll()
        assert service.credit([OTHER]) == 2
    finally:
        await hub.down()
    await service.activity.poll()
    assert service.activity.stale and not service.activity.servers
    assert service.credit([OTHER]) == 0
    assert service.history.users == {} and not (tmp_path / FILE_NAME).exists()


# -- a real hub -----------------------------------------------------------------------


def hub_service(api_url: str, state_dir, *, profiles=("spark",), stale_after=300.0) -> HubService:
    """The service as the app makes it, with prewarm_profiles ["spark"] and prewarm_history 2."""
    return HubService(
        api_url=api_url, api_token=READER_TOKEN, events_secret="unused",
        service_url="http://127.0.0.1:1", prefix="/services/spark-scaler/", poll_interval=3600,
        stale_after=stale_after, prewarm_window=600, prewarm_per_server=1, prewarm_profiles=profiles,
        prewarm_history=2, history_store=FileStore(str(state_dir), log=LOG), on_change=lambda: None, log=LOG,
        metrics=ScalerMetrics(), pool_history=PoolHistory(interval=1), cycle_interval=1,
        authenticate_prometheus=True,
    )


def why(service: HubService) -> dict[str, str | None]:
    return {s.user: service.pool.gate().why_not(s) for s in service.activity.servers}


async def test_real_hub_profiles_and_a_cold_user(real_hub, tmp_path):  # noqa: F811 (the fixture)
    """The reader's token (list:users, read:servers only) sees each server's user_options;
    a server with a profile not in prewarm_profiles gets no credit, one in it does, and a
    user whose last 2 servers ran no Spark app gets none, also after a restart."""
    app = real_hub
    assert await admin(app, "POST", "/users", {"usernames": ["pro", "plain", "idle"]}) == 201
    for path, options in [("/users/pro/server", {"profile": "spark"}),
                          ("/users/plain/server", {"profile": "minimal"})]:
        assert await admin(app, "POST", path, options) in (201, 202)
    service = hub_service(app.hub.api_url, tmp_path)
    await service.activity.poll()
    assert service.activity.healthy, service.activity.last_error
    assert {s.user: s.profile for s in service.activity.servers} == {"pro": "spark", "plain": "minimal"}
    assert service.credit(()) == 1
    assert why(service) == {"plain": "profile not in prewarm_profiles", "pro": None}

    for _ in range(2):  # two servers of "idle", with the profile, no Spark app while they ran
        assert await admin(app, "POST", "/users/idle/server", {"profile": "spark"}) in (201, 202)
        await service.activity.poll()
        assert service.credit([OTHER]) == 2

        async def gone():
            await service.activity.poll()
            return "idle" not in {s.user for s in service.activity.servers}

        assert await admin(app, "DELETE", "/users/idle/server") in (202, 204)
        await until(gone, timeout=30, what="idle's server to leave the hub's answer")
        assert service.credit([OTHER]) == 1
    between = time.time()
    await service.keeper.flush()  # as the scaler does at exit

    service = hub_service(app.hub.api_url, tmp_path)  # a restarted scaler
    await service.keeper.load()
    assert await admin(app, "POST", "/users/idle/server", {"profile": "spark"}) in (201, 202)
    await service.activity.poll()
    assert service.credit([OTHER]) == 1  # pro's, not idle's
    assert why(service)["idle"] == "no Spark in the user's last 2 servers"
    # an app of idle's since (started before this server: it uses up no credit of it)
    assert service.credit([OTHER, AppStart(between, "idle")]) == 2
    assert why(service)["idle"] is None
