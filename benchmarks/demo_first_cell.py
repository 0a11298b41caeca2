"""The demo's first cell, as a new user meets it after `make demo` and logging in.

    python benchmarks/demo_first_cell.py [--runs 3]

Builds the notebooks' class data archives as `make demo` does (timed; nothing to do when
they exist), starts scripts/demo.sh with a state dir of its own, waits for the login
banner, logs in as `demo` with the printed password (which starts the notebook server),
waits for the server and for the worker pre-warm starts, then runs the README's first
cell in the notebook server's own environment (read from /proc), alternating with the
same cell without PYSPARK_SUBMIT_ARGS (Spark's default JVMs). Each cell is a new Python
process, as a new kernel is. Prints a markdown table and writes it to
benchmarks/RESULTS.md; SIGINT stops the demo, and its process group is killed if it
has not exited in 90 s. Needs the demo's ports (8000, 7077, 8080) free.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from results import machine, write_section  # noqa: E402

HUB = "http://127.0.0.1:8000"
CELL = r'''
import json, time
t = time.monotonic()
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
t1 = time.monotonic()
spark.range(10**7).selectExpr("sum(id)").show()
print(json.dumps({"session": t1 - t, "result": time.monotonic() - t}))
spark.stop()
'''


def wait(what: str, check, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def banner_password(out: Path) -> str | None:
    found = re.search(r"password: (\S+)", out.read_text())
    return found[1] if found else None


def descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(16):
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def server_environment(demo_pid: int) -> dict[str, str] | None:
    """The environment of the notebook server the demo's hub started (a process below it;
    the spawner gives the server a session of its own)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not descends_from(int(entry.name), demo_pid):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(b"singleuser" in a or b"labhub" in a for a in argv):
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
    return None


def log_in(out: Path) -> requests.Session:
    password = wait("the login banner", lambda: banner_password(out), 180)
    session = requests.Session()
    session.get(f"{HUB}/hub/login", timeout=10)
    session.post(f"{HUB}/hub/login?next=", timeout=60, data={
        "username": "demo", "password": password, "_xsrf": session.cookies.get("_xsrf")})
    return session


def server_ready(session: requests.Session) -> bool:
    answer = session.get(f"{HUB}/hub/api/users/demo", timeout=10,
                         headers={"X-XSRFToken": session.cookies.get("_xsrf", "")})
    server = (answer.json().get("servers") or {}).get("") if answer.status_code == 200 else None
    return bool(server and server.get("ready"))


def worker_alive() -> bool:
    try:
        return any(w["state"] == "ALIVE" for w in requests.get("http://127.0.0.1:8080/json/", timeout=5)
                   .json()["workers"])
    except (requests.RequestException, ValueError, KeyError):
        return False


def run_cell(environment: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([environment.get("JSS_PYTHON", sys.executable), "-c", CELL], env=environment,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"the cell failed: {done.stderr[-1500:]}")
    return json.loads(lines[-1])


def cells(environment: dict[str, str], runs: int) -> dict[str, list[dict[str, float]]]:
    """The cell with the server's environment and without PYSPARK_SUBMIT_ARGS, taking turns."""
    defaults = {k: v for k, v in environment.items() if k != "PYSPARK_SUBMIT_ARGS"}
    kinds = {"tuned (the demo's)": environment, "Spark's default JVMs": defaults}
    times: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for n in range(runs):
        order = list(kinds) if n % 2 == 0 else list(reversed(kinds))
        for kind in order:
            times[kind].append(run_cell(kinds[kind]))
            time.sleep(2)  # the app's executor leaves the worker
    return times


def stop(demo: subprocess.Popen) -> None:
    if demo.poll() is None:
        os.kill(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    python = str(ROOT / ".venv" / "bin" / "python")
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    subprocess.run([python, "-m", "jhub_spark_scaler.jvm_archives", "build", "--out",
                    str(ROOT / ".cache" / "jvm-archives")], cwd=ROOT, check=True, timeout=900)
    marks["archives built (once; 0 when kept)"] = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="demo-first-cell-") as tmp:
        out = Path(tmp) / "demo.out"
        env = {**os.environ, "VENV": str(ROOT / ".venv"), "DEMO_STATE_DIR": str(Path(tmp) / "state")}
        with open(out, "w") as sink:
            demo = subprocess.Popen([str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            start = time.monotonic()
            session = log_in(out)
            marks["banner and login after the demo's start"] = time.monotonic() - start
            login = time.monotonic()
            wait("the notebook server", lambda: server_ready(session), 300)
            marks["server ready after login"] = time.monotonic() - login
            wait("a worker ALIVE at the master", worker_alive, 300)
            marks["pre-warmed worker ALIVE after login"] = time.monotonic() - login
            environment = wait("the server's environment", lambda: server_environment(demo.pid), 30)
            times = cells({**environment, "JSS_PYTHON": python}, args.runs)
        finally:
            stop(demo)
    body = [f"`python benchmarks/demo_first_cell.py --runs {args.runs}` on {machine()}. "
            "`make demo`'s steps in a state dir of its own, a login as `demo`, then the README's first "
            "cell (`getOrCreate()`, then `spark.range(10**7).selectExpr(\"sum(id)\").show()`) run in the "
            "notebook server's own environment, each time in a new Python process as a new kernel is, "
            "taking turns with the same cell without PYSPARK_SUBMIT_ARGS (Spark's default JVMs). "
            "Seconds, median (min-max).", "",
            "| step | seconds |", "|---|---:|", *(f"| {k} | {v:.1f} |" for k, v in marks.items()), "",
            "| cell | runs | getOrCreate() | first result |", "|---|---:|---:|---:|"]
    first = times["tuned (the demo's)"][0]
    body.append(f"| the first cell after login (tuned) | 1 | {first['session']:.1f} "
                f"| {first['result']:.1f} |")
    for kind, runs in times.items():
        parts = []
        for field in ("session", "result"):
            values = [r[field] for r in runs]
            parts.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        body.append(f"| {kind} | {len(runs)} | {parts[0]} | {parts[1]} |")
    print("\n".join(body))
    write_section("The demo's first cell", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
