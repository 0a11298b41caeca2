"""A STAND-IN for cluster DNS on the real test node (tests/kube_node.py): dnsmasq answering
`<service>.<namespace>.svc.cluster.local` with the ready pod IPs of the Service's Endpoints,
and NXDOMAIN at once for every other name.

Why a stand-in: CoreDNS cannot be built here (no Go module proxy), and kube-proxy cannot run
(no iptables binary, and its rules would change the machine's netfilter, outside the node's
own directories and bridge). So every Service resolves as CoreDNS resolves a headless one,
to its ready pods' IPs. With a ClusterIP Service, as the deployment guide's are, CoreDNS
answers the Service's ClusterIP and kube-proxy forwards each connection to a ready pod; this
node cannot do that. A client that resolves the name again after the pod behind it was
replaced reaches the new pod either way, which is what the tests on it rely on. Test ids
that rely on it carry `stand-in-dns`.

dnsmasq (Debian's dnsmasq-base, unpacked by scripts/install-kube-node.sh into the per-machine
cache with the libraries it needs) listens on the node's bridge address, port 53, and nowhere
else; it reads no resolv.conf and no /etc/hosts, forwards nothing, writes no pid or lease
file, and drops root for `nobody` once its socket is bound. Its records are one hosts file
per Endpoints object in a directory it watches with inotify; `EndpointsWatch` writes them,
listing then watching Endpoints in every namespace as the admin user. A file is replaced by a
rename, so dnsmasq never reads half of one. Answers carry TTL 0; a JVM still keeps a found
address for 30 s and a missing one for 10 s (its own cache).

The kubelet points every pod (dnsPolicy ClusterFirst, the default) at it: the node's
kubelet config sets clusterDNS to the bridge address and clusterDomain to `cluster.local`,
so resolv.conf in a pod reads `nameserver <bridge address>`, `search <ns>.svc.cluster.local
svc.cluster.local cluster.local`, `options ndots:5`. It runs for the node's whole lifetime,
started before the kubelet and stopped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aiodns
import pytest
from kubernetes_asyncio import client, config, watch

from .kube_cluster import BIN, stop_process
from .waiting import until

log = logging.getLogger(__name__)

DNS_DIR = BIN.parent / "node-dns"
DNSMASQ = DNS_DIR / "bin" / "dnsmasq"
CLUSTER_DOMAIN = "cluster.local"
#: how long one watch request lasts before the apiserver ends it and it is opened again
WATCH_SECONDS = 60
BACKOFF_MAX = 5.0
START_SECONDS = 30  # for the watch's first list, and for its thread to end


def dns_installed() -> bool:
    return os.access(DNSMASQ, os.X_OK) and any(DNS_DIR.glob(".complete-*"))


def service_name(name: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    return f"{name}.{namespace}.svc.{domain}"


def hosts_file(endpoints: dict, domain: str = CLUSTER_DOMAIN) -> tuple[str, str]:
    """The hosts file for one Endpoints object (as the API serializes it): its file name
    and its text, a line per ready address (notReadyAddresses are left out, as CoreDNS
    leaves them out). No ready address: an empty file, so the name answers NXDOMAIN."""
    meta = endpoints["metadata"]
    fqdn = service_name(meta["name"], meta["namespace"], domain)
    ips = sorted({a["ip"] for s in endpoints.get("subsets") or () for a in s.get("addresses") or ()})
    return f"{meta['name']}.{meta['namespace']}", "".join(f"{ip} {fqdn}\n" for ip in ips)


class StandInDns:
    """dnsmasq on `address`:53 and its Endpoints watch. `await start(kubeconfig)` (an admin's)
    returns once it answers and holds every Endpoints object;
    `await lookup(name)` asks it; `await stop()` ends both, also after a failed start."""

    def __init__(self, workdir: Path, *, address: str, domain: str = CLUSTER_DOMAIN):
        self.workdir = Path(workdir)
        self.address, self.domain = address, domain
        self.log_file = self.workdir / "dnsmasq.log"
        # dnsmasq reads the hosts files after dropping root for nobody, who cannot enter the
        # test's own 0700 directories: a directory of its own under /tmp, removed at stop
        self.hosts_dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self.watch: EndpointsWatch | None = None
        self.started_in = 0.0  # seconds from spawning dnsmasq to its first answer

    async def start(self, kubeconfig: Path) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts_dir = Path(tempfile.mkdtemp(prefix=f"jss-dns-{os.getpid()}-"))
        self.hosts_dir.chmod(0o755)
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text(self._config())
        started = time.monotonic()
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [str(DNSMASQ), f"--conf-file={conf}"], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                     "LD_LIBRARY_PATH": str(DNS_DIR / "lib")})
        await until(self._answers, timeout=30, interval=0.05, what="the stand-in DNS to answer",
                    process=self.process, log=self.log_file)
        self.started_in = time.monotonic() - started
        self.watch = EndpointsWatch(kubeconfig, self.hosts_dir, domain=self.domain)
        await asyncio.get_running_loop().run_in_executor(None, self.watch.start)

    def _config(self) -> str:
        return "\n".join([
            "keep-in-foreground", "log-facility=-", "log-queries", "pid-file=",
            "bind-interfaces", f"listen-address={self.address}", "port=53",
            "no-resolv", "no-hosts", "no-poll", "user=nobody",
            f"hostsdir={self.hosts_dir}",
            f"local=/{self.domain}/",  # answered from the hosts files only
            "address=/#/",  # every other name, reverse lookups included: NXDOMAIN, no forwarding
            "",
        ])

    async def _answers(self) -> bool:
        try:
            await self.lookup(f"probe.{self.domain}")
        except aiodns.error.DNSError as e:
            return e.args[0] == aiodns.error.ARES_ENOTFOUND
        return True

    async def lookup(self, name: str) -> list[str]:
        """The A records it answers for `name` ([] for NXDOMAIN); DNSError if it does not answer."""
        resolver = aiodns.DNSResolver(nameservers=[self.address], timeout=1, tries=1)
        try:
            result = await resolver.query_dns(name, "A")
        except aiodns.error.DNSError as e:
            if e.args[0] == aiodns.error.ARES_ENOTFOUND:
                return []
            raise
        finally:
            await resolver.close()
        return sorted(r.data.addr for r in result.answer if r.type == 1)

    async def stop(self) -> None:
        try:
            if self.watch is not None:
                self.watch.stop()
        finally:
            stop_process(self.process, 5)
            if self.hosts_dir is not None:
                shutil.rmtree(self.hosts_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        running = self.process is not None and self.process.poll() is None
        left = [f"process {self.process.pid} (stand-in DNS)"] if running else []
        if self.hosts_dir is not None and self.hosts_dir.exists():
            left.append(f"directory {self.hosts_dir}")
        return left


class EndpointsWatch:
    """Keeps one hosts file per Endpoints object in `hosts_dir`: lists every namespace's
    Endpoints, then watches from the list's resourceVersion; on any failure (a 410 Gone too)
    it lists again after a backoff of 0.1 s doubling to BACKOFF_MAX. `start()` returns after
    the first list.

    It runs in a thread of its own, on an event loop and an API client of its own: the
    records must follow the API whatever the tests' event loop does meanwhile (a test that
    blocks it for minutes, a module that runs in another loop)."""

    def __init__(self, kubeconfig: Path, hosts_dir: Path, *, domain: str):
        self.kubeconfig, self.hosts_dir, self.domain = kubeconfig, hosts_dir, domain
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.thread: threading.Thread | None = None
        self._listed = threading.Event()
        self._failed: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread, name="stand-in DNS endpoints watch", daemon=True)
        self.thread.start()
        if not self._listed.wait(START_SECONDS) or self._failed:
            self.stop()
            raise AssertionError(f"the stand-in DNS's Endpoints watch did not list within "
                                 f"{START_SECONDS} s: {self._failed!r}")

    def stop(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            return
        if self.loop is not None and self.task is not None:
            with contextlib.suppress(RuntimeError):  # its loop ended meanwhile
                self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(START_SECONDS)

    def _thread(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.task = self.loop.create_task(self._main())
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # its start's failure, which start() reports
            self._failed = e
            self._listed.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self.api = await config.new_client_from_config(str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        try:
            version = await self._list()
            self._listed.set()
            await self._run(version)
        finally:
            await self.api.close()

    async def _run(self, version: str) -> None:
        delay = 0.1
        while True:
            try:
                version = await self._follow(version or await self._list())
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next list starts over from what is there now
                log.warning("stand-in DNS: endpoints watch failed, listing again in %.1f s: %s", delay, e)
                version = ""
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _list(self) -> str:
        listed = await self.core.list_endpoints_for_all_namespaces()
        wanted = set()
        for endpoints in listed.items:
            wanted.add(self._write(self.api.sanitize_for_serialization(endpoints)))
        for stale in set(os.listdir(self.hosts_dir)) - wanted:
            os.unlink(self.hosts_dir / stale)
        return listed.metadata.resource_version

    async def _follow(self, version: str) -> str:
        """One watch request from `version` until the apiserver ends it (after WATCH_SECONDS):
        the resourceVersion to watch on from. Raises if it fails (a 410 Gone too)."""
        request = self.core.list_endpoints_for_all_namespaces
        stream = watch.Watch().stream(request, resource_version=version, timeout_seconds=WATCH_SECONDS)
        async with stream:
            async for event in stream:
                endpoints = event["raw_object"]
                if event["type"] == "DELETED":
                    name, _ = hosts_file(endpoints, self.domain)
                    (self.hosts_dir / name).unlink(missing_ok=True)
                else:
                    self._write(endpoints)
        return stream.resource_version or version

    def _write(self, endpoints: dict) -> str:
        name, text = hosts_file(endpoints, self.domain)
        path, partial = self.hosts_dir / name, self.hosts_dir / f".{name}"  # dnsmasq skips dot files
        if not path.exists() or path.read_text() != text:
            partial.write_text(text)
            partial.chmod(0o644)
            os.replace(partial, path)
        return name


# the one param names the stand-in in every test id that uses it: test_x[stand-in-dns]
@pytest.fixture(params=["stand-in-dns"])
def cluster_dns(real_node):
    """The real node's StandInDns, which runs for the node's whole lifetime."""
    return real_node.dns
