"""One active scaler per local `state_dir`: an exclusive `flock` on `state_dir/scaler.lock`.

The kernel drops a flock when its holder exits or dies (SIGKILL included), so a
standby takes over without any timeout, and a dead scaler never blocks its successor.
The file holds the holder's pid, for the one-line error a second scaler prints.

The file is never deleted: a waiter might lock the old inode while a new file took
its name. `still_held()` checks that the name still leads to the locked inode.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import stat

from ..errors import ConfigError
from . import BackendError, Leadership

LOCK_FILE = "scaler.lock"
#: seconds between tries while standing by (flock cannot be awaited; a blocking
#: flock in a thread could not be cancelled)
RETRY = 0.25


class StateDirLock(Leadership):
    """The exclusive lock on a state dir, held for the life of the process."""

    def __init__(self, state_dir: str, *, log: logging.Logger):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LOCK_FILE)
        self.what = f"LocalBackend.state_dir {state_dir}"
        self.log = log
        self._fd: int | None = None
        self._held = False

    def _open(self) -> int:
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as e:  # a file where the directory belongs: "File exists" would mislead
            why = "Not a directory" if isinstance(e, FileExistsError) else e.strerror
            raise ConfigError(f"LocalBackend.state_dir: cannot create {self.state_dir}: {why}") from None
        try:
            # O_NOFOLLOW: a symlink planted in its place is refused, not followed.
            # O_CLOEXEC: the Spark daemons started later must not inherit the lock:
            # the master outlives the scaler and would hold it for good.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(f"LocalBackend.state_dir: cannot open {self.path}: {e.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(fd)
            raise ConfigError(f"LocalBackend.state_dir: {self.path} is not a regular file of uid "
                              f"{os.geteuid()}; remove it")
        return fd

    def _try_lock(self) -> bool:
        """Take the lock if it is free (the fd stays open either way)."""
        if self._fd is None:
            self._fd = self._open()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not self._same_file():  # locked a file that was just replaced: lock the new one
            self._close()
            return False
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        self._held = True
        return True

    def _same_file(self) -> bool:
        try:
            named = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(self._fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def holder(self) -> str:
        """The holder's pid as written in the file ("unknown" while it is being written)."""
        text = ""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                text = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
        return text if text.isdigit() else "unknown"

    async def acquire(self, *, wait: bool) -> None:
        if self._try_lock():
            return
        # the holder writes its pid right after locking: give it a moment before naming it
        for _ in range(20):
            if self.holder() != "unknown":
                break
            await asyncio.sleep(0.05)
        holder = self.holder()
        if not wait:
            self._close()
            raise BackendError(
                f"another jhub-spark-scaler (pid {holder}) is the active scaler of {self.what}: "
                "stop it, or start this one with --standby to take over when it exits"
            )
        self.log.info("standing by: jhub-spark-scaler pid %s is the active scaler of %s", holder, self.what)
        while not self._try_lock():
            await asyncio.sleep(RETRY)
        self.log.info("now the active scaler of %s (pid %s was before)", self.what, holder)

    async def still_held(self) -> bool:
        # the flock itself cannot be lost while the fd is open; the name can be replaced
        return self._held and self._same_file()

    def _close(self) -> None:
        self._held = False
        if self._fd is not None:
            os.close(self._fd)  # releases the flock, if held
            self._fd = None

    async def release(self) -> None:
        if self._held and self._same_file():
            os.ftruncate(self._fd, 0)  # no pid: the next holder is not told about an exited one
        self._close()
