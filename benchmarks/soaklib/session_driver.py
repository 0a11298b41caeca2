"""One notebook session's Spark driver in the soak: a real pyspark driver with
decommission enabled that runs jobs with a shuffle, with think times between them.

    python session_driver.py --master spark://... --name APP --out RESULT.json \
        --jobs 3 --think 8 --seed 7 [--cores-max 2] [--first-executor-timeout 300]

Writes RESULT.json at the end: the seconds from just before getOrCreate() to the
first executor's block manager registering (time to first executor), the jobs run
and failed, and every executor as the driver's REST API has it (host, remove reason,
failed tasks), from which the soak counts executors lost and tasks failed.
"""

import argparse
import http.client
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from tests.drivers.spark_session import seconds_to_first_executor, session_builder  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--master", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--think", type=float, default=8.0, help="mean seconds between jobs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores-max", type=int, default=2)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--task-seconds", type=float, default=1.0)
    p.add_argument("--first-executor-timeout", type=float, default=300)
    return p.parse_args()


def session(args):
    return session_builder(args.master, args.name, cores_max=args.cores_max, conf={
        "spark.storage.decommission.shuffleBlocks.enabled": "true",
    }).getOrCreate()


def shuffle_job(sc, partitions: int, task_seconds: float) -> int:
    """A map stage whose tasks take `task_seconds`, a shuffle, a reduce stage."""
    def slow(rows):
        time.sleep(task_seconds)
        return ((x % 97, x) for x in rows)

    pairs = sc.parallelize(range(20_000), partitions).mapPartitions(slow)
    return pairs.reduceByKey(lambda a, b: a + b, partitions).count()


def rest(ui: str, path: str, attempts: int = 5):
    """The driver's own REST API. On 2 saturated CPUs its Jetty can give up writing an
    answer ("Idle timeout expired: 8012/8000 ms") and drop the connection, which once
    cost a soak a session's records; a dropped or refused connection is tried again."""
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(f"{ui}/api/v1/{path}", timeout=30) as r:
                return json.load(r)
        except (ConnectionError, http.client.HTTPException, urllib.error.URLError, TimeoutError):
            if attempt == attempts:
                raise
            time.sleep(attempt)


def main():
    args = parse_args()
    rng = random.Random(args.seed)
    result = {"name": args.name, "wall_start": time.time()}
    t0 = time.perf_counter()
    spark = session(args)
    sc = spark.sparkContext
    result["app_id"] = sc.applicationId
    first = seconds_to_first_executor(spark, since=t0, timeout=args.first_executor_timeout)
    if first is None:
        result["first_executor_error"] = f"no executor within {args.first_executor_timeout:.0f} s"
    else:
        result["first_executor_s"] = first
    jobs = failed = 0
    for i in range(args.jobs):
        if i:
            time.sleep(min(rng.expovariate(1 / args.think), 4 * args.think))
        try:
            shuffle_job(sc, args.partitions, args.task_seconds)
        except Exception as e:  # a failed job is what the soak counts, not a crash
            failed += 1
            result.setdefault("job_errors", []).append(str(e).splitlines()[0][:300])
        jobs += 1
    app, ui = sc.applicationId, sc.uiWebUrl
    result["executors_read_at"] = time.time()  # what a worker kill after this cannot show
    executors = rest(ui, f"applications/{app}/allexecutors")
    stages = rest(ui, f"applications/{app}/stages")
    failed_tasks = []  # each with its executor and the first line of its error, for the soak to attribute
    for s in stages:
        if s.get("numFailedTasks", 0):
            where = f"stage {s['stageId']}.{s['attemptId']}"
            tasks = rest(ui, f"applications/{app}/stages/{s['stageId']}/{s['attemptId']}/taskList"
                             "?length=10000")
            listed = [{"executor": t.get("executorId", ""), "stage": where,
                       "error": (t.get("errorMessage") or "").split("\n")[0][:500]}
                      for t in tasks if t.get("status") == "FAILED"]
            # what the stage counts but its task list lacks is kept, so that the soak sees it
            listed += [{"executor": "", "stage": where, "error": "a failed task the REST API does not list"}
                       ] * (s["numFailedTasks"] - len(listed))
            failed_tasks += listed
    result.update(
        jobs=jobs,
        jobs_failed=failed,
        tasks_failed=sum(s.get("numFailedTasks", 0) for s in stages),
        failed_tasks=failed_tasks,
        executors=[
            {"id": e["id"], "host": e.get("hostPort", "").rsplit(":", 1)[0],
             "reason": e.get("removeReason", ""), "failed_tasks": e.get("failedTasks", 0),
             "added": e.get("addTime"), "removed": e.get("removeTime")}
            for e in executors if e["id"] != "driver"
        ],
        wall_end=time.time(),
    )
    spark.stop()
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
