"""The production image (helm-values/spark-image/Dockerfile) built with buildah
(scripts/build_notebook_image.py, tests/notebook_image.py) is what the Dockerfile's comment
says: jovyan 1000:100 and spark 185:185, Spark at /opt/spark, java 17, Debian's Python with
pyspark, JupyterHub and JupyterLab at the pinned versions, the JVM archives, all root's and
read-only for both users; and nothing of the building machine is left in it (its CA, pip
settings, apt sources and lists). Its archive is named by the files the Dockerfile takes.

On the real node (tests/kube_node.py), the image is all three parts of a deployment: the
master (helm-values/spark-master.yaml's Deployment) and a worker of the scaler run from it as
uid 185, and a notebook pod set up as z2jh sets up a singleuser pod from values.yaml
(tests/node_notebook.py: uid 1000, fsGroup 100, the values' spark-defaults.conf) runs a
Python UDF and an RDD lambda on that worker, both JVMs started from the image's class data
archives.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from jhub_spark_scaler.backends.kubernetes import KubernetesBackend

from .node_dns import cluster_dns  # noqa: F401  (a fixture)
from .node_notebook import run_cell
from .notebook_image import (
    CHOSEN_VERSIONS, LOCKED_VERSIONS, as_user, build, build_notebook_image, image_env, image_manifest,
    notebook_image, pinned_versions, unpack,
)
from .test_real_node_spark import node_master, node_scaler  # noqa: F401  (on this module's node_image)
from .test_scaling import cycles_until, idle_and_busy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building, unpacking and chroot need root")

CHOSEN, LOCKED = pinned_versions(CHOSEN_VERSIONS), pinned_versions(LOCKED_VERSIONS)
JOVYAN, USERS_GID, SPARK = 1000, 100, 185
PACKAGE = Path(build_notebook_image.ROOT) / "jhub_spark_scaler"


@pytest.fixture(scope="module")
def image():
    try:
        return notebook_image()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory):
    return unpack(image, tmp_path_factory.mktemp("notebook-image"))


def run_as(image, rootfs: Path, *argv: str, uid: int = JOVYAN, gid: int = USERS_GID) -> str:
    """`argv` in the image with its environment, as uid:gid; stdout and stderr together."""
    done = subprocess.run(as_user(rootfs, list(argv), env=image_env(image), uid=uid, gid=gid),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


# ---- what the build takes ------------------------------------------------------------------


def test_copy_takes_the_lock_and_the_jvm_archive_modules_and_the_name_digests_only_those():
    dockerfile = build_notebook_image.DOCKERFILE.read_text()
    copies = re.findall(r"^COPY ((?:[^\n]*\\\n)*[^\n]*)$", dockerfile, re.M)
    sources = [word for copy in copies for word in copy.replace("\\\n", " ").split()[:-1]]
    assert sources == list(build_notebook_image.CONTEXT_FILES)
    ignored = Path(f"{build_notebook_image.DOCKERFILE}.dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:] == [f"!{name}" for name in build_notebook_image.CONTEXT_FILES], \
        "docker's build context is what COPY takes"
    imported = subprocess.run(
        [build_notebook_image.sys.executable, "-c",
         "import sys, jhub_spark_scaler.jvm_archives; "
         "print(' '.join(sorted(m for m in sys.modules if m.startswith('jhub_spark_scaler'))))"],
        cwd=PACKAGE.parent, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
        capture_output=True, text=True, check=True, timeout=60).stdout.split()
    as_files = sorted(f"{m.replace('.', '/')}{'/__init__' if m == 'jhub_spark_scaler' else ''}.py"
                      for m in imported)
    assert as_files == sorted(build_notebook_image.ARCHIVE_MODULES), "the Dockerfile's COPY misses a module"
    inputs = build_notebook_image.inputs()
    assert sorted(inputs["context"]) == sorted(build_notebook_image.CONTEXT_FILES)
    assert set(inputs) == {"script", "dockerfile", "context", "suite", "debian_sources", "pip_conf"}, \
        "no commit, date or other file of the repository"


def test_the_machines_debian_sources_and_pip_settings_for_the_build_name_no_local_path():
    sources = build_notebook_image.debian_sources()
    suites = re.findall(r"^Suites: (.*)$", sources, re.M)
    named = [suite for line in suites for suite in line.split()]
    assert named and all(s == "bookworm" or s.startswith("bookworm-") for s in named), sources
    settings, cert = build_notebook_image.pip_settings()
    conf = build_notebook_image.pip_conf(settings, cert=cert)
    assert "file:" not in conf and "find-links" not in conf and "constraint" not in conf, conf
    if cert is not None:
        assert f"cert = /root/{build_notebook_image.PIP_CA}" in conf.splitlines()


def test_buildah_from_debian_uses_its_own_storage_and_configuration(image, tmp_path):
    """buildah as the build ran it: vfs storage under the cache, no OCI runtime, and nothing
    under /etc/containers (the machine has none, and the build made none)."""
    b = build_notebook_image.Buildah(tmp_path)
    info = json.loads(b("info"))
    cache = build_notebook_image.buildah_dir()
    assert info["store"]["GraphDriverName"] == "vfs"
    assert info["store"]["GraphRoot"] == str(cache / "storage")
    assert info["store"]["ImageStore"]["number"] == 0, "the build leaves no image in its storage"
    assert not Path("/etc/containers").exists()
    assert b.version() == image.manifest["buildah"] == "1.28.2"
    assert build_notebook_image.missing_libraries() == []


# ---- the image -------------------------------------------------------------------------------


def test_the_archive_is_an_oci_image_of_the_dockerfiles_config(image):
    assert image.archive.name == f"notebook-{build_notebook_image.key()}.tar"
    assert image.manifest["inputs"] == build_notebook_image.inputs()
    index, manifest, config = image_manifest(image)
    (descriptor,) = index["manifests"]
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == image.tag
    settings = config["config"]
    assert settings["User"] == "1000" and settings["WorkingDir"] == "/home/jovyan"
    assert settings["Entrypoint"] == ["tini", "--"] and settings["Cmd"] == ["jupyterhub-singleuser"]
    env = image_env(image)
    assert env["SPARK_HOME"] == "/opt/spark" and env["PYSPARK_PYTHON"] == "python3"
    assert env["PATH"].split(":")[:2] == ["/opt/notebook/bin", "/opt/spark/bin"]
    built = image.manifest
    print(f"image: {built['size'] / 2**20:.0f} MB archive, built in {built['build_seconds']} s")


def test_its_users_are_jovyan_1000_100_and_spark_185_with_their_homes(image, rootfs):
    passwd = (rootfs / "etc" / "passwd").read_text().splitlines()
    assert "jovyan:x:1000:100::/home/jovyan:/bin/bash" in passwd
    assert "spark:x:185:185::/home/spark:/bin/bash" in passwd
    assert re.search(r"^users:x:100:", (rootfs / "etc" / "group").read_text(), re.M)
    for home, owner in (("home/jovyan", (JOVYAN, USERS_GID)), ("home/spark", (SPARK, SPARK))):
        info = (rootfs / home).stat()
        assert (info.st_uid, info.st_gid) == owner, home
    assert run_as(image, rootfs, "id").split()[:2] == ["uid=1000(jovyan)", "gid=100(users)"]
    spark = run_as(image, rootfs, "id", uid=SPARK, gid=SPARK)
    assert spark.split()[:2] == ["uid=185(spark)", "gid=185(spark)"]


def test_spark_java_python_pyspark_and_jupyterhub_are_at_the_pinned_versions(image, rootfs):
    spark_home = os.readlink(rootfs / "opt" / "spark")  # pyspark's directory, an absolute link
    assert spark_home == "/opt/notebook/lib/python3.11/site-packages/pyspark"
    assert os.access(rootfs / spark_home.lstrip("/") / "bin" / "spark-class", os.X_OK)
    assert re.search(r'version "17\.', run_as(image, rootfs, "java", "-version"))
    versions = run_as(image, rootfs, "python3", "-c", "import sys, pyspark; "
                      "print(sys.executable, '%d.%d' % sys.version_info[:2], pyspark.__version__)")
    assert versions.split() == ["/opt/notebook/bin/python3", "3.11", CHOSEN["pyspark"]]
    singleuser = run_as(image, rootfs, "jupyterhub-singleuser", "--version")
    assert singleuser.split()[-1] == CHOSEN["jupyterhub"]
    assert run_as(image, rootfs, "jupyter-lab", "--version").split()[-1] == CHOSEN["jupyterlab"]
    assert "tini version" in run_as(image, rootfs, "tini", "--version")
    assert "procps" in run_as(image, rootfs, "ps", "--version", uid=SPARK, gid=SPARK)


def test_the_python_packages_are_the_locked_ones_and_no_others(image, rootfs):
    """requirements.txt is the whole of the notebooks' Python: a package it does not pin, or at
    another version, would be one a rebuild can change."""
    listed = run_as(image, rootfs, "python3", "-c", "import importlib.metadata as m, json; print(json.dumps("
                    "[(d.metadata['Name'], d.version) for d in m.distributions()]))")
    installed = {canonicalize_name(name): version for name, version in json.loads(listed.splitlines()[-1])}
    venv_seeds = {"pip", "setuptools"} - set(LOCKED)  # what `python3 -m venv` puts in
    assert {name: v for name, v in installed.items() if name not in venv_seeds} == LOCKED
    assert len(LOCKED) > 50, "pyspark, JupyterHub and JupyterLab with their dependencies"


def test_the_jvm_archives_and_the_code_are_roots_and_read_only_for_both_users(image, rootfs):
    for name in ("driver.jsa", "executor.jsa"):
        archive = rootfs / "opt" / "jvm-archives" / name
        info = archive.stat()
        assert (info.st_uid, info.st_gid) == (0, 0) and info.st_size > 10 * 2**20, (name, info)
        assert stat.S_IMODE(info.st_mode) & 0o222 == 0 and info.st_mode & stat.S_IROTH, oct(info.st_mode)
    attempts = ("touch /opt/jvm-archives/x", "echo x >> /opt/jvm-archives/driver.jsa",
                "echo x >> /opt/jvm-archives/executor.jsa", "touch /opt/notebook/bin/x",
                "touch /opt/spark/jars/x", "echo x >> /opt/spark/bin/spark-class")
    script = "; ".join(f"{a} 2>&1 || true" for a in attempts)
    for uid, gid in ((JOVYAN, USERS_GID), (SPARK, SPARK)):
        out = run_as(image, rootfs, "sh", "-c", script, uid=uid, gid=gid)
        assert out.count("Permission denied") == len(attempts), (uid, out)
    # the JVM can start from them: the image's java with the archives' Spark class path
    check = run_as(image, rootfs, "java", "-XX:SharedArchiveFile=/opt/jvm-archives/driver.jsa", "-Xshare:on",
                   "-Xlog:cds=info", "-cp", "/opt/spark/jars/*", "-version")
    assert "Mapped dynamic region" in check, check[-2000:]  # driver.jsa, on the base archive


def pem_lines(text: str) -> set[str]:
    """The first base64 line of each certificate in a PEM bundle."""
    return set(re.findall(r"-----BEGIN CERTIFICATE-----\n(\S{64})\n", text))


def test_nothing_of_the_building_machine_is_left_in_it(image, rootfs):
    _, cert = build_notebook_image.pip_settings()
    debian = set()  # the public CAs Debian's ca-certificates holds on this machine
    for path in Path("/usr/share/ca-certificates").rglob("*.crt"):
        debian |= pem_lines(path.read_text())
    machines = pem_lines(cert.read_text()) - debian if cert else set()
    print(f"CAs of the machine's own: {len(machines)}")
    if machines:  # the machine trusts CAs of its own (a TLS-intercepting egress's): not in the image
        patterns = rootfs.parent / "patterns"
        patterns.write_text("\n".join(sorted(machines)) + "\n")
        grep = ["grep", "-rlF", "-f", str(patterns), *(f"--exclude-dir={d}" for d in ("proc", "sys", "dev"))]
        found = subprocess.run([*grep, str(rootfs)], capture_output=True, text=True, timeout=600)
        assert found.returncode == 1 and not found.stdout, found.stdout + found.stderr
    for path in ("etc/pip.conf", "etc/xdg/pip", "root/.config", "root/.cache", "opt/notebook/pip.conf"):
        assert not (rootfs / path).exists(), path
    found = subprocess.run(["find", str(rootfs), "-name", "pip.conf"], capture_output=True, text=True,
                           timeout=300)
    assert found.stdout == "", found.stdout
    assert not (rootfs / "etc" / "apt" / "sources.list").exists()
    assert list((rootfs / "etc" / "apt" / "sources.list.d").iterdir()) == []
    lists = rootfs / "var" / "lib" / "apt" / "lists"
    assert sorted(p.name for p in lists.iterdir() if p.is_file() and p.name != "lock") == [], "apt lists"
    for name in ("resolv.conf", "hostname", "hosts"):  # mount points: empty, as a runtime fills them
        path = rootfs / "etc" / name
        assert not path.exists() or path.stat().st_size == 0, name
    assert not (rootfs / "tmp" / "jhub-spark-scaler").exists()
    # nor in its config and history: the build's mounts and paths are not recorded
    _, _, config = image_manifest(image)
    recorded = json.dumps(config)
    assert str(build_notebook_image.spark.cache_dir()) not in recorded, recorded
    assert "/etc/apt/sources" not in recorded, recorded


def test_a_second_build_does_nothing(image):
    before = image.archive.stat().st_mtime_ns
    started = time.monotonic()
    built = build()
    took = time.monotonic() - started
    assert built.returncode == 0, built.stderr
    assert image.archive.stat().st_mtime_ns == before
    assert took < 10, f"a second build took {took:.1f} s"  # about 0.4 s on an idle machine
    print(f"second build: {took:.2f} s")


# ---- on the real node ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def node_image(real_node, image):
    """The production image imported into the node's containerd; its reference (the masters
    and workers of tests/test_real_node_spark.py's fixtures run it here)."""
    from .conftest import apply_rbac

    name = image.name.rpartition(":")[0]
    started = time.monotonic()
    ref = await real_node.import_image(image.archive, name, tag=image.tag)
    print(f"production image import: {time.monotonic() - started:.1f} s")
    async with await real_node.api_client("admin") as admin:
        await apply_rbac(admin, real_node.namespace)
    return ref


#: The notebook's cell: a Python UDF and an RDD lambda on the executors, and where each JVM's
#: classes come from (the archive a JVM maps is in its /proc/PID/maps).
NOTEBOOK_CELL = """
import json, os, socket, sys
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf

def maps_archive(pid, name):
    with open(f"/proc/{pid}/maps") as f:
        return f"/opt/jvm-archives/{name}" in f.read()

def executor(_rows):
    pid = os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                yield (os.getuid(), maps_archive(pid, "executor.jsa"))
                return
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rpartition(")")[2].split()[1])

spark = SparkSession.builder.getOrCreate()  # everything else from the image and spark-defaults.conf
sc = spark.sparkContext
python = udf(lambda i: f"{i}:{sys.version_info[0]}.{sys.version_info[1]}:{socket.gethostname()}")
rows = [r.v for r in spark.range(16).repartition(4).select(python("id").alias("v")).collect()]
squares = sc.parallelize(range(1000), 4).map(lambda x: x * x).sum()
executors = sorted(set(sc.parallelize(range(4), 4).mapPartitions(executor).collect()))
print("RESULT " + json.dumps({
    "udf": rows, "squares": squares, "uid": os.getuid(), "groups": os.getgroups(),
    "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "executors": executors,
    "driver_archive": maps_archive(sc._jvm.java.lang.ProcessHandle.current().pid(), "driver.jsa"),
    "conf": dict(sc.getConf().getAll())}), flush=True)
spark.stop()
"""


@pytest.mark.spark
@pytest.mark.timeout(900)
async def test_master_worker_and_a_notebook_pod_of_the_image_run_a_udf_and_an_rdd_lambda_on_the_node(
        real_node, cluster_dns, node_image, node_master, node_scaler):  # noqa: F811  (the imported fixtures)
    started = time.monotonic()
    r = await node_scaler(node_master, idle_workers=1, backend_settings={
        "memory_limit": KubernetesBackend.memory_limit.default_value})
    await cycles_until(r, idle_and_busy(1, 0), timeout=300, what="an idle worker of the image ALIVE")
    workers = {w.handle for w in r.last_snapshot.workers}
    result = await run_cell(real_node, image=node_image, name="notebook-prod", cell=NOTEBOOK_CELL,
                            hub_user="alice", timeout=420)
    assert result["squares"] == sum(x * x for x in range(1000))
    ids, pythons, hosts = zip(*(v.split(":") for v in result["udf"]))
    assert sorted(map(int, ids)) == list(range(16))
    assert set(pythons) == {result["python"]} == {"3.11"}, "the worker's Python is the notebook's"
    assert set(hosts) <= workers, hosts  # the worker pods' names
    assert result["uid"] == JOVYAN and USERS_GID in result["groups"], result
    assert result["conf"]["spark.cores.max"] == "4" and result["conf"]["spark.decommission.enabled"] == "true"
    assert result["driver_archive"], "the driver JVM maps /opt/jvm-archives/driver.jsa"
    assert result["executors"] == [[SPARK, True]], "executors run as spark and map executor.jsa"
    print(f"master, worker and notebook pod of the production image: {time.monotonic() - started:.1f} s")
