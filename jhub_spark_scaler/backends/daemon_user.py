"""The Unix user the local backend's Spark daemons run as (`LocalBackend.run_as`).

Every executor a worker launches runs as the worker's user, and runs the code of any
notebook user: a scaler running as root must not hand that user root. So as root
the daemons run as `run_as`, or the backend refuses to start unless `allow_root`
says root is meant (the single-user demo). Not as root, the daemons run as the
scaler's own user, which `run_as` may only name.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from typing import NamedTuple

from ..errors import ConfigError


class DaemonUser(NamedTuple):
    """Who the daemons run as, when that is not the scaler's own user."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def scaler_user() -> str:
    """The name of the scaler's own user (its uid when it has no name)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def daemon_user(run_as: str, *, allow_root: bool) -> DaemonUser | None:
    """The user the daemons run as; None for the scaler's own. ConfigError when that would
    be root without `allow_root`, or `run_as` cannot be (unknown, or another user while
    the scaler is not root)."""
    if run_as:
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            raise ConfigError(f"LocalBackend.run_as: no Unix user {run_as!r} on this machine") from None
        if entry.pw_uid == os.geteuid():
            run_as = ""  # the scaler's own user: nothing to switch
        elif os.geteuid() != 0:
            raise ConfigError(f"LocalBackend.run_as: {run_as!r} needs the scaler to run as root (it runs "
                              f"as {scaler_user()!r}); leave run_as empty to run Spark as {scaler_user()!r}")
        elif entry.pw_uid != 0:
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
            return DaemonUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
    if os.geteuid() == 0 and not allow_root:
        raise ConfigError(
            "LocalBackend.run_as: the scaler runs as root and would run Spark, and so every notebook "
            "user's executor code, as root; set LocalBackend.run_as to an unprivileged user "
            "(or LocalBackend.allow_root = True for a single-user machine)"
        )
    return None


def _uid_of(pid: int) -> int | None:
    """The real uid of process `pid`; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_adoptable(pids: list[int], user: DaemonUser | None, *, state_dir: str) -> None:
    """ConfigError if a daemon to adopt (`pids`, running) runs as another user than `user`
    (None: the scaler's): one started before `run_as` was set would go on running
    executors as root."""
    want = os.geteuid() if user is None else user.uid
    if others := [pid for pid in pids if _uid_of(pid) not in (want, None)]:
        who = repr(user.name) if user else f"the scaler's user {scaler_user()!r}"
        raise ConfigError(
            f"LocalBackend.run_as: the Spark processes {', '.join(map(str, others))} of {state_dir} run as "
            f"another user than {who}; stop them (kill them by pid) so that the scaler starts new ones"
        )


def daemon_home(user: DaemonUser | None, fallback: str) -> str:
    """HOME for the daemons: `user`'s home if it exists, else `fallback` (a directory of
    the backend's); the scaler's own HOME when they run as the scaler's user."""
    if user is None:
        return os.path.expanduser("~")
    return user.home if os.path.isdir(user.home) else fallback


def _may(st: os.stat_result, user: DaemonUser, bits: int) -> bool:
    """Whether the mode bits of `st` grant `user` all of `bits` (rwx as 4, 2, 1); ACLs aside."""
    shift = 6 if st.st_uid == user.uid else 3 if st.st_gid in user.groups else 0
    return (st.st_mode >> shift) & bits == bits


def unreachable(path: str, user: DaemonUser, *, bits: int) -> str:
    """The first part of `path` (symlinks resolved) that `user` cannot pass, or, the file
    itself, cannot use as `bits` says (4 read, 1 execute); "" if none."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(1, len(parts)):
        directory = os.sep.join(parts[:i]) or os.sep
        if not _may(os.stat(directory), user, 1):
            return directory
    return "" if _may(os.stat(real), user, bits) else real


def readable_check(what: str, path: str, user: DaemonUser | None, *, bits: int) -> None:
    """ConfigError naming setting `what` when `user` cannot use `path`."""
    if user is None:
        return
    if blocked := unreachable(path, user, bits=bits):
        mode = stat.filemode(os.stat(blocked).st_mode)
        owner = pwd.getpwuid(os.stat(blocked).st_uid).pw_name
        raise ConfigError(f"{what}: LocalBackend.run_as user {user.name!r} cannot reach {path} "
                          f"({blocked} is {mode} {owner}:{_group(os.stat(blocked).st_gid)}); "
                          "install it where that user can read it, or set " + what)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class _Daemon(subprocess.Popen):
    """A daemon that outlives this object by design: `Children` reaps it, so no warning
    that it still runs when the object goes (the scaler leaves workers to the next one)."""

    def __del__(self) -> None:
        pass


def spawn(cmd: list[str], env: dict[str, str], *, log_fd: int, user: DaemonUser | None) -> int:
    """Start `cmd` in a new session as `user` (uid, gid and groups set before the exec),
    stdin /dev/null, output to `log_fd`; its pid."""
    switch = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    return _Daemon(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                   start_new_session=True, **switch).pid
