"""What the local backend reads about processes and sockets: `/proc` and the kernel's picks.

A record is a state file's dict with at least "pid" and "start_time" (field 22 of
/proc/<pid>/stat): pids get reused, so a pid names our process only while its start
time matches the record. State files can be planted by anyone running as the service's
user (every executor), so a record alone never makes a process ours: its command line
must also be the daemon we started (a `Daemon`: main class and arguments only ours carry).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass

EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
#: how far up from a process its parents are searched for the executor that launched it
_ANCESTORS = 16


@dataclass(frozen=True)
class Daemon:
    """A Spark daemon of ours as its command line shows it: the main class, and `marker`,
    arguments in a row that only ours carry (a worker's --work-dir, the master's state dir)."""

    main_class: str
    marker: tuple[str, ...]

    def matches(self, args: list[str]) -> bool:
        n = len(self.marker)
        return self.main_class in args and any(
            tuple(args[i:i + n]) == self.marker for i in range(len(args) - n + 1)
        )


def _stat(pid: int) -> list[bytes] | None:
    """Fields 3, 4, ... of /proc/<pid>/stat (state, ppid, ...); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot); None if gone or a zombie."""
    fields = _stat(pid)
    return None if not fields or fields[0] in (b"Z", b"X") else int(fields[19])


def record_pid(rec: dict) -> int | None:
    """The record's pid if it can name a process of ours: not 0, 1, negative (a process
    group to kill()) or a bool."""
    pid = rec.get("pid")
    return pid if type(pid) is int and pid > 1 else None


def alive(rec: dict) -> bool:
    """The process the record names still runs (a zombie does not)."""
    pid = record_pid(rec)
    return pid is not None and start_time(pid) == rec.get("start_time")


def command_line(pid: int) -> list[str] | None:
    """The arguments of `pid` ([] while they read empty); None if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    args = raw.decode(errors="surrogateescape").split("\0") if raw else []
    return args[:-1] if args and args[-1] == "" else args


def is_ours(rec: dict, daemon: Daemon, *, spawned_here: bool = False) -> bool:
    """The process the record names is alive and its command line is `daemon`'s.

    A command line reads empty until the kernel has set up an exec'd program's arguments,
    a moment after the spawn returns (and always for kernel threads). It is accepted only
    with `spawned_here`: the caller spawned this pid and has not reaped it, so no other
    process can hold the pid, and its command line is the one the caller gave. A process
    adopted from a state file must show its command line."""
    pid = record_pid(rec)
    args = None if pid is None else command_line(pid)
    if args is None or not (daemon.matches(args) if args else spawned_here):
        return False
    return alive(rec)  # after reading the command line: it was this process's


def _cwd_in(pid: int, root: str) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == root or cwd.startswith(root + os.sep)


def _is_executor(pid: int) -> bool:
    args = command_line(pid)
    return bool(args) and os.path.basename(args[0]) == "java" and EXECUTOR_CLASS in args


def executor_in(pid: int, root: str) -> bool:
    """`pid` works in directory `root` (a real path) or below it and is a Spark executor
    JVM or descends from one (its Python workers): what a worker left in its work dir.
    An admin's shell or anything else that merely sits in the directory is not."""
    if not _cwd_in(pid, root):
        return False
    for _ in range(_ANCESTORS):
        if _is_executor(pid):
            return True
        fields = _stat(pid)
        pid = int(fields[1]) if fields else 0
        if pid <= 1:
            return False
    return False


def executors_in(root: str) -> list[int]:
    """The processes `executor_in` directory `root` (a real path)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and executor_in(int(e), root)]


def catches(pid: int, sig: int) -> bool:
    """The process handles `sig` (a JVM without Spark's handler dies of SIGPWR)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def listening_hosts() -> set[str]:
    """IPv4 addresses something listens on (TCP, also as IPv4-mapped IPv6, as the JVM binds)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:  # "sl local_address:port rem_address:port st ..."
                address, state = line.split()[1].split(":")[0], line.split()[3]
                words = [int(address[i:i + 8], 16).to_bytes(4, sys.byteorder)  # words in host byte order
                         for i in range(0, len(address), 8)]
                if state == "0A" and (len(words) == 1 or words[:3] == [bytes(4), bytes(4), b"\0\0\xff\xff"]):
                    hosts.add(socket.inet_ntoa(words[-1]))  # LISTEN, IPv4 or ::ffff:a.b.c.d
    return hosts


def bind_error(host: str, port: int) -> str:
    """Why a daemon could not listen on host:port ("" if it can)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return ""


def free_port(host: str, *, avoid=()) -> int:
    """A port nothing listens on now (the kernel's pick), not one of `avoid`."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
