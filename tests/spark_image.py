"""The tests' Spark image (scripts/build_spark_image.py): where its archive is, its name, and
a way to run its programs without a container runtime.

    image = spark_image()          # built first if missing (once per machine: minutes)
    image.archive, image.name      # ctr -n k8s.io images import <archive>; pods use <name>
    rootfs = unpack(image, dir)    # its root filesystem, as root
    in_image(rootfs, [...])        # argv for: that command in it, as uid 185, in its own
                                   # mount and PID namespaces (killing the returned process
                                   # kills everything it started)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build_spark_image.py"
BUILD_TIMEOUT = 1800  # a cold build: about 4 minutes on 2 busy cores, more with the pyspark sdist

_spec = importlib.util.spec_from_file_location("build_spark_image", BUILD_SCRIPT)
build_spark_image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_spark_image)


@dataclass(frozen=True)
class SparkImage:
    archive: Path  # OCI image archive
    name: str  # what a pod's `image:` says, e.g. jhub-spark-scaler/spark:4.3.0-py3.11
    manifest: dict  # Debian package versions, wheel digests, the build's inputs

    @property
    def containerd_name(self) -> str:
        """The name `ctr -n k8s.io images import` gives it (docker.io/ added, as the kubelet does)."""
        return f"docker.io/{self.name}"


def build() -> subprocess.CompletedProcess:
    """Run the build script as `make test-setup` does."""
    return subprocess.run([sys.executable, str(BUILD_SCRIPT)], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)


def spark_image() -> SparkImage:
    """The image for the suite's pyspark and Python; built first if missing. RuntimeError
    with the build's output if it cannot be built."""
    archive, manifest = build_spark_image.archive_path(), build_spark_image.manifest_path()
    if not (archive.exists() and manifest.exists()):
        built = build()
        if built.returncode != 0:
            raise RuntimeError(f"{BUILD_SCRIPT} failed with {built.returncode}:\n{built.stderr[-4000:]}")
    return SparkImage(archive=archive, name=build_spark_image.image_name(),
                      manifest=json.loads(manifest.read_text()))


def read_blob(archive: tarfile.TarFile, digest: str) -> bytes:
    """A blob of the archive's OCI layout, checked against its digest."""
    algorithm, _, hexdigest = digest.partition(":")
    data = archive.extractfile(f"blobs/{algorithm}/{hexdigest}").read()
    assert hashlib.new(algorithm, data).hexdigest() == hexdigest, f"blob {digest} does not match its digest"
    return data


def image_manifest(image: SparkImage) -> tuple[dict, dict, dict]:
    """The archive's index.json, its one image manifest and that image's config."""
    with tarfile.open(image.archive) as archive:
        index = json.loads(archive.extractfile("index.json").read())
        (descriptor,) = index["manifests"]
        manifest = json.loads(read_blob(archive, descriptor["digest"]))
        config = json.loads(read_blob(archive, manifest["config"]["digest"]))
    return index, manifest, config


def unpack(image: SparkImage, directory: Path) -> Path:
    """The image's root filesystem under `directory` (its layers in order; owners kept), each
    layer checked against its digest as it is read."""
    _, manifest, _ = image_manifest(image)
    rootfs = directory / "rootfs"
    rootfs.mkdir()
    with tarfile.open(image.archive) as archive:
        for layer in manifest["layers"]:
            algorithm, _, hexdigest = layer["digest"].partition(":")
            source = archive.extractfile(f"blobs/{algorithm}/{hexdigest}")
            digest = hashlib.new(algorithm)
            untar = subprocess.Popen(["tar", "-xz", "--numeric-owner", "-C", str(rootfs)],
                                     stdin=subprocess.PIPE)
            try:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    untar.stdin.write(block)
            finally:
                untar.stdin.close()
                untar.wait(timeout=300)
            assert untar.returncode == 0, f"tar -xz of layer {layer['digest']} failed"
            assert digest.hexdigest() == hexdigest, f"layer {layer['digest']} does not match its digest"
    return rootfs


def image_env(image: SparkImage) -> dict[str, str]:
    """The environment the image's config gives its processes (as a runtime would)."""
    _, _, config = image_manifest(image)
    return dict(entry.split("=", 1) for entry in config["config"].get("Env", []))


def in_image(rootfs: Path, argv: list[str], *, env: dict[str, str], user: int = 185) -> list[str]:
    """argv that runs `argv` in `rootfs` as `user` with exactly `env`, in new mount and PID
    namespaces with /proc, the machine's /dev and /etc/hosts (what a runtime provides); the
    mounts vanish with the namespace, and killing the returned process (unshare, --kill-child)
    kills all it started."""
    setup = (f'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" '
             f'&& touch "$0/etc/hosts" && mount --bind /etc/hosts "$0/etc/hosts" '
             f'&& exec chroot --userspec={user}:{user} "$0" env -i "$@"')
    variables = [f"{k}={v}" for k, v in sorted(env.items())]
    return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", setup, str(rootfs),
            *variables, *argv]
