"""The local backend as root: Spark runs as `run_as`, never as root unasked, with none of
the scaler's secrets, and its executors cannot touch the scaler's records.

Real processes throughout: a master and a worker started as `nobody` (one pair for the
module), and a real pyspark driver whose task attacks the state dir from inside an
executor. The suite runs as root; these tests need it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from traitlets.config import Config

from jhub_spark_scaler.backends import daemon_env
from jhub_spark_scaler.backends.local import LocalBackend
from jhub_spark_scaler.backends.processes import alive
from jhub_spark_scaler.errors import ConfigError
from jhub_spark_scaler.hub import configure

from .test_local_backend import get_json, records
from .waiting import until

pytestmark = [pytest.mark.spark,
              pytest.mark.skipif(os.geteuid() != 0, reason="starts Spark as another user: needs root")]
ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "drivers" / "privilege_probe.py"
NOBODY = pwd.getpwnam("nobody").pw_uid
SECRET = "secret-hub-token-0123456789abcdef"
HUB_ENV = {"JUPYTERHUB_API_TOKEN": SECRET, "JPY_API_TOKEN": SECRET, "JUPYTERHUB_SERVICE_NAME": "spark-scaler"}
SETTINGS = dict(master_port=0, master_webui_port=0, worker_memory="512m", stop_timeout=5)


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of `pid`."""
    with open(f"/proc/{pid}/status") as f:
        return [int(u) for line in f if line.startswith("Uid:") for u in line.split()[1:]]


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(v.decode().partition("=")[::2] for v in f.read().split(b"\0") if v)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def traversable_dir():
    """A directory under /tmp that `nobody` can pass through (pytest's tmp_path is 0700 root's)."""
    path = tempfile.mkdtemp(prefix="jhub-spark-scaler-privilege-")
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def pool(traversable_dir):
    """A master and a worker started as `nobody` by a scaler whose environment holds the hub's
    token; the scaler's environment is restored once they run."""
    state_dir = os.path.join(traversable_dir, "state")
    backend = LocalBackend(state_dir=state_dir, run_as="nobody", stop_on_exit=True, **SETTINGS)
    saved = {name: os.environ.get(name) for name in HUB_ENV}
    os.environ.update(HUB_ENV)
    try:
        await backend.setup()
        [worker] = await backend.start(1)
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    try:
        async def registered():
            workers = (await get_json(f"{backend.master_ui_url}/json/"))["workers"]
            return any(w["host"] == worker.host and w["state"] == "ALIVE" for w in workers)

        await until(registered, timeout=120, what="the worker ALIVE at the master")
        yield backend
    finally:
        try:
            await backend.shutdown()
        finally:  # whatever a state file still names, by pid and start time
            for rec in records(state_dir):
                if alive(rec):
                    os.killpg(rec["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def probe(pool, traversable_dir):
    """What a real driver's task saw and did inside an executor of the pool (privilege_probe.py)."""
    out = Path(traversable_dir) / "probe.json"
    python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin:/bin")
    if not python:  # executors need a Python of the driver's version that `nobody` can run
        pytest.skip(f"no /usr/bin/python{sys.version_info[0]}.{sys.version_info[1]} for `nobody`")
    # not the hub's variables: the only way for them into the executor would be the daemons
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JPY_"))}
    env.update(PYSPARK_PYTHON=python, PYTHONPATH=str(ROOT))
    driver = subprocess.Popen(
        [sys.executable, str(PROBE), "--master", pool.master_url, "--state-dir", pool.state_dir,
         "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, output.decode(errors="replace")[-3000:]
    return json.loads(out.read_text())


# -- refusals: one line, nothing started ---------------------------------------------------


async def test_as_root_without_run_as_the_backend_refuses_naming_both_settings(tmp_path):
    state_dir = tmp_path / "state"
    backend = LocalBackend(state_dir=str(state_dir), **SETTINGS)
    with pytest.raises(ConfigError) as refused:
        await backend.setup()
    line = one_line(refused.value)
    assert "root" in line and "LocalBackend.run_as" in line and "LocalBackend.allow_root" in line, line
    assert not state_dir.exists() and not backend._children.pids  # nothing made, nothing started


def test_the_command_prints_that_refusal_as_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jhub_spark_scaler", "--max-workers=1",
                           f"--state-dir={tmp_path / 'state'}"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "LocalBackend.run_as" in lines[0] and "LocalBackend.allow_root" in lines[0]
    assert not (tmp_path / "state").exists()


async def test_an_unknown_run_as_user_is_one_line(tmp_path):
    backend = LocalBackend(state_dir=str(tmp_path / "state"), run_as="no-such-user-here", **SETTINGS)
    with pytest.raises(ConfigError, match=r"^LocalBackend\.run_as: no Unix user 'no-such-user-here'"):
        await backend.setup()


async def test_a_spark_home_run_as_cannot_read_is_one_line(tmp_path):
    # tmp_path is under /tmp/pytest-of-root, 0700: nobody cannot reach it
    jars = tmp_path / "spark" / "jars"
    jars.mkdir(parents=True)
    (jars / "spark-core_2.13-4.0.0.jar").write_bytes(b"")
    backend = LocalBackend(state_dir=str(tmp_path / "state"), run_as="nobody", spark_home=str(jars.parent),
                           **SETTINGS)
    with pytest.raises(ConfigError) as refused:
        await backend.setup()
    line = one_line(refused.value)
    assert line.startswith("LocalBackend.spark_home: LocalBackend.run_as user 'nobody' cannot reach "), line


def test_not_as_root_run_as_may_only_name_the_scalers_own_user():
    """Run as `nobody`, by the system's Python (the venv's is under root's 0700 home)."""
    python = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python} for `nobody`")
    site = os.path.dirname(os.path.dirname(__import__("traitlets").__file__))
    code = ("from jhub_spark_scaler.backends.daemon_user import daemon_user\n"
            "print(daemon_user('', allow_root=False), daemon_user('nobody', allow_root=False))\n"
            "daemon_user('root', allow_root=True)\n")
    done = subprocess.run([python, "-c", code], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                          env={"PYTHONPATH": f"{ROOT}:{site}"}, capture_output=True, text=True, timeout=60)
    assert done.stdout == "None None\n", done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "jhub_spark_scaler.errors.ConfigError: LocalBackend.run_as: 'root' needs the scaler to run as "
        "root (it runs as 'nobody'); leave run_as empty to run Spark as 'nobody'"
    ), done.stderr


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
async def test_a_state_dir_others_may_write_to_is_refused(tmp_path, mode):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(mode)
    backend = LocalBackend(state_dir=str(state_dir), allow_root=True, **SETTINGS)
    with pytest.raises(ConfigError) as refused:
        await backend.setup()
    line = one_line(refused.value)
    assert line.startswith(f"LocalBackend.state_dir: {state_dir} is ") and "chmod go-w" in line, line
    assert os.listdir(state_dir) == [] and not backend._children.pids


async def test_a_state_dir_of_another_user_is_refused(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, NOBODY, -1)
    backend = LocalBackend(state_dir=str(state_dir), allow_root=True, **SETTINGS)
    with pytest.raises(ConfigError) as refused:
        await backend.setup()
    line = one_line(refused.value)
    assert line.startswith(f"LocalBackend.state_dir: {state_dir} belongs to uid {NOBODY}, not "), line
    assert os.listdir(state_dir) == []


def test_configure_runs_the_service_as_the_user_given():
    c = Config()
    service = configure(c, max_workers=2, user="spark", LocalBackend__run_as="spark-executors")
    assert service["user"] == "spark" and "--LocalBackend.run_as=spark-executors" in service["command"]
    assert "user" not in configure(Config(), max_workers=2)


def test_the_daemons_environment_is_an_allowlist():
    env = daemon_env.daemon_env(
        {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "SPARK_LOCAL_DIRS": "/scratch",
         "JUPYTERHUB_API_TOKEN": SECRET, "JPY_API_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": "x",
         "PYTHONPATH": "/srv", "HOME": "/root", "SPARK_HOME": "/elsewhere"},
        home="/nonexistent", spark_home="/spark", scala="2.13", local_ip="127.0.0.2", java_home="/jdk",
    )
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "SPARK_LOCAL_DIRS": "/scratch",
                   "HOME": "/nonexistent", "SPARK_HOME": "/spark", "SPARK_SCALA_VERSION": "2.13",
                   "SPARK_LOCAL_IP": "127.0.0.2", "JAVA_HOME": "/jdk"}


# -- a pool run as nobody -------------------------------------------------------------------


async def test_the_master_and_workers_run_as_run_as(pool):
    daemons = records(pool.state_dir)
    assert len(daemons) == 2  # master.json and one worker
    for rec in daemons:
        assert uids(rec["pid"]) == [NOBODY] * 4, rec
        env = environ(rec["pid"])
        assert not [k for k in env if k.startswith(("JUPYTERHUB_", "JPY_"))], sorted(env)
        assert SECRET not in "".join(env.values())
        assert env["HOME"] in ("/nonexistent", os.path.join(pool.state_dir, "home"))


async def test_an_executor_runs_as_run_as_without_the_hubs_token(probe):
    assert probe["uid"] == NOBODY
    environ = probe["environ"]
    assert not [k for k in environ if k.startswith(("JUPYTERHUB_", "JPY_"))], sorted(environ)
    assert not [k for k, v in environ.items() if SECRET in v], sorted(environ)


async def test_an_executor_cannot_plant_or_replace_the_scalers_records(probe, pool):
    attacks = {k: v for k, v in probe.items() if k not in ("uid", "environ")}
    assert attacks == dict.fromkeys(attacks, "PermissionError"), attacks
    state = Path(pool.state_dir)
    assert not (state / "workers" / "local-999.json").exists()
    assert not (state / "work" / "local-998").is_symlink()
    assert json.loads((state / "master.json").read_text())["pid"] == pool._master["pid"]


async def test_daemons_of_another_user_are_not_adopted(pool, tmp_path):
    """A pool started before run_as was set (or with another one) would go on running executors
    as that user: the scaler refuses it rather than adopt it. The records are copied: the pool's
    own state dir is left to its scaler."""
    state_dir = tmp_path / "state"
    shutil.copytree(pool.state_dir, state_dir, ignore=shutil.ignore_patterns("work", "cds", "home", "logs"))
    backend = LocalBackend(state_dir=str(state_dir), allow_root=True, **SETTINGS)
    with pytest.raises(ConfigError) as refused:
        await backend.setup()
    line = one_line(refused.value)
    assert line.startswith("LocalBackend.run_as: the Spark processes ") and "stop them" in line, line
    assert str(pool._master["pid"]) in line and not backend._children.pids


async def test_a_state_dir_symlink_planted_by_another_user_is_refused(tmp_path):
    """In a directory others may write to (/tmp), another user can put a symlink where the
    state dir is to be made, pointing at a directory of the scaler's user (/etc for root)."""
    target = tmp_path / "not-the-state-dir"
    target.mkdir(mode=0o755)
    state_dir = tmp_path / "state"
    state_dir.symlink_to(target)
    os.lchown(state_dir, NOBODY, -1)
    backend = LocalBackend(state_dir=str(state_dir), allow_root=True, **SETTINGS)
    with pytest.raises(ConfigError) as refused:
        await backend.setup()
    line = one_line(refused.value)
    assert line.startswith(f"LocalBackend.state_dir: {state_dir} is a symlink of uid {NOBODY}"), line
    assert os.listdir(target) == [] and stat.S_IMODE(target.stat().st_mode) == 0o755
