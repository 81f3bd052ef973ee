#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Build the CRI sandbox ("pause") image locally: static pause.c (images/pause.c, upstream v1.20.2's)
# -> buildah scratch image localhost/pause:3.4.1.
set -euo pipefail
W=${W:-$RNROOT/pause}; mkdir -p "$W"
gcc -Os -static -DVERSION=v3.4.1-local -o "$W/pause" "$(dirname "$0")/images/pause.c"; strip "$W/pause"
c=$(buildah from scratch)
buildah copy "$c" "$W/pause" /pause
buildah config --entrypoint '["/pause"]' --cmd '[]' --user 65535:65535 "$c"
buildah commit --rm "$c" localhost/pause:3.4.1
