"""The tuned notebook Spark JVMs' settings, fast: what configure() hands local notebook
servers, what the demo and the Helm values carry, the archives' key. (Real drivers and
executors with and without the archives: tests/test_jvm_archives_fallback.py.)"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from jhub_spark_scaler import jvm_archives
from jhub_spark_scaler.hub import configure

from .test_demo import notebook_environment
from .test_z2jh import SCALER, spark_defaults

ROOT = Path(__file__).resolve().parent.parent
JAVA, SPARK_HOME = jvm_archives.default_java(), jvm_archives.default_spark_home()


class KubeSpawner:
    """Stands for kubespawner's class: what SubmitArgs looks at is the class's module."""


KubeSpawner.__module__ = "kubespawner.spawner"


def spawner(cls: type = object) -> object:
    made = type("Spawner", (cls,), {})()
    made.user = SimpleNamespace(name="ada")
    return made


def submitted(value: str) -> tuple[dict[str, str], list[str]]:
    """PYSPARK_SUBMIT_ARGS split as pyspark splits it: the --conf settings and the rest."""
    words, conf, rest = shlex.split(value), {}, []
    while words:
        word = words.pop(0)
        if word == "--conf":
            name, _, setting = words.pop(0).partition("=")
            conf[name] = setting
        else:
            rest.append(word)
    return conf, rest


def test_configure_hands_local_notebooks_the_tuned_jvms(tmp_path):
    c = Config()
    configure(c, max_workers=2, jvm_archives_dir=str(tmp_path))
    conf, rest = submitted(c.Spawner.environment[jvm_archives.SUBMIT_ARGS](spawner()))
    assert conf == jvm_archives.spark_conf(str(tmp_path), java=JAVA, spark_home=SPARK_HOME)
    assert rest == ["pyspark-shell"]
    key = jvm_archives.key(java=JAVA, spark_home=SPARK_HOME)
    assert conf["spark.driver.defaultJavaOptions"].split() == [
        f"-XX:SharedArchiveFile={tmp_path}/driver-{key}.jsa", "-Xlog:cds*=off", "-XX:TieredStopAtLevel=1"]
    executor = conf["spark.executor.defaultJavaOptions"].split()
    assert executor == [f"-XX:SharedArchiveFile={tmp_path}/executor-{key}.jsa", "-Xlog:cds*=off"]
    assert conf["spark.executor.extraClassPath"] == os.path.join(SPARK_HOME, "jars", "*")


def test_configure_keeps_the_admins_submit_args_last_and_leaves_pods_alone(tmp_path):
    c = Config()
    theirs = "--conf spark.driver.extraClassPath=/theirs pyspark-shell"
    c.Spawner.environment = {jvm_archives.SUBMIT_ARGS: theirs}
    c.KubeSpawner.environment = {"A": "b"}
    configure(c, max_workers=2, jvm_archives_dir=str(tmp_path))
    value = c.Spawner.environment[jvm_archives.SUBMIT_ARGS](spawner())
    assert value.endswith(" --conf spark.driver.extraClassPath=/theirs pyspark-shell")
    assert submitted(value)[0]["spark.driver.extraClassPath"] == "/theirs"  # the last --conf wins
    assert c.KubeSpawner.environment["A"] == "b"
    assert c.KubeSpawner.environment[jvm_archives.SUBMIT_ARGS](spawner(KubeSpawner)) == "pyspark-shell"


def test_the_admins_own_spark_defaults_of_the_same_settings_are_kept_after_ours(tmp_path):
    """A --conf replaces the file's value of a setting: the admin's is carried over, last."""
    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        "# the admin's\nspark.driver.defaultJavaOptions  -Dadmin=kept -Xmx2g\n"
        "spark.executor.extraClassPath=/opt/theirs.jar\nspark.master spark://m:7077\n")
    c = Config()
    c.Spawner.environment = {"SPARK_CONF_DIR": str(conf_dir)}
    configure(c, max_workers=2, jvm_archives_dir=str(tmp_path / "archives"))
    made = spawner()
    made.environment = c.Spawner.environment
    conf, _ = submitted(c.Spawner.environment[jvm_archives.SUBMIT_ARGS](made))
    ours = jvm_archives.spark_conf(str(tmp_path / "archives"), java=JAVA, spark_home=SPARK_HOME)
    driver = ours["spark.driver.defaultJavaOptions"]
    assert conf["spark.driver.defaultJavaOptions"] == driver + " -Dadmin=kept -Xmx2g"
    assert conf["spark.executor.extraClassPath"] == ours["spark.executor.extraClassPath"] + ":/opt/theirs.jar"
    assert conf["spark.executor.defaultJavaOptions"] == ours["spark.executor.defaultJavaOptions"]
    assert "spark.master" not in conf, "only the tuned settings are passed on"
    # an unreadable file is no file: our settings alone
    (conf_dir / "spark-defaults.conf").write_bytes(b"\xff\xfe")
    assert submitted(c.Spawner.environment[jvm_archives.SUBMIT_ARGS](made))[0] == ours


def test_fast_jvm_false_leaves_the_environment_alone(tmp_path):
    c = Config()
    configure(c, max_workers=2, fast_jvm=False)
    assert jvm_archives.SUBMIT_ARGS not in c.Spawner.environment


def test_a_directory_spark_cannot_carry_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="space or quote"):
        jvm_archives.spark_conf(str(tmp_path / "a b"), java=JAVA, spark_home=SPARK_HOME)
    c = Config()
    configure(c, max_workers=2, jvm_archives_dir=str(tmp_path / "a b"))  # the hub still starts
    assert jvm_archives.SUBMIT_ARGS not in c.Spawner.environment


def test_an_upgrade_of_spark_or_java_names_another_archive(tmp_path):
    home = tmp_path / "spark"
    (home / "jars").mkdir(parents=True)
    (home / "jars" / "spark-core_2.13-4.3.0.jar").write_bytes(b"")
    before = jvm_archives.archive(str(tmp_path), "driver", java=JAVA, spark_home=str(home))
    (home / "jars" / "spark-core_2.13-4.3.0.jar").rename(home / "jars" / "spark-core_2.13-4.3.1.jar")
    assert jvm_archives.archive(str(tmp_path), "driver", java=JAVA, spark_home=str(home)) != before


def test_the_demo_notebooks_use_the_archives_make_demo_builds(monkeypatch, tmp_path):
    monkeypatch.delenv("DEMO_JVM_ARCHIVES", raising=False)
    env = notebook_environment(monkeypatch, tmp_path)
    conf, _ = submitted(env[jvm_archives.SUBMIT_ARGS])
    archives = ROOT / ".cache" / "jvm-archives"
    assert conf == jvm_archives.spark_conf(str(archives), java=JAVA, spark_home=SPARK_HOME)
    make = (ROOT / "Makefile").read_text()
    assert "-m jhub_spark_scaler.jvm_archives build --out .cache/jvm-archives" in make


def test_the_helm_notebooks_spark_defaults_carry_the_tuned_jvms():
    defaults = spark_defaults()
    dockerfile = (ROOT / "helm-values" / "spark-image" / "Dockerfile").read_text()
    for role in jvm_archives.ROLES:
        archive = f"/opt/jvm-archives/{role}.jsa"
        assert defaults[f"spark.{role}.defaultJavaOptions"] == jvm_archives.java_options(role, archive)
        assert defaults[f"spark.{role}.extraClassPath"] == "/opt/spark/jars/*"
    assert "jvm_archives build --out /opt/jvm-archives --stable-names" in dockerfile
    assert "--spark-home /opt/spark" in dockerfile
    assert SCALER["fast_jvm"] is False  # the pods' settings come from the ConfigMap, not the hub's paths


def test_an_archive_directory_others_can_write_is_not_used(tmp_path):
    """Class data from an archive is code in every notebook's driver and executor: a directory
    a user could put one into is refused."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    c = Config()
    configure(c, max_workers=2, jvm_archives_dir=str(shared))
    assert jvm_archives.SUBMIT_ARGS not in c.Spawner.environment
