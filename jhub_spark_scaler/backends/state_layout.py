"""Who may write what in the local backend's `state_dir`.

The scaler's records decide which processes it signals and which directories it
deletes, so only the scaler's user may write them. The daemons, and so every executor,
may run as another user (`LocalBackend.run_as`): they get directories of their own
inside, and only those:

    state_dir/            scaler, 0711 (0700 when the daemons are the scaler's user)
      master.json, next-id, workers/, logs/   scaler; workers/ and logs/ 0700
      prewarm-history.json                    scaler, 0600: whose servers ran Spark (the hub service)
      work/               scaler, 0711: no daemon can add, rename or replace a work dir
      work/<handle>/      the daemon user, 0700: the worker's --work-dir
      cds/                scaler, 0711: the class data archive (read by the workers)
      cds/dumps/          the daemon user, 0700: where a worker dumps the archive as it exits
      home/               the daemon user, 0700: HOME when its own does not exist

The daemons' logs are opened by the scaler and handed to them as open files, so they
stay the scaler's. 0711 lets the daemon user pass through to its directories without
listing or changing anything on the way.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import ConfigError
from .daemon_user import DaemonUser

#: the scaler's directories, and whether the daemons pass through them
SCALER_DIRS = {"workers": False, "logs": False, "work": True, "cds": True}
#: the daemon user's directories
DAEMON_DIRS = ("cds/dumps", "home")


def _mode(user: DaemonUser | None, *, traversed: bool) -> int:
    return 0o711 if user is not None and traversed else 0o700


def _own(path: str, *, uid: int, gid: int, mode: int) -> None:
    """Create directory `path` (or take the one there: only the scaler's user can have made
    it) for `uid` with `mode`; refuse anything else there, a symlink above all."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError(f"LocalBackend.state_dir: cannot create {path}: {e.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"LocalBackend.state_dir: {path} is not a directory (a symlink?); remove it")
    if st.st_uid != uid or gid not in (-1, st.st_gid):
        os.chown(path, uid, gid, follow_symlinks=False)
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)  # a directory, not a symlink: checked above


def prepare(state_dir: str, user: DaemonUser | None) -> None:
    """Create or check `state_dir` and its directories for daemons that run as `user`
    (None: the scaler's own); ConfigError, one line, when it is not safe to use."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(state_dir)), exist_ok=True)
        os.mkdir(state_dir, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError(f"LocalBackend.state_dir: cannot create {state_dir}: {e.strerror}") from None
    link = os.lstat(state_dir)
    if stat.S_ISLNK(link.st_mode) and link.st_uid != os.geteuid():  # planted, e.g. in /tmp
        raise ConfigError(f"LocalBackend.state_dir: {state_dir} is a symlink of uid {link.st_uid}, not the "
                          f"scaler's {os.geteuid()}; use a directory of the scaler's user")
    st = os.stat(state_dir)  # the admin may point it through a symlink of theirs
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"LocalBackend.state_dir: cannot use {state_dir}: {os.strerror(errno.ENOTDIR)}")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"LocalBackend.state_dir: {state_dir} belongs to uid {st.st_uid}, not the "
                          f"scaler's {os.geteuid()}; use a directory of the scaler's user")
    if st.st_mode & 0o022:
        raise ConfigError(f"LocalBackend.state_dir: {state_dir} is {stat.filemode(st.st_mode)}: others may "
                          "write to it and plant the records the scaler acts on; chmod go-w it")
    mode = _mode(user, traversed=True)
    if st.st_mode & 0o7777 != mode:
        os.chmod(state_dir, mode)
    for name, traversed in SCALER_DIRS.items():
        _own(os.path.join(state_dir, name), uid=os.geteuid(), gid=-1, mode=_mode(user, traversed=traversed))
    for name in DAEMON_DIRS:
        _own(os.path.join(state_dir, name), uid=daemon_uid(user), gid=-1 if user is None else user.gid,
             mode=0o700)


def daemon_uid(user: DaemonUser | None) -> int:
    return os.geteuid() if user is None else user.uid


def work_dir(path: str, user: DaemonUser | None) -> None:
    """Create a worker's --work-dir `path` (in the scaler's work/) for the daemon user."""
    os.mkdir(path, 0o700)  # handles are never reused: a directory there is not ours to hand over
    if user is not None:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
