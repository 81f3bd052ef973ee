#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Copy images from podman/buildah local storage into containerd's k8s.io namespace (what the CRI sees).
# Usage: 35-import-images.sh IMAGE...   (e.g. localhost/pause:3.4.1 localhost/bookworm-py:latest)
set -euo pipefail
A="$RN/containerd/containerd.sock"
for img in "$@"; do
  f=$(mktemp -u $RNROOT/img.XXXX.tar)
  podman save --format oci-archive -o "$f" "$img"
  # a rebuilt image under a name containerd already holds: drop the old record first (re-importing over it
  # failed here with "content digest ...: not found")
  ctr -a "$A" -n k8s.io images rm "$img" >/dev/null 2>&1 || true
  ctr -a "$A" -n k8s.io images import --index-name "$img" --all-platforms "$f"  # --index-name keeps the name
  rm -f "$f"
done
ctr -a "$A" -n k8s.io images ls -q
