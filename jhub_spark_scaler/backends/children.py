"""The local backend's daemons as processes: spawned in sessions of their own, ended, reaped.

Nothing is signalled on a state file's word alone (anyone running as the service's user
can plant one): before each signal the pid is pinned with a pidfd, then checked (start
time and command line, see `processes.is_ours`), then signalled through the pidfd, so a
pid that ends and is reused in between gets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import stat
import time
from collections.abc import Callable

from . import BackendError
from .daemon_user import DaemonUser, spawn
from .processes import Daemon, alive, command_line, executor_in, executors_in, is_ours, record_pid, start_time

#: pidfd_send_signal flag (linux/pidfd.h, Linux 6.9+): the process group the pidfd's process leads
PIDFD_SIGNAL_PROCESS_GROUP = 4
#: seconds an adopted process whose command line reads empty (exec under way) is asked again
EXEC_GRACE = 2.0


def send_checked(pid: int, sig: int, check: Callable[[], bool], *, group: bool = False) -> bool:
    """Send `sig` to `pid` if `check()` holds once the pid is pinned; whether it was sent.

    With `group`, to its process group instead when the process leads it (a daemon we
    spawned with a session of its own, with the executors it launched); a process that
    does not lead its group gets `sig` alone: never a group we did not create."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone, or a thread's id rather than a process's
        return False
    try:
        if not check():
            return False
        if group and os.getpgid(pid) == pid:
            _signal_group(fd, pid, sig)
        else:
            signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


def _signal_group(fd: int, pid: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(fd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        # a kernel before 6.9: the group of the leader checked a moment ago (its id cannot
        # be reused while the group has a member)
        os.killpg(pid, sig)


def end_executors(work_dir: str) -> int:
    """SIGKILL the Spark executors (and their children) working in `work_dir`, a real
    path; how many. All are pinned and checked again (see `processes.executor_in`) before
    any is killed: an executor's child no longer shows its executor once that is dead."""
    pinned = []
    try:
        for pid in executors_in(work_dir):
            with contextlib.suppress(OSError):
                pinned.append((pid, os.pidfd_open(pid)))
        killed = 0
        for _, fd in [(pid, fd) for pid, fd in pinned if executor_in(pid, work_dir)]:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed += 1
        return killed
    finally:
        for _, fd in pinned:
            os.close(fd)


def _open_log(path: str) -> int:
    """`path` for appending; a symlink (at the file or its directory) or a FIFO is refused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(os.path.basename(path), flags, 0o600, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as e:
        why = "a symlink" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
        raise BackendError(f"LocalBackend: refusing the log file {path}: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackendError(f"LocalBackend: refusing the log file {path}: not a regular file")
    return fd


class Children:
    """The processes this backend spawned and has not reaped yet (so none stays a zombie)."""

    def __init__(self) -> None:
        self.pids: dict[int, int | None] = {}  # pid -> its start time

    def spawn(self, cmd: list[str], env: dict[str, str], *, log_path: str, user: DaemonUser | None) -> int:
        """Start `cmd` in a new session as `user` (None: this process's), output appended
        to `log_path` (opened here: the log stays ours); its pid."""
        log = _open_log(log_path)
        try:
            pid = spawn(cmd, env, log_fd=log, user=user)
        finally:
            os.close(log)
        self.pids[pid] = start_time(pid)
        return pid

    def reap(self, *pids: int) -> None:
        """Collect our children that exited (and `pids`, if children of this process): no zombies."""
        for pid in self.pids.keys() | set(pids):
            try:
                done = os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:
                done = True
            if done:
                self.pids.pop(pid, None)

    def spawned(self, rec: dict) -> bool:
        """The record names a process spawned here and not reaped yet: its pid is held for us."""
        pid = record_pid(rec)
        return pid in self.pids and self.pids[pid] is not None and self.pids[pid] == rec.get("start_time")

    def ours(self, rec: dict, daemon: Daemon) -> bool:
        """The record names `daemon`, alive (see `processes.is_ours`)."""
        return is_ours(rec, daemon, spawned_here=self.spawned(rec))

    async def identify(self, rec: dict, daemon: Daemon) -> bool:
        """`ours`, asking again for up to EXEC_GRACE seconds while the process the record
        names is alive but its command line reads empty: one a scaler spawned a moment
        before it died, still in exec. Still empty then, it is not ours."""
        deadline = time.monotonic() + EXEC_GRACE
        while not self.ours(rec, daemon):
            pid = record_pid(rec)
            if pid is None or command_line(pid) != [] or not alive(rec) or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def send(self, rec: dict, daemon: Daemon, sig: int, *, group: bool = False,
             check: Callable[[], bool] = lambda: True) -> bool:
        """`send_checked` to the process of record `rec` if it is `daemon` (see `ours`) and
        `check()` holds."""
        pid = record_pid(rec)
        return pid is not None and send_checked(
            pid, sig, lambda: self.ours(rec, daemon) and check(), group=group)

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

    async def terminate(self, rec: dict, daemon: Daemon, *, what: str, timeout: float,
                        log: logging.Logger) -> bool:
        """SIGTERM to `daemon`, the process of record `rec`; after `timeout` seconds SIGKILL
        to its process group (with the executors it launched). Nothing goes to a process
        that is not `daemon`. True if it exited on SIGTERM (or was gone already)."""
        if not self.send(rec, daemon, signal.SIGTERM):
            return not alive(rec)
        if await self.wait_gone(rec, timeout):
            return True
        log.warning("LocalBackend: %s (pid %d) outlived SIGTERM by %.0fs; killing it",
                    what, rec["pid"], timeout)
        if self.send(rec, daemon, signal.SIGKILL, group=True):
            await self.wait_gone(rec, 5.0)
        return False
