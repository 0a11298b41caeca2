"""A real dynamic-allocation driver that uses the external shuffle service, for the tests.

    python shuffle_driver.py --master spark://... --control DIR --shuffle-port P

Runs a first job whose map stage writes shuffle files (one executor, so on one worker),
writes DIR/first.json (the executor's host) and waits: dynamic allocation removes the idle
executor after 1 s. When DIR/go exists it runs a second job on the same shuffled RDD, whose
reduce stage reads those shuffle files (its map stage is skipped while they are there),
writes DIR/result.json from its own REST API (failed tasks, fetch failures, the second job's
skipped and completed stages) and stops.
"""

import argparse
import json
import os
import sys
import time
import urllib.request
from operator import add

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from tests.drivers.spark_session import session_builder  # noqa: E402


def rest(ui, path):
    with urllib.request.urlopen(f"{ui}/api/v1/{path}", timeout=10) as r:
        return json.load(r)


def write(path, doc):
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--master", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--name", default="shuffle-driver")
    p.add_argument("--shuffle-port", required=True)
    p.add_argument("--max-seconds", type=float, default=600)
    args = p.parse_args()
    conf = {
        "spark.shuffle.service.enabled": "true",
        "spark.shuffle.service.port": args.shuffle_port,
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": "1",
        "spark.dynamicAllocation.executorIdleTimeout": "1s",
        "spark.dynamicAllocation.schedulerBacklogTimeout": "1s",
        "spark.storage.decommission.replicationReattemptInterval": "1s",
    }
    spark = session_builder(args.master, args.name, cores_max=1, conf=conf).getOrCreate()
    sc = spark.sparkContext
    app_id, ui = sc.applicationId, sc.uiWebUrl
    control = args.control
    shuffled = sc.parallelize(range(4000), 4).map(lambda x: (x % 50, 1)).reduceByKey(add, 4)
    first = shuffled.count()
    hosts = sorted({e["hostPort"].rsplit(":", 1)[0] for e in rest(ui, f"applications/{app_id}/allexecutors")
                    if e["id"] != "driver"})
    write(os.path.join(control, "first.json"), {"app_id": app_id, "hosts": hosts, "count": first})
    deadline = time.monotonic() + args.max_seconds
    while not os.path.exists(os.path.join(control, "go")) and time.monotonic() < deadline:
        time.sleep(0.1)
    sc.setJobGroup("second", "reads the first job's shuffle files")
    second = shuffled.collect()
    job = rest(ui, f"applications/{app_id}/jobs/{sc.statusTracker().getJobIdsForGroup('second')[0]}")
    stages = rest(ui, f"applications/{app_id}/stages")
    fetch_failures = 0
    for s in stages:
        attempt = f"applications/{app_id}/stages/{s['stageId']}/{s['attemptId']}"
        tasks = rest(ui, f"{attempt}/taskList?length=10000")
        fetch_failures += sum(1 for t in tasks if "FetchFailed" in (t.get("errorMessage") or ""))
    executors = rest(ui, f"applications/{app_id}/allexecutors")
    write(os.path.join(control, "result.json"), {
        "second_rows": len(second),
        "tasks_failed": sum(s.get("numFailedTasks", 0) for s in stages),
        "stage_attempts_retried": sum(1 for s in stages if s["attemptId"] > 0),
        "fetch_failures": fetch_failures,
        "second_job": {k: job[k] for k in ("status", "numSkippedStages", "numCompletedStages", "numTasks",
                                           "numSkippedTasks", "numFailedTasks")},
        "executor_hosts": sorted({e["hostPort"].rsplit(":", 1)[0] for e in executors if e["id"] != "driver"}),
    })
    spark.stop()


if __name__ == "__main__":
    main()
