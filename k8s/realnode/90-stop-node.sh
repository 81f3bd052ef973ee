#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Tear down what 30-/60- started: delete pods (kubelet tears the CNI down), stop components by PID,
# remove leftover CRI containers, stop containerd, unmount, delete links, restore iptables + sysctls.
set -uo pipefail
K="$KBIN/kubectl --kubeconfig=$RN/admin.kubeconfig"
A="$RN/containerd/containerd.sock"
sk() { [ -f "$RN/pids/$1.pid" ] || return 0; local p; p=$(cat "$RN/pids/$1.pid"); kill "$p" 2>/dev/null
       for i in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done; kill -9 "$p" 2>/dev/null; rm -f "$RN/pids/$1.pid"; }
sk kube-controller-manager   # first, so that no controller re-creates the pods deleted next
$K delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1
for i in $(seq 60); do [ -z "$(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null)" ] && break; sleep 0.5; done
for c in kube-proxy kubelet kube-scheduler apiserver-relay kube-apiserver etcd; do sk $c; done
for t in $(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io tasks kill -s SIGKILL "$t"; done; sleep 1
for t in $(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io tasks delete -f "$t"; done
for c in $(ctr -a "$A" -n k8s.io containers ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io containers delete "$c"; done
# Whatever CRI did not stop: every shim of this containerd (found by its socket) and the containers
# under it, by PID.
for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $A" || true); do
  pkill -KILL -P "$shim" 2>/dev/null; kill -KILL "$shim" 2>/dev/null; done
if [ -f "$RN/containerd.pid" ]; then p=$(cat "$RN/containerd.pid"); kill "$p" 2>/dev/null
  for i in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done; rm -f "$RN/containerd.pid"; fi
# unmount anything left under the state dir and CNI netns bind mounts (deepest first)
for m in $(awk -v r="$RN" '$2 ~ "^"r || $2 ~ "^/run/netns/cni-" {print $2}' /proc/self/mounts | sort -r); do umount -l "$m"; done
rm -f /run/netns/cni-* 2>/dev/null
rm -rf /var/log/pods/fedrec_* /var/log/pods/default_* /var/log/containers/*_fedrec_* /var/log/containers/*_default_*
for l in rn0 rnnode0; do ip link del "$l" 2>/dev/null; done
# iptables: restore the pre-start snapshot; tables absent from it (e.g. mangle, made by kubelet /
# kube-proxy) are emptied too, so no KUBE-* chain survives.
restore() { # save-cmd restore-cmd snapshot
  { cat "$3"; for t in filter nat mangle raw; do grep -q "^\*$t\$" "$3" && continue
      $1 -t $t 2>/dev/null | grep -q "^\*$t" || continue
      echo "*$t"; $1 -t $t | awk '/^:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) / {print $1" "$2" [0:0]"}'; echo COMMIT; done; } | $2; }
[ -f "$RN/orig.iptables" ] && restore iptables-save iptables-restore "$RN/orig.iptables"
[ -f "$RN/orig.ip6tables" ] && restore ip6tables-save ip6tables-restore "$RN/orig.ip6tables"
# iptables-nft: tables that did not exist before start are deleted outright
for f in ip:orig.iptables ip6:orig.ip6tables; do [ -f "$RN/${f#*:}" ] || continue
  for t in filter nat mangle raw; do grep -q "^\*$t\$" "$RN/${f#*:}" || nft delete table "${f%%:*}" $t 2>/dev/null; done; done
[ -f "$RN/orig.sysctl" ] && sysctl -q -p "$RN/orig.sysctl"
# kubelet's pod cgroups
for s in /sys/fs/cgroup/*/; do [ -d "$s/kubepods" ] && find "$s/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null; done
# The run's cluster state goes with it (the next start is a fresh cluster); containerd's image store
# stays, so images need not be imported again. The host snapshots go last: if anything above was
# interrupted, the next start still restores from the pristine ones.
rm -rf "$RN/etcd" "$RN/pki" "$RN/kubelet" "$RN/pv" "$RN/cni/ipam" "$RN/apiserver-certs" "$RN"/*.kubeconfig "$RN/pids"
rm -f "$RN/orig.sysctl" "$RN/orig.iptables" "$RN/orig.ip6tables"
echo stopped
