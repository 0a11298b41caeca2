"""A notebook-like Spark driver that reports which class data archives its JVMs mapped.

    PYSPARK_SUBMIT_ARGS="--conf ... pyspark-shell" python jvm_probe.py MASTER_URL

Prints one JSON line: the files ending in .jsa that the driver JVM and the executor JVM
(found from a task: the ancestor of its Python worker running CoarseGrainedExecutorBackend)
have mapped, the executor's stderr file (in its work directory), and the job's result.
"""

import json
import os
import sys

from pyspark.sql import SparkSession


def mapped_archives(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split()[-1] for line in f if line.rstrip().endswith(".jsa")})


def executor_jvm() -> int:
    pid = os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                return pid
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rpartition(")")[2].split()[1])
    raise RuntimeError("no executor JVM among the task's ancestors")


def probe(_rows):
    pid = executor_jvm()
    with open(os.path.join(os.readlink(f"/proc/{pid}/cwd"), "stderr"), errors="replace") as f:
        stderr = f.read()
    yield {"archives": mapped_archives(pid), "stderr": stderr}


def main() -> None:
    spark = (SparkSession.builder.master(sys.argv[1]).appName("jvm-probe")
             .config("spark.cores.max", "1").config("spark.executor.memory", "512m")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").getOrCreate())
    jvm_pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    [executor] = spark.sparkContext.parallelize([0], 1).mapPartitions(probe).collect()
    total = spark.range(1000).selectExpr("sum(id) AS s").collect()[0]["s"]
    print(json.dumps({"driver_archives": mapped_archives(jvm_pid), "executor_archives": executor["archives"],
                      "executor_stderr": executor["stderr"], "sum": total}))
    spark.stop()


if __name__ == "__main__":
    main()
