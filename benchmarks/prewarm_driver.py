"""The new user's driver that benchmarks/prewarm.py times.

    python benchmarks/prewarm_driver.py MASTER_URL APP_NAME TIMEOUT_SECONDS

Takes the time just before getOrCreate(), polls its SparkContext every 20 ms until
an executor's block manager has registered, prints one line `RESULT {json}` (the
seconds to the SparkSession and to the first executor, or the error), stops, and
exits 3 if no executor came within TIMEOUT_SECONDS.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.drivers.spark_session import seconds_to_first_executor, session_builder  # noqa: E402


def main() -> None:
    master, name, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    wall0, t0 = time.time(), time.perf_counter()
    spark = session_builder(master, name, cores_max=1).getOrCreate()
    session = time.perf_counter() - t0
    result = {"wall0": wall0, "session_s": session, "app_id": spark.sparkContext.applicationId}
    first = seconds_to_first_executor(spark, since=t0, timeout=timeout)
    if first is None:
        result["error"] = f"no executor within {timeout:.0f} s"
    else:
        result["first_executor_s"] = first
    spark.stop()
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(3 if "error" in result else 0)


if __name__ == "__main__":
    main()
