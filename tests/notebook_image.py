"""The production notebook and Spark image (helm-values/spark-image/Dockerfile, built with
buildah by scripts/build_notebook_image.py): where its archive is, its name, and a way to run
its programs as any user without a container runtime.

    image = notebook_image()       # built first if missing (once per machine: minutes)
    image.archive, image.name      # ctr -n k8s.io images import <archive>; pods use <name>
    rootfs = unpack(image, dir)    # its root filesystem, as root, layer on layer
    as_user(rootfs, [...], env=image_env(image), uid=1000, gid=100)
                                   # argv for: that command in it, as uid:gid, in its own
                                   # mount and PID namespaces
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .spark_image import image_env, image_manifest  # noqa: F401  (for the tests)

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build_notebook_image.py"
BUILD_TIMEOUT = 3600  # a cold build: about 5 minutes on 2 busy cores (pyspark's sdist, the JVM archives)

_spec = importlib.util.spec_from_file_location("build_notebook_image", BUILD_SCRIPT)
build_notebook_image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_notebook_image)


@dataclass(frozen=True)
class NotebookImage:
    archive: Path  # OCI image archive
    name: str  # localhost/jhub-spark-scaler/notebook:<digest of the inputs>
    manifest: dict  # the build's inputs, buildah's version, build time and size

    @property
    def tag(self) -> str:
        return self.name.rpartition(":")[2]


def build() -> subprocess.CompletedProcess:
    """Run the build script as `make test-setup` does."""
    return subprocess.run([sys.executable, str(BUILD_SCRIPT)], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)


def notebook_image() -> NotebookImage:
    """The image of the Dockerfile as it is now; built first if missing. RuntimeError with the
    build's output if it cannot be built."""
    archive, manifest = build_notebook_image.archive_path(), build_notebook_image.manifest_path()
    if not (archive.exists() and manifest.exists()):
        built = build()
        if built.returncode != 0:
            raise RuntimeError(f"{BUILD_SCRIPT} failed with {built.returncode}:\n{built.stderr[-4000:]}")
    return NotebookImage(archive=archive, name=build_notebook_image.image_name(),
                         manifest=json.loads(manifest.read_text()))


def pinned_versions(path: Path) -> dict[str, str]:
    """{canonical name: version} of a requirements file whose every requirement pins one
    version: requirements.in, or pip-compile's requirements.txt (hashes on continued lines)."""
    pins = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].split(" --hash", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line} pins no single version"
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


#: the versions the admin chose, and everything the image installs
LOCKED_VERSIONS = ROOT / build_notebook_image.REQUIREMENTS
CHOSEN_VERSIONS = LOCKED_VERSIONS.with_suffix(".in")


def as_user(rootfs: Path, argv: list[str], *, env: dict[str, str], uid: int, gid: int) -> list[str]:
    """argv that runs `argv` in `rootfs` as uid:gid (no supplementary groups) with exactly
    `env`, in new mount and PID namespaces with /proc, the machine's /dev and /etc/hosts; the
    mounts vanish with the namespace, and killing the returned process kills all it started."""
    setup = (f'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" '
             f'&& touch "$0/etc/hosts" && mount --bind /etc/hosts "$0/etc/hosts" '
             f'&& exec chroot --userspec={uid}:{gid} --groups={gid} "$0" env -i "$@"')
    variables = [f"{k}={v}" for k, v in sorted(env.items())]
    return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", setup, str(rootfs),
            *variables, *argv]


WHITEOUT, OPAQUE = ".wh.", ".wh..wh..opq"


def apply_whiteouts(rootfs: Path, names: list[str]) -> None:
    """What a layer's whiteouts delete of the layers below it (OCI image spec): `.wh.x` deletes
    x, `.wh..wh..opq` everything the directory held."""
    for name in names:
        parent, _, base = name.rstrip("/").rpartition("/")
        if not base.startswith(WHITEOUT):
            continue
        target = rootfs / parent
        if base == OPAQUE:
            victims = list(target.iterdir()) if target.is_dir() else []
        else:
            victims = [target / base[len(WHITEOUT):]]
        for victim in victims:
            if victim.is_dir() and not victim.is_symlink():
                shutil.rmtree(victim)
            else:
                victim.unlink(missing_ok=True)


def unpack(image: NotebookImage, directory: Path) -> Path:
    """The image's root filesystem under `directory`: its layers in order, each checked
    against its digest, whiteouts applied (owners kept)."""
    _, manifest, _ = image_manifest(image)
    rootfs = directory / "rootfs"
    rootfs.mkdir()
    blob = directory / "layer"
    with tarfile.open(image.archive) as archive:
        for layer in manifest["layers"]:
            algorithm, _, hexdigest = layer["digest"].partition(":")
            digest = hashlib.new(algorithm)
            with archive.extractfile(f"blobs/{algorithm}/{hexdigest}") as source, open(blob, "wb") as f:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    f.write(block)
            assert digest.hexdigest() == hexdigest, f"layer {layer['digest']} does not match its digest"
            listed = subprocess.run(["tar", "-tzf", str(blob)], capture_output=True, text=True, timeout=600)
            assert listed.returncode == 0, listed.stderr
            apply_whiteouts(rootfs, [name.removeprefix("./") for name in listed.stdout.splitlines()])
            untar = subprocess.run(["tar", "-xzf", str(blob), "--numeric-owner", f"--exclude={WHITEOUT}*",
                                    "-C", str(rootfs)], capture_output=True, text=True, timeout=600)
            assert untar.returncode == 0, f"tar -xz of layer {layer['digest']}: {untar.stderr[-2000:]}"
            blob.unlink()
    return rootfs
