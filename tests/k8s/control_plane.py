"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

The API server and controller manager are upstream v1.20.2, built from Debian's own source
package by `k8s/realnode/prepare.sh` and cached in ~/.cache/fedrec/kube-v1.20.2
(or $FEDREC_KUBE_BIN_DIR); etcd is Debian's `etcd-server`. Nothing is emulated here: the objects,
validation, RBAC, watches, the StatefulSet, Deployment and ReplicaSet controllers and the garbage
collector are the real ones. There is no scheduler and no kubelet: the `cluster` tier uses it for what
needs an API server alone (Lease leader election); `real_node.py` runs a whole node.

Everything listens on 127.0.0.1 only. The ClusterIPs the API server assigns (10.96.0.0/16) are
never connected to.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from protocol import children

DEFAULT_BIN_DIR = Path.home() / ".cache" / "fedrec" / "kube-v1.20.2"
SERVICE_CIDR = "10.96.0.0/16"
ADMIN_TOKEN_USER = "fedrec-test-admin"


def binaries() -> dict[str, Path] | None:
    """The cached kube-apiserver and kube-controller-manager and Debian's etcd, or None."""
    folder = Path(os.environ.get("FEDREC_KUBE_BIN_DIR", DEFAULT_BIN_DIR))
    found = {name: folder / name for name in ("kube-apiserver", "kube-controller-manager")}
    etcd = shutil.which("etcd")
    if etcd is None or not all(path.exists() for path in found.values()):
        return None
    return {**found, "etcd": Path(etcd)}


def available() -> str | None:
    """Why the control plane cannot run here (None: it can)."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    if binaries() is None:
        return ("kube-apiserver/kube-controller-manager v1.20.2 are not cached (~/.cache/fedrec/kube-v1.20.2) or etcd "
                "is missing: run k8s/realnode/prepare.sh (or ../shared/tools/build-kube-apiserver.sh)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], *, log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start argv in its own session; the kernel kills it if this process dies."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(children.exec_argv(*argv),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
    finally:
        log.close()


class ControlPlane:
    """`start()` brings up etcd, the API server and the controller manager under `root`."""

    def __init__(self, root: Path) -> None:
        found = binaries()
        if found is None:
            raise RuntimeError("kube-apiserver/kube-controller-manager are not cached and etcd is not installed: "
                               "run ../shared/tools/build-kube-apiserver.sh ~/.cache/fedrec/kube-v1.20.2")
        self.bin = found
        self.root = root
        self.pki = root / "pki"
        self.processes: list[subprocess.Popen] = []
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self.token = os.urandom(16).hex()
        self.kubeconfig = root / "kubeconfig"

    # certificates

    def _write_pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec-test-cluster-ca")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")]
        import ipaddress

        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([*names, x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        (self.pki / "ca.crt").write_bytes(ca.public_bytes(pem))
        (self.pki / "apiserver.crt").write_bytes(cert.public_bytes(pem))
        (self.pki / "apiserver.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.pki / "sa.key").write_bytes(sa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        (self.pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            pem, serialization.PublicFormat.SubjectPublicKeyInfo))
        (self.pki / "tokens.csv").write_text(f'{self.token},{ADMIN_TOKEN_USER},{ADMIN_TOKEN_USER},"system:masters"\n')
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: test\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority: {self.pki / 'ca.crt'}\n"
            f"users:\n- name: admin\n  user:\n    token: {self.token}\n"
            "contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n"
            "current-context: test\n")

    # processes

    def start(self, *, timeout_s: float = 60.0) -> ControlPlane:
        self._write_pki()
        etcd_client, etcd_peer = free_port(), free_port()
        self.processes.append(spawn([
            str(self.bin["etcd"]), "--data-dir", str(self.root / "etcd"), "--unsafe-no-fsync",
            "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}", "--log-level", "warn"],
            log_path=self.root / "etcd.log"))
        pki = self.pki
        self.processes.append(spawn([
            str(self.bin["kube-apiserver"]), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.api_port}",
            "--insecure-port=0", f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--disable-admission-plugins=ServiceAccount", "--allow-privileged=false", "--profiling=false",
            f"--cert-dir={self.root / 'apiserver-certs'}", "--endpoint-reconciler-type=none", "-v=1"],
            log_path=self.root / "kube-apiserver.log"))
        self._wait_ready(timeout_s)
        self.processes.append(spawn([
            str(self.bin["kube-controller-manager"]), f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--controllers=statefulset,deployment,replicaset,garbagecollector,disruption",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--port=0",
            "--concurrent-statefulset-syncs=5", "--concurrent-replicaset-syncs=5", "-v=1"],
            log_path=self.root / "kube-controller-manager.log"))
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[3]} exited ({process.returncode}); see logs in {self.root}")
            try:
                request = urllib.request.Request(f"{self.server}/readyz",
                                                 headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(request, context=context, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the API server was not ready within {timeout_s:.0f} s; see {self.root}")

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        kubectl = shutil.which("kubectl")
        assert kubectl is not None
        return subprocess.run([kubectl, f"--kubeconfig={self.kubeconfig}", *args], input=input_text,
                              capture_output=True, text=True, check=check, timeout=timeout_s)

    def api_client(self):
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
