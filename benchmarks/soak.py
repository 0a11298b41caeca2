"""Soak: simulated hub users on a real hub, real pyspark drivers with shuffles, the
scaler against a static pool and the original autoscaler's policy, with chaos.

    python benchmarks/soak.py [--minutes 35] [--users 8] [--think 90] [--session-allowance 90]
                              [--environments local,kubernetes] [--strategies scaler,static,original]
                              (or reactive too: the four a cold-start run compares)
                              [--scaler-kills 12] [--worker-start-delay 60]

For each environment (local backend; Kubernetes backend on a real kube-apiserver with
the tests' kubelet running worker pods as real processes) and each strategy in turn:
a fresh Spark master (FILESYSTEM recovery), a real JupyterHub (jupyterhub-singleuser
servers), the same simulated users (seeded; their sessions planned at the same times)
for --minutes:

  scaler    the scaler as the hub's managed service (idle_workers=1, pre-warm hooks);
            with --scaler-kills N > 0 the chaos of soaklib/chaos.py: the scaler
            SIGKILLed N times (the hub restarts it), the master restarted once, the
            apiserver restarted once (Kubernetes), a busy worker SIGKILLed
  static    a pool sized for the peak (users x cores.max / worker cores), no scaler
  original  k8s-spark-autoscale's policy (soaklib/strategies.py), in this process
  reactive  the scaler without pre-warm (prewarm_workers_per_server=0), otherwise as
            `scaler` (also its chaos)

--worker-start-delay (60, uniform:30:90 or lognormal:MEDIAN:SIGMA; soaklib/start_delay.py)
makes every worker process start that long after its start was asked for, as when a
node is added and an image pulled: the local backend's worker JVM through a
benchmark-only subclass, the tests' kubelet's pod process; the same seeded delays in
every strategy, and the scaler's start_timeout raised above the longest. Rows of a run
with a delay are kept apart from those without, and compared in their own table.

Counts from the drivers (executors lost, tasks and jobs failed, time to first
executor), from the pool (worker JVMs on the soak's addresses, busy per the master):
scale-ups, retirements, idle worker-seconds, peak. Writes the raw numbers to
benchmarks/soak-latest.json, where this run's rows replace that file's earlier rows of
the same environment and strategy (so one backend, or some strategies of one, can be
soaked at a time), and from all of them the section "Soak" of benchmarks/RESULTS.md. Every
process it starts is stopped at the end, also on failure or Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from results import machine, write_section  # noqa: E402
from soaklib.analysis import first_executor_samples, median_ratio_interval, summarize  # noqa: E402
from soaklib.compare import comparison_lines, setting  # noqa: E402
from soaklib.environments import WORKER_CORES, KubeEnv, LocalEnv  # noqa: E402
from soaklib.run import STRATEGIES, RunConfig, run_strategy  # noqa: E402
from soaklib.start_delay import StartDelay  # noqa: E402
from soaklib.users import Behaviour  # noqa: E402

TITLE = "Soak: users, drivers and chaos"
ENVIRONMENTS = {"local": LocalEnv, "kubernetes": KubeEnv}
LATEST = HERE / "soak-latest.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 35: 8 users on 2 cores gave the scaler 43 retirements in 26 minutes; >= 50 are asked for
    p.add_argument("--minutes", type=float, default=35)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--environments", default="local,kubernetes")
    # reactive only when asked for: it adds a third of a run's length
    p.add_argument("--strategies", default="scaler,static,original")
    p.add_argument("--scaler-kills", type=int, default=12)
    p.add_argument("--think", type=float, default=90.0,
                   help="mean seconds from a session's planned end (its start + --session-allowance) "
                        "to the user's next session")
    p.add_argument("--session-allowance", type=float, default=90.0,
                   help="seconds a session is planned to take (one overrunning it delays the next)")
    p.add_argument("--max-workers", type=int, default=12, help="the scaler's and the original policy's cap")
    p.add_argument("--scale-down-delay", type=float, default=20.0,
                   help="the scaler's; 20 s makes >= 50 retirements in a 35-minute 8-user run")
    p.add_argument("--spread-out", action="store_true",
                   help="the master's spark.deploy.spreadOut=true (Spark's default; the soak packs)")
    p.add_argument("--workdir", help="keep every log here (default: a temporary directory, removed)")
    p.add_argument("--worker-start-delay", default="",
                   help="seconds before a worker process starts: 60, uniform:LOW:HIGH or "
                        "lognormal:MEDIAN:SIGMA (seeded by --seed); default none")
    p.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = p.parse_args(argv)
    try:
        args.start_delay = StartDelay.parse(args.worker_start_delay) if args.worker_start_delay else None
    except ValueError as e:
        p.error(str(e))
    for name, allowed in (("environments", ENVIRONMENTS), ("strategies", STRATEGIES)):
        bad = [x for x in getattr(args, name).split(",") if x not in allowed]
        if bad:
            p.error(f"--{name}: {', '.join(bad)} not one of {', '.join(allowed)}")
    return args


async def soak(args, workdir: Path) -> list[dict]:
    summaries = []
    for env_name in args.environments.split(","):
        env = ENVIRONMENTS[env_name](workdir, start_delay=args.start_delay, seed=args.seed)
        try:
            await env.start()  # inside: a start that fails half way still stops what it started
            for strategy in args.strategies.split(","):
                config = RunConfig(strategy=strategy, minutes=args.minutes, users=args.users, seed=args.seed,
                                   behaviour=Behaviour(think=args.think,
                                                       session_allowance=args.session_allowance),
                                   scale_down_delay=args.scale_down_delay, max_workers=args.max_workers,
                                   scaler_kills=args.scaler_kills, spread_out=args.spread_out,
                                   start_timeout=start_timeout(args.start_delay))
                logging.info("soak: %s / %s for %.1f min", env_name, strategy, args.minutes)
                result = await run_strategy(env, config, workdir)
                summaries.append({**summarize(result), "worker_start_delay": str(args.start_delay or "")})
                logging.info("soak: %s", json.dumps(summaries[-1]))
        finally:
            await env.stop()
    return summaries


def start_timeout(delay: StartDelay | None) -> float | None:
    """The scaler's start_timeout: its default (120 s) above the longest start delay."""
    return None if delay is None else 120.0 + delay.bound


def label(row: dict) -> str:
    """The row's environment, and its worker start delay if it had one."""
    delay = row.get("worker_start_delay")
    return row["environment"] + (f" (worker start delay {delay})" if delay else "")


def table(summaries: list[dict]) -> list[str]:
    columns = [
        ("environment", "environment"), ("strategy", "strategy"),
        ("worker_start_delay", "worker start delay"), ("minutes", "min"),
        ("sessions", "sessions"), ("jobs", "jobs"), ("executors_lost", "executors lost"),
        ("tasks_failed", "tasks failed"), ("jobs_failed", "jobs failed"),
        ("executors_lost_by_test", "lost by the chaos"),
        ("tasks_failed_by_test", "tasks failed by the chaos"),
        ("ttfe_median", "first executor median s"), ("ttfe_p90", "p90 s"), ("ttfe_mean", "mean s"),
        ("ttfe_median_outside_faults", "median s, no fault"),
        ("ttfe_sessions_outside_faults", "sessions, no fault"),
        ("scale_ups", "scale-ups"), ("retirements", "retirements / kills"),
        ("idle_worker_seconds", "idle worker-s"), ("worker_seconds", "worker-s"), ("peak_workers", "peak"),
        ("cpu_busy", "CPUs busy"),
    ]
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|"]
    for s in summaries:
        # older rows lack some; a row without a worker start delay has ""
        cells = ("–" if s.get(key) in (None, "") else str(s[key]) for key, _ in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def faults_lines(summaries: list[dict]) -> list[str]:
    lines = []
    for s in summaries:
        if not s["faults"]:
            continue
        kinds: dict[str, list] = {}
        for f in s["faults"]:
            kinds.setdefault(f["kind"], []).append(f)
        parts = []
        for kind, faults in kinds.items():
            times = [f["converged_s"] for f in faults if f["converged_s"] is not None]
            failed = [f["error"] for f in faults if f["error"]]
            parts.append(f"{kind} x{len(faults)}: converged in {', '.join(map(str, times)) or '–'} s"
                         + (f" (NOT converged: {'; '.join(failed)})" if failed else ""))
        blind = "; ".join(f"{b['fault']} blind {b['seconds']} s, workers stopped meanwhile: "
                          f"{len(b['departures'])}" for b in s["blind"])
        settled = s["settled"]
        error = f" ({settled['error']})" if settled.get("error") else ""
        lines.append(f"- {label(s)} {s['strategy']}: " + "; ".join(parts) + f". {blind}. After the users "
                     f"left the pool settled at {settled.get('workers')} worker(s) in "
                     f"{settled.get('seconds')} s"
                     f"{error}; pods without a worker: {len(settled.get('pods_without_worker', []))}.")
    return lines


def merged(previous: list[dict], summaries: list[dict]) -> list[dict]:
    """The latest run's summaries, after the previous runs' of other environments or
    strategies: one backend, or some of its strategies, can be re-soaked at a time; rows of
    another worker start delay are kept."""
    ran = {(*setting(s), s["strategy"]) for s in summaries}
    return [s for s in previous if (*setting(s), s["strategy"]) not in ran] + summaries


def report(summaries: list[dict]) -> list[str]:
    """The RESULTS.md section: per run its command, date and machine, then one table."""
    return [
        *runs_lines(summaries),
        "A session: server start, a driver with cores.max=2 running 2-4 shuffle jobs, stop. Workers of "
        f"{WORKER_CORES} cores. Losses on the busy worker the chaos killed, and executors lost while it "
        "restarted the master (or within 15 s of its return, started before it), are the chaos's and "
        "counted apart. Raw numbers: benchmarks/soak-latest.json.",
        "",
        *table(summaries),
        "",
        *targets_lines(summaries),
        *comparison_lines(summaries),
        *pool_lines(summaries),
        *faults_lines(summaries),
    ]


def pool_lines(summaries: list[dict]) -> list[str]:
    """Per row, the first-executor medians split by how the pool met the drivers."""
    lines = []
    for s in summaries:
        split = s.get("ttfe_by_pool")  # older rows lack it
        if not split:
            continue
        parts = [f"{'–' if g['median'] is None else g['median']} s in the {g['sessions']} that {name}"
                 for name, g in split.items()]
        lines.append(f"- {label(s)} {s['strategy']}, first executor median by how the pool met "
                     f"the driver: {parts[0]}, {parts[1]}; {parts[2]}, {parts[3]}.")
    return lines


def runs_lines(summaries: list[dict]) -> list[str]:
    """Per run: which environments and strategies' rows it made, its command, date and machine."""
    body = []
    for run in {json.dumps(s["run"], sort_keys=True): s["run"] for s in summaries}.values():
        of_run = [s for s in summaries if s["run"] == run]
        environments = ", ".join(
            f"{env} ({', '.join(s['strategy'] for s in of_run if s['environment'] == env)})"
            for env in dict.fromkeys(s["environment"] for s in of_run))
        timing = (f"each session planned {run['session_allowance']:g} s plus a think time (mean "
                  f"{run['think']:g} s) after the user's previous one, the same times for each strategy"
                  if run.get("session_allowance") else f"mean think time {run['think']:g} s after a session")
        body += [f"{environments}: `{run['command']}` started {run['started']}; {run['machine']}. "
                 f"The same {run['users']} seeded users for each strategy in turn ({timing}).", ""]
    return body


def targets_lines(summaries: list[dict]) -> list[str]:
    """The soak's first targets for the scaler, per environment, against that environment's static pool."""
    lines = []
    for scaler in (s for s in summaries if s["strategy"] == "scaler"):
        static = next((s for s in summaries if s["strategy"] == "static"
                       and setting(s) == setting(scaler)), None)
        checks = [("0 executors lost, 0 tasks failed",
                   scaler["executors_lost"] == scaler["tasks_failed"] == 0),
                  (f">= 50 retirements ({scaler['retirements']})", scaler["retirements"] >= 50)]
        if static and scaler["ttfe_median"] and static["ttfe_median"]:
            idle = scaler["idle_worker_seconds"] / max(static["idle_worker_seconds"], 1)
            ttfe, spread = scaler["ttfe_median"] / static["ttfe_median"], ""
            if samples := first_executor_samples(scaler, static):
                a, b, paired = samples
                ttfe, low, high = median_ratio_interval(a, b, paired=paired)
                pairs = f"the same {len(a)} sessions paired, " if paired else ""
                spread = f", {pairs}90% bootstrap interval {low - 1:+.0%} to {high - 1:+.0%}"
            # "well under": at most three quarters
            checks += [(f"idle worker-s well under the static pool's ({idle:.0%} of it)", idle <= 0.75),
                       (f"first executor median within 10% of the static pool's ({ttfe - 1:+.0%}{spread})",
                        ttfe <= 1.10)]
        lines.append(f"- {label(scaler)} targets: " + "; ".join(
            f"{what}: {'met' if ok else '**missed**'}" for what, ok in checks) + ".")
    return lines


def command(args) -> str:
    return (f"python benchmarks/soak.py --minutes {args.minutes:g} --users {args.users} "
            f"--think {args.think:g} --session-allowance {args.session_allowance:g} --seed {args.seed} "
            f"--environments {args.environments} "
            f"--strategies {args.strategies} "
            f"--scaler-kills {args.scaler_kills} --max-workers {args.max_workers} "
            f"--scale-down-delay {args.scale_down_delay:g}" + (" --spread-out" if args.spread_out else "")
            + (f" --worker-start-delay {args.start_delay}" if args.start_delay else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    run = {"command": command(args), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": machine(), "users": args.users, "think": args.think,
           "session_allowance": args.session_allowance}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        summaries = [{**s, "run": run} for s in asyncio.run(soak(args, workdir))]
    if not args.no_write:
        previous = json.loads(LATEST.read_text()) if LATEST.exists() else []
        summaries = merged(previous, summaries)
        LATEST.write_text(json.dumps(summaries, indent=1) + "\n")
    body = report(summaries)
    print("\n".join(body))
    if not args.no_write:
        write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
