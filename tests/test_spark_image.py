"""The tests' Spark image (scripts/build_spark_image.py, found with tests/spark_image.py), with
no container runtime: its root filesystem unpacked and its programs run with chroot, as uid
185, in their own mount and PID namespaces, on loopback.

The archive is an OCI image named for the suite's pyspark and Python; its manifest lists every
Debian package in it; its python3, pyspark, java, tini and user are what the pods need; the
managed master's and a worker pod's containers, run as worker_pod() and master_deployment()
write them, register (the worker ALIVE in the master's /json/), and a driver on the suite's
own Python runs an RDD lambda and a Python UDF on that worker's image Python. A second build
from a warm cache does nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyterhub.utils import random_port

from jhub_spark_scaler.backends.master_manifests import master_deployment
from jhub_spark_scaler.backends.worker_pod import WORK_DIR, WorkerPodTemplate, worker_pod, worker_resources
from jhub_spark_scaler.spark import SparkClient, SparkError

from .settings import HTTP_TIMEOUT
from .spark_image import (
    build, build_spark_image, image_env, image_manifest, in_image, spark_image, unpack,
)
from .waiting import until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking and chroot need root")

SUITE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
PYSPARK = build_spark_image.importlib.metadata.version("pyspark")
SPARK_UID = 185


@pytest.fixture(scope="module")
def image():
    try:
        return spark_image()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory):
    return unpack(image, tmp_path_factory.mktemp("spark-image"))


def run_in(image, rootfs: Path, *argv: str, user: int = SPARK_UID) -> str:
    """`argv` in the image with its environment; stdout and stderr together."""
    done = subprocess.run(in_image(rootfs, list(argv), env=image_env(image), user=user),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_archive_is_an_oci_image_named_for_the_suites_pyspark_and_python(image):
    assert image.name == f"jhub-spark-scaler/spark:{PYSPARK}-py{SUITE_PYTHON}"
    key = build_spark_image.key()
    assert image.archive.name == f"spark-{key}.tar" and image.manifest["key"] == key
    index, manifest, config = image_manifest(image)
    (descriptor,) = index["manifests"]
    assert descriptor["annotations"] == {
        "io.containerd.image.name": image.containerd_name,  # what `ctr images import` names it
        "org.opencontainers.image.ref.name": f"{PYSPARK}-py{SUITE_PYTHON}",
    }
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"]
    settings = config["config"]
    assert settings["User"] == str(SPARK_UID)
    assert settings["Entrypoint"] == ["/usr/bin/tini", "--"], "tini reaps Python workers as PID 1"
    env = image_env(image)
    assert env["SPARK_HOME"] == "/opt/spark" and env["PYSPARK_PYTHON"] == "python3"
    assert env["PATH"].split(":")[0] == "/opt/spark/bin"
    # reproducible times: the image's and its history's are the build's SOURCE_DATE_EPOCH
    epoch = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(image.manifest["source_date_epoch"]))
    assert config["created"] == epoch and [h["created"] for h in config["history"]] == [epoch]


def dpkg_versions(rootfs: Path) -> dict[str, str]:
    query = ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\n"]
    listed = subprocess.run(query, capture_output=True, text=True, check=True, timeout=60).stdout
    return dict(line.split("\t") for line in listed.splitlines())


def test_the_manifest_lists_every_debian_package_and_the_wheels(image, rootfs):
    in_the_image = json.loads((rootfs / build_spark_image.MANIFEST_IN_IMAGE).read_text())
    assert in_the_image == image.manifest, "the manifest beside the archive is the image's"
    debian = image.manifest["debian_packages"]
    assert debian == dpkg_versions(rootfs), "every Debian package of the image, at its version"
    assert set(build_spark_image.PACKAGES) <= set(debian)
    assert debian["openjdk-17-jre-headless"].startswith("17.")
    py4j = build_spark_image.importlib.metadata.version("py4j")
    wheels = image.manifest["wheels_sha256"]
    assert sorted(wheels) == [f"py4j-{py4j}-py2.py3-none-any.whl",
                              f"pyspark-{PYSPARK}-py2.py3-none-any.whl"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in wheels.values())
    assert image.manifest["inputs"] == build_spark_image.inputs()
    # nothing of the building machine: no apt mirror, resolver or host name; nor of the time
    # of the build: Java's trust store, which carries it, is left out (and said so)
    assert list((rootfs / "etc" / "apt" / "sources.list.d").iterdir()) == []
    assert not (rootfs / "etc" / "resolv.conf").exists() and not (rootfs / "etc" / "hostname").exists()
    assert image.manifest["left_out"] == ["/etc/ssl/certs/java/cacerts"]
    assert not (rootfs / "etc" / "ssl" / "certs" / "java" / "cacerts").exists()


def test_its_python_pyspark_java_tini_and_user_are_what_the_pods_need(image, rootfs):
    versions = run_in(image, rootfs, "python3", "-c",
                      "import sys, pyspark; print('%d.%d' % sys.version_info[:2], pyspark.__version__)")
    assert versions.split() == [SUITE_PYTHON, PYSPARK], "the notebooks' Python and pyspark"
    assert re.search(r'version "17\.', run_in(image, rootfs, "java", "-version"))
    assert "tini version" in run_in(image, rootfs, "tini", "--version")
    assert "procps" in run_in(image, rootfs, "ps", "--version")  # Spark's scripts use ps
    assert run_in(image, rootfs, "id").split()[:2] == ["uid=185(spark)", "gid=185(spark)"]
    home = rootfs / "home" / "spark"
    assert (home.stat().st_uid, home.stat().st_gid) == (SPARK_UID, SPARK_UID)
    passwd = (rootfs / "etc" / "passwd").read_text().splitlines()
    assert "spark:x:185:185::/home/spark:/bin/bash" in passwd
    # the notebook's user, as z2jh runs singleuser pods (uid 1000, group users)
    assert "jovyan:x:1000:100::/home/jovyan:/bin/bash" in passwd
    assert run_in(image, rootfs, "id", user=1000).split()[0] == "uid=1000(jovyan)"
    home = rootfs / "home" / "jovyan"
    assert (home.stat().st_uid, home.stat().st_gid) == (1000, 100)
    pyspark_dir = f"/usr/local/lib/python{SUITE_PYTHON}/dist-packages/pyspark"
    assert os.readlink(rootfs / "opt" / "spark") == pyspark_dir
    assert os.access(rootfs / pyspark_dir.lstrip("/") / "bin" / "spark-class", os.X_OK)
    # root owns the code: the Spark user cannot change Spark, Python or java
    out = run_in(image, rootfs, "sh", "-c", "touch /opt/spark/jars/x /usr/bin/x 2>&1; true")
    assert out.count("Permission denied") == 2, out


# ---- Spark from the image -----------------------------------------------------------------


def container_argv(container: dict, *, pod_ip: str,
                   ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    """A container's command and environment as the kubelet makes them: the pod IP for
    status.podIP, $(NAME) expanded from the variables before it; then each `--flag N` of
    `ports` given another port (loopback is shared with the machine)."""
    env: dict[str, str] = {}

    def expand(text: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)

    for variable in container["env"]:
        if variable.get("valueFrom"):
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, variable
            env[variable["name"]] = pod_ip
        else:
            env[variable["name"]] = expand(variable["value"])
    command = [expand(word) for word in container["command"]]
    for flag, port in ports.items():
        command[command.index(flag) + 1] = str(port)
    return command, env


DRIVER = """
import json, os, sys
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf

spark = (SparkSession.builder.master(sys.argv[1]).appName("image-check")
         .config("spark.driver.host", "127.0.0.1").config("spark.cores.max", "1")
         .config("spark.executor.memory", "512m").getOrCreate())
sc = spark.sparkContext
squares = sc.parallelize(range(100), 2).map(lambda x: x * x).sum()
plus_one = udf(lambda x: x + 1, "long")
udf_sum = spark.range(10).select(plus_one("id").alias("y")).groupBy().sum("y").first()[0]
where = (sc.parallelize([0], 1)
         .map(lambda _: ("%d.%d" % sys.version_info[:2], sys.executable, os.getuid())).first())
print("RESULT " + json.dumps({"squares": squares, "udf_sum": udf_sum, "worker_python": where}))
spark.stop()
"""


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """unshare and its namespace's first process: the kernel kills the rest of the namespace."""
    if process.poll() is None:
        os.killpg(process.pid, 9)
    process.wait(timeout=30)


def worker_container(image_name: str, master: str) -> dict:
    resources = worker_resources(cpu_limit="1", cpu_request="", memory_limit="1280Mi", memory_request="",
                                 cores=0, memory="", daemon_memory="256m", jvm_overhead=0.25)
    pod = worker_pod(WorkerPodTemplate(namespace="spark", pool="image", image=image_name,
                                       master_url=master, resources=resources, run_as_user=SPARK_UID))
    assert pod["spec"]["securityContext"]["runAsUser"] == SPARK_UID
    return pod["spec"]["containers"][0]


@pytest.mark.spark
async def test_the_master_and_a_worker_pods_commands_run_a_python_job_in_the_image(image, rootfs, tmp_path):
    master_port, master_ui, worker_port, worker_ui = (random_port() for _ in range(4))
    deployment = master_deployment(name="spark-master", namespace="spark", image=image.name,
                                   run_as_user=SPARK_UID, default_cores=2)
    (master,) = deployment["spec"]["template"]["spec"]["containers"]
    command, env = container_argv(master, pod_ip="127.0.0.1",
                                  ports={"--port": master_port, "--webui-port": master_ui})
    url = f"spark://127.0.0.1:{master_port}"
    processes = [start(in_image(rootfs, command, env={**image_env(image), **env}), tmp_path / "master.log")]
    work = rootfs / WORK_DIR.lstrip("/")  # the pod's emptyDir
    work.mkdir(exist_ok=True)
    os.chown(work, SPARK_UID, SPARK_UID)
    try:
        command, env = container_argv(worker_container(image.name, url), pod_ip="127.0.0.1",
                                      ports={"--port": worker_port, "--webui-port": worker_ui})
        argv = in_image(rootfs, command, env={**image_env(image), **env})
        processes.append(start(argv, tmp_path / "worker.log"))
        spark = SparkClient(f"http://127.0.0.1:{master_ui}", timeout=HTTP_TIMEOUT)

        async def worker_alive():
            workers = (await spark.master()).workers
            return [w for w in workers if w.state == "ALIVE" and w.port == worker_port]

        await until(worker_alive, timeout=180, ignore=(SparkError,), process=processes[-1],
                    log=tmp_path / "worker.log", what="the image's worker ALIVE at the image's master")
        # a driver on the suite's Python; its executor's Python workers run the image's python3
        driver = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", DRIVER, url], capture_output=True, text=True,
            timeout=300, start_new_session=True, cwd=tmp_path)
        assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-4000:]
        (line,) = [line for line in driver.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(line.removeprefix("RESULT "))
        assert result["squares"] == sum(x * x for x in range(100))
        assert result["udf_sum"] == sum(range(1, 11))
        assert result["worker_python"] == [SUITE_PYTHON, "/usr/bin/python3", SPARK_UID]
    finally:
        for process in reversed(processes):
            stop(process)


def test_a_second_build_from_a_warm_cache_does_nothing(image):
    before = {p: p.stat().st_mtime_ns for p in image.archive.parent.iterdir()}
    started = time.monotonic()
    again = build()
    seconds = time.monotonic() - started
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert seconds < 1, f"{seconds:.2f} s"
    assert {p: p.stat().st_mtime_ns for p in image.archive.parent.iterdir()} == before


def test_a_debian_python_other_than_the_suites_stops_the_build_with_one_line():
    class Apt:
        def candidate(self, package):
            return {"python3": "3.12.6-1"}[package]

    with pytest.raises(build_spark_image.BuildError) as caught:
        build_spark_image.check_python(Apt())
    message = str(caught.value)
    assert "\n" not in message
    assert f"python3 is 3.12 (3.12.6-1), the suite's interpreter {sys.executable} is {SUITE_PYTHON}" \
        in message
    assert message.endswith("run the suite on Python 3.12")
