"""Build the production notebook and Spark image (helm-values/spark-image/Dockerfile) with
buildah into an OCI archive in the per-machine cache, as the deployment guide's
`docker buildx build` does on an admin's machine.

    .venv/bin/python scripts/build_notebook_image.py          # build once, then nothing (< 1 s)
    .venv/bin/python scripts/build_notebook_image.py --print  # the archive's path and the image's name

buildah comes from Debian (`apt-get download` + `dpkg -x` into the cache, with libgpgme11, the
one library of its that a Debian machine lacks; patchelf, also from Debian, points buildah at
it, because buildah runs its own steps with a clean environment). It runs with
`--isolation chroot` (no OCI runtime), the vfs storage driver in a storage directory of its own
under the cache, and registries.conf, policy.json, storage.conf and containers.conf of its own:
nothing under /etc/containers is read or written.

The Dockerfile's base, debian:bookworm-slim, is a Docker Hub image this machine cannot pull: a
stand-in for it is built from the same Debian suite with mmdebstrap (minbase, man pages and
docs left out as -slim does) and passed as BASE_IMAGE under a name that says it is a local
build (BASE_IMAGE below). Its apt sources are left out.

The RUN steps reach Debian and PyPI with the machine's settings, mounted for the build only:
the machine's Debian sources of the suite over /etc/apt/sources.list.d (empty in the base),
and a home directory for root over /root holding a pip.conf with the machine's pip settings
(those that are not paths on this machine) and the machine's CA bundle (pip's `cert`). Both
mount points exist in the base, so nothing of them is left in the image; what a step writes
under /root stays in the build's directory and is deleted with it.

Measured on 2 busy cores under nice: about 2.5 minutes cold (the base 30 s, apt 10 s, pip
30 s, the JVM archives 30 s, commit and export 40 s); an 843 MB archive (1.6 GB unpacked).

The archive is named by a digest of its inputs (this script, the Dockerfile, the files its
COPY takes, the Debian sources and pip settings; not build_spark_image.py, whose apt code this
script uses: it changes how packages are fetched, not what the image holds): with the archive
there, a second run does nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(SCRIPT.parent))
import build_spark_image as spark  # noqa: E402  (the apt code both builds share)

SUITE = spark.SUITE
DOCKERFILE = ROOT / "helm-values" / "spark-image" / "Dockerfile"
#: the Python packages with their dependencies, each pinned with its hashes
REQUIREMENTS = "helm-values/spark-image/requirements.txt"
#: the JVM-archive step's module and what it imports
ARCHIVE_MODULES = ("jhub_spark_scaler/__init__.py", "jhub_spark_scaler/jvm_archives.py",
                   "jhub_spark_scaler/spawner_env.py")
#: What the Dockerfile's COPY takes, in its order (tests/test_notebook_image.py checks it);
#: the archive's name digests exactly these of the repository's files.
CONTEXT_FILES = (REQUIREMENTS, *ARCHIVE_MODULES)
BASE_IMAGE = f"localhost/jhub-spark-scaler/debian-base:{SUITE}"
REPOSITORY = "localhost/jhub-spark-scaler/notebook"
#: buildah and the library it needs that Debian machines lack; patchelf to point it there
BUILDAH_PACKAGES = ("buildah", "libgpgme11")
#: pip settings of the machine that carry over into the build (others name local paths)
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout",
                "retries")
#: dpkg leaves these out of the base, as debian:*-slim's /etc/dpkg/dpkg.cfg.d/docker does
SLIM_EXCLUDES = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                 "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/info/*",
                 "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias")
HOME_IN_BUILD = "/root"
PIP_CA = ".config/pip/ca-certificates.crt"


BuildError = spark.BuildError  # a build that cannot go on: one line saying what to fix


def log(message: str, *args) -> None:
    print("build_notebook_image: " + message % args, file=sys.stderr, flush=True)


def buildah_dir() -> Path:
    return spark.cache_dir() / "buildah"


def buildah() -> Path:
    return buildah_dir() / "root" / "usr" / "bin" / "buildah"


# ---- the machine's settings, for the build only ------------------------------------------


def debian_sources() -> str:
    """The machine's apt sources of the suite (deb822 stanzas and one-line entries whose suite
    is SUITE or SUITE-*), as one deb822 file: the others need keys the image does not have."""
    def ours(suite: str) -> bool:
        return suite == SUITE or suite.startswith(SUITE + "-")

    stanzas = []
    for path in spark.apt_source_files():
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
                suites = [s for s in fields.get("Suites", "").split() if ours(s)]
                if "deb" in fields.get("Types", "").split() and suites:
                    stanzas.append(re.sub(r"^Suites:.*$", "Suites: " + " ".join(suites),
                                          re.sub(r"^Types:.*$", "Types: deb", stanza.strip(), flags=re.M),
                                          flags=re.M))
            continue
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 4 and words[0] == "deb" and ours(words[2]):
                stanzas.append(f"Types: deb\nURIs: {words[1]}\nSuites: {words[2]}\n"
                               f"Components: {' '.join(words[3:])}\n"
                               "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg")
    if not stanzas:
        raise BuildError(f"no Debian {SUITE} source in the machine's apt sources (/etc/apt)")
    return "\n\n".join(stanzas) + "\n"


def pip_settings() -> tuple[dict[str, str], Path | None]:
    """The machine's pip settings (`pip config list`: files and PIP_* variables) that carry
    over into the build, and the CA bundle pip is told to trust (None if none)."""
    listed = spark.run([sys.executable, "-m", "pip", "config", "list"], what="pip config list")
    settings, cert = {}, None
    for line in listed.splitlines():
        match = re.fullmatch(r"[^.]*\.([\w-]+)='(.*)'", line.strip())
        if not match:
            continue
        name, value = match.groups()
        if name == "cert":
            cert = Path(value)
        elif name in PIP_SETTINGS:
            kept = " ".join(v for v in value.split() if not v.startswith("file:"))
            if kept:
                settings[name] = kept
    if cert is not None and not cert.is_file():
        raise BuildError(f"pip's cert {cert} (pip config list) is not a file")
    return settings, cert


def pip_conf(settings: dict[str, str], *, cert: Path | None) -> str:
    lines = ["[global]", "disable-pip-version-check = true"]
    lines += [f"{name} = {value}" for name, value in sorted(settings.items())]
    if cert is not None:
        lines.append(f"cert = {HOME_IN_BUILD}/{PIP_CA}")
    return "\n".join(lines) + "\n"


# ---- inputs and names -------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs() -> dict:
    """What the image is made from: its archive's name digests these (the files of the
    repository by content: other commits leave it unchanged)."""
    settings, cert = pip_settings()
    return {
        "script": file_digest(SCRIPT),
        "dockerfile": file_digest(DOCKERFILE),
        "context": {name: file_digest(ROOT / name) for name in CONTEXT_FILES},
        "suite": SUITE,
        "debian_sources": hashlib.sha256(debian_sources().encode()).hexdigest(),
        "pip_conf": hashlib.sha256(pip_conf(settings, cert=cert).encode()).hexdigest(),
    }


@functools.cache
def key() -> str:
    return hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()[:16]


def image_tag() -> str:
    return key()


def image_name() -> str:
    return f"{REPOSITORY}:{image_tag()}"


def archive_path() -> Path:
    return spark.cache_dir() / "images" / f"notebook-{key()}.tar"


def manifest_path() -> Path:
    return archive_path().with_suffix(".manifest.json")


# ---- buildah ----------------------------------------------------------------------------------


def missing_libraries() -> list[str]:
    """The shared libraries buildah cannot find (after the cache moved, its RUNPATH's)."""
    linked = spark.run(["ldd", str(buildah())], what="ldd buildah")
    return [line.split()[0] for line in linked.splitlines() if "not found" in line]


def fetch_buildah(apt: spark.PrivateApt) -> None:
    """buildah and libgpgme11 from Debian, unpacked into the cache; buildah's RUNPATH set to
    that library directory (its chroot runtime starts with a clean environment, so
    LD_LIBRARY_PATH would not reach it)."""
    if buildah().exists() and not missing_libraries():
        return
    work = Path(tempfile.mkdtemp(dir=spark.cache_dir(), prefix="buildah."))
    try:
        spark.run(["apt-get", *apt.options(), "-qq", "download", *BUILDAH_PACKAGES, "patchelf"], cwd=work,
                  what="apt-get download")
        for deb in sorted(work.glob("*.deb")):
            target = work / ("patchelf" if deb.name.startswith("patchelf_") else "root")
            spark.run(["dpkg", "-x", str(deb), str(target)], what=f"dpkg -x {deb.name}")
        final = buildah_dir() / "root"
        libraries = final / "usr" / "lib" / "x86_64-linux-gnu"
        binary = work / "root" / "usr" / "bin" / "buildah"
        spark.run([str(work / "patchelf" / "usr" / "bin" / "patchelf"), "--set-rpath", str(libraries),
                   str(binary)], what="patchelf --set-rpath")
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        (work / "root").rename(final)
        missing = missing_libraries()
        if missing:
            shutil.rmtree(final)
            raise BuildError(f"buildah needs {', '.join(missing)}: neither on this machine "
                             f"nor in {', '.join(BUILDAH_PACKAGES)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: Only local images and the archives this script writes: no registry is asked for anything.
POLICY = {"default": [{"type": "reject"}],
          "transports": {t: {"": [{"type": "insecureAcceptAnything"}]}
                         for t in ("containers-storage", "oci-archive", "dir")}}


class Buildah:
    """buildah with its own configuration and storage under the cache."""

    def __init__(self, work: Path):
        conf = buildah_dir() / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        storage = buildah_dir() / "storage"
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{storage}"\nrunroot = "{buildah_dir() / "run"}"\n')
        (conf / "registries.conf").write_text("unqualified-search-registries = []\n")
        (conf / "containers.conf").write_text("[containers]\n[engine]\n")
        (conf / "policy.json").write_text(json.dumps(POLICY))
        self.policy = str(conf / "policy.json")
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work),
                    "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
                    "CONTAINERS_CONF": str(conf / "containers.conf"), "BUILDAH_ISOLATION": "chroot"}
        self.work = work

    def __call__(self, *args: str, what: str = "", policy: bool = False, log_file: Path | None = None) -> str:
        argv = [str(buildah()), args[0], *(["--signature-policy", self.policy] if policy else []), *args[1:]]
        return spark.run(argv, env=self.env, what=what or f"buildah {args[0]}", log_file=log_file).strip()

    def version(self) -> str:
        return self("--version").split()[2]

    def remove_all(self) -> None:
        """Every container and image of this storage (the vfs driver keeps full copies)."""
        self("rm", "--all")
        self("rmi", "--all", "--force")


# ---- the image --------------------------------------------------------------------------------


def build_base(b: Buildah, apt: spark.PrivateApt, *, work: Path) -> None:
    """The stand-in for debian:<suite>-slim: mmdebstrap's minbase of the suite with -slim's
    dpkg excludes, without the apt sources, resolver and host name of this machine."""
    sources = work / "debian.sources"
    sources.write_text(debian_sources())
    tools = spark.tools_dir() / "usr" / "bin"
    env = {**os.environ, "TMPDIR": str(work), "PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    forget = ('rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/* "$1"/etc/resolv.conf '
              '"$1"/etc/hostname "$1"/etc/apt/apt.conf.d/99mmdebstrap')
    spark.run([str(tools / "mmdebstrap"), "--mode=root", "--variant=minbase", "--format=tar",
               *(f"--dpkgopt={option}" for option in SLIM_EXCLUDES), "--aptopt=Acquire::Languages \"none\"",
               f"--customize-hook={forget}", SUITE, str(work / "base.tar"), str(sources)],
              env=env, what="mmdebstrap (the base image)", log_file=work / "mmdebstrap.log")
    container = b("from", "scratch", policy=True)
    b("add", container, str(work / "base.tar"), "/")
    (work / "base.tar").unlink()
    b("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "--cmd", "bash", "--created-by", f"scripts/build_notebook_image.py: mmdebstrap {SUITE} minbase",
      container)
    b("commit", container, BASE_IMAGE, policy=True)
    b("rm", container)


def build_mounts(work: Path) -> list[str]:
    """`--volume` options: the machine's Debian sources, and root's home with the machine's
    pip settings and CA bundle, for the RUN steps only (both mount points are in the base)."""
    sources = work / "build-apt-sources"
    sources.mkdir()
    (sources / "debian.sources").write_text(debian_sources())
    home = work / "build-home"
    (home / ".config" / "pip").mkdir(parents=True)
    home.chmod(0o700)
    settings, cert = pip_settings()
    (home / ".config" / "pip" / "pip.conf").write_text(pip_conf(settings, cert=cert))
    if cert is not None:
        shutil.copyfile(cert, home / PIP_CA)
    return ["--volume", f"{sources}:/etc/apt/sources.list.d:ro", "--volume", f"{home}:{HOME_IN_BUILD}"]


def build_context(work: Path) -> Path:
    """A context directory holding only CONTEXT_FILES: the build proves COPY needs no more."""
    context = work / "context"
    for name in CONTEXT_FILES:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, context / name)
    return context


def build_image(b: Buildah, *, work: Path) -> None:
    """Build the Dockerfile. The RUN steps get the machine's host name, which its /etc/hosts
    resolves: under buildah 1.28 a step's own host name resolves to nothing, and Spark (the
    JVM-archive step) stops at once on an unknown local host name; docker's builder names it."""
    host = socket.gethostname()
    b("bud", "--isolation", "chroot", "--pull=never", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
      "--uts", "host", "--add-host", f"{host}:127.0.0.1",
      *build_mounts(work), "--file", str(DOCKERFILE), "--tag", image_name(), str(build_context(work)),
      policy=True, what="buildah bud helm-values/spark-image/Dockerfile", log_file=work / "bud.log")


def build(archive: Path) -> dict:
    """Build the image into `archive`; what it was built from and how long it took."""
    work = Path(tempfile.mkdtemp(dir=spark.cache_dir(), prefix="notebook-build."))
    b = Buildah(work)
    try:
        apt = spark.PrivateApt(work / "apt")
        apt.update()
        spark.fetch_tools(apt)
        fetch_buildah(apt)
        b.remove_all()  # what an interrupted build left
        started = time.monotonic()
        build_base(b, apt, work=work)
        base_seconds = time.monotonic() - started
        build_image(b, work=work)
        built_seconds = time.monotonic() - started
        b("push", image_name(), f"oci-archive:{work / 'image.tar'}:{image_tag()}", policy=True)
        contents = {"image": image_name(), "key": key(), "inputs": inputs(), "base_image": BASE_IMAGE,
                    "buildah": b.version(), "base_seconds": round(base_seconds),
                    "build_seconds": round(built_seconds), "size": (work / "image.tar").stat().st_size}
        manifest_path().write_text(json.dumps(contents, indent=1, sort_keys=True) + "\n")
        os.replace(work / "image.tar", archive)
        return contents
    finally:
        with contextlib.suppress(BuildError):
            b.remove_all()
        spark.remove_work(work)


def main(argv: list[str] | None = None) -> int:
    def build_it(archive: Path) -> str:
        built = build(archive)
        return f"{built['size'] // 2**20} MB (base {built['base_seconds']} s)"

    return spark.build_once(argv, prog="build_notebook_image", doc=__doc__, archive=archive_path(),
                            name=image_name(), build=build_it, root_for="mmdebstrap --mode=root and buildah")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
