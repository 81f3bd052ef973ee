#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Everything a real single-node cluster needs before it starts, each step skipped when its result
# is cached: Debian's container tools, the kube binaries (built from Debian's source package), the
# base and pause images, and the project's two images (always rebuilt; --layers makes that quick
# when only the source changed). Prints the time of each step. Usage: prepare.sh CHECKOUT
set -euo pipefail
R=$(cd "$(dirname "$0")" && pwd); CTX=$(cd "${1:?project checkout}" && pwd)
step() { echo "realnode: $1 took $(( $(date +%s)-t0 )) s"; t0=$(date +%s); }
t0=$(date +%s)
missing=$(for c in containerd runc buildah podman mmdebstrap socat conntrack iptables etcd go gcc; do
  command -v "$c" >/dev/null || echo "$c"; done)
if [ -n "$missing" ] || [ ! -f "$CONTAINERS_CONF" ]; then "$R/00-host-setup.sh"; fi
step "host tools (apt)"
[ -x "$KBIN/kubelet" ] && [ -x "$KBIN/kube-proxy" ] && [ -x "$KBIN/kube-scheduler" ] && [ -x "$KBIN/kube-apiserver" ] || {
  "$R/10-build-kube.sh" "$KBIN.partial" "$KWORK"
  mkdir -p "$KBIN"; mv "$KBIN.partial"/* "$KBIN"/; rmdir "$KBIN.partial"; }
step "kube binaries v1.20.2"
has() { podman image exists "$1"; }
# Bump when the base images' recipe changes (2: no docs, manuals or translations, as debian-slim).
BASE_VERSION=2
if [ "$(cat "$RNROOT/base-images.version" 2>/dev/null)" != "$BASE_VERSION" ]; then
  podman rmi -f docker.io/library/python:3.11-slim-bookworm localhost/bookworm-py:latest >/dev/null 2>&1 || true
fi
has localhost/bookworm-py:latest || "$R/20-base-rootfs.sh"
has localhost/pause:3.4.1 || "$R/25-pause-image.sh"
has docker.io/library/python:3.11-slim-bookworm || "$R/40-python-base.sh"
echo "$BASE_VERSION" > "$RNROOT/base-images.version"
step "base images"
"$R/45-build-project-images.sh" "$CTX" edge
step "edge image"
"$R/45-build-project-images.sh" "$CTX" coordinator
step "coordinator image"
