"""fedrec on a real single-node Kubernetes: time from `kubectl apply` to the first completed round,
and rounds per minute, with 8 and 32 edge pods (issues 10 and 19). All figures from one run.

What runs: a real node on this machine (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, the kubelet with containerd and runc, the CNI bridge and kube-proxy v1.20.2;
tests/k8s/real_node.py, k8s/realnode/) running the project's images as built by
`k8s/realnode/prepare.sh`: the coordinator (TensorFlow, TFF) and the edge pods (LiteRT devices).
The dev overlay is applied with its StatefulSet set to N pods and its devices per pod chosen so
that N pods play 200 (N = 8: 25 each) or 384 (N = 32: 12 each) users; cohorts follow the
coordinator's plan. Round times come from the coordinator's own JSON log (`round_completed`
events), readiness from the pods' Ready conditions, CPU from each pod's cgroup (cpuacct).
Needs root and the prepared images.

    sudo uv run python bench/k8s.py                  # 8 and 32 edge pods, 12 rounds each (~10 min)
    sudo uv run python bench/k8s.py --pods 8 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.k8s.real_node import DEV_OVERLAY, RealNodeCluster, available, edit_coordinator_toml

DEVICES_PER_POD = {8: 25, 32: 12}


def overlay_for(pods: int, rounds: int):
    per_pod = DEVICES_PER_POD.get(pods, max(1, 384 // pods))

    def transform(text: str) -> str:
        import yaml

        docs = [d for d in yaml.safe_load_all(text) if d]
        for doc in docs:
            if doc["kind"] == "StatefulSet":
                doc["spec"]["replicas"] = pods
                # The scheduler enforces requests: 32 pods x 100m do not fit this 2-core node, so the
                # edge request is cut to what fits (the limit, 1 core, stays).
                edge_cpu = min(100, (2000 - 300) // pods)
                doc["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = f"{edge_cpu}m"
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "fedrec-edge":
                doc["data"]["devices-per-pod"] = str(per_pod)
        return edit_coordinator_toml(yaml.safe_dump_all(docs, sort_keys=False),
                                     lambda toml: toml.replace("rounds = 20\n", f"rounds = {rounds + 5}\n")
                                     .replace("population = 200\n", f"population = {pods * per_pod}\n"))
    return transform, per_pod


def pod_cpu_seconds(uid: str) -> float:
    """CPU time the pod's cgroup has used (cgroup v1 cpuacct, as the kubelet's cgroupfs driver lays it out)."""
    for usage in Path("/sys/fs/cgroup").glob(f"cpu*/kubepods/**/pod{uid}/cpuacct.usage"):
        return int(usage.read_text()) / 1e9
    return 0.0


def completed_rounds(cluster: RealNodeCluster) -> list[tuple[float, int]]:
    """(unix time, params version) of every completed round, from the coordinator's own log."""
    return [(moment, int(record["params_version"])) for moment, record in cluster.coordinator_events("round_completed")]


def run(pods: int, rounds: int, scratch: Path) -> dict:
    transform, per_pod = overlay_for(pods, rounds)
    cluster = RealNodeCluster(scratch / f"pods-{pods}").start()
    try:
        applied = cluster.apply_overlay(DEV_OVERLAY, transform=transform)
        cluster.wait_for(lambda: len(completed_rounds(cluster)) >= 1, timeout_s=600, what="the first round",
                         every_s=0.2)
        first_round = completed_rounds(cluster)[0][0] - applied
        cluster.wait_for(lambda: all(cluster.ready_since(p.metadata.name) for p in cluster.edge_pods())
                         and len(cluster.edge_pods()) == pods, timeout_s=600, what="every edge pod ready")
        ready = {p.metadata.name: cluster.ready_since(p.metadata.name) - applied
                 for p in [*cluster.edge_pods(), *cluster.coordinator_pods()]}
        edge_ready = [v for pod, v in ready.items() if "edge" in pod]
        coordinator_ready = min(v for pod, v in ready.items() if "coordinator" in pod)
        uids = {p.metadata.name: p.metadata.uid for p in [*cluster.edge_pods(), *cluster.coordinator_pods()]}
        cpu_start = {name: pod_cpu_seconds(uid) for name, uid in uids.items()}
        marked = time.time()
        cluster.wait_for(lambda: len(completed_rounds(cluster)) >= rounds, timeout_s=900, what=f"{rounds} rounds",
                         every_s=0.5)
        done = completed_rounds(cluster)
        cpu_end = {name: pod_cpu_seconds(uid) for name, uid in uids.items()}
        wall = time.time() - marked
        spent = {name: cpu_end[name] - cpu_start[name] for name in uids}
        steady = done[1:]
        per_minute = 60 * (len(steady) - 1) / (steady[-1][0] - steady[0][0]) if len(steady) > 1 else None
        status = cluster.status()
        return {
            "edge_pods": pods, "devices_per_pod": per_pod, "devices": pods * per_pod,
            "apply_to_first_round_s": round(first_round, 1),
            "apply_to_coordinator_ready_s": round(coordinator_ready, 1),
            "apply_to_all_edge_pods_ready_s": round(max(edge_ready), 1) if edge_ready else None,
            "rounds_per_minute": None if per_minute is None else round(per_minute, 1),
            "rounds_measured": len(steady),
            "enrolled_devices": status.get("enrolled_devices"),
            "cpu_share_during_rounds": {
                "coordinator": round(sum(v for k, v in spent.items() if "coordinator" in k) / wall, 2),
                "edge_pods": round(sum(v for k, v in spent.items() if "edge" in k) / wall, 2),
                "cores": os.cpu_count(),
            },
        }
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", default="8,32", help="comma-separated edge pod counts")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reason = available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="fedrec-bench-k8s-"))
    results = []
    try:
        for pods in [int(p) for p in args.pods.split(",")]:
            result = run(pods, args.rounds, scratch)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print("| edge pods | devices | apply -> coordinator ready | apply -> all edge pods ready | apply -> first round "
          "| rounds/min | CPU cores busy: coordinator / edge pods |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        cpu = r["cpu_share_during_rounds"]
        print(f"| {r['edge_pods']} | {r['devices']} | {r['apply_to_coordinator_ready_s']} s | "
              f"{r['apply_to_all_edge_pods_ready_s']} s | {r['apply_to_first_round_s']} s | {r['rounds_per_minute']} | "
              f"{cpu['coordinator']} / {cpu['edge_pods']} of {cpu['cores']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
