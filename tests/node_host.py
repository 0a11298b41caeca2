"""The host side of the real test node (tests/kube_node.py): its bridge, its cgroup subtree
and its mount namespace. Each is made by the test session under a name of its own and
removed again; nothing else on the machine is changed.

- `Bridge`: a Linux bridge in the host's network namespace with a /24 from 198.18.0.0/15
  (the range reserved for benchmarking) that no interface of the machine uses. The bridge
  holds the .1 address, so the test process reaches pod IPs through it and pods reach the
  host there; nothing routes or masquerades, so no packet leaves the machine.
- `CgroupTree`: one directory of the node's own in every cgroup hierarchy, the kubelet's
  --cgroup-root: every pod's cgroups are below it, so its processes can be found and killed.
- `MountNamespace`: a private mount namespace for containerd and the kubelet. /run,
  /var/lib and /var/log are bind mounts of the node's own directories there (containerd
  1.6 puts its shim sockets in /run/containerd, the kubelet v1.20 writes /var/log/pods and
  /var/log/containers, the CNI library caches in /var/lib/cni, none of them configurable),
  and three sysctl files read the values the kubelet insists on (see kube_node.py). Every
  mount the runtime makes (rootfs overlays, network namespaces, volumes) lives in that
  namespace and goes away with its last process.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
NETWORK = ipaddress.ip_network("198.18.0.0/15")

#: sysctl -> the value the kubelet v1.20 requires, or else sets on the whole machine
KUBELET_SYSCTLS = {"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of NETWORK that no address of this machine is in."""
    used = []
    for line in _run("ip", "-4", "-o", "addr", "show").splitlines():
        used.append(ipaddress.ip_interface(line.split()[3]).network)
    for subnet in NETWORK.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {NETWORK}")


class Bridge:
    """The node's pod network: bridge `name` with the first address of `subnet`."""

    def __init__(self, name: str, subnet: ipaddress.IPv4Network):
        assert len(name) <= 15, name  # IFNAMSIZ
        self.name, self.subnet = name, subnet
        self.address = str(subnet.network_address + 1)

    def create(self) -> None:
        _run("ip", "link", "add", self.name, "type", "bridge")
        _run("ip", "addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.name)
        _run("ip", "link", "set", self.name, "up")

    def delete(self) -> None:
        if Path("/sys/class/net", self.name).exists():
            _run("ip", "link", "del", self.name)


class CgroupTree:
    """Directory `name` in every cgroup hierarchy (runc also makes the containers' cgroups in
    the unified hierarchy of a hybrid host like this one)."""

    def __init__(self, name: str):
        self.name = name.strip("/")
        self.dirs = [h / self.name for h in sorted(CGROUP_FS.iterdir()) if (h / "cgroup.procs").exists()]

    @property
    def path(self) -> str:
        """The kubelet's --cgroup-root."""
        return "/" + self.name

    def create(self) -> None:
        for d in self.dirs:
            d.mkdir(exist_ok=True)
            if d.parent.name == "cpuset":  # an empty cpuset cgroup takes no processes
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((d.parent / f).read_text())

    def pids(self) -> set[int]:
        """Every process in the tree."""
        found = set()
        for d in self.dirs:
            for procs in d.rglob("cgroup.procs") if d.exists() else ():
                try:
                    found.update(int(p) for p in procs.read_text().split())
                except OSError:  # removed meanwhile
                    pass
        return found

    def remove(self, timeout: float = 20) -> None:
        """SIGKILL every process in the tree, then remove its directories, deepest first."""
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                _kill(pid)
            time.sleep(0.1)
        for d in self.dirs:
            if not d.exists():
                continue
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir(sub, deadline)
            _rmdir(d, deadline)


def _rmdir(path: Path, deadline: float) -> None:
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while the last processes exit
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class MountNamespace:
    """A mount namespace held by one process of ours; `enter(args)` runs a command in it."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.holder: subprocess.Popen | None = None
        self.ready = self.workdir / "ready"

    def start(self) -> None:
        binds = []
        for target in ("/run", "/var/lib", "/var/log"):
            own = self.workdir / target.strip("/").replace("/", "-")
            own.mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {shlex.quote(str(own))} {target}")
        for name, value in KUBELET_SYSCTLS.items():
            own = self.workdir / ("sysctl-" + name.replace("/", "-"))
            own.write_text(value + "\n")
            binds.append(f"mount --bind {shlex.quote(str(own))} /proc/sys/{name}")
        binds.append(f"touch {shlex.quote(str(self.ready))}")
        script = "set -e; " + "; ".join(binds) + "; exec sleep infinity"
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.ready.exists():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node's mount namespace did not start ({script})")
            time.sleep(0.05)

    @property
    def ns(self) -> str:
        return f"/proc/{self.holder.pid}/ns/mnt"

    def enter(self, args: list[str]) -> list[str]:
        """`args` as a command that runs inside the namespace (nsenter execs it: same PID)."""
        return ["nsenter", f"--mount={self.ns}", "--", *args]

    def members(self) -> set[int]:
        """The processes in the namespace besides its holder."""
        try:
            mine = os.readlink(self.ns)
        except OSError:
            return set()
        found = set()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != self.holder.pid:
                try:
                    if os.readlink(proc / "ns" / "mnt") == mine:
                        found.add(int(proc.name))
                except OSError:
                    pass
        return found

    def stop(self, timeout: float = 10) -> None:
        """SIGKILL every process in the namespace, then its holder: the namespace and every
        mount in it are gone."""
        if self.holder is None:
            return
        deadline = time.monotonic() + timeout
        while (pids := self.members()) and time.monotonic() < deadline:
            for pid in pids:
                _kill(pid)
            time.sleep(0.1)
        _kill(self.holder.pid)
        self.holder.wait(timeout)
        self.holder = None
