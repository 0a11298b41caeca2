"""A notebook-like Spark driver: started with a notebook server's environment, it builds a
SparkSession as a user's notebook would (its own builder settings from --conf), reports
what its JVM was started with, and holds the app open until told to stop.

    python notebook_driver.py --master spark://... --control DIR [--conf KEY=VALUE ...]

Writes DIR/app.json ({"app_id", "properties": {name: the driver JVM's system property}})
once the session is up, for every name given with --property; stops when DIR/stop exists
or after --max-seconds.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from tests.drivers.spark_session import session_builder  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--master", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--name", default="notebook")
    p.add_argument("--conf", action="append", default=[], help="KEY=VALUE, as a notebook's builder sets it")
    p.add_argument("--property", action="append", default=[], help="a JVM system property to report")
    p.add_argument("--max-seconds", type=float, default=300)
    args = p.parse_args()
    conf = dict(item.split("=", 1) for item in args.conf)
    spark = session_builder(args.master, args.name, cores_max=1, conf=conf).getOrCreate()
    system = spark.sparkContext._jvm.java.lang.System
    report = {"app_id": spark.sparkContext.applicationId,
              "properties": {name: system.getProperty(name) for name in args.property}}
    tmp = os.path.join(args.control, "app.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, os.path.join(args.control, "app.json"))
    deadline = time.monotonic() + args.max_seconds
    while not os.path.exists(os.path.join(args.control, "stop")) and time.monotonic() < deadline:
        time.sleep(0.2)
    spark.stop()


if __name__ == "__main__":
    main()
