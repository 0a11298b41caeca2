"""A real Spark driver for the tests: runs jobs until told to stop, then reports
from its own REST API what it saw (executors removed and why, tasks and jobs failed).

    python busy_driver.py --master spark://... --control DIR [--no-decommission] ...

Writes DIR/app.json once the SparkSession is up, stops when DIR/stop exists,
then writes DIR/result.json. With --bursts it runs one job each time a file
DIR/burst-N appears (N = 1, 2, ...) and writes DIR/done-N after it. With --udf each job
also runs a Python UDF; "wrong_results" counts jobs whose result was not the expected one.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from pyspark.sql.functions import udf  # noqa: E402

from tests.drivers.spark_session import session_builder  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--master", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--name", default="busy-driver")
    p.add_argument("--cores-max", type=int, default=1)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--task-seconds", type=float, default=1.0)
    p.add_argument("--no-decommission", action="store_true")
    p.add_argument("--dynamic", action="store_true", help="dynamic allocation: executors come and go")
    p.add_argument("--min-executors", type=int, default=0, help="with --dynamic")
    p.add_argument("--bursts", action="store_true", help="run a job per DIR/burst-N file")
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--driver-host", default="127.0.0.1", help="the address executors reach the driver at")
    p.add_argument("--udf", action="store_true", help="each job also runs a Python UDF on the executors")
    return p.parse_args()


def session(args):
    conf = {
        # Spark waits this long between block migration rounds before a drained
        # executor may exit (default 30 s); tests want drains of about a second.
        "spark.storage.decommission.replicationReattemptInterval": "1s",
        "spark.driver.host": args.driver_host,
        "spark.driver.bindAddress": args.driver_host,
    }
    if args.dynamic:
        conf.update({
            "spark.dynamicAllocation.enabled": "true",
            "spark.dynamicAllocation.shuffleTracking.enabled": "true",
            "spark.dynamicAllocation.minExecutors": str(args.min_executors),
            "spark.dynamicAllocation.maxExecutors": str(args.cores_max),
            "spark.dynamicAllocation.executorIdleTimeout": "1s",
            "spark.dynamicAllocation.schedulerBacklogTimeout": "1s",
        })
    return session_builder(args.master, args.name, cores_max=args.cores_max,
                           decommission=not args.no_decommission, conf=conf).getOrCreate()


def rest(ui, path):
    with urllib.request.urlopen(f"{ui}/api/v1/{path}", timeout=10) as r:
        return json.load(r)


def write(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def main():
    args = parse_args()
    spark = session(args)
    sc = spark.sparkContext
    app_id, ui = sc.applicationId, sc.uiWebUrl
    write(os.path.join(args.control, "app.json"), {"app_id": app_id, "ui": ui, "pid": os.getpid()})
    seconds = args.task_seconds
    jobs, wrong, deadline = 0, 0, time.monotonic() + args.max_seconds
    plus_one = udf(lambda x: x + 1, "long")

    def control(name):
        return os.path.join(args.control, name)

    while not os.path.exists(control("stop")) and time.monotonic() < deadline:
        if args.bursts and not os.path.exists(control(f"burst-{jobs + 1}")):
            time.sleep(0.05)  # a file-based control channel has nothing to wait on
            continue
        total = sc.parallelize(range(args.tasks), args.tasks).map(lambda x: time.sleep(seconds) or x).sum()
        wrong += total != sum(range(args.tasks))
        if args.udf:
            rows = spark.range(args.tasks).repartition(args.tasks).select(plus_one("id")).collect()
            wrong += sorted(r[0] for r in rows) != list(range(1, args.tasks + 1))
        jobs += 1
        write(control("progress.json"), {"jobs": jobs})
        if args.bursts:
            write(control(f"done-{jobs}"), {})
    executors = rest(ui, f"applications/{app_id}/allexecutors")
    stages = rest(ui, f"applications/{app_id}/stages")
    job_list = rest(ui, f"applications/{app_id}/jobs")
    result = {
        "jobs": jobs,
        "wrong_results": wrong,
        "jobs_failed": sum(1 for j in job_list if j.get("status") == "FAILED"),
        "tasks_failed": sum(s.get("numFailedTasks", 0) for s in stages),
        "tasks_done": sum(s.get("numCompleteTasks", 0) for s in stages),
        "executors": [
            {"id": e["id"], "host": e.get("hostPort", ""), "active": e.get("isActive"),
             "reason": e.get("removeReason", "")}
            for e in executors if e["id"] != "driver"
        ],
    }
    write(os.path.join(args.control, "result.json"), result)
    spark.stop()


if __name__ == "__main__":
    main()
