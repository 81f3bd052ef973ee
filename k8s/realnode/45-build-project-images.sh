#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Build the project's own Containerfiles UNMODIFIED (k8s/images/*.Containerfile): their
# `FROM python:3.11-slim-bookworm` resolves to the stand-in of 40-python-base.sh (--pull=never: no
# registry is ever asked). --layers caches every step, so a source change rebuilds only the source
# layers; the host's uv cache is bind-mounted for RUN steps, so wheels the host already has are not
# downloaded again. Usage: 45-build-project-images.sh CHECKOUT [edge] [coordinator]
set -euo pipefail
CTX=${1:?project checkout}; shift
UV_CACHE=${UV_CACHE:-$(uv cache dir 2>/dev/null || echo "$HOME/.cache/uv")}; mkdir -p "$UV_CACHE"
for which in "${@:-edge}"; do
  t0=$(date +%s)
  nice -n "${NICE:-0}" buildah bud --pull=never --network=host --layers \
    --ulimit nofile=16384:16384 --ulimit nproc=16384:16384 \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro -v "$UV_CACHE:/root/.cache/uv" \
    -f "$CTX/k8s/images/$which.Containerfile" -t "localhost/fedrec/$which:0.1.0" "$CTX"
  echo "$which image: $(( $(date +%s)-t0 ))s, $(podman image inspect --format '{{.Size}}' "localhost/fedrec/$which:0.1.0") bytes"
done
