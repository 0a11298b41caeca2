"""Where the pre-warm history (`prewarm_history`) outlives the scaler: the backend's own store.

`Backend.history_store()` returns one: a file in the local backend's state directory
(`FileStore`), a ConfigMap on Kubernetes (`kube_history.ConfigMapStore`), or None (kept in
memory only). A store only holds a JSON object: what is in it, and when to read or write
it, is `prewarm_keeper`'s business.
"""

from __future__ import annotations

import logging
import os

from . import BackendError
from .state_files import read_json, write_json

#: the record's file name in the local backend's state directory
FILE_NAME = "prewarm-history.json"


class StoreError(Exception):
    """The store cannot be read or written now; one line saying what to fix."""


class Unreadable(StoreError):
    """The store answered, but what it holds is not a JSON object: a fresh record replaces it."""


class HistoryStore:
    """The interface: one JSON object, read and written whole."""

    #: what it is, for log lines ("ConfigMap spark/jhub-spark-scaler-default-prewarm-history")
    what = "memory"
    #: the fewest seconds between two writes: the record changes when servers end, which can
    #: be every cycle on a big hub, and a ConfigMap write is a replicated etcd write
    write_interval = 30.0
    #: the most bytes of the record, serialized: a ConfigMap holds at most 1 MiB with its
    #: metadata, and a state file is read up to 1 MiB (about 9,000 users at prewarm_history 3)
    max_bytes = 900_000

    async def read(self) -> dict | None:
        """The stored object; None if nothing was stored yet. `Unreadable` if what is there
        is not a JSON object, `StoreError` if the store cannot be read."""
        raise NotImplementedError

    async def write(self, record: dict) -> None:
        """Replace the stored object with `record`; `StoreError` if it cannot be written."""
        raise NotImplementedError


class FileStore(HistoryStore):
    """`prewarm-history.json` in the local backend's state directory (mode 0600, replaced
    whole, never through a symlink: `state_files`)."""

    def __init__(self, state_dir: str, *, log: logging.Logger):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)
        self.what = self.path
        self.log = log

    write_interval = 0.0  # a local file: written at every change, as cheap as the workers' state files
    # written with a space after each separator (write_json): at most a quarter more than
    # counted, under the 1 MiB a state file is read up to
    max_bytes = 800_000

    async def read(self) -> dict | None:
        doc = read_json(self.path, root=self.state_dir, log=self.log)
        if doc is None and os.path.lexists(self.path):
            raise Unreadable(f"{self.path} holds no JSON object (damaged, unreadable or a symlink)")
        return doc

    async def write(self, record: dict) -> None:
        try:
            write_json(self.path, record, root=self.state_dir)
        except (OSError, BackendError) as e:
            raise StoreError(f"cannot write {self.path}: {e}") from None
