"""Build the tests' Spark image: an OCI archive from Debian packages and PyPI wheels only.

    .venv/bin/python scripts/build_spark_image.py          # build once, then nothing (< 1 s)
    .venv/bin/python scripts/build_spark_image.py --print  # the archive's path and the image's name

Debian bookworm packages (Java 17, Python 3, tini, procps, bash) are installed into a root
filesystem by `mmdebstrap`; the image's own python3 installs pyspark and py4j at exactly the
versions of the suite's virtualenv; `umoci` makes the OCI image. mmdebstrap and umoci are
Debian packages too, fetched with `apt-get download` and unpacked with `dpkg -x` into the
per-machine cache (${JSS_CACHE:-~/.cache/jhub-spark-scaler}): nothing is installed on the
machine. The apt sources are the machine's own (/etc/apt).

The image: user `spark` (uid 185, home /home/spark) for the master and workers, user `jovyan`
(uid 1000, group users, home /home/jovyan) for a notebook's driver as z2jh runs it,
SPARK_HOME=/opt/spark (a link to pyspark's directory, so /opt/spark/bin/spark-class is what
the worker and master pods run), Spark's bin on PATH, PYSPARK_PYTHON=python3, entrypoint tini. Its name is
jhub-spark-scaler/spark:<pyspark>-py<major.minor>; containerd's `ctr images import` names it
docker.io/jhub-spark-scaler/spark:<tag> (the archive's io.containerd.image.name).

Reproducible: every file time is clamped to SOURCE_DATE_EPOCH (by default the Date of the
Debian archive's Release file), files are stored sorted with numeric owners, and what carries
the time of the build is left out (LEFT_OUT): two builds from the same archive state give
byte-identical archives. A manifest of every Debian package's version and each wheel's sha256
is in the image (/usr/share/jhub-spark-scaler/image-manifest.json) and beside the archive.
The archive is named by a digest of the inputs (this script, the package list, the pyspark,
py4j and Python versions, the apt sources): with the archive there, a second run does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import fcntl
import glob
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SUITE = "bookworm"
PACKAGES = ("openjdk-17-jre-headless", "python3", "tini", "procps", "bash")
TOOLS = ("mmdebstrap", "umoci")
REPOSITORY = "jhub-spark-scaler/spark"
SPARK_USER, SPARK_UID, SPARK_HOME_DIR = "spark", 185, "/home/spark"
#: z2jh's singleuser.uid and singleuser.fsGid (Debian's group `users`), as in helm-values/spark-image
NOTEBOOK_USER, NOTEBOOK_UID, NOTEBOOK_GID, NOTEBOOK_HOME_DIR = "jovyan", 1000, 100, "/home/jovyan"
SPARK_HOME = "/opt/spark"
MANIFEST_IN_IMAGE = "usr/share/jhub-spark-scaler/image-manifest.json"
SCRIPT = Path(__file__).resolve()


class BuildError(Exception):
    """A build that cannot go on: one line saying what to fix."""


def log(message: str, *args) -> None:
    print("build_spark_image: " + message % args, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("JSS_CACHE") or Path.home() / ".cache" / "jhub-spark-scaler")


def python_version() -> str:
    """The suite's interpreter's major.minor: the notebooks' drivers run on it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def apt_source_files() -> list[Path]:
    """The machine's apt sources (deb822 files and the one-line list)."""
    files = sorted(Path(p) for p in glob.glob("/etc/apt/sources.list.d/*.sources"))
    files += sorted(Path(p) for p in glob.glob("/etc/apt/sources.list.d/*.list"))
    if Path("/etc/apt/sources.list").is_file():
        files.append(Path("/etc/apt/sources.list"))
    return files


def inputs() -> dict:
    """What the image is made from: its archive's name digests these."""
    sources = hashlib.sha256()
    for path in apt_source_files():
        sources.update(path.read_bytes())
    return {
        "script": hashlib.sha256(SCRIPT.read_bytes()).hexdigest(),
        "suite": SUITE,
        "packages": list(PACKAGES),
        "pyspark": importlib.metadata.version("pyspark"),
        "py4j": importlib.metadata.version("py4j"),
        "python": python_version(),
        "apt_sources": sources.hexdigest(),
    }


def key() -> str:
    return hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()[:16]


def image_tag() -> str:
    return f"{importlib.metadata.version('pyspark')}-py{python_version()}"


def image_name() -> str:
    """The name pods use (`image:` in a pod spec)."""
    return f"{REPOSITORY}:{image_tag()}"


def archive_path() -> Path:
    return cache_dir() / "images" / f"spark-{key()}.tar"


def manifest_path() -> Path:
    return archive_path().with_suffix(".manifest.json")


def tools_dir() -> Path:
    return cache_dir() / "image-tools"


def umoci() -> str:
    return str(tools_dir() / "usr" / "bin" / "umoci")


def run(args: list[str], *, what: str, env: dict | None = None, cwd: Path | None = None,
        log_file: Path | None = None) -> str:
    """Run `args`; its output, or BuildError with the tail of it."""
    result = subprocess.run(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if log_file is not None:
        log_file.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise BuildError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


class PrivateApt:
    """apt with its own lists and cache in `directory`, reading the machine's sources."""

    def __init__(self, directory: Path):
        self.directory = directory
        for sub in ("lists/partial", "archives/partial", "sources.list.d"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.sources = []
        for path in apt_source_files():
            target = directory / "sources.list.d" / (
                path.name if path.parent.name == "sources.list.d" else "sources.list.list")
            target.write_text(path.read_text())
            self.sources.append(target)
        if not self.sources:
            raise BuildError("no apt sources in /etc/apt (sources.list or sources.list.d/*.sources)")

    def options(self) -> list[str]:
        d = self.directory
        return ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={d}/sources.list.d",
                "-o", f"Dir::State::Lists={d}/lists", "-o", f"Dir::Cache::Archives={d}/archives",
                "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
                "-o", "APT::Sandbox::User=root"]

    def update(self) -> None:
        run(["apt-get", *self.options(), "-qq", "update"], what="apt-get update (private lists)")

    def candidate(self, package: str) -> str:
        out = run(["apt-cache", *self.options(), "policy", package], what=f"apt-cache policy {package}")
        for line in out.splitlines():
            if line.strip().startswith("Candidate:"):
                return line.split(":", 1)[1].strip()
        raise BuildError(f"apt knows no package {package} in the machine's sources")

    def release_date(self) -> int:
        """The newest Date of the fetched Release files: no file of the archive is newer."""
        dates = []
        for path in self.directory.glob("lists/*Release"):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("Date:"):
                    dates.append(int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp()))
                    break
        if not dates:
            raise BuildError("no Release file with a Date after apt-get update: set SOURCE_DATE_EPOCH")
        return max(dates)


def fetch_tools(apt: PrivateApt) -> None:
    """mmdebstrap and umoci from Debian, unpacked into the cache (kept for the tests' umoci)."""
    if all((tools_dir() / "usr" / "bin" / t).exists() for t in TOOLS):
        return
    work = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="image-tools."))
    try:
        run(["apt-get", *apt.options(), "-qq", "download", *TOOLS], cwd=work, what="apt-get download")
        unpacked = work / "root"
        for deb in sorted(work.glob("*.deb")):
            run(["dpkg", "-x", str(deb), str(unpacked)], what=f"dpkg -x {deb.name}")
        shutil.rmtree(tools_dir(), ignore_errors=True)
        unpacked.rename(tools_dir())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_python(apt: PrivateApt) -> str:
    """Debian's python3 must be the suite's major.minor: Spark refuses a Python worker of
    another version than the driver's (PYTHON_VERSION_MISMATCH)."""
    version = apt.candidate("python3").split(":")[-1]
    debian = ".".join(version.split(".")[:2])
    if debian != python_version():
        raise BuildError(
            f"Debian {SUITE}'s python3 is {debian} ({version}), the suite's interpreter {sys.executable} "
            f"is {python_version()}: Spark's drivers and workers need the same Python major.minor; "
            f"run the suite on Python {debian}")
    return version


def fetch_wheels(directory: Path) -> list[Path]:
    """pyspark and py4j wheels at the virtualenv's versions, into `directory` (pip builds
    pyspark's wheel from its sdist once and keeps it in its own cache)."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("pyspark", "py4j")]
    directory.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(directory), *pins], what="pip wheel " + " ".join(pins))
    wheels = []
    for pin in pins:
        name, version = pin.split("==")
        (wheel,) = directory.glob(f"{name}-{version}-*.whl")
        wheels.append(wheel)
    return wheels


def debootstrap(apt: PrivateApt, rootfs: Path, *, epoch: int, work: Path) -> None:
    """The Debian root filesystem: Essential packages and PACKAGES with what they depend on."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "TMPDIR": str(work),
           "PATH": f"{tools_dir() / 'usr' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    run([str(tools_dir() / "usr" / "bin" / "mmdebstrap"), "--mode=root", "--variant=essential",
         "--format=directory", "--include=" + ",".join(PACKAGES), SUITE, str(rootfs),
         *map(str, apt.sources)],
        env=env, what="mmdebstrap", log_file=work / "mmdebstrap.log")


def install_wheels(rootfs: Path, wheels: list[Path]) -> None:
    """The image's own python3 installs the wheels (into /usr/local/lib/python3.X/dist-packages,
    scripts with its own #!), with the suite's pip, which the image does not keep."""
    import pip

    stage = rootfs / "tmp" / "jss-install"
    shutil.copytree(Path(pip.__file__).parent, stage / "pip")
    for wheel in wheels:
        os.link(wheel, stage / wheel.name)
    run(["chroot", str(rootfs), "env", "-i", "PATH=/usr/bin:/bin", "PYTHONPATH=/tmp/jss-install",
         "python3", "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
         "--break-system-packages", "--root-user-action=ignore", "--disable-pip-version-check",
         *(f"/tmp/jss-install/{w.name}" for w in wheels)], what="pip install (in the image)")
    shutil.rmtree(stage)


def add_users(rootfs: Path) -> None:
    """User and group `spark` (185), home /home/spark, for the master and the workers (Spark
    looks its user up by uid); user `jovyan` (1000, group users) for the notebook's
    driver, as z2jh runs singleuser pods: without a passwd entry Java's user.home is "?"
    and spark-submit fails ("basedir must be absolute: ?/.ivy2...")."""
    _add_user(rootfs, SPARK_USER, SPARK_UID, SPARK_UID, SPARK_HOME_DIR, group=True)
    _add_user(rootfs, NOTEBOOK_USER, NOTEBOOK_UID, NOTEBOOK_GID, NOTEBOOK_HOME_DIR, group=False)


def _add_user(rootfs: Path, user: str, uid: int, gid: int, home_dir: str, *, group: bool) -> None:
    lines = {
        "passwd": f"{user}:x:{uid}:{gid}::{home_dir}:/bin/bash\n",
        "shadow": f"{user}:*::0:99999:7:::\n",
        **({"group": f"{user}:x:{gid}:\n", "gshadow": f"{user}:!::\n"} if group else {}),
    }
    for name, line in lines.items():
        path = rootfs / "etc" / name
        if not path.exists() and name in ("shadow", "gshadow"):
            continue  # no shadow files without Debian's `passwd`
        text = path.read_text()
        if any(entry.split(":")[0] == user or entry.split(":")[2:3] == [str(uid)]
               for entry in text.splitlines() if name == "passwd" or (name == "group" and group)):
            raise BuildError(f"/etc/{name} of the Debian image already has {user} or id {uid}")
        path.write_text(text + line)
    home = rootfs / home_dir.lstrip("/")
    home.mkdir(mode=0o755)
    os.chown(home, uid, gid)


#: Files left out of the image: ca-certificates-java writes Java's TLS trust store with the
#: time of the build in it (the one file two builds differed in); Spark standalone uses no TLS.
LEFT_OUT = ("etc/ssl/certs/java/cacerts",)


def customize(rootfs: Path) -> None:
    """/opt/spark, the user, and no trace of the building machine (its resolver, name and
    apt mirrors: the manifest says what the image holds) or of the time of the build."""
    pyspark = f"/usr/local/lib/python{python_version()}/dist-packages/pyspark"
    if not (rootfs / pyspark.lstrip("/") / "bin" / "spark-class").is_file():
        raise BuildError(f"pip left no {pyspark}/bin/spark-class in the image")
    (rootfs / SPARK_HOME.lstrip("/")).symlink_to(pyspark)
    add_users(rootfs)
    for name in ("etc/resolv.conf", "etc/hostname", *LEFT_OUT):
        (rootfs / name).unlink(missing_ok=True)
    for path in (rootfs / "etc" / "apt" / "sources.list.d").glob("*"):
        path.unlink()
    python = os.readlink(rootfs / "usr" / "bin" / "python3")
    if python != f"python{python_version()}":
        raise BuildError(f"the image's python3 is {python}, not python{python_version()}")


def manifest(rootfs: Path, *, wheels: list[Path], epoch: int) -> dict:
    """What is in the image: every Debian package's version, each wheel's sha256."""
    out = run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\n"],
              what="dpkg-query")
    debian = dict(sorted(line.split("\t") for line in out.splitlines() if line))
    digests = {}
    for wheel in wheels:
        digest = hashlib.sha256()
        with open(wheel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digests[wheel.name] = digest.hexdigest()
    return {"image": image_name(), "key": key(), "inputs": inputs(), "source_date_epoch": epoch,
            "debian_packages": debian, "wheels_sha256": digests, "left_out": ["/" + f for f in LEFT_OUT]}


TAR_OPTIONS = ["--sort=name", "--numeric-owner", "--format=pax",
               "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"]


def make_layer(rootfs: Path, layer: Path, *, epoch: int) -> None:
    """The root filesystem as one layer; /dev, /proc and /sys are left empty for the runtime."""
    run(["tar", "-C", str(rootfs), *TAR_OPTIONS, f"--mtime=@{epoch}", "--clamp-mtime", "--one-file-system",
         "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "-cf", str(layer), "."],
        what="tar of the root filesystem")


def image_config_args() -> list[str]:
    path = f"{SPARK_HOME}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = [f"PATH={path}", f"SPARK_HOME={SPARK_HOME}", "PYSPARK_PYTHON=python3", "LANG=C.UTF-8"]
    return [*(a for e in env for a in ("--config.env", e)), "--config.user", str(SPARK_UID),
            "--config.workingdir", SPARK_HOME_DIR, "--config.entrypoint", "/usr/bin/tini",
            "--config.entrypoint", "--", "--config.cmd", "bash"]


def oci_archive(layer: Path, archive: Path, *, epoch: int, work: Path) -> None:
    """An OCI image archive (`ctr images import` takes it) holding `layer`."""
    layout = work / "oci"
    ref = f"{layout}:{image_tag()}"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    what = (f"scripts/build_spark_image.py: Debian {SUITE} ({', '.join(PACKAGES)}), "
            f"pyspark {importlib.metadata.version('pyspark')}")
    for args in (["init", "--layout", str(layout)], ["new", "--image", ref],
                 ["raw", "add-layer", "--image", ref, "--history.created", created,
                  "--history.created_by", what, str(layer)],
                 ["config", "--image", ref, "--no-history", "--created", created,
                  "--author", "jhub-spark-scaler", *image_config_args()],
                 ["gc", "--layout", str(layout)]):
        run([umoci(), *args], what=f"umoci {args[0]}")
    index_file = layout / "index.json"
    index = json.loads(index_file.read_text())
    (descriptor,) = index["manifests"]
    descriptor.setdefault("annotations", {})["io.containerd.image.name"] = f"docker.io/{image_name()}"
    index_file.write_text(json.dumps(index, sort_keys=True))
    run(["tar", "-C", str(layout), *TAR_OPTIONS, f"--mtime=@{epoch}", "--owner=0", "--group=0",
         "-cf", str(archive), "oci-layout", "index.json", "blobs"], what="tar of the OCI layout")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (deepest first)."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_work(work: Path) -> None:
    """Delete the build directory, after any mount a failed mmdebstrap left in it."""
    for point in mounts_under(work):
        subprocess.run(["umount", "--lazy", point], check=False)
    left = mounts_under(work)
    if left:
        log("left %s in place: still mounted there: %s", work, ", ".join(left))
        return
    shutil.rmtree(work, ignore_errors=True)


def build(archive: Path) -> dict:
    """Build the image into `archive`; its manifest."""
    work = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="image-build."))
    try:
        apt = PrivateApt(work / "apt")
        apt.update()
        check_python(apt)
        fetch_tools(apt)
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or apt.release_date())
        wheels = fetch_wheels(work / "wheels")
        rootfs = work / "rootfs"
        debootstrap(apt, rootfs, epoch=epoch, work=work)
        install_wheels(rootfs, wheels)
        customize(rootfs)
        contents = manifest(rootfs, wheels=wheels, epoch=epoch)
        in_image = rootfs / MANIFEST_IN_IMAGE
        in_image.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(contents, indent=1, sort_keys=True) + "\n"
        in_image.write_text(text)
        make_layer(rootfs, work / "layer.tar", epoch=epoch)
        shutil.rmtree(rootfs)
        oci_archive(work / "layer.tar", work / "image.tar", epoch=epoch, work=work)
        manifest_path().write_text(text)
        os.replace(work / "image.tar", archive)
        return contents
    finally:
        remove_work(work)


def remove_stale(archive: Path) -> None:
    """Archives of the same image from other inputs (`<kind>-<key>.*`): nothing names them any more."""
    kind = archive.stem.rpartition("-")[0]
    for path in archive.parent.glob(f"{kind}-*"):
        if not path.name.startswith(archive.stem):
            path.unlink()


def build_once(argv: list[str] | None, *, prog: str, doc: str, archive: Path, name: str,
               build: Callable[[Path], str], root_for: str) -> int:
    """The command of both image scripts: `--print` the archive's path and the image's name,
    or build `archive` (with its .manifest.json beside it) unless it is there, one build at
    a time per cache. `build(archive)` says what was built, for the log."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the archive's path and the image's name")
    args = parser.parse_args(argv)
    if args.print:
        print(archive)
        print(name)
        return 0
    built = lambda: archive.exists() and archive.with_suffix(".manifest.json").exists()  # noqa: E731
    if built():
        return 0
    if os.geteuid() != 0:
        print(f"{prog}: run as root ({root_for} need it)", file=sys.stderr)
        return 1
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive.parent / f".{archive.stem.rpartition('-')[0]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if built():
            return 0
        started = time.monotonic()
        log("building %s into %s", name, archive)
        try:
            what = build(archive)
        except BuildError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 1
        remove_stale(archive)
        log("built %s: %s in %.0f s", archive.name, what, time.monotonic() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    def build_it(archive: Path) -> str:
        build(archive)
        return f"{archive.stat().st_size // 2**20} MB"

    return build_once(argv, prog="build_spark_image", doc=__doc__, archive=archive_path(), name=image_name(),
                      build=build_it, root_for="mmdebstrap --mode=root and chroot")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
