"""The scaler's time to first executor against the static pool's, over soak runs
that ran the two strategies in opposite orders.

    python benchmarks/soak_crossover.py RUN.json OTHER_RUN.json [--environment local]

Each file is a `soak-latest.json` (for instance one from `git show <commit>:...`).
A soak runs its strategies one after another for about 35 minutes each, and this
machine's speed drifts by tens of percent over hours, so one run's paired ratio
holds whatever the machine did between its phases. Over two runs in opposite
orders (scaler then static, static then scaler) a drift that is the same in both
cancels: the estimate is the geometric mean of the runs' paired median ratios,
with a 90% bootstrap interval resampling each run's session pairs on its own.
The runs must have had the same users and timings (the same load).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from soaklib.analysis import (  # noqa: E402
    first_executor_samples, interval90, median_ratio_interval, ratio_draws)


def paired_run(rows: list[dict], environment: str) -> tuple[dict, list[float], list[float]]:
    """(the run's settings, scaler times, static times) of one run's paired sessions."""
    by_strategy = {r["strategy"]: r for r in rows if r["environment"] == environment}
    scaler, static = by_strategy.get("scaler"), by_strategy.get("static")
    if not scaler or not static or scaler["run"] != static["run"]:
        raise SystemExit(f"soak_crossover: each file needs one {environment} run's scaler and static rows")
    samples = first_executor_samples(scaler, static)
    if not samples or not samples[2]:
        raise SystemExit("soak_crossover: a run without planned (paired) sessions cannot be used")
    return scaler["run"], samples[0], samples[1]


def crossover_interval(runs: list[tuple[list[float], list[float]]], draws: int = 4000,
                       seed: int = 1) -> tuple[float, float, float]:
    """The geometric mean over runs of median(scaler) / median(static), and its 90%
    bootstrap interval (pairs resampled within each run)."""
    rng = random.Random(seed)
    per_run = [ratio_draws(a, b, paired=True, draws=draws, rng=rng) for a, b in runs]
    low, high = interval90([statistics.geometric_mean(ratios) for ratios in zip(*per_run)])
    return statistics.geometric_mean(statistics.median(a) / statistics.median(b) for a, b in runs), low, high


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--environment", default="local")
    args = p.parse_args(argv)
    runs, loads = [], set()
    for path in args.files:
        run, a, b = paired_run(json.loads(path.read_text()), args.environment)
        # what must match for two runs' ratios to be comparable: users, think time, session plan
        loads.add(tuple(str(run.get(key)) for key in ("users", "think", "session_allowance")))
        order = re.search(r"--strategies (\S+)", run["command"]).group(1)
        ratio, low, high = median_ratio_interval(a, b, paired=True)
        print(f"{path}: {order} ({run['started']}): scaler {statistics.median(a):.2f} s, "
              f"static {statistics.median(b):.2f} s over {len(a)} paired sessions: {ratio - 1:+.1%} "
              f"(90% interval {low - 1:+.1%} to {high - 1:+.1%})")
        runs.append((a, b))
    if len(loads) > 1:
        raise SystemExit(f"soak_crossover: the runs had different users or timings {sorted(loads)}; "
                         "only runs of the same load cancel each other's drift")
    ratio, low, high = crossover_interval(runs)
    print(f"over the {len(runs)} runs: {ratio - 1:+.1%} (90% interval {low - 1:+.1%} to {high - 1:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
