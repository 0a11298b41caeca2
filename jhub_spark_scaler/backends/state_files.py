"""The local backend's state files: JSON written whole or not at all, read leniently,
never through a symlink.

A worker's file is `workers/<handle>.json` under the state directory, its handle
"local-<n>" with n from the `next-id` counter, so that handles are never reused.

Anyone running as the service's Unix user (every Spark executor) may plant files under
the state directory, so nothing there is followed: a state file that is a symlink (or a
FIFO, or not a file) is refused, logged and taken as absent; a temp file is created anew
(O_EXCL, mode 0600) after unlinking whatever had its name; a directory the scaler made
(workers/, work/, work/<handle>/, logs/) that is a symlink is refused with a BackendError.
The state directory itself is the admin's setting and may be a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator

from . import BackendError

HANDLE = re.compile(r"local-(\d+)")
#: what a worker's state file must hold to be adopted
REQUIRED = {"pid", "start_time", "host", "port", "webui_port", "created_at"}
#: the most of a state file read (they hold a few hundred bytes)
MAX_SIZE = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@contextlib.contextmanager
def _directory(root: str, rel: str) -> Iterator[int]:
    """An fd of directory `rel` below `root`: `root` opened as given, each directory below
    it without following a symlink."""
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise ValueError(f"{rel} is not below {root}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in [] if rel == os.curdir else rel.split(os.sep):
            try:
                sub = os.open(part, _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise BackendError(f"LocalBackend: refusing {os.path.join(root, rel)}: "
                                   "a symlink or not a directory (the scaler makes it; remove it)") from None
            os.close(fd)
            fd = sub
        yield fd
    finally:
        os.close(fd)


def _parent(path: str, root: str):
    """`_directory` holding `path`, which lies below `root`."""
    return _directory(root, os.path.relpath(os.path.dirname(path), root))


def _read(path: str, *, root: str) -> bytes:
    """The start of regular file `path`; OSError(ELOOP) for a symlink, OSError(EINVAL) for the rest."""
    with _parent(path, root) as folder:  # O_NONBLOCK: a FIFO planted there does not hang the scaler
        fd = os.open(os.path.basename(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read(MAX_SIZE)


def read_json(path: str, *, root: str, log: logging.Logger) -> dict | None:
    """The JSON object in `path` (below state directory `root`); None if the file is missing,
    unreadable, not an object, or refused (logged): a symlink or not a regular file."""
    try:
        data = json.loads(_read(path, root=root))
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EINVAL):
            log.warning("LocalBackend: refusing state file %s: a symlink or not a regular file", path)
        return None
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _replace(path: str, data: bytes, *, root: str) -> None:
    """Replace `path` at once: a scaler killed mid-write leaves the old file, not half a new one."""
    name = os.path.basename(path)
    with _parent(path, root) as folder:
        with contextlib.suppress(FileNotFoundError):  # a stale temp file, or a symlink: not followed
            os.unlink(f"{name}.tmp", dir_fd=folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with open(os.open(f"{name}.tmp", flags, 0o600, dir_fd=folder), "wb") as f:
            f.write(data)
        os.replace(f"{name}.tmp", name, src_dir_fd=folder, dst_dir_fd=folder)


def write_json(path: str, data: dict, *, root: str) -> None:
    """Replace `path` (below state directory `root`) with `data` at once."""
    _replace(path, json.dumps(data).encode(), root=root)


def remove(*paths: str, root: str | None = None) -> None:
    """Delete the files that exist of `paths` (a symlink itself, not what it points at);
    with `root`, no directory below it is followed either."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if root is None:
                os.remove(path)
            else:
                with _parent(path, root) as folder:
                    os.unlink(os.path.basename(path), dir_fd=folder)


def worker_file(state_dir: str, handle: str) -> str:
    if not HANDLE.fullmatch(handle):
        raise BackendError(f"LocalBackend: {handle!r} is not a local worker handle")
    return os.path.join(state_dir, "workers", f"{handle}.json")


def own_dump(rec: dict, *, cds_dir: str, handle: str) -> bool:
    """The record's "cds_dump" is absent, or a file only worker `handle` dumps to in
    `cds_dir` (a planted one could name any file)."""
    dump = rec.get("cds_dump")
    return dump is None or isinstance(dump, str) and os.path.dirname(dump) == cds_dir and bool(
        re.fullmatch(rf"worker-[0-9a-f]{{16}}\.jsa\.{handle}\.tmp", os.path.basename(dump)))


def worker_records(state_dir: str, log: logging.Logger) -> list[dict]:
    """The workers' state files, each with its "handle", oldest first; unreadable ones are
    skipped; a symlinked workers/ raises BackendError."""
    try:
        with _directory(state_dir, "workers") as folder:
            names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    records = []
    for name in (n for n in names if n.startswith("local-") and n.endswith(".json")):
        path, handle = os.path.join(state_dir, "workers", name), name[: -len(".json")]
        rec = read_json(path, root=state_dir, log=log) if HANDLE.fullmatch(handle) else None
        if rec is None or not REQUIRED <= rec.keys():
            log.warning("LocalBackend: ignoring unreadable state file %s", path)
        else:
            records.append({**rec, "handle": handle})
    return sorted(records, key=lambda r: int(r["handle"][len("local-"):]))


def next_handle(state_dir: str, log: logging.Logger) -> str:
    """A handle no worker had: above the counter and every state file."""
    counter = os.path.join(state_dir, "next-id")
    try:
        n = int(_read(counter, root=state_dir))
    except (OSError, ValueError):
        n = 1
    n = max([n] + [int(r["handle"][len("local-"):]) + 1 for r in worker_records(state_dir, log)])
    _replace(counter, str(n + 1).encode(), root=state_dir)
    return f"local-{n}"


def work_dir(state_dir: str, handle: str, *, log: logging.Logger) -> str | None:
    """The real path of worker `handle`'s work dir; None if it is missing, or refused
    (logged): a symlink, or in a work/ that is one."""
    path = os.path.join(state_dir, "work", handle)
    try:
        with _parent(path, state_dir) as folder:
            fd = os.open(handle, _DIR, dir_fd=folder)
    except FileNotFoundError:
        return None
    except (OSError, BackendError) as e:
        log.warning("LocalBackend: refusing work dir %s: a symlink or not a directory (%s)", path, e)
        return None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # where the directory opened really is
    finally:
        os.close(fd)


def remove_work_dir(state_dir: str, handle: str) -> None:
    """Delete worker `handle`'s work dir if it is a real directory; a symlink (there or
    anywhere inside) is never followed."""
    path = os.path.join(state_dir, "work", handle)
    with contextlib.suppress(FileNotFoundError, BackendError), _parent(path, state_dir) as folder:
        if stat.S_ISDIR(os.stat(handle, dir_fd=folder, follow_symlinks=False).st_mode):
            shutil.rmtree(handle, dir_fd=folder, ignore_errors=True)  # fd-based: follows no symlink
