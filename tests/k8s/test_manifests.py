"""The fast tier for k8s/: the rendered overlays are valid Kubernetes 1.25-1.31 objects (strict:
no unknown fields), every workload meets the restricted Pod Security Standard, RBAC grants the
coordinator only what it needs, and the slim edge image's package list matches uv.lock.
"""

from __future__ import annotations

import copy
import shutil
import subprocess

import kubernetes_validate
import pytest

from tests.k8s.manifests import K8S, OVERLAYS, REPO_ROOT, kubectl, pod_specs, render, restricted_violations

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl (with its built-in kustomize) is not installed")
VERSIONS = ("1.25.0", "1.26.0", "1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.0")
FOLDERS = [K8S / "overlays" / name for name in OVERLAYS] + [K8S / "simulation"]


@pytest.fixture(scope="module", params=[f for f in FOLDERS if f.exists()], ids=lambda f: f.name)
def rendered(request):
    return render(request.param)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_for_the_kubernetes_version(rendered, version):
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_an_unknown_field(rendered):
    broken = copy.deepcopy(next(d for d in rendered if d["kind"] in ("Deployment", "StatefulSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.31.0", strict=True)


def test_every_pod_meets_the_restricted_profile(rendered):
    specs = dict(pod_specs(rendered))
    assert specs, "no workloads rendered"
    for name, spec in specs.items():
        assert restricted_violations(spec) == [], name
        for container in spec["containers"]:
            assert container["securityContext"].get("readOnlyRootFilesystem") is True, name
            assert container.get("resources", {}).get("limits"), f"{name}: no resource limits"
            assert container.get("readinessProbe") and container.get("livenessProbe"), f"{name}: no probes"


def test_the_checker_rejects_what_the_profile_forbids(rendered):
    name, spec = next(iter(pod_specs(rendered)))
    for mutate, expected in [
        (lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
        (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "adds"),
        (lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda s: s["securityContext"].pop("seccompProfile"), "seccomp"),
        (lambda s: s.update(hostNetwork=True), "hostNetwork"),
        (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    ]:
        broken = copy.deepcopy(spec)
        mutate(broken)
        assert any(expected in problem for problem in restricted_violations(broken)), expected


def test_the_namespace_enforces_the_restricted_profile():
    docs = render(K8S / "overlays" / "dev")
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(d["metadata"].get("namespace") == "fedrec" for d in docs if d["kind"] != "Namespace")


def test_the_coordinator_role_is_least_privilege():
    docs = render(K8S / "overlays" / "dev")
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "fedrec-coordinator")
    granted = {(group, resource, verb, tuple(rule.get("resourceNames", ())))
               for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert {verb for _, resource, verb, _ in granted if resource == "pods"} == {"get", "list", "watch"}
    for _, resource, verb, names in granted:
        assert verb in ("get", "list", "watch", "update", "patch"), f"{verb} {resource}"
        if resource in ("secrets", "configmaps", "leases"):
            assert names, f"{resource} must be limited by name"
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in docs)
    edge_account = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "fedrec-edge")
    assert edge_account["automountServiceAccountToken"] is False


def test_the_edge_statefulset_runs_in_parallel_and_takes_its_shard_from_its_name():
    docs = render(K8S / "overlays" / "dev")
    edge = next(d for d in docs if d["kind"] == "StatefulSet")
    assert edge["spec"]["podManagementPolicy"] == "Parallel"
    assert edge["spec"]["replicas"] == 8
    command = edge["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--pod-name") + 1] == "$(POD_NAME)"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "fedrec-edge")
    assert config["data"]["devices-per-pod"] == "25"


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
def test_the_coordinator_requirements_are_uv_locks_runtime_set_with_tensorflow_cpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("coordinator_requirements", K8S / "images" / "coordinator_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exported = module.exported_from_lock()
    written = (K8S / "images" / "coordinator-requirements.txt").read_text()
    assert written == module.requirements(exported), \
        "k8s/images/coordinator-requirements.txt is stale: run uv run python k8s/images/coordinator_requirements.py"
    packages = {line.split("==")[0].split(" ;")[0] for line in written.splitlines() if "==" in line}
    locked = {line.split("==")[0].split(" ;")[0] for line in exported.splitlines() if "==" in line}
    assert packages == (locked - {"tensorflow"}) | {"tensorflow-cpu"}
    assert "tensorflow-federated" in packages and "tensorflow-privacy" in packages


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
def test_the_edge_requirements_are_uv_locks_edge_group_without_tensorflow():
    path = K8S / "images" / "edge-requirements.txt"
    exported = subprocess.run(["uv", "export", "--frozen", "--only-group", "edge", "--no-emit-project",
                               "-o", "/dev/stdout", "--quiet"], cwd=REPO_ROOT, check=True, capture_output=True,
                              text=True).stdout
    body = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert body == [line for line in exported.splitlines() if not line.startswith("#")], \
        "k8s/images/edge-requirements.txt is stale: run the `uv export` line in k8s/images/edge.Containerfile"
    packages = {line.split("==")[0] for line in body if "==" in line}
    assert {"ai-edge-litert", "numpy", "grpcio", "cryptography", "pycryptodome"} <= packages
    assert not {p for p in packages if p.startswith(("tensorflow", "jax", "tf-", "keras"))}


def test_images_run_as_a_numeric_non_root_user():
    for name in ("coordinator.Containerfile", "edge.Containerfile"):
        lines = (K8S / "images" / name).read_text().splitlines()
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_coordinator_config_in_each_overlay_is_one_the_coordinator_accepts(overlay, tmp_path):
    import tomllib

    from coordinator.config import config_from_dict, planned

    docs = render(K8S / "overlays" / overlay)
    text = next(d for d in docs if d["kind"] == "ConfigMap"
                and d["metadata"]["name"] == "fedrec-coordinator")["data"]["coordinator.toml"]
    config = planned(config_from_dict(tomllib.loads(text), base=tmp_path))
    assert config.server.port == 7443 and config.server.metrics_port == 9090
    assert "fedrec-coordinator" in config.server.hostnames
    edge = next(d for d in docs if d["kind"] == "StatefulSet")
    per_pod = int(next(d for d in docs if d["kind"] == "ConfigMap"
                       and d["metadata"]["name"] == "fedrec-edge")["data"]["devices-per-pod"])
    fleet = edge["spec"]["replicas"] * per_pod
    assert config.population == fleet <= 400  # the synthetic set's users; enrollment admits 10% more
    assert config.training.clients_per_round <= fleet
    # A privacy product's shipped deployment runs with user-level DP and a stated budget; an overlay
    # without it would say so in its name.
    if "no-dp" not in overlay:
        assert config.training.dp != "none" and config.training.target_epsilon is not None
        assert config.plan is not None and config.plan.epsilon_rdp <= config.training.target_epsilon
