"""The local backend's daemons as processes: spawned in sessions of their own, ended, reaped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from .daemon_user import DaemonUser, spawn
from .processes import alive


class Children:
    """The processes this backend spawned and has not reaped yet (so none stays a zombie)."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def spawn(self, cmd: list[str], env: dict[str, str], *, log_path: str, user: DaemonUser | None) -> int:
        """Start `cmd` in a new session as `user` (None: this process's), output appended
        to `log_path` (opened here: the log stays ours); its pid."""
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            pid = spawn(cmd, env, log_fd=log, user=user)
        finally:
            os.close(log)
        self.pids.add(pid)
        return pid

    def reap(self, *pids: int) -> None:
        """Collect our children that exited (and `pids`, if children of this process): no zombies."""
        for pid in self.pids | set(pids):
            try:
                done = os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:
                done = True
            if done:
                self.pids.discard(pid)

    async def wait_gone(self, rec: dict, timeout: float) -> bool:
        """Whether the process of state record `rec` ended within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            gone = not alive(rec)  # a zombie counts as gone: reap it now
            self.reap(rec["pid"])  # (another backend in this process may have spawned it)
            if gone:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def terminate(self, rec: dict, *, what: str, timeout: float, log: logging.Logger) -> bool:
        """SIGTERM; after `timeout` seconds SIGKILL to its process group (with the executors
        it launched). True if it exited on SIGTERM."""
        pid = rec["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
            if await self.wait_gone(rec, timeout):
                return True
            log.warning("LocalBackend: %s (pid %d) outlived SIGTERM by %.0fs; killing it", what, pid, timeout)
            os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        await self.wait_gone(rec, 5.0)
        return False
