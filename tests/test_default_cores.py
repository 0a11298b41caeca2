"""An app that sets no spark.cores.max is bounded by the master's spark.deploy.defaultCores: the
local backend's started master has it (2 x worker_cores), and a spark_conf that sets it wins.
The Kubernetes side (the managed master, helm-values/) is checked in tests/test_worker_pod.py
and tests/test_z2jh.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from jhub_spark_scaler.backends.local import LocalBackend

from .settings import AS_ROOT

pytestmark = pytest.mark.spark


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def test_the_local_master_bounds_an_app_to_two_workers(spark_master):
    assert spark_master.worker_cores == 1
    assert "-Dspark.deploy.defaultCores=2" in cmdline(spark_master._master["pid"])


async def test_spark_conf_sets_the_local_masters_default_cores(tmp_path):
    backend = LocalBackend(**AS_ROOT, state_dir=str(tmp_path / "state"), master_port=0, master_webui_port=0,
                           stop_on_exit=True, spark_conf={"spark.deploy.defaultCores": "7"})
    await backend.setup()
    try:
        options = [o for o in cmdline(backend._master["pid"]) if "spark.deploy.defaultCores" in o]
        assert options == ["-Dspark.deploy.defaultCores=7"]
    finally:
        await backend.shutdown()
