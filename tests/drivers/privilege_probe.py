"""A real Spark driver that runs one task and reports, from inside the executor, whom it
runs as, its environment, and what became of its attacks on the scaler's state dir.

    python privilege_probe.py --master spark://... --state-dir DIR --out FILE

The executors run the Python of PYSPARK_PYTHON (from this driver's environment), with
pyspark from the workers' SPARK_HOME. Writes FILE (JSON) and exits 0, or exits non-zero.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from tests.drivers.spark_session import session_builder  # noqa: E402


def attack(state_dir: str) -> dict:
    """Runs in the executor: what an executor can do to the scaler's records."""
    import os

    def outcome(action) -> str:
        try:
            action()
        except OSError as e:
            return type(e).__name__
        return "done"

    def write(path):
        with open(path, "w") as f:
            f.write("{}")

    return {
        "uid": os.getuid(),
        "environ": dict(os.environ),
        "plant state file": outcome(lambda: write(os.path.join(state_dir, "workers", "local-999.json"))),
        "replace master.json": outcome(lambda: write(os.path.join(state_dir, "master.json"))),
        "plant a work dir symlink":
            outcome(lambda: os.symlink("/", os.path.join(state_dir, "work", "local-998"))),
        "write a log": outcome(lambda: write(os.path.join(state_dir, "logs", "master.log"))),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--master", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    spark = session_builder(args.master, "privilege-probe", cores_max=1, decommission=False).getOrCreate()
    try:
        state_dir = args.state_dir
        [found] = spark.sparkContext.parallelize([0], 1).map(lambda _: attack(state_dir)).collect()
    finally:
        spark.stop()
    with open(args.out, "w") as f:
        json.dump(found, f)


if __name__ == "__main__":
    main()
