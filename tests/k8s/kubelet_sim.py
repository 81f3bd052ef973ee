"""A small kubelet (and scheduler, and kube-proxy) for the real API server: pods become local processes.

What it does, as a kubelet would:
- binds every pending pod to its one Node (`fedrec-sim-node`), gives it its own loopback address
  (127.0.x.y) as its pod IP, and reports it Running;
- runs each container's command as a local process, with the pod's environment: `env` values and
  references (fieldRef, configMapKeyRef, secretKeyRef), the `*_SERVICE_HOST` / `*_SERVICE_PORT`
  variables of the namespace's Services, `$(VAR)` expansion in command and args;
- gives it its volumes as local folders: emptyDir, persistentVolumeClaim (one folder per claim,
  kept across pods: the "disk"), secret and configMap (kept in sync, as the kubelet does), and the
  service account token (a real TokenRequest, since the ServiceAccount admission plugin is off);
- runs readiness and liveness probes (httpGet, tcpSocket, exec) and patches the Ready condition;
  restarts a container that exits or fails its liveness probe;
- on deletion: SIGTERM, the grace period, SIGKILL, then removes the pod object.

What it emulates, plainly:
- Images: `fedrec/coordinator` runs with this checkout's virtualenv; `fedrec/edge` the same with
  TensorFlow, TFF and the coordinator package made unimportable (the device side must not need them).
- Network namespaces: all pods share the host's. A container argument `0.0.0.0` (listen on all
  interfaces) becomes the pod's own loopback address, so that two pods can use the same port.
- Mounts: processes see host paths, so every argument or environment value under a volume's
  mountPath is rewritten to that volume's local folder.
- kube-proxy: each Service gets a stable loopback address (127.1.0.x) on which the simulator
  accepts connections and forwards them to a ready backing pod's loopback address. Nothing is ever
  sent to a ClusterIP or any non-loopback address. The `kubernetes` Service is the API server's
  own loopback address.
Not emulated: resource limits, read-only root file systems, NetworkPolicy, security contexts.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.k8s.control_plane import EXEC_WITH_PDEATHSIG

log = logging.getLogger("kubelet-sim")
NODE = "fedrec-sim-node"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


@dataclasses.dataclass(frozen=True)
class Image:
    """How an image's processes run here: PATH and PYTHONPATH entries, extra environment."""

    path: tuple[str, ...]
    pythonpath: tuple[str, ...]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def fedrec_images(repo_root: Path, blockers: Path) -> dict[str, Image]:
    """`fedrec/coordinator` = this checkout's virtualenv; `fedrec/edge` = the same minus TensorFlow."""
    for name in ("tensorflow", "tensorflow_federated", "tensorflow_privacy", "coordinator", "jax"):
        (blockers / name).mkdir(parents=True, exist_ok=True)
        (blockers / name / "__init__.py").write_text(f"raise ImportError('{name} is not in the edge image')\n")
    venv_bin = str(Path(sys.executable).parent)
    system = ("/usr/local/bin", "/usr/bin", "/bin")
    return {"fedrec/coordinator": Image((venv_bin, *system), (str(repo_root),)),
            "fedrec/edge": Image((venv_bin, *system), (str(blockers), str(repo_root)))}


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ is a literal $."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR.sub(one, text)


def service_env(name: str, host: str, ports: list[tuple[str | None, int]]) -> dict[str, str]:
    """The variables a kubelet sets for a Service: NAME_SERVICE_HOST, NAME_SERVICE_PORT[_PORTNAME]."""
    prefix = name.upper().replace("-", "_")
    env = {f"{prefix}_SERVICE_HOST": host, f"{prefix}_SERVICE_PORT": str(ports[0][1])}
    for port_name, port in ports:
        if port_name:
            env[f"{prefix}_SERVICE_PORT_{port_name.upper().replace('-', '_')}"] = str(port)
    return env


class _Keeper:
    """One long-lived thread forks every container process (PDEATHSIG follows the forking thread)."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubelet-sim-fork")

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        wrapped = [sys.executable, "-c", EXEC_WITH_PDEATHSIG, str(os.getpid()), *argv]
        return self.executor.submit(subprocess.Popen, wrapped, start_new_session=True, **kwargs).result()


@dataclasses.dataclass
class _Service:
    namespace: str
    name: str
    address: str
    selector: dict[str, str]
    ports: list[tuple[str | None, int, int | str]]  # (name, port, targetPort)
    servers: list[asyncio.base_events.Server] = dataclasses.field(default_factory=list)


class KubeletSimulator:
    def __init__(self, api: client.ApiClient, *, root: Path, api_server: tuple[str, int], ca_path: Path,
                 images: dict[str, Image], namespaces: tuple[str, ...] = ("fedrec",)) -> None:
        self.api, self.root, self.api_server, self.ca_path = api, root, api_server, ca_path
        self.core = client.CoreV1Api(api)
        self.images, self.namespaces = images, namespaces
        self.pods: dict[str, _PodRunner] = {}  # uid -> runner
        self.services: dict[tuple[str, str], _Service] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._keeper = _Keeper()
        self._next_pod_ip = 0
        self._next_service_ip = 0
        self._loop = asyncio.new_event_loop()
        self._threads: list[threading.Thread] = []
        self.events: list[tuple[float, str, str]] = []  # (time, pod, what) for tests and benchmarks

    # lifecycle

    def start(self) -> KubeletSimulator:
        self.root.mkdir(parents=True, exist_ok=True)
        self._ensure_node()
        for target, name in ((self._loop.run_forever, "kubelet-sim-proxy"), (self._watch_pods, "kubelet-sim-watch"),
                             (self._watch_services, "kubelet-sim-services")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Kill every container process, close every proxy; no API calls from here on."""
        self._stop.set()
        with self._lock:
            runners = list(self.pods.values())
        for runner in runners:
            runner.kill_now()
        for runner in runners:
            if runner.process is not None:
                try:
                    runner.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass

        async def close() -> None:
            for service in list(self.services.values()):
                for server in service.servers:
                    server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._keeper.executor.shutdown(wait=False)

    def record(self, pod: str, what: str) -> None:
        self.events.append((time.time(), pod, what))

    def _ensure_node(self) -> None:
        node = client.V1Node(metadata=client.V1ObjectMeta(name=NODE, labels={"kubernetes.io/hostname": NODE}),
                             status=client.V1NodeStatus(conditions=[client.V1NodeCondition(type="Ready",
                                                                                            status="True")]))
        try:
            self.core.create_node(node)
        except ApiException as error:
            if error.status != 409:
                raise

    # addresses

    def allocate_pod_ip(self) -> str:
        with self._lock:
            self._next_pod_ip += 1
            n = self._next_pod_ip
        return f"127.0.{2 + n // 250}.{1 + n % 250}"

    def _allocate_service_ip(self) -> str:
        self._next_service_ip += 1
        n = self._next_service_ip
        return f"127.1.{n // 250}.{1 + n % 250}"

    # pods

    def _watch_pods(self) -> None:
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = self.core.list_pod_for_all_namespaces()
                    for pod in listing.items:
                        self._on_pod("ADDED", pod)
                    version = listing.metadata.resource_version
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, resource_version=version,
                                              timeout_seconds=10)
                for event in stream:
                    version = event["object"].metadata.resource_version
                    self._on_pod(event["type"], event["object"])
                    if self._stop.is_set():
                        return
            except ApiException as error:
                if error.status == 410:
                    version = None
                else:
                    time.sleep(0.5)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("pod watch failed")
                version = None
                time.sleep(0.5)

    def _on_pod(self, kind: str, pod: client.V1Pod) -> None:
        if pod.metadata.namespace not in self.namespaces:
            return
        uid = pod.metadata.uid
        with self._lock:
            runner = self.pods.get(uid)
            if runner is None:
                if kind == "DELETED" or pod.metadata.deletion_timestamp is not None:
                    return
                if pod.status.phase in ("Succeeded", "Failed"):
                    return
                runner = _PodRunner(self, pod)
                self.pods[uid] = runner
                runner.start()
                return
        if kind == "DELETED":
            runner.terminate(0)
        elif pod.metadata.deletion_timestamp is not None:
            runner.terminate(pod.metadata.deletion_grace_period_seconds or 0)

    def forget(self, runner: _PodRunner) -> None:
        with self._lock:
            self.pods.pop(runner.uid, None)

    def ready_backends(self, namespace: str, selector: dict[str, str]) -> list[_PodRunner]:
        with self._lock:
            return [r for r in self.pods.values() if r.namespace == namespace and r.ready and not r.terminating
                    and all(r.labels.get(k) == v for k, v in selector.items())]

    # services (kube-proxy)

    def _watch_services(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_services()
            except Exception:
                log.exception("service sync failed")
            self._stop.wait(1.0)

    def sync_services(self) -> None:
        """Give every Service a loopback address and listeners (called before each pod starts)."""
        for namespace in self.namespaces:
            for item in self.core.list_namespaced_service(namespace).items:
                key = (namespace, item.metadata.name)
                with self._lock:
                    if key in self.services or item.spec.cluster_ip in (None, "None") or not item.spec.selector:
                        continue
                    service = _Service(namespace, item.metadata.name, self._allocate_service_ip(),
                                       dict(item.spec.selector),
                                       [(p.name, p.port, p.target_port if p.target_port is not None else p.port)
                                        for p in item.spec.ports])
                    self.services[key] = service
                asyncio.run_coroutine_threadsafe(self._listen(service), self._loop).result(timeout=10)

    def env_for_services(self, namespace: str) -> dict[str, str]:
        env = service_env("kubernetes", self.api_server[0], [("https", self.api_server[1])])
        with self._lock:
            for service in self.services.values():
                if service.namespace == namespace:
                    env.update(service_env(service.name, service.address,
                                           [(name, port) for name, port, _ in service.ports]))
        return env

    async def _listen(self, service: _Service) -> None:
        for _name, port, target in service.ports:
            async def handle(reader, writer, target=target):  # type: ignore[no-untyped-def]
                await self._forward(service, target, reader, writer)
            server = await asyncio.start_server(handle, host=service.address, port=port)
            service.servers.append(server)

    async def _forward(self, service: _Service, target: int | str, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        backends = self.ready_backends(service.namespace, service.selector)
        if not backends:
            writer.close()
            return
        backend = backends[int.from_bytes(os.urandom(2), "big") % len(backends)]
        port = backend.container_port(target)
        assert ipaddress.ip_address(backend.ip).is_loopback, backend.ip  # never anywhere else
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(backend.ip, port)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                if not sink.is_closing():
                    sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    # processes

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        return self._keeper.popen(argv, **kwargs)


class _PodRunner:
    """One pod: its volumes, its container processes, its probes, its end."""

    def __init__(self, kubelet: KubeletSimulator, pod: client.V1Pod) -> None:
        self.kubelet, self.pod = kubelet, pod
        self.uid, self.name, self.namespace = pod.metadata.uid, pod.metadata.name, pod.metadata.namespace
        self.labels = dict(pod.metadata.labels or {})
        self.ip = ""
        self.ready = False
        self.terminating = False
        self._grace: float | None = None
        self._wake = threading.Event()
        self.sandbox = kubelet.root / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._volumes: list[tuple[str, Path]] = []  # (mountPath, local folder), set before the command is built

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True).start()

    def terminate(self, grace_s: float) -> None:
        self.terminating = True
        self._grace = grace_s if self._grace is None else min(self._grace, grace_s)
        self._wake.set()

    def kill_now(self) -> None:
        self.terminate(0)
        self._signal(signal.SIGKILL)

    def container_port(self, target: int | str) -> int:
        if isinstance(target, int) or str(target).isdigit():
            return int(target)
        for container in self.pod.spec.containers:
            for port in container.ports or []:
                if port.name == target:
                    return int(port.container_port)
        raise KeyError(f"{self.name} has no port named {target}")

    # the pod's life

    def _run(self) -> None:
        core = self.kubelet.core
        try:
            core.create_namespaced_pod_binding(self.name, self.namespace, client.V1Binding(
                metadata=client.V1ObjectMeta(name=self.name),
                target=client.V1ObjectReference(api_version="v1", kind="Node", name=NODE)), _preload_content=False)
        except ApiException as error:
            if error.status not in (409, 404):
                log.warning("binding %s failed: %s", self.name, error.reason)
            if error.status == 404:
                self.kubelet.forget(self)
                return
        self.ip = self.kubelet.allocate_pod_ip()
        self.kubelet.record(self.name, "bound")
        try:
            self.kubelet.sync_services()
            self._volumes = self._prepare_volumes()
            container = self.pod.spec.containers[0]
            argv, env = self._command(container)
            self._patch_status(running=True)
            self._launch(argv, env)
            self._supervise(container, argv, env)
        except Exception:
            if not self.kubelet._stop.is_set():
                log.exception("pod %s failed", self.name)
        finally:
            self._finish()

    def _launch(self, argv: list[str], env: dict[str, str]) -> None:
        log_path = self.sandbox / "container.log"
        with open(log_path, "ab") as out:
            self.process = self.kubelet.popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=env, cwd=self.sandbox)
        self.kubelet.record(self.name, "started")

    def _supervise(self, container: client.V1Container, argv: list[str], env: dict[str, str]) -> None:
        readiness, liveness = container.readiness_probe, container.liveness_probe
        started = time.monotonic()
        next_ready = started + ((readiness.initial_delay_seconds or 0) if readiness else 0)
        next_live = started + ((liveness.initial_delay_seconds or 0) if liveness else 0)
        live_failures = ready_failures = 0
        next_sync = time.monotonic() + 2
        while not self.terminating:
            now = time.monotonic()
            assert self.process is not None
            if self.process.poll() is not None:
                self._set_ready(False)
                self.restarts += 1
                self.kubelet.record(self.name, f"exited {self.process.returncode}")
                if self._wake.wait(min(10.0, 0.5 * 2 ** min(self.restarts, 5))):
                    break
                self._launch(argv, env)
                started = time.monotonic()
                next_ready = started + ((readiness.initial_delay_seconds or 0) if readiness else 0)
                next_live = started + ((liveness.initial_delay_seconds or 0) if liveness else 0)
                continue
            if readiness is None:
                self._set_ready(True)
            elif now >= next_ready:
                ok = self._probe(readiness, env)
                ready_failures = 0 if ok else ready_failures + 1
                if ok:
                    self._set_ready(True)
                elif ready_failures >= (readiness.failure_threshold or 3):
                    self._set_ready(False)
                next_ready = now + (readiness.period_seconds or 10)
            if liveness is not None and now >= next_live:
                live_failures = 0 if self._probe(liveness, env) else live_failures + 1
                next_live = now + (liveness.period_seconds or 10)
                if live_failures >= (liveness.failure_threshold or 3):
                    self.kubelet.record(self.name, "liveness failed: restarting")
                    self._signal(signal.SIGKILL)
                    live_failures = 0
            if now >= next_sync:
                self._sync_projected_volumes()
                next_sync = now + 2
            self._wake.wait(0.25)

    def _finish(self) -> None:
        self._set_ready(False)
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=max(0.0, self._grace or 0.0))
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        self.kubelet.record(self.name, "stopped")
        if self.terminating and not self.kubelet._stop.is_set():
            try:
                # In the body: with a body, the API server ignores the query's gracePeriodSeconds.
                self.kubelet.core.delete_namespaced_pod(self.name, self.namespace, body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)))
            except ApiException as error:
                if error.status not in (404, 409):
                    log.warning("removing pod %s failed: %s", self.name, error.reason)
        self.kubelet.forget(self)

    def _signal(self, signum: int) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                pass

    # environment and volumes

    def _command(self, container: client.V1Container) -> tuple[list[str], dict[str, str]]:
        image = next((img for prefix, img in self.kubelet.images.items() if container.image.startswith(prefix)), None)
        if image is None:
            raise RuntimeError(f"pod {self.name}: no local runtime for image {container.image}")
        env = {"PATH": os.pathsep.join(image.path), "PYTHONPATH": os.pathsep.join(image.pythonpath),
               "PYTHONUNBUFFERED": "1", "HOSTNAME": self.name, "LANG": "C.UTF-8", **image.env}
        env.update(self.kubelet.env_for_services(self.namespace))
        for item in container.env or []:
            env[item.name] = self._rewrite(self._env_value(item, env))
        argv = [self._rewrite(expand(part, env)) for part in [*(container.command or []), *(container.args or [])]]
        if not argv:
            raise RuntimeError(f"pod {self.name}: the simulator needs an explicit command")
        return argv, env

    def _env_value(self, item: client.V1EnvVar, env: dict[str, str]) -> str:
        if item.value is not None:
            return expand(item.value, env)
        source = item.value_from
        if source is None:
            return ""
        if source.field_ref is not None:
            fields = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                      "metadata.uid": self.uid, "status.podIP": self.ip, "status.hostIP": "127.0.0.1",
                      "spec.nodeName": NODE, "spec.serviceAccountName": self.pod.spec.service_account_name or ""}
            return fields[source.field_ref.field_path]
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            return (self.kubelet.core.read_namespaced_config_map(ref.name, self.namespace).data or {})[ref.key]
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            data = self.kubelet.core.read_namespaced_secret(ref.name, self.namespace).data or {}
            return base64.b64decode(data[ref.key]).decode()
        raise RuntimeError(f"pod {self.name}: unsupported env source for {item.name}")

    def _prepare_volumes(self) -> list[tuple[str, Path]]:
        """(mountPath, local folder) for every mount, longest mountPath first."""
        self.sandbox.mkdir(parents=True, exist_ok=True)
        spec = self.pod.spec
        local: dict[str, Path] = {}
        self._projected: dict[str, Any] = {}
        for volume in spec.volumes or []:
            if volume.persistent_volume_claim is not None:
                folder = self.kubelet.root / "volumes" / self.namespace / volume.persistent_volume_claim.claim_name
            else:
                folder = self.sandbox / "volumes" / volume.name
                if volume.secret is not None or volume.config_map is not None:
                    self._projected[volume.name] = volume
            folder.mkdir(parents=True, exist_ok=True)
            local[volume.name] = folder
        mounts = [(m.mount_path, local[m.name] / (m.sub_path or "")) for m in spec.containers[0].volume_mounts or []]
        if self._automount():
            folder = self.sandbox / "volumes" / "serviceaccount"
            folder.mkdir(parents=True, exist_ok=True)
            self._write_service_account(folder)
            mounts.append((SA_MOUNT, folder))
        self._local = local
        self._sync_projected_volumes()
        return sorted(mounts, key=lambda m: -len(m[0]))

    def _automount(self) -> bool:
        spec = self.pod.spec
        if spec.automount_service_account_token is not None:
            return bool(spec.automount_service_account_token)
        account = self.kubelet.core.read_namespaced_service_account(spec.service_account_name or "default",
                                                                     self.namespace)
        return account.automount_service_account_token is not False

    def _write_service_account(self, folder: Path) -> None:
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["https://kubernetes.default.svc"], expiration_seconds=3600))
        token = self.kubelet.core.create_namespaced_service_account_token(
            self.pod.spec.service_account_name or "default", self.namespace, request).status.token
        (folder / "token").write_text(token)
        (folder / "ca.crt").write_bytes(self.kubelet.ca_path.read_bytes())
        (folder / "namespace").write_text(self.namespace)

    def _sync_projected_volumes(self) -> None:
        for name, volume in self._projected.items():
            try:
                if volume.secret is not None:
                    obj = self.kubelet.core.read_namespaced_secret(volume.secret.secret_name, self.namespace)
                    files = {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
                else:
                    obj = self.kubelet.core.read_namespaced_config_map(volume.config_map.name, self.namespace)
                    files = {k: v.encode() for k, v in (obj.data or {}).items()}
            except ApiException:
                continue
            folder = self._local[name]
            for key, content in files.items():
                path = folder / key
                if not path.exists() or path.read_bytes() != content:
                    temporary = folder / f".{key}.tmp"
                    temporary.write_bytes(content)
                    os.replace(temporary, path)

    def _rewrite(self, value: str) -> str:
        """Emulated mount and network namespaces (see the module docstring)."""
        if value == "0.0.0.0":
            return self.ip
        prefix, sep, rest = value.partition("=")
        if sep and rest.startswith("/"):
            return prefix + sep + self._rewrite(rest)
        for mount_path, folder in self._volumes:
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(folder) + value[len(mount_path.rstrip("/")):]
        return value

    # probes and status

    def _probe(self, probe: client.V1Probe, env: dict[str, str]) -> bool:
        timeout = probe.timeout_seconds or 1
        try:
            if probe.http_get is not None:
                port = self.container_port(probe.http_get.port)
                url = f"http://{self.ip}:{port}{probe.http_get.path or '/'}"
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= response.status < 400
            if probe.tcp_socket is not None:
                with socket.create_connection((self.ip, self.container_port(probe.tcp_socket.port)), timeout=timeout):
                    return True
            if probe._exec is not None:
                command = [self._rewrite(expand(part, env)) for part in probe._exec.command]
                return subprocess.run(command, env=env, cwd=self.sandbox, timeout=timeout,
                                      capture_output=True).returncode == 0
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return False
        return False

    def _set_ready(self, ready: bool) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        self.kubelet.record(self.name, "ready" if ready else "not ready")
        self._patch_status(running=not self.terminating)

    def _patch_status(self, *, running: bool) -> None:
        if self.kubelet._stop.is_set():
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ready = "True" if self.ready else "False"
        container = self.pod.spec.containers[0]
        status = {
            "phase": "Running" if running else "Running",
            "hostIP": "127.0.0.1", "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": now,
            "conditions": [{"type": t, "status": s, "lastTransitionTime": now}
                           for t, s in (("PodScheduled", "True"), ("Initialized", "True"),
                                        ("ContainersReady", ready), ("Ready", ready))],
            "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "",
                                   "ready": self.ready, "restartCount": self.restarts, "started": running,
                                   "state": {"running": {"startedAt": now}}}],
        }
        try:
            self.kubelet.core.patch_namespaced_pod_status(self.name, self.namespace, {"status": status})
        except ApiException as error:
            if error.status != 404:
                log.warning("status of %s: %s", self.name, error.reason)
        except Exception as error:  # noqa: BLE001 - the API server may be going away
            log.debug("status of %s: %s", self.name, error)
