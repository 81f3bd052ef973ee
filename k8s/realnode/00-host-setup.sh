#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Step 1: container runtime + tools, all from Debian bookworm (no other source).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q containerd runc containernetworking-plugins buildah podman iptables conntrack socat \
  mmdebstrap debootstrap uidmap golang-go rsync etcd-server openssl gcc libc6-dev
# This machine has no CAP_SYS_RESOURCE (hard RLIMIT_NOFILE=20000): podman/buildah's default ulimits
# (nofile/nproc ~1M) make runc fail with "error setting rlimit type 7: operation not permitted".
mkdir -p $RNROOT
printf '[containers]\ndefault_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]\n' > $RNROOT/containers.conf
echo "export CONTAINERS_CONF=$RNROOT/containers.conf   # use this for podman/buildah"
# trivial runc check (static pause binary as the whole rootfs)
d=$(mktemp -d); mkdir "$d/rootfs"
printf 'int main(){return 0;}' | gcc -static -x c -o "$d/rootfs/true" -
(cd "$d" && runc spec && sed -i 's/"sh"/"\/true"/; s/"terminal": true/"terminal": false/' config.json && runc run "rc-$$" && echo "runc OK")
rm -rf "$d"
