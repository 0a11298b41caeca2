"""A real, minimal Kubernetes control plane for tests: etcd and kube-apiserver on loopback.

No scheduler, no controller-manager, no kubelet (see tests/kubelet.py for a stand-in,
tests/kube_node.py for a real node on a KubeCluster of its own),
so no pod ever runs, no service account token is ever created, and nothing
garbage-collects. What there is: the real API with RBAC, admission, validation,
resourceVersions, watches, graceful deletion and static-token users.

The binaries come from scripts/install-kube-apiserver.sh (kube-apiserver v1.20.2 and
etcd 3.4, in ${JSS_CACHE:-~/.cache/jhub-spark-scaler}/bin).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from jupyterhub.utils import random_port
from kubernetes_asyncio import client, config

from .waiting import until

BIN = Path(os.environ.get("JSS_CACHE") or Path.home() / ".cache" / "jhub-spark-scaler") / "bin"
INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-kube-apiserver.sh"


def _service_account(namespace: str, name: str) -> tuple[str, list[str]]:
    """A token user that authenticates like that service account's token would."""
    return (f"system:serviceaccount:{namespace}:{name}",
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"])


#: static token users: name -> (username, groups). The service accounts have no permissions
#: until a test binds a Role to them; "hub" is z2jh's hub, which the scaler runs as.
USERS = {
    "admin": ("admin", ["system:masters"]),
    "spark-scaler": _service_account("spark", "spark-scaler"),
    "hub": _service_account("jhub", "hub"),
}


def binaries_installed() -> bool:
    return all(os.access(BIN / name, os.X_OK) for name in ("kube-apiserver", "etcd"))


def stop_process(process: subprocess.Popen | None, grace: float) -> None:
    """End the process group of `process`: SIGTERM and `grace` seconds to exit (none if 0),
    then SIGKILL; reap it (bounded)."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        if wait:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class KubeCluster:
    """etcd + kube-apiserver on 127.0.0.1 with free ports, all state under `workdir`.

    `await start()`, then `kubeconfig(user)` / `await api_client(user)` for a user of
    `USERS` (plus `users`); `stop()` ends everything. `stop_apiserver()` /
    `await start_apiserver()` simulate an apiserver outage (same port, certs, tokens,
    etcd); `compact_etcd()` makes every older resourceVersion answer 410 Gone.
    `admission_plugins` are enabled beside the default ones (a second cluster of its own,
    for example with PodSecurityPolicy, which would refuse the other tests' pods).
    `authorization` is the apiserver's --authorization-mode; `service_accounts` turns the
    ServiceAccount admission on, for a control plane whose controller-manager makes the
    accounts and their tokens (tests/kube_node.py).
    """

    def __init__(self, workdir: Path, *, namespace: str = "spark",
                 users: dict[str, tuple[str, list[str]]] | None = None, start_timeout: float = 60,
                 admission_plugins: tuple[str, ...] = (), authorization: str = "RBAC",
                 service_accounts: bool = False):
        self.workdir = Path(workdir)
        self.authorization = authorization
        self.service_accounts = service_accounts
        self.admission_plugins = admission_plugins
        self.namespace = namespace
        self.users = {**USERS, **(users or {})}
        self.tokens = {name: secrets.token_hex(16) for name in self.users}
        self.start_timeout = start_timeout
        self.etcd_port = random_port()
        self.port = random_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert_dir = self.workdir / "certs"
        self.ca_file = self.cert_dir / "apiserver.crt"  # self-signed by kube-apiserver at first start
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        with open(self.workdir / log_name, "ab") as log:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    async def start(self) -> None:
        """Start etcd and the apiserver, wait until ready, create the namespace. On failure
        everything started is stopped again."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_dir.mkdir(exist_ok=True)
        try:
            await self._start_etcd()
            self._write_auth_files()
            await self.start_apiserver()
            async with await self.api_client("admin") as api:
                await client.CoreV1Api(api).create_namespace(
                    {"metadata": {"name": self.namespace}})
        except BaseException:
            self.stop()
            raise

    async def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{random_port()}"
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = self._spawn([
            str(BIN / "etcd"), "--name", "test", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--logger", "zap", "--log-level", "warn",
        ], "etcd.log")

        def healthy():
            try:
                with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as r:
                    return json.load(r).get("health") == "true"
            except (OSError, ValueError):
                return False

        await until(healthy, timeout=self.start_timeout, what="etcd", process=self.etcd,
                    log=self.workdir / "etcd.log", interval=0.1)

    def _write_auth_files(self) -> None:
        with open(self.workdir / "tokens.csv", "w") as f:  # token,user,uid,"group1,group2"
            for name, (user, groups) in self.users.items():
                f.write(f'{self.tokens[name]},{user},{user},"{",".join(groups)}"\n')
        # 1.20 requires a service-account issuer and signing key even if no token is ever issued
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", str(self.workdir / "sa.key")], check=True, capture_output=True)

    async def start_apiserver(self) -> None:
        """Start the apiserver (again) and wait until /readyz answers ok."""
        sa_key = str(self.workdir / "sa.key")
        self.apiserver = self._spawn([
            str(BIN / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--insecure-port=0",
            # with --bind-address loopback, 1.20 would advertise the host's default interface
            # (and fail without one); a loopback endpoint for the `kubernetes` service is
            # invalid, so nobody reconciles it
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--cert-dir={self.cert_dir}",  # serving cert self-signed for 127.0.0.1 at first start
            f"--authorization-mode={self.authorization}", f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-signing-key-file={sa_key}", f"--service-account-key-file={sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",  # addresses are only numbers here
            # without a controller-manager nobody creates service accounts or their tokens,
            # so the admission plugin that requires them would reject every pod
            *([] if self.service_accounts else ["--disable-admission-plugins=ServiceAccount"]),
            *([f"--enable-admission-plugins={','.join(self.admission_plugins)}"]
              if self.admission_plugins else []),
            # watches read etcd directly: after compact_etcd() an old resourceVersion is
            # 410 Gone at once (the watch cache would keep serving it)
            "--watch-cache=false",
            "--profiling=false", "--enable-priority-and-fairness=false",
        ], "apiserver.log")
        try:
            await until(self._ready, timeout=self.start_timeout, what="kube-apiserver /readyz",
                        process=self.apiserver, log=self.workdir / "apiserver.log")
        except BaseException:
            stop_process(self.apiserver, 0)
            raise

    def _ready(self) -> bool:
        if not self.ca_file.exists():
            return False
        request = urllib.request.Request(f"{self.url}/readyz",
                                         headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        try:
            with urllib.request.urlopen(request, timeout=2,
                                        context=ssl.create_default_context(cafile=self.ca_file)) as r:
                return r.read() == b"ok"
        except (OSError, ssl.SSLError):
            return False

    def stop_apiserver(self) -> None:
        """Crash the apiserver (SIGKILL: clients see their connections reset); etcd keeps
        running. Not SIGTERM: 1.20 then refuses new connections at once but keeps serving
        the open watches for up to 60 s before it exits."""
        stop_process(self.apiserver, 0)
        self.apiserver = None

    def stop(self) -> None:
        self.stop_apiserver()
        stop_process(self.etcd, 10)
        self.etcd = None

    # -- etcd ------------------------------------------------------------------------------

    def _etcd_post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.etcd_port}{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision (through etcd 3.4's JSON gateway); return it."""
        key = base64.b64encode(b"/").decode()
        revision = int(self._etcd_post("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
        self._etcd_post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    # -- clients ---------------------------------------------------------------------------

    def kubeconfig(self, user: str) -> Path:
        """A kubeconfig file (JSON, which is YAML) for the token user `user` of `users`."""
        path = self.workdir / f"kubeconfig-{user}.json"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                      "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user,
                                                      "namespace": self.namespace}}],
        }, indent=1))
        return path

    async def api_client(self, user: str) -> client.ApiClient:
        """A kubernetes_asyncio ApiClient for `user` (from its kubeconfig); close it after use
        (`async with await cluster.api_client("admin") as api:`)."""
        return await config.new_client_from_config(config_file=str(self.kubeconfig(user)),
                                                   persist_config=False)
