#!/usr/bin/env bash
. "$(dirname "$0")/env.sh"
# PKI + tokens + kubeconfigs for a loopback-only single-node cluster. Usage: 50-pki.sh  (env RN, API_PORT)
set -euo pipefail
API_PORT=${API_PORT:-16443}; P=$RN/pki; mkdir -p "$P"; cd "$P"
[ -f ca.crt ] && { echo "pki exists"; exit 0; }
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=realnode-ca 2>/dev/null
cert() { # name CN O SAN
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2${3:+/O=$3}" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" ${4:+"subjectAltName=$4"} > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 30 -extfile "$1.ext" 2>/dev/null
}
cert apiserver kube-apiserver "" "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
cert kubelet "$(hostname)" "" "IP:127.0.0.1,DNS:localhost,DNS:$(hostname)"
openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
tok() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
H=$(hostname)
cat > tokens.csv <<CSV
$(tok),admin,admin,"system:masters"
$(tok),system:kube-controller-manager,kcm,"system:masters"
$(tok),system:kube-scheduler,sched
$(tok),system:kube-proxy,proxy
$(tok),system:node:$H,kubelet-$H,"system:nodes"
CSV
kc() { # file user
  local t; t=$(awk -F, -v u="$2" '$2==u{print $1}' tokens.csv)
  cat > "$RN/$1.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: rn, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$P/ca.crt"}}]
users: [{name: u, user: {token: "$t"}}]
contexts: [{name: rn, context: {cluster: rn, user: u}}]
current-context: rn
YAML
}
kc admin admin; kc kcm system:kube-controller-manager; kc scheduler system:kube-scheduler
kc proxy system:kube-proxy; kc kubelet "system:node:$H"
echo "pki + kubeconfigs in $RN"
