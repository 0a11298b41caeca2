"""The local workers' class data (AppCDS) archive: workers start about twice as fast from one.

An archive is named by a key of what makes it valid (the JVM, the Spark jars, the worker
daemon's JVM options): a change of any of them starts a new archive, and `remove_stale()`
deletes the others. Java 17 cannot create an archive by itself, so one worker at a time
starts with -XX:ArchiveClassesAtExit and dumps its classes as it exits, into a directory
of the daemons' user (the archives' own is the scaler's); `finish_dump()`, called when
that worker is stopped, moves the dump in place, or marks the archive
`<archive>.failed` so that no worker tries again until an admin removes the mark. An
archive in place is complete (only `os.replace` puts one there): it is used, and never
marked failed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable

from .processes import alive
from .state_files import remove

DUMP_OPTION = "-XX:ArchiveClassesAtExit="


def archive_path(cds_dir: str, *, java: str, spark_home: str, worker_heap: str,
                 extra_java_options: Iterable[str]) -> str:
    """The archive for workers started with these settings, in `cds_dir`."""
    java = os.path.realpath(java)
    jars = sorted(os.listdir(os.path.join(spark_home, "jars")))
    key = json.dumps([java, os.stat(java).st_mtime, jars, worker_heap, list(extra_java_options)])
    return os.path.join(cds_dir, f"worker-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa")


def remove_stale(cds_dir: str, archive: str) -> None:
    """Delete every archive, dump and mark in `cds_dir` but those of `archive`."""
    remove(*(p for p in glob.glob(os.path.join(cds_dir, "worker-*")) if not p.startswith(archive)))


def worker_options(archive: str, *, dump_dir: str, handle: str, records: Iterable[dict],
                   enabled: bool) -> list[str]:
    """The JVM options for worker `handle`: use the archive; else have this worker dump
    its classes into `dump_dir` when it exits, unless a worker of `records` (the state files) is dumping
    them already, or the archive is marked failed."""
    if not enabled:
        return []
    if os.path.exists(archive):  # complete: only os.replace puts one there
        return [f"-XX:SharedArchiveFile={archive}"]
    if os.path.exists(f"{archive}.failed"):
        return []
    if any(r.get("cds_dump") and alive(r) for r in records):
        return []
    return [f"{DUMP_OPTION}{os.path.join(dump_dir, os.path.basename(archive))}.{handle}.tmp"]


def dump_file(options: list[str]) -> str:
    """The file the worker started with `options` dumps its classes to ("" if none): kept in
    its state file as "cds_dump"."""
    return options[0].removeprefix(DUMP_OPTION) if options and options[0].startswith(DUMP_OPTION) else ""


def finish_dump(rec: dict, *, cds_dir: str, handle: str, stopped: bool, exited: bool,
                log: logging.Logger) -> None:
    """After worker `handle` (state file `rec`, its "cds_dump" checked by
    `state_files.own_dump`) is gone: move its dump into `cds_dir` as the archive, if a
    file (the daemons' user may have put anything there). One that
    died before its stop (SIGKILL, OOM) never got to dump: the next worker tries. One
    that exited without a dump, or outlived cds_dump_timeout, marks the archive failed."""
    dump = rec.get("cds_dump")
    if not dump:
        return
    # named from the dump, never from the record: a record may be planted
    archive = os.path.join(cds_dir, os.path.basename(dump).removesuffix(f".{handle}.tmp"))
    if exited and os.path.isfile(dump) and not os.path.islink(dump):
        os.replace(dump, archive)
        log.info("LocalBackend: wrote %s; workers will start from it", archive)
        return
    remove(dump)
    if os.path.exists(archive):
        return  # in place already (moved by an earlier stop of this worker, or another's): nothing failed
    if not stopped:
        log.warning("LocalBackend: worker %s died before writing the class data archive; "
                    "the next worker writes it", handle)
        return
    # not through a symlink: cds/ is the scaler's, but a state_dir shared with the daemons is not
    os.close(os.open(f"{archive}.failed", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    why = "exited without one" if exited else "was killed after LocalBackend.cds_dump_timeout"
    log.warning("LocalBackend: worker %s wrote no class data archive (%s); not trying again "
                "until %s.failed is removed", handle, why, archive)
