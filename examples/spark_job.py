"""A Spark job for the demo: asks for 3 executors, runs for a minute, then stops.

Under `make scaler-demo` (one idle worker, 1-core workers) the pool grows to 3 busy + 1
idle: each new executor takes the idle worker and the scaler starts another. Then,
scale_down_delay after the job ends, it shrinks back, each retired worker drained first.
Under `make demo`, which keeps no idle worker, the scaler starts a worker for an app that
has no cores at all, not for one that has fewer than it asked for: the job gets one.
"""

import argparse
import time

from pyspark.sql import SparkSession

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--master", default="spark://127.0.0.1:7077")
parser.add_argument("--executors", type=int, default=3)
parser.add_argument("--seconds", type=float, default=60)
args = parser.parse_args()

spark = (
    SparkSession.builder.master(args.master)
    .appName("jhub-spark-scaler demo")
    .config("spark.cores.max", str(args.executors))
    .config("spark.executor.cores", "1")
    .config("spark.executor.memory", "512m")
    .config("spark.decommission.enabled", "true")
    .config("spark.storage.decommission.enabled", "true")
    .getOrCreate()
)
sc = spark.sparkContext
print(f"application {sc.applicationId}; Spark UI {sc.uiWebUrl}")
deadline = time.monotonic() + args.seconds
while time.monotonic() < deadline:
    total = sc.parallelize(range(1000), 6).map(lambda x: time.sleep(0.01) or x * x).sum()
    print(f"sum of squares: {total}; executors: {len(sc._jsc.sc().getExecutorMemoryStatus()) - 1}")
spark.stop()
