"""The scaler as a managed service of a real JupyterHub (pytest-jupyterhub's MockHub:
the real hub application with mock authentication and mock single-user servers,
which are real processes), on the session's real Spark master.

The hub's poll interval is set to a minute in these tests, so that only the pushed
hook events can explain a reaction within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jhub_spark_scaler.constants import EVENTS_SECRET_ENV

from .real_hub import alive_workers, hub_api, start_server, worker_records
from .waiting import always, until

pytestmark = pytest.mark.spark


@pytest.fixture
async def hub(scaler_hub):
    """A hub with the real scaler as its managed service; (app, service, state dir)."""
    return await scaler_hub()


async def test_server_start_prewarms_a_worker_and_stop_ends_it(hub, spark_master):
    app, _, state = hub
    assert not worker_records(state)
    began = await start_server(app, "alice")
    await until(lambda: worker_records(state), timeout=10, what="a pre-warm worker to be started")
    reaction = time.monotonic() - began
    assert reaction < 5, f"the hook, not the minute-long poll, started it ({reaction:.1f} s)"
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="the worker ALIVE")

    await hub_api(app, "DELETE", "users/alice/server")
    await until(lambda: not worker_records(state), timeout=60, what="the pool to shrink after the stop")


async def test_crashed_server_ends_its_credit(hub, spark_master):
    app, _, state = hub
    await start_server(app, "bob")
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="bob's pre-warm worker")
    spawner = app.users["bob"].spawner
    await until(lambda: spawner.pid, timeout=30, what="bob's server process")
    os.kill(spawner.pid, signal.SIGKILL)
    await until(lambda: not worker_records(state), timeout=60,
                what="the crash (post_stop_hook) to end the credit and the pool to shrink")


async def test_killed_service_restarts_and_keeps_the_pool(hub, spark_master):
    app, _, state = hub
    await start_server(app, "carol")
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="carol's pre-warm worker")
    before = {h: r["pid"] for h, r in worker_records(state).items()}
    service = app._service_map["spark-scaler"]
    old_pid = service.proc.pid
    os.kill(old_pid, signal.SIGKILL)
    await until(lambda: service.proc and service.proc.pid != old_pid and service.proc.returncode is None,
                timeout=60, what="the hub to restart the service")
    # The new process rebuilt carol's server from its first poll: for several of its
    # cycles it neither retires the worker nor starts another.
    # (An absence can only be watched for a while: 5 s is 10 of its cycles.)
    await always(lambda: {h: r["pid"] for h, r in worker_records(state).items()} == before, seconds=5,
                 what="carol's worker kept, and no other started")
    assert await alive_workers(spark_master, state)


async def test_forged_and_malformed_events_are_refused(hub):
    app, service, state = hub
    url = f"{service['url']}{app._service_map['spark-scaler'].prefix}events"
    event = json.dumps({"action": "start", "user": "mallory", "server": ""})
    secret = service["environment"][EVENTS_SECRET_ENV]
    cases = [
        ({}, event, 401),
        ({"Authorization": "token not-the-token"}, event, 403),
        # the service's API token is not the hooks' secret
        ({"Authorization": f"token {service['api_token']}"}, event, 403),
        ({"Authorization": f"token {secret}"}, "{not json", 400),
        ({"Authorization": f"token {secret}"}, json.dumps({"action": "explode"}), 400),
    ]
    for headers, body, code in cases:
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(url, method="POST", headers=headers, body=body)
        assert refused.value.code == code
    await asyncio.sleep(2)  # four of the scaler's cycles: an absence can only be watched
    assert not worker_records(state), "no refused event changed the target"


async def test_the_first_driver_after_a_server_start_uses_up_its_credit(hub, spark_master, drivers):
    """Pre-warm is for a user's first driver: once an app has started after the server did,
    the server adds nothing more to the idle target (idle_workers is 0 here), so the pool is
    the busy worker alone, not one more for a credit already served."""
    app, _, state = hub
    await start_server(app, "erin")
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="erin's pre-warm worker")
    driver = drivers("erin-notebook", "--cores-max", "1", "--task-seconds", "1")
    await driver.started()
    await driver.jobs_done(1)
    # An absence can only be watched for a while: 5 s is 10 of the scaler's cycles, in
    # which a credit still counted would have started a second worker at once.
    await always(lambda: len(worker_records(state)) == 1, seconds=5,
                 what="a second worker for a credit already used up")
    await driver.result()


async def test_only_a_server_with_a_listed_profile_prewarms(scaler_hub, spark_master):
    """With prewarm_profiles ["spark"]: a server whose KubeSpawner-style profile
    (`user_options["profile"]`) is another gets no worker; one with "spark" gets one within
    seconds, from the poll its start event triggers (the hub is polled only every minute)."""
    app, _, state = await scaler_hub(prewarm_profiles=["spark"])
    await hub_api(app, "POST", "users/plain", {})
    await hub_api(app, "POST", "users/plain/server", {"profile": "minimal"})
    # 5 s is 10 of the scaler's cycles and the poll the start event began
    await always(lambda: not worker_records(state), seconds=5,
                 what="a worker for a server whose profile is not in prewarm_profiles")
    await hub_api(app, "POST", "users/pro", {})
    began = time.monotonic()
    await hub_api(app, "POST", "users/pro/server", {"profile": "spark"})
    await until(lambda: worker_records(state), timeout=10, what="the spark profile's pre-warm worker")
    reaction = time.monotonic() - began
    assert reaction < 5, f"the start event's poll, not the minute-long one, found it ({reaction:.1f} s)"
    await until(lambda: alive_workers(spark_master, state), timeout=60, what="the worker ALIVE")
    assert len(worker_records(state)) == 1
