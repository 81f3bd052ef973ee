#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl v1.20.2
# from Debian bookworm's `kubernetes` source package (same approach as
# ../build-kube-apiserver.sh: private deb-src apt dir, archive URI taken
# from this machine's apt config, reflect2 1.0.1 -> Debian's 1.0.2 swap for Go >= 1.18).
# kubelet needs cgo off here too: fine for cgroupfs + remote CRI (no cadvisor-cgo features needed).
# Usage: 10-build-kube.sh OUTDIR [WORKDIR]     env: GOCACHE (reused if set), NICE (default 10)
set -euo pipefail
OUT=${1:?outdir}; WORK=${2:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q golang-go rsync etcd-server openssl >/dev/null
URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$URI" ] || URI=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $URI bookworm main" > "$WORK/apt/sources.list"
APTO=(-o Dir::Etc::SourceList="$WORK/apt/sources.list" -o Dir::Etc::SourceParts="$WORK/apt/none"
      -o Dir::State::Lists="$WORK/apt/lists" -o Dir::Cache="$WORK/apt/cache")
cd "$WORK"
if [ ! -d kubernetes-1.20.2 ]; then
  apt-get "${APTO[@]}" update -q >/dev/null
  apt-get "${APTO[@]}" source --download-only kubernetes=1.20.5+really1.20.2-1.1+deb12u1 >/dev/null 2>&1
  tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz
  apt-get download -q golang-github-modern-go-reflect2-dev >/dev/null 2>&1
  dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb r2
  V=kubernetes-1.20.2/vendor/github.com/modern-go/reflect2
  rm -rf "$V" && mkdir -p "$V"
  cp r2/usr/share/gocode/src/github.com/modern-go/reflect2/*.go r2/usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$V"/
  rm -f "$V"/*_test.go
fi
cd kubernetes-1.20.2
export GOPATH="$WORK/gopath" GOCACHE="${GOCACHE:-$WORK/gocache}" GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
       KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
nice -n "${NICE:-10}" make WHAT="$(printf 'cmd/%s ' $BINS)"
for b in $BINS; do cp _output/bin/$b "$OUT"/; done
"$OUT"/kubelet --version; "$OUT"/kube-apiserver --version
