"""fedrec on a (simulated) Kubernetes cluster: time from `kubectl apply` to the first completed
round, and rounds per minute, with 8 and 32 edge pods (issue 10). All figures from one run.

What runs: the real control plane (etcd, kube-apiserver, kube-controller-manager v1.20.2 on
loopback) and our kubelet simulator (tests/k8s/kubelet_sim.py), which runs every pod of
`k8s/overlays/dev` as local processes on this machine: the coordinator (TensorFlow, TFF) and the
edge pods (LiteRT devices). The dev overlay is applied with its StatefulSet set to N pods and
its devices per pod chosen so that N pods play 200 (N = 8: 25 each) or 384 (N = 32: 12 each)
users; cohorts are 20 devices in both, so the per-round work is the same and what changes is the
fleet. Round times come from the coordinator's own JSON log (`round_completed` events), the
pod start-up timeline from the simulator, CPU from /proc for each pod's process tree.

    uv run python bench/k8s.py                  # 8 and 32 edge pods, 12 rounds each (~8 min)
    uv run python bench/k8s.py --pods 8 --rounds 6
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

from tests.k8s.cluster import DEV_OVERLAY, SimulatedCluster, available, edit_coordinator_toml

DEVICES_PER_POD = {8: 25, 32: 12}
TICKS = os.sysconf("SC_CLK_TCK")


def overlay_for(pods: int, rounds: int):
    per_pod = DEVICES_PER_POD.get(pods, max(1, 384 // pods))

    def transform(text: str) -> str:
        import yaml

        docs = [d for d in yaml.safe_load_all(text) if d]
        for doc in docs:
            if doc["kind"] == "StatefulSet":
                doc["spec"]["replicas"] = pods
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "fedrec-edge":
                doc["data"]["devices-per-pod"] = str(per_pod)
        return edit_coordinator_toml(yaml.safe_dump_all(docs, sort_keys=False),
                                     lambda toml: toml.replace("rounds = 50", f"rounds = {rounds}"))
    return transform, per_pod


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (children still running)."""
    total, stack = 0.0, [pid]
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                continue
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except OSError:
            pass
        stack.extend(children.get(current, []))
    return total


def completed_rounds(cluster: SimulatedCluster) -> list[tuple[float, int]]:
    """(unix time, params version) of every completed round, from the coordinator's own log."""
    return [(moment, int(record["params_version"])) for moment, record in cluster.coordinator_events("round_completed")]


def run(pods: int, rounds: int, scratch: Path) -> dict:
    transform, per_pod = overlay_for(pods, rounds)
    cluster = SimulatedCluster(scratch / f"pods-{pods}").start()
    try:
        applied = cluster.apply_overlay(DEV_OVERLAY, transform=transform)
        cluster.wait_for(lambda: len(completed_rounds(cluster)) >= 1, timeout_s=600, what="the first round",
                         every_s=0.2)
        first_round = completed_rounds(cluster)[0][0] - applied
        events = cluster.kubelet.events
        ready = {pod: t - applied for t, pod, what in events if what == "ready"}
        edge_ready = [v for pod, v in ready.items() if "edge" in pod]
        coordinator_ready = min(v for pod, v in ready.items() if "coordinator" in pod)
        runners = {r.name: r for r in cluster.kubelet.pods.values()}
        cpu_start = {name: tree_cpu_seconds(r.process.pid) for name, r in runners.items() if r.process}
        marked = time.time()
        cluster.wait_for(lambda: len(completed_rounds(cluster)) >= rounds, timeout_s=900, what=f"{rounds} rounds",
                         every_s=0.5)
        done = completed_rounds(cluster)
        cpu_end = {name: tree_cpu_seconds(r.process.pid) for name, r in runners.items() if r.process}
        wall = time.time() - marked
        spent = {name: cpu_end.get(name, 0) - cpu_start.get(name, 0) for name in cpu_start}
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
