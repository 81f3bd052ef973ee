#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# A stand-in for docker.io/library/python:3.11-slim-bookworm built only from Debian's archive (no
# image registry here), FROM the mmdebstrap base of 20-base-rootfs.sh; the project's Containerfiles
# then build unmodified against it. The host's CA bundle is bind-mounted for RUN steps only.
set -euo pipefail
R=$(cd "$(dirname "$0")" && pwd)
t0=$(date +%s)
buildah bud --pull=never --network=host --ulimit nofile=16384:16384 --ulimit nproc=16384:16384 \
  -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  -f "$R/images/python-slim-compat.Containerfile" -t docker.io/library/python:3.11-slim-bookworm "$R/images"
echo "python base image: $(( $(date +%s)-t0 ))s"
