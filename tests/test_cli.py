"""The `jhub-spark-scaler` command as a process: settings errors, and surviving SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jhub_spark_scaler.app import main
from jhub_spark_scaler.spark import SparkClient

from .scaler_process import ScalerProcess
from .settings import AS_ROOT_FLAG, HTTP_TIMEOUT
from .waiting import until

SCALER = [sys.executable, "-m", "jhub_spark_scaler", AS_ROOT_FLAG]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-workers=5", "--max-workers=2"], "min_workers (5) > max_workers (2)"),
        ([], "max_workers is required"),
        (["--max-workers=abc"], "max_workers"),
        (["--max-workers=3", "--poll-interval=-1"], "poll_interval must be >= 0.05"),
        (["--max-workers=3", "--idle-workers=-2"], "idle_workers must be >= 0"),
        (["--max-workers=3", "--config=/nonexistent/scaler_config.py"], "/nonexistent/scaler_config.py"),
        (["--max-workers=3", "--worker-memory=lots"], "worker_memory"),
        (["--max-workers=3", "--LocalBackend.java=/nonexistent/java"], "LocalBackend.java"),
    ],
)
def test_bad_setting_is_one_line_naming_it(args, message, tmp_path):
    try:
        done = subprocess.run(
            [*SCALER, f"--state-dir={tmp_path}", *args], capture_output=True, text=True, timeout=60,
            cwd=tmp_path,
        )
    finally:  # had the scaler started despite the bad setting, end what it started
        for pid in [*worker_pids(tmp_path).values(), _master_pid(tmp_path)]:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jhub-spark-scaler: error: ") and message in lines[0]


def test_generate_config_lists_settings(tmp_path):
    subprocess.run([*SCALER, "--generate-config"], check=True, cwd=tmp_path, timeout=60,
                   capture_output=True)
    text = (tmp_path / "jhub_spark_scaler_config.py").read_text()
    for setting in ("c.SparkScalerApp.max_workers", "c.SparkScalerApp.scale_down_delay",
                    "c.LocalBackend.worker_cores"):
        assert setting in text


@pytest.mark.parametrize("name, text, message", [
    ("jhub_spark_scaler_config.py", "from traitlets import TraitError\nraise TraitError('refused here')",
     "refused here"),
    ("jhub_spark_scaler_config.py",
     "from traitlets.config.loader import ArgumentError\nraise ArgumentError('x')",
     "config file jhub_spark_scaler_config.py: ArgumentError: x"),
    ("settings.json", '{"SparkScalerApp": ', "config file settings.json: JSONDecodeError: "),
    ("settings.json", '{"SparkScalerApp": {"idle_workers": -1}}', "idle_workers must be >= 0, got -1"),
])
def test_a_config_file_that_raises_is_one_line_too(name, text, message, tmp_path, monkeypatch, capsys):
    """Errors traitlets itself would log under a banner with exit status 1: one line, 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text + "\n")
    with pytest.raises(SystemExit) as exited:
        main(["--max-workers=3", f"--state-dir={tmp_path / 'state'}", f"--config={name}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("jhub-spark-scaler: error: ") and message in lines[0]


class Scaler(ScalerProcess):
    """The scaler as a child process, attached to the session's master."""

    def __init__(self, master, state_dir: Path, log: Path, *args: str):
        super().__init__(
            [*SCALER, "--max-workers=3", "--LocalBackend.start_master=False",
             f"--LocalBackend.master_url={master.master_url}",
             f"--LocalBackend.master_ui_url={master.master_ui_url}",
             f"--state-dir={state_dir}", *args],
            log,
        )


def worker_pids(state_dir: Path) -> dict[str, int]:
    pids = {}
    for path in state_dir.glob("workers/*.json"):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        pids[record["host"]] = record["pid"]
    return pids


def _master_pid(state_dir: Path) -> int | None:
    try:
        return json.loads((state_dir / "master.json").read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def alive(pid: int) -> bool:
    """The process runs (a zombie, exited but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


async def test_sigkill_mid_drain_new_scaler_finishes_it(spark_master, tmp_path):
    state = tmp_path / "state"
    master = SparkClient(spark_master.master_ui_url, timeout=HTTP_TIMEOUT)
    scalers = []

    async def our_workers():
        hosts = set(worker_pids(state))
        return {m.host: m.state for m in (await master.master()).workers
                if m.host in hosts and m.state != "DEAD"}

    try:
        first = Scaler(spark_master, state, tmp_path / "first.log", "--idle-workers=2", "--poll-interval=0.5")
        scalers.append(first)
        await until(lambda: _states(our_workers, ["ALIVE", "ALIVE"]), timeout=90, what="2 ALIVE workers")
        pids = worker_pids(state)
        first.stop()
        assert all(alive(p) for p in pids.values()), "workers outlive a SIGKILLed scaler"

        # Retire both at its first cycle, then sleep a minute: killed mid-drain.
        second = Scaler(spark_master, state, tmp_path / "second.log", "--idle-workers=0",
                        "--scale-down-delay=0", "--poll-interval=60")
        scalers.append(second)
        await until(lambda: _states(our_workers, ["DECOMMISSIONED", "DECOMMISSIONED"]),
                    timeout=60, what="both workers decommissioned")
        second.stop()
        assert worker_pids(state) == pids, "adopted, not replaced: no duplicates"
        assert all(alive(p) for p in pids.values())

        third = Scaler(spark_master, state, tmp_path / "third.log", "--idle-workers=0",
                       "--poll-interval=0.5")
        scalers.append(third)
        await until(lambda: not worker_pids(state) and not any(alive(p) for p in pids.values()),
                    timeout=60, what="the new scaler to stop the drained workers")
        assert third.stop(signal.SIGTERM) == 0
        log = (tmp_path / "third.log").read_text()
        assert log.count("stop: ") == 2 and "start: " not in log
    finally:
        for scaler in scalers:
            scaler.stop()
        for pid in worker_pids(state).values():
            os.kill(pid, signal.SIGKILL)


async def _states(our_workers, expected):
    return sorted((await our_workers()).values()) == expected


async def test_embedded_with_stop_on_exit_cleans_up_on_sigterm(tmp_path):
    """The demo's shape: the scaler starts its own master and workers, with stop_on_exit;
    SIGTERM (or Ctrl-C) ends every process it started."""
    state = tmp_path / "state"
    log = open(tmp_path / "scaler.log", "w")
    scaler = subprocess.Popen(
        [*SCALER, "--max-workers=2", "--idle-workers=1", "--poll-interval=0.5", f"--state-dir={state}",
         "--LocalBackend.master_port=0", "--LocalBackend.master_webui_port=0",
         "--LocalBackend.stop_on_exit=True",
         "--LocalBackend.stop_timeout=30"],  # the first worker writes the class archive as it exits
        stdout=log, stderr=subprocess.STDOUT,
    )
    pids = []
    try:
        def master_record():
            try:
                return json.loads((state / "master.json").read_text())
            except (FileNotFoundError, ValueError):
                return None

        master = await until(master_record, timeout=60, what="the master to be started")
        client = SparkClient(f"http://127.0.0.1:{master['webui_port']}", timeout=HTTP_TIMEOUT)

        async def one_alive_worker():
            try:
                return [w for w in (await client.master()).workers if w.state == "ALIVE"]
            except Exception:
                return None

        await until(one_alive_worker, timeout=90, what="a worker ALIVE at the scaler's own master")
        pids = [master["pid"], *worker_pids(state).values()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        scaler.send_signal(signal.SIGTERM)
        assert scaler.wait(timeout=90) == 0
        await until(lambda: not any(alive(p) for p in pids), timeout=30,
                    what="no Spark process left behind after SIGTERM")
    finally:
        if scaler.poll() is None:
            scaler.kill()
            scaler.wait()
        # pids the test saw, and any the state dir names (a wait that timed out saw none)
        for pid in {*pids, *worker_pids(state).values(), _master_pid(state)}:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
