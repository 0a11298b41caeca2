"""The local backend's state files: JSON written whole or not at all, read leniently.

A worker's file is `workers/<handle>.json` under the state directory, its handle
"local-<n>" with n from the `next-id` counter, so that handles are never reused.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re

from . import BackendError

HANDLE = re.compile(r"local-(\d+)")
#: what a worker's state file must hold to be adopted
REQUIRED = {"pid", "start_time", "host", "port", "webui_port", "created_at"}


def read_json(path: str) -> dict | None:
    """The JSON object in `path`; None if the file is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str, data: dict) -> None:
    """Replace `path` at once: a scaler killed mid-write leaves the old file, not half a new one."""
    with open(f"{path}.tmp", "w") as f:
        json.dump(data, f)
    os.replace(f"{path}.tmp", path)


def remove(*paths: str) -> None:
    """Delete the files that exist of `paths`."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def worker_file(state_dir: str, handle: str) -> str:
    if not HANDLE.fullmatch(handle):
        raise BackendError(f"LocalBackend: {handle!r} is not a local worker handle")
    return os.path.join(state_dir, "workers", f"{handle}.json")


def worker_records(state_dir: str, log: logging.Logger) -> list[dict]:
    """The workers' state files, each with its "handle", oldest first; unreadable ones are skipped."""
    records = []
    for path in glob.glob(os.path.join(state_dir, "workers", "local-*.json")):
        rec, handle = read_json(path), os.path.basename(path)[: -len(".json")]
        if rec is None or not REQUIRED <= rec.keys() or not HANDLE.fullmatch(handle):
            log.warning("LocalBackend: ignoring unreadable state file %s", path)
        else:
            records.append({**rec, "handle": handle})
    return sorted(records, key=lambda r: int(r["handle"][len("local-"):]))


def next_handle(state_dir: str, log: logging.Logger) -> str:
    """A handle no worker had: above the counter and every state file."""
    counter = os.path.join(state_dir, "next-id")
    try:
        with open(counter) as f:
            n = int(f.read())
    except (OSError, ValueError):
        n = 1
    n = max([n] + [int(r["handle"][len("local-"):]) + 1 for r in worker_records(state_dir, log)])
    with open(f"{counter}.tmp", "w") as f:
        f.write(str(n + 1))
    os.replace(f"{counter}.tmp", counter)
    return f"local-{n}"
