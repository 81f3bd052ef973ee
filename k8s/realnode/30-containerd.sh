#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Start containerd (Debian 1.6.20, CRI plugin built in) with everything under $RN (default $RNROOT/node),
# runc + cgroupfs, overlayfs snapshotter, CNI bridge 10.85.0.0/16 (local only), a locally built pause
# image as sandbox image. Writes $RN/containerd.pid.  Usage: 30-containerd.sh
set -euo pipefail
R=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$RN"/{containerd/root,containerd/state,cni/net.d,cni/cache,logs}
CNIBIN=$( [ -x /usr/lib/cni/bridge ] && echo /usr/lib/cni || echo /opt/cni/bin )
cat > "$RN/containerd/config.toml" <<TOML
version = 2
root = "$RN/containerd/root"
state = "$RN/containerd/state"
[grpc]
  address = "$RN/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.4.1"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "${SNAPSHOTTER:-overlayfs}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNIBIN"
    conf_dir = "$RN/cni/net.d"
    max_conf_num = 1
TOML
# CNI: bridge + host-local IPAM on a subnet that exists only on this machine (not 10.88/16: podman/netavark default network uses it); portmap for hostPort.
cat > "$RN/cni/net.d/10-realnode.conflist" <<JSON
{ "cniVersion": "0.4.0", "name": "realnode",
  "plugins": [
    { "type": "bridge", "bridge": "rn0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$RN/cni/ipam",
                "ranges": [[{ "subnet": "10.85.0.0/16" }]], "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ] }
JSON
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
nohup containerd --config "$RN/containerd/config.toml" > "$RN/logs/containerd.log" 2>&1 &
echo $! > "$RN/containerd.pid"
for i in $(seq 50); do [ -S "$RN/containerd/containerd.sock" ] && break; sleep 0.2; done
ctr -a "$RN/containerd/containerd.sock" version
ctr -a "$RN/containerd/containerd.sock" plugins ls | grep -E 'cri|overlayfs' || true
