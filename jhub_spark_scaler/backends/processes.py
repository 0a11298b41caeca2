"""What the local backend reads about processes and sockets: `/proc` and the kernel's picks.

A record is a state file's dict with at least "pid" and "start_time" (field 22 of
/proc/<pid>/stat): pids get reused, so a pid names our process only while its start
time matches the record.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # fields 3, 4, ...
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(rec: dict) -> bool:
    """The process the record names still runs (a zombie does not)."""
    pid = rec.get("pid")
    return isinstance(pid, int) and pid > 0 and start_time(pid) == rec.get("start_time")


def is_ours(rec: dict, main_class: str) -> bool:
    """The process the record names is alive and is the Spark daemon we started. Its
    command line reads empty until the kernel has set up the exec'd program's arguments,
    a moment after the spawn returns; the pid and start time already say it is ours then."""
    try:
        with open(f"/proc/{rec['pid']}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except (OSError, KeyError, TypeError):
        return False
    return (args == [b""] or main_class.encode() in args) and alive(rec)


def processes_in(directory: str) -> list[int]:
    """The processes whose working directory is `directory` or below it."""
    root, found = os.path.realpath(directory), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd == root or cwd.startswith(root + os.sep):
                found.append(int(entry))
    return found


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
