#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Start a REAL single-node Kubernetes 1.20.2: etcd + kube-apiserver + kube-controller-manager +
# kube-scheduler + kubelet (remote CRI = containerd, cgroupfs) + kube-proxy (iptables).
# Everything that takes an address is bound to 127.0.0.1; pods live on the local CNI bridge rn0
# (10.85.0.0/16); the node's InternalIP is a /32 on an empty bridge created here (kernel has no CONFIG_DUMMY) (never eth0).
# Usage: 60-start-node.sh   env: RN (state dir), KBIN (dir with the 6 binaries), API_PORT
set -euo pipefail
R=$(cd "$(dirname "$0")" && pwd)
API_PORT=${API_PORT:-16443}
NODE_IP=${NODE_IP:-10.84.255.1}; H=$(hostname); P=$RN/pki; L=$RN/logs; mkdir -p "$L" "$RN/pids"
# a node left running (or half-stopped) by an earlier run goes first
if [ -n "$(ls "$RN/pids" 2>/dev/null)" ] || [ -f "$RN/containerd.pid" ]; then "$R/90-stop-node.sh"; fi
mkdir -p "$L" "$RN/pids"; rm -f "$L"/*.log
start() { local n=$1; shift; nohup "$@" > "$L/$n.log" 2>&1 & echo $! > "$RN/pids/$n.pid"; }
t0=$(date +%s)
# host state we change, saved for 90-stop-node.sh
[ -f "$RN/orig.sysctl" ] || for k in net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory \
    vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes \
    net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do echo "$k=$(sysctl -n $k)"; done > "$RN/orig.sysctl"
[ -f "$RN/orig.iptables" ] || { iptables-save > "$RN/orig.iptables"; ip6tables-save > "$RN/orig.ip6tables"; }
ip link show rnnode0 >/dev/null 2>&1 || { ip link add rnnode0 type bridge; ip addr add "$NODE_IP/32" dev rnnode0; ip link set rnnode0 up; }
# The Service range is routed onto that empty bridge: a ClusterIP connection that kube-proxy has not
# (yet) rewritten to a pod stays on this machine instead of following the default route out.
ip route show 10.96.0.0/16 | grep -q rnnode0 || ip route add 10.96.0.0/16 dev rnnode0
[ -S "$RN/containerd/containerd.sock" ] && kill -0 "$(cat "$RN/containerd.pid" 2>/dev/null)" 2>/dev/null || "$R/30-containerd.sh"
"$R/50-pki.sh"
start etcd etcd --name rn --data-dir "$RN/etcd" --unsafe-no-fsync --log-level warn \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster rn=http://127.0.0.1:23800
start kube-apiserver "$KBIN/kube-apiserver" --etcd-servers=http://127.0.0.1:23790 \
  --bind-address=127.0.0.1 --advertise-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
  --token-auth-file="$P/tokens.csv" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$P/sa.pub" \
  --service-account-signing-key-file="$P/sa.key" --api-audiences=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.96.0.0/16 --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$P/apiserver-kubelet-client.key" --kubelet-preferred-address-types=Hostname \
  --allow-privileged=true --profiling=false --cert-dir="$RN/apiserver-certs" -v=1
# in-cluster API access: the apiserver stays bound to loopback; a socat relay listens only on the node
# IP (bridge rnnode0, this machine only) so the `kubernetes` Service (10.96.0.1:443 -> NODE_IP:API_PORT
# via kube-proxy) reaches it from pods.
start apiserver-relay socat TCP-LISTEN:"$API_PORT",bind="$NODE_IP",fork,reuseaddr TCP:127.0.0.1:"$API_PORT"
K="$KBIN/kubectl --kubeconfig=$RN/admin.kubeconfig"
for i in $(seq 120); do $K get --raw /readyz >/dev/null 2>&1 && break; sleep 0.5; done
$K get --raw /readyz >/dev/null; echo "apiserver ready after $(( $(date +%s)-t0 ))s"
start kube-controller-manager "$KBIN/kube-controller-manager" --kubeconfig="$RN/kcm.kubeconfig" \
  --authentication-kubeconfig="$RN/kcm.kubeconfig" --authorization-kubeconfig="$RN/kcm.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --port=0 --leader-elect=false --controllers='*' \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" --use-service-account-credentials=false -v=1
start kube-scheduler "$KBIN/kube-scheduler" --kubeconfig="$RN/scheduler.kubeconfig" \
  --authentication-kubeconfig="$RN/scheduler.kubeconfig" --authorization-kubeconfig="$RN/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --port=0 --leader-elect=false -v=1
mkdir -p "$RN/kubelet" "$RN/manifests"
cat > "$RN/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failSwapOn: false
staticPodPath: $RN/manifests
tlsCertFile: $P/kubelet.crt
tlsPrivateKeyFile: $P/kubelet.key
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: $P/ca.crt}}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
resolvConf: ""
serializeImagePulls: false
# Images here are imported, never pulled (there is no registry): image garbage collection must not
# remove them, and this machine's disk reads as ~80% used by statfs, which is over the kubelet's
# default GC (85%) and DiskPressure eviction (imagefs < 15% free) thresholds.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
YAML
start kubelet "$KBIN/kubelet" --config="$RN/kubelet-config.yaml" --kubeconfig="$RN/kubelet.kubeconfig" \
  --container-runtime=remote --container-runtime-endpoint="unix://$RN/containerd/containerd.sock" \
  --runtime-request-timeout=5m --root-dir="$RN/kubelet" --cert-dir="$RN/kubelet/pki" --node-ip="$NODE_IP" \
  --pod-infra-container-image=localhost/pause:3.4.1 -v=1
cat > "$RN/kube-proxy-config.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $RN/proxy.kubeconfig}
mode: iptables
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: 10.85.0.0/16
hostnameOverride: $H
conntrack: {maxPerCore: 0}
YAML
start kube-proxy "$KBIN/kube-proxy" --config="$RN/kube-proxy-config.yaml" -v=1
for i in $(seq 240); do
  [ "$($K get node "$H" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break; sleep 0.5
done
$K get nodes -o wide; echo "node Ready after $(( $(date +%s)-t0 ))s"
