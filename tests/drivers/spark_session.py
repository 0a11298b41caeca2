"""What the test and benchmark drivers share: their SparkSession settings, and the
time to their first executor.

Imported as `tests.drivers.spark_session` by tests/drivers/busy_driver.py,
benchmarks/soaklib/session_driver.py and benchmarks/prewarm_driver.py, each of which
puts the repository's root on sys.path first (a script's own folder is sys.path[0]).
"""

import time

from pyspark.sql import SparkSession

from tests.waiting import WaitTimeout, until_sync


def session_builder(master: str, name: str, *, cores_max: int, decommission: bool = True,
                    conf: dict[str, str] | None = None) -> SparkSession.Builder:
    """A builder for an app on `master` with one-core 512 MB executors, the driver on
    loopback, no fixed UI port, executor JVMs tuned to start fast, and graceful
    decommission on (unless `decommission` is False); `conf` adds or replaces settings."""
    on = "true" if decommission else "false"
    settings = {
        "spark.cores.max": str(cores_max),
        "spark.executor.cores": "1",
        "spark.executor.memory": "512m",
        "spark.driver.memory": "512m",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.port": "0",
        "spark.decommission.enabled": on,
        "spark.storage.decommission.enabled": on,
        "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        "spark.ui.showConsoleProgress": "false",
        **(conf or {}),
    }
    builder = SparkSession.builder.master(master).appName(name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder


def seconds_to_first_executor(spark: SparkSession, *, since: float, timeout: float) -> float | None:
    """Seconds from `since` (a time.perf_counter() reading) until an executor's block
    manager has registered with the driver (polled every 20 ms); None if none has
    within `timeout` seconds of `since`."""
    status = spark.sparkContext._jsc.sc()
    try:
        # the driver's own block manager is one
        until_sync(lambda: status.getExecutorMemoryStatus().size() > 1, interval=0.02,
                   timeout=timeout - (time.perf_counter() - since), what="the first executor")
    except WaitTimeout:
        return None
    return time.perf_counter() - since
