#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Build a minimal Debian bookworm rootfs (python3 3.11 + ca-certificates) with mmdebstrap, straight
# from the Debian archive configured on this machine (its deb822 sources file is passed as the
# mirror spec, so no host is hard-coded), as an OCI-ish plain tarball, then import it into
# (a) podman/buildah local storage as localhost/bookworm-py:latest and
# (b) containerd's k8s.io namespace (via `podman save --format oci-archive` + `ctr images import`).
# Usage: 20-base-rootfs.sh [WORKDIR]
set -euo pipefail
W=${1:-$RNROOT/base}; mkdir -p "$W"
SRC=/etc/apt/sources.list.d/debian.sources
[ -f "$SRC" ] || SRC=/etc/apt/sources.list
t0=$(date +%s)
# Like debian:bookworm-slim (the official python image's base): no manuals, docs or translations.
[ -s "$W/rootfs-slim.tar" ] || nice -n 10 mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  --aptopt='Acquire::Retries "3"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  bookworm "$W/rootfs-slim.tar" "$SRC"
echo "mmdebstrap: $(( $(date +%s)-t0 ))s, $(du -h "$W/rootfs-slim.tar" | cut -f1)"
# podman import -> local image (no registry involved)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$RNROOT/containers.conf}  # rlimits this machine allows
podman import --change 'CMD ["/usr/bin/python3"]' --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$W/rootfs-slim.tar" localhost/bookworm-py:latest
podman run --rm --network=none localhost/bookworm-py:latest python3 -c 'import sys,ssl;print(sys.version);print(ssl.OPENSSL_VERSION)'
